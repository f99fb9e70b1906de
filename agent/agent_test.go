package agent_test

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/agent"
	"github.com/hearth-vm/hearth/agent/server"
)

func TestPingInfo(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t, 5*time.Second)
	if err := e.client.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	in, err := e.client.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if in.Version != "test" || in.Protocol != agent.ProtocolVersion || in.Kernel == "" || in.Uptime <= 0 || in.AgentUptime <= 0 {
		t.Errorf("info %+v", in)
	}
	if !slices.ContainsFunc(in.Ifaces, func(i agent.Interface) bool { return i.Name == "lo" }) {
		t.Errorf("no loopback among %+v", in.Ifaces)
	}
	if !slices.Contains(in.Features, "exec") {
		t.Errorf("features %v", in.Features)
	}
}

func TestEnvMerge(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t, 10*time.Second)
	steps := []struct {
		name   string
		update map[string]string
		want   map[string]string
		err    error
	}{
		{"first set", map[string]string{"A": "1", "B": "2"}, map[string]string{"A": "1", "B": "2"}, nil},
		{"absent keys are kept", map[string]string{"C": "3"}, map[string]string{"A": "1", "B": "2", "C": "3"}, nil},
		{"overwrite", map[string]string{"A": "one"}, map[string]string{"A": "one", "B": "2", "C": "3"}, nil},
		{"empty value deletes", map[string]string{"B": ""}, map[string]string{"A": "one", "C": "3"}, nil},
		{"deleting a missing key is fine", map[string]string{"NOPE": ""}, map[string]string{"A": "one", "C": "3"}, nil},
		{"values may hold = and spaces", map[string]string{"D": "x=y z"}, map[string]string{"A": "one", "C": "3", "D": "x=y z"}, nil},
		{"empty update changes nothing", map[string]string{}, map[string]string{"A": "one", "C": "3", "D": "x=y z"}, nil},
		{"bad key refused whole", map[string]string{"E": "5", "9X": "bad"}, nil, agent.ErrInvalid},
		{"newline in value refused", map[string]string{"E": "a\nb"}, nil, agent.ErrInvalid},
		{"dash in key refused", map[string]string{"A-B": "x"}, nil, agent.ErrInvalid},
	}
	want := map[string]string{}
	for _, st := range steps {
		got, err := e.client.SetEnv(ctx, st.update)
		if st.err != nil {
			if !errors.Is(err, st.err) {
				t.Fatalf("%s: err = %v, want %v", st.name, err, st.err)
			}
		} else {
			if err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
			want = st.want
			if !maps.Equal(got, want) {
				t.Fatalf("%s: env %v, want %v", st.name, got, want)
			}
		}
		cur, err := e.client.Env(ctx)
		if err != nil || !maps.Equal(cur, want) {
			t.Fatalf("%s: stored env %v (%v), want %v", st.name, cur, err, want)
		}
	}
	b, err := os.ReadFile(e.cfg.EnvFile)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "A=one\nC=3\nD=x=y z\n" {
		t.Errorf("env file %q", b)
	}
	if fi, _ := os.Stat(e.cfg.EnvFile); fi.Mode().Perm() != 0o600 {
		t.Errorf("env file mode %v", fi.Mode())
	}

	// A new agent on the same file keeps merging onto it.
	srv2, err := server.New(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer srv2.Close()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "/v1/env", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	srv2.Handler().ServeHTTP(rec, req)
	if !strings.Contains(rec.Body.String(), `"D":"x=y z"`) {
		t.Errorf("reloaded env: %s", rec.Body.String())
	}
}

func TestSecrets(t *testing.T) {
	e := newEnv(t, func(c *server.Config) { c.MaxSecretSize = 1 << 20 })
	ctx := ctxT(t, 30*time.Second)
	if err := e.client.SetSecret(ctx, "db-pass_1", []byte("hunter2")); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(e.cfg.SecretsDir, "db-pass_1")
	b, err := os.ReadFile(p)
	if err != nil || string(b) != "hunter2" {
		t.Fatalf("secret %q %v", b, err)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Errorf("secret mode %v", fi.Mode())
	}
	if fi, _ := os.Stat(e.cfg.SecretsDir); fi.Mode().Perm() != 0o700 {
		t.Errorf("secrets dir mode %v", fi.Mode())
	}
	if err := e.client.SetSecret(ctx, "empty", nil); err != nil {
		t.Fatal(err)
	}
	names, err := e.client.Secrets(ctx)
	if err != nil || !slices.Equal(names, []string{"db-pass_1", "empty"}) {
		t.Fatalf("names %v %v", names, err)
	}

	for _, bad := range []string{"", "..", "a/b", ".hidden", "a b", "a.b", `a\b`, strings.Repeat("x", 256)} {
		if err := e.client.SetSecret(ctx, bad, []byte("x")); !errors.Is(err, agent.ErrInvalid) {
			t.Errorf("SetSecret(%q): %v", bad, err)
		}
	}
	// The agent checks names itself, whatever the client does.
	for _, bad := range []string{"..", ".x", "a.b"} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("PUT", "/v1/secrets/"+bad, strings.NewReader("x"))
		req.Header.Set("Authorization", "Bearer "+testToken)
		e.srv.Handler().ServeHTTP(rec, req)
		if rec.Code < 300 {
			t.Errorf("raw PUT %q: %d %s", bad, rec.Code, rec.Body)
		}
	}
	if err := e.client.SetSecret(ctx, "big", make([]byte, 1<<20+1)); !errors.Is(err, agent.ErrTooLarge) {
		t.Errorf("oversized secret: %v", err)
	}
	if err := e.client.DeleteSecret(ctx, "empty"); err != nil {
		t.Fatal(err)
	}
	if err := e.client.DeleteSecret(ctx, "empty"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("delete twice: %v", err)
	}

	// Atomicity: readers never see a mix of two values or a short file.
	a, bv := bytes.Repeat([]byte("A"), 256<<10), bytes.Repeat([]byte("B"), 256<<10)
	if err := e.client.SetSecret(ctx, "flip", a); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			v := a
			if i%2 == 1 {
				v = bv
			}
			if err := e.client.SetSecret(ctx, "flip", v); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	fp := filepath.Join(e.cfg.SecretsDir, "flip")
	for range 200 {
		got, err := os.ReadFile(fp)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, a) && !bytes.Equal(got, bv) {
			t.Fatalf("torn read: %d bytes, first %q last %q", len(got), got[:1], got[len(got)-1:])
		}
	}
	close(stop)
	wg.Wait()
	// No temporary files are left behind.
	ents, _ := os.ReadDir(e.cfg.SecretsDir)
	for _, en := range ents {
		if strings.HasPrefix(en.Name(), ".") {
			t.Errorf("leftover %s", en.Name())
		}
	}
}

func TestTokens(t *testing.T) {
	tokenFile := filepath.Join(shortDir(t), "token")
	e := newEnv(t, func(c *server.Config) { c.TokenFile = tokenFile })
	ctx := ctxT(t, 10*time.Second)

	for _, tok := range []string{"wrong-token-000000", ""} {
		bad := e.newClient(tok)
		err := bad.Ping(ctx)
		var ae *agent.Error
		if !errors.Is(err, agent.ErrUnauthorized) || !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
			t.Fatalf("token %q: %v", tok, err)
		}
		// Every endpoint, not just ping; unknown paths included.
		if _, _, _, err := bad.Output(ctx, "true"); !errors.Is(err, agent.ErrUnauthorized) {
			t.Errorf("exec with token %q: %v", tok, err)
		}
		if _, err := bad.SetEnv(ctx, map[string]string{"X": "1"}); !errors.Is(err, agent.ErrUnauthorized) {
			t.Errorf("env with token %q: %v", tok, err)
		}
		if _, err := bad.Stat(ctx, "/"); !errors.Is(err, agent.ErrUnauthorized) {
			t.Errorf("stat with token %q: %v", tok, err)
		}
	}
	env, _ := e.client.Env(ctx)
	if len(env) != 0 {
		t.Errorf("unauthorized request changed env: %v", env)
	}

	const next = "rotated-token-abcdef"
	if err := e.client.RotateToken(ctx, "short"); !errors.Is(err, agent.ErrInvalid) {
		t.Errorf("short token: %v", err)
	}
	if err := e.client.RotateToken(ctx, next); err != nil {
		t.Fatal(err)
	}
	if err := e.client.Ping(ctx); err != nil {
		t.Fatalf("rotated client: %v", err)
	}
	old := e.newClient(testToken)
	if err := old.Ping(ctx); !errors.Is(err, agent.ErrUnauthorized) {
		t.Fatalf("old token still accepted: %v", err)
	}
	if b, err := os.ReadFile(tokenFile); err != nil || strings.TrimSpace(string(b)) != next {
		t.Errorf("token file %q %v", b, err)
	}
	if fi, _ := os.Stat(tokenFile); fi.Mode().Perm() != 0o600 {
		t.Errorf("token file mode %v", fi.Mode())
	}

	if _, err := server.New(server.Config{SecretsDir: filepath.Join(shortDir(t), "s")}); err == nil {
		t.Error("server without a token started")
	}
}

func TestPowerClockEntropy(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t, 10*time.Second)
	target := time.Now().Add(time.Hour)
	if _, err := e.client.SetClock(ctx, target); err != nil {
		t.Fatal(err)
	}
	r, err := e.client.AddEntropy(ctx, []byte("0123456789"))
	if err != nil || r.Bytes != 10 || !r.Credited {
		t.Fatalf("entropy %+v %v", r, err)
	}
	if _, err := e.client.AddEntropy(ctx, make([]byte, agent.MaxEntropy+1)); !errors.Is(err, agent.ErrInvalid) {
		t.Errorf("oversized entropy: %v", err)
	}
	if err := e.client.SetHostname(ctx, "clone-1.example"); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "-x", "a..b", "a_b", strings.Repeat("a", 65)} {
		if err := e.client.SetHostname(ctx, bad); !errors.Is(err, agent.ErrInvalid) {
			t.Errorf("hostname %q: %v", bad, err)
		}
	}
	if err := e.client.Reboot(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.client.PowerOff(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "power actions", 5*time.Second, func() bool { return len(e.sys.powerCalls()) == 2 })
	e.sys.mu.Lock()
	defer e.sys.mu.Unlock()
	if len(e.sys.clock) != 1 || !e.sys.clock[0].Equal(time.Unix(0, target.UnixNano())) {
		t.Errorf("clock calls %v", e.sys.clock)
	}
	if !slices.Equal(e.sys.hostnames, []string{"clone-1.example"}) {
		t.Errorf("hostname calls %v", e.sys.hostnames)
	}
	if p := e.sys.power; !slices.Contains(p, agent.Reboot) || !slices.Contains(p, agent.PowerOff) {
		t.Errorf("power calls %v", p)
	}
}

// TestAfterRestore runs what the runtime does after a restore.
func TestAfterRestore(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t, 10*time.Second)
	if err := e.client.AfterRestore(ctx, "clone-token-123456"); err != nil {
		t.Fatal(err)
	}
	if e.dials.Load() != 2 {
		t.Errorf("dials %d: AfterRestore must reconnect", e.dials.Load())
	}
	if err := e.client.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	e.sys.mu.Lock()
	defer e.sys.mu.Unlock()
	if len(e.sys.clock) != 1 || len(e.sys.entropy) != 1 || len(e.sys.entropy[0]) != 512 {
		t.Errorf("clock %v entropy %d", e.sys.clock, len(e.sys.entropy))
	}
}

// TestReconnect cuts the connection under the client, as a snapshot
// does to every vsock connection.
func TestReconnect(t *testing.T) {
	e := newEnv(t)
	p := newCutProxy(t, e.sock)
	var dials int
	var mu sync.Mutex
	c, err := agent.Dial(ctxT(t, 5*time.Second), countingDialer(p.path(), &mu, &dials), testToken)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := ctxT(t, 20*time.Second)
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}

	// A running exec loses its stream and its process.
	proc, err := c.Start(ctx, &agent.Cmd{Args: []string{"sleep", "30"}})
	if err != nil {
		t.Fatal(err)
	}
	p.cut()
	if _, err := proc.Wait(); !errors.Is(err, agent.ErrConnLost) {
		t.Fatalf("exec across the cut: %v", err)
	}
	waitFor(t, "the orphaned exec to be killed", 5*time.Second, func() bool { return processGone(proc.PID) })

	// The next calls reconnect by themselves.
	for i := range 3 {
		if err := c.Ping(ctx); err != nil {
			t.Fatalf("ping %d after cut: %v", i, err)
		}
		if out, _, st, err := c.Output(ctx, "echo", "again"); err != nil || string(out) != "again\n" || !st.Success() {
			t.Fatalf("exec after cut: %q %+v %v", out, st, err)
		}
		p.cut()
	}
	mu.Lock()
	defer mu.Unlock()
	if dials != 4 {
		t.Errorf("%d dials, want 4 (one per connection)", dials)
	}

	// A closed client stays closed.
	c.Close()
	if err := c.Ping(ctx); !errors.Is(err, agent.ErrClosed) {
		t.Errorf("ping on a closed client: %v", err)
	}
}

func TestDialFailure(t *testing.T) {
	dir := shortDir(t)
	ctx := ctxT(t, 5*time.Second)
	_, err := agent.Dial(ctx, countingDialer(filepath.Join(dir, "none.sock"), &sync.Mutex{}, new(int)), testToken)
	if err == nil || !strings.Contains(err.Error(), "none.sock") {
		t.Fatalf("dial to nothing: %v", err)
	}
	// A lazily connecting client reports the same on its first call.
	c := agent.New(countingDialer(filepath.Join(dir, "none.sock"), &sync.Mutex{}, new(int)), testToken)
	defer c.Close()
	if err := c.Ping(ctx); err == nil || errors.Is(err, agent.ErrConnLost) {
		t.Fatalf("ping to nothing: %v", err)
	}
	if c.Connected() {
		t.Error("connected to nothing")
	}

	// A cancelled context stops a dial that would otherwise retry.
	cctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	if err := c.Ping(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled ping: %v", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Errorf("cancel took %s", time.Since(start))
	}
}

// TestConcurrentDialFailure: callers waiting on one failing dial share its
// failure instead of each dialing in turn.
func TestConcurrentDialFailure(t *testing.T) {
	var mu sync.Mutex
	n := 0
	c := agent.New(countingDialer(filepath.Join(shortDir(t), "none.sock"), &mu, &n), testToken)
	defer c.Close()
	start := time.Now()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.Ping(context.Background()); err == nil {
				t.Error("ping to nothing succeeded")
			}
		}()
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	// Each dial retries for 500ms; eight in turn would take 4s.
	if el := time.Since(start); el > 2500*time.Millisecond || n > 4 {
		t.Errorf("%d dials in %s", n, el)
	}
}

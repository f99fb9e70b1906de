package server

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/hearth-vm/hearth/agent"
)

const lineToken = "line-token-0123456789"

func shortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "as")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func newLineServer(t *testing.T, mod func(*Config)) (*Server, string) {
	t.Helper()
	dir := shortDir(t)
	cfg := Config{Token: lineToken, EnvFile: filepath.Join(dir, "env"), SecretsDir: filepath.Join(dir, "secrets"), MaxLine: 64 << 10, MaxSecretSize: 1024}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := ListenUnix(filepath.Join(dir, "l.sock"))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = s.ServeLine(ln) }()
	t.Cleanup(func() { s.Close(); <-done })
	return s, ln.Addr().String()
}

type lineClient struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialLine(t *testing.T, path string) *lineClient {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return &lineClient{t: t, c: c, br: bufio.NewReader(c)}
}

func (l *lineClient) send(raw string) LineResponse {
	l.t.Helper()
	if _, err := l.c.Write([]byte(raw + "\n")); err != nil {
		l.t.Fatal(err)
	}
	line, err := l.br.ReadString('\n')
	if err != nil {
		l.t.Fatalf("read response to %.80q: %v", raw, err)
	}
	var r LineResponse
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		l.t.Fatalf("response %q: %v", line, err)
	}
	return r
}

func TestLineProtocol(t *testing.T) {
	s, path := newLineServer(t, nil)
	l := dialLine(t, path)
	b64 := base64.StdEncoding.EncodeToString
	tok := `"token":"` + lineToken + `"`
	steps := []struct {
		name   string
		req    string
		id     string
		ok     bool
		errHas string
	}{
		{"ping", `{"op":"ping","id":"p1"}`, "p1", true, ""},
		{"ping needs no token", `{"op":"ping","id":"p2","token":"wrong"}`, "p2", true, ""},
		{"set_env", `{"op":"set_env","id":"e1","env":{"A":"1","B":"2"},` + tok + `}`, "e1", true, ""},
		{"set_env merges", `{"op":"set_env","id":"e2","env":{"C":"3"},` + tok + `}`, "e2", true, ""},
		{"empty value deletes", `{"op":"set_env","id":"e3","env":{"A":""},` + tok + `}`, "e3", true, ""},
		{"bad key", `{"op":"set_env","id":"e4","env":{"1A":"x"},` + tok + `}`, "e4", false, "must start with"},
		{"newline in value", `{"op":"set_env","id":"e5","env":{"A":"x\ny"},` + tok + `}`, "e5", false, "newline"},
		{"set_env without env", `{"op":"set_env","id":"e6",` + tok + `}`, "e6", false, "env object"},
		{"set_secret", `{"op":"set_secret","id":"s1","name":"api_key","value_b64":"` + b64([]byte("s3cr3t")) + `",` + tok + `}`, "s1", true, ""},
		{"bad secret name", `{"op":"set_secret","id":"s2","name":"../x","value_b64":"eA==",` + tok + `}`, "s2", false, "invalid character"},
		{"bad base64", `{"op":"set_secret","id":"s3","name":"x","value_b64":"eA",` + tok + `}`, "s3", false, "base64"},
		{"secret too large", `{"op":"set_secret","id":"s4","name":"x","value_b64":"` + b64(make([]byte, 1025)) + `",` + tok + `}`, "s4", false, "exceeds"},
		{"no token", `{"op":"set_env","id":"t1","env":{"Z":"1"}}`, "t1", false, "unauthorized"},
		{"wrong token", `{"op":"set_secret","id":"t2","name":"x","value_b64":"eA==","token":"nope"}`, "t2", false, "unauthorized"},
		{"unknown op", `{"op":"format_disk","id":"u1"}`, "u1", false, "unknown op"},
		{"no op", `{"id":"u2"}`, "u2", false, "no op"},
		{"invalid json", `{"op":"ping",`, "", false, "invalid request json"},
		{"id of a malformed request is echoed", `{"id":"m1","env":7}`, "m1", false, "invalid request json"},
		{"not an object", `[1,2,3]`, "", false, "invalid request json"},
		{"binary garbage", "\x00\xff\xfe{{{", "", false, "invalid request json"},
		{"oversized line", `{"op":"ping","id":"` + strings.Repeat("x", 70<<10) + `"}`, "", false, "exceeds"},
		{"still in step after that", `{"op":"ping","id":"p3"}`, "p3", true, ""},
	}
	for _, st := range steps {
		r := l.send(st.req)
		if r.ID != st.id || r.OK != st.ok || !strings.Contains(r.Error, st.errHas) || (st.ok && r.Error != "") {
			t.Errorf("%s: response %+v, want id %q ok %v error containing %q", st.name, r, st.id, st.ok, st.errHas)
		}
	}
	if env := s.env.snapshot(); len(env) != 2 || env["B"] != "2" || env["C"] != "3" {
		t.Errorf("env after line requests: %v", env)
	}
	b, err := os.ReadFile(filepath.Join(s.cfg.SecretsDir, "api_key"))
	if err != nil || string(b) != "s3cr3t" {
		t.Errorf("secret %q %v", b, err)
	}
	if fi, _ := os.Stat(filepath.Join(s.cfg.SecretsDir, "api_key")); fi.Mode().Perm() != 0o600 {
		t.Errorf("secret mode %v", fi.Mode())
	}

	// Several requests in one write, answered in order.
	if _, err := l.c.Write([]byte(`{"op":"ping","id":"a"}` + "\n\n" + `{"op":"ping","id":"b"}` + "\n")); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"a", "b"} {
		line, _ := l.br.ReadString('\n')
		var r LineResponse
		if json.Unmarshal([]byte(line), &r); r.ID != want || !r.OK {
			t.Errorf("pipelined response %q, want id %q", line, want)
		}
	}

	// The seed's unauthenticated behaviour is available on request.
	s2, path2 := newLineServer(t, func(c *Config) { c.LineAllowNoToken = true })
	l2 := dialLine(t, path2)
	if r := l2.send(`{"op":"set_env","id":"x","env":{"K":"v"}}`); !r.OK {
		t.Errorf("no-token mode refused: %+v", r)
	}
	if s2.env.snapshot()["K"] != "v" {
		t.Error("no-token set_env not applied")
	}
}

// TestLineFinalUnterminated: a last request without a newline is still
// answered before the connection closes.
func TestLineFinalUnterminated(t *testing.T) {
	_, path := newLineServer(t, nil)
	l := dialLine(t, path)
	l.c.Write([]byte(`{"op":"ping","id":"last"}`))
	l.c.(*net.UnixConn).CloseWrite()
	line, err := l.br.ReadString('\n')
	if err != nil || !strings.Contains(line, `"id":"last"`) {
		t.Fatalf("%q %v", line, err)
	}
}

func TestDecodeLineRequest(t *testing.T) {
	tests := []struct {
		in   string
		op   string
		ok   bool
		id   string
		idOK bool // an id is returned with the error
	}{
		{`{"op":"ping","id":"1"}`, "ping", true, "1", true},
		{`  {"op":"ping","id":"1"}  `, "ping", true, "1", true},
		{`{"op":"ping","id":"1","extra":[1,{}]}`, "ping", true, "1", true},
		{`{"op":"set_env","id":"2","env":{}}`, "set_env", true, "2", true},
		{`{"op":"set_env","id":"2","env":null}`, "", false, "2", true},
		{`{"op":"set_secret","id":"3","name":"n","value_b64":""}`, "set_secret", true, "3", true},
		{`{"op":"set_secret","id":"3","name":"","value_b64":""}`, "", false, "3", true},
		{`{"op":"PING","id":"4"}`, "", false, "4", true},
		{`{"op":1,"id":"5"}`, "", false, "5", true},
		{`{"op":"ping","id":5}`, "", false, "", false},
		{``, "", false, "", false},
		{`null`, "", false, "", true},
		{`{"op":"ping","id":"` + strings.Repeat("i", 300) + `"}`, "", false, "", false},
	}
	for _, tt := range tests {
		req, err := DecodeLineRequest([]byte(tt.in))
		if (err == nil) != tt.ok {
			t.Errorf("%.60q: err = %v", tt.in, err)
			continue
		}
		if tt.ok && req.Op != tt.op {
			t.Errorf("%.60q: op %q", tt.in, req.Op)
		}
		if tt.idOK != (req != nil) || (req != nil && req.ID != tt.id) {
			t.Errorf("%.60q: request %+v, want id %q (%v)", tt.in, req, tt.id, tt.idOK)
		}
	}
}

// FuzzDecodeLineRequest: no input crashes the decoder, an accepted
// request is valid for its op, and an error never carries an oversized id.
func FuzzDecodeLineRequest(f *testing.F) {
	for _, s := range []string{
		`{"op":"ping","id":"1"}`,
		`{"op":"set_env","id":"2","env":{"A":"1","B":""}}`,
		`{"op":"set_secret","id":"3","name":"n","value_b64":"aGk="}`,
		`{"op":"set_env","env":{"1":"x"}}`,
		`{"id":"x","op":[]}`,
		`{"op":"ping","id":"\u0000"}`,
		"\xff\xfe",
		`[]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		req, err := DecodeLineRequest(line)
		if req != nil && len(req.ID) > maxLineID {
			t.Fatalf("id of %d bytes", len(req.ID))
		}
		if err != nil {
			return
		}
		switch req.Op {
		case OpPing:
		case OpSetEnv:
			if req.Env == nil || agent.ValidateEnv(req.Env) != nil {
				t.Fatalf("accepted bad env %v", req.Env)
			}
		case OpSetSecret:
			if agent.ValidateSecretName(req.Name) != nil {
				t.Fatalf("accepted bad secret name %q", req.Name)
			}
			if _, err := base64.StdEncoding.Strict().DecodeString(req.ValueB64); err != nil {
				t.Fatalf("accepted bad base64")
			}
		default:
			t.Fatalf("accepted op %q", req.Op)
		}
		if !utf8.ValidString(req.Op) {
			t.Fatalf("op not UTF-8")
		}
	})
}

func TestReadLine(t *testing.T) {
	in := "short\n" + strings.Repeat("y", 100) + "\nlast"
	br := bufio.NewReaderSize(strings.NewReader(in), 16)
	line, long, err := readLine(br, 50)
	if string(line) != "short" || long || err != nil {
		t.Fatalf("1: %q %v %v", line, long, err)
	}
	line, long, err = readLine(br, 50)
	if line != nil || !long || err != nil {
		t.Fatalf("2: %q %v %v", line, long, err)
	}
	line, long, err = readLine(br, 50)
	if string(line) != "last" || long || err == nil {
		t.Fatalf("3: %q %v %v", line, long, err)
	}
}

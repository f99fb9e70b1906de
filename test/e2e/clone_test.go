package e2e

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/network/nstest"
)

// guestToken is the agent token a guest holds: the rotated one if it was
// given one (a clone), else the one on its kernel command line.
const guestToken = `cat /run/hearth/token 2>/dev/null || tr ' ' '\n' </proc/cmdline | sed -n 's/^hearth.token=//p'`

// TestGuestClones snapshots a running, networked guest and restores two
// clones from it at once: each answers exec with its own token, hostname,
// disk and network slot (its traffic leaves from its own address), and
// the source keeps running and answering.
func TestGuestClones(t *testing.T) {
	t.Parallel()
	state := newState(t)
	w := nstest.NewWorld(t)
	ctx := context.Background()
	rt := openQEMU(t, state, withWorld(w))
	t.Cleanup(func() { destroyAll(rt); rt.Close() })
	on := true
	net := &hearth.NetworkSpec{Allow: []string{"tcp:" + nstest.Allowed.String() + "/32:80"}}
	if _, err := rt.Create(ctx, "src", hearth.Spec{Image: "default", MemoryMiB: 256, Agent: &on, Network: net}); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Start(ctx, "src"); err != nil {
		t.Fatal(err)
	}
	execOut(t, rt, "src", "sh", "-c", "echo src > /marker && sync")
	t0 := time.Now()
	if _, err := rt.Snapshot(ctx, "src", "snap"); err != nil {
		t.Fatal(err)
	}
	t.Logf("snapshot: %v", time.Since(t0).Round(time.Millisecond))

	clones := []string{"c1", "c2"}
	var wg sync.WaitGroup
	errs := make([]error, len(clones))
	t0 = time.Now()
	for i, id := range clones {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = rt.Restore(ctx, hearth.RestoreSpec{Snapshot: "snap", VM: id})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("restore %s: %v", clones[i], err)
		}
	}
	t.Logf("two restores at once: %v", time.Since(t0).Round(time.Millisecond))

	tokens := map[string]string{}
	addrs := map[netip.Addr]string{}
	for _, id := range append([]string{"src"}, clones...) {
		// Its own network: a namespace whose uplink address is its own,
		// and egress under the policy it inherited.
		_, addr := vmNS(t, rt, id)
		if other, dup := addrs[addr]; dup {
			t.Errorf("%s and %s both send from %v", id, other, addr)
		}
		addrs[addr] = id
		if !dial(t, rt, id, nstest.Allowed.String()+":80") {
			t.Errorf("%s: the allowed responder does not answer", id)
		}
		if got, _ := rt.Get(ctx, id); got.Status != hearth.StatusRunning {
			t.Fatalf("%s: %s", id, got.Status)
		}
		if m := execOut(t, rt, id, "cat", "/marker"); m != "src" {
			t.Errorf("%s: marker %q", id, m)
		}
		tok := execOut(t, rt, id, "sh", "-c", guestToken)
		if len(tok) < 32 {
			t.Fatalf("%s: token %q", id, tok)
		}
		for other, o := range tokens {
			if o == tok {
				t.Errorf("%s and %s share their agent token", id, other)
			}
		}
		tokens[id] = tok
		if h := execOut(t, rt, id, "hostname"); h != id {
			t.Errorf("%s: hostname %q", id, h)
		}
	}
	// Each clone has its own disk: a write in one is seen by no other.
	execOut(t, rt, "c1", "sh", "-c", "echo c1 > /marker && sync")
	for id, want := range map[string]string{"c1": "c1", "c2": "src", "src": "src"} {
		if m := execOut(t, rt, id, "cat", "/marker"); m != want {
			t.Errorf("%s: marker %q after c1 wrote its own, want %q", id, m, want)
		}
	}
	for _, id := range append(clones, "src") {
		if err := rt.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := rt.DeleteSnapshot(ctx, "snap"); err != nil {
		t.Fatal(err)
	}
	noGuestsLeft(t, state)
}

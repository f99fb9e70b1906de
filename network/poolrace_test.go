package network_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/network"
	"github.com/hearth-vm/hearth/network/nstest"
)

// TestReconcileWhilePoolFills runs Reconcile while the pool filler is
// building its first slots, as every runtime Open does. Reconcile must
// neither pool a slot the filler is about to pool (two owners would get
// one slot) nor tear one down under it: every attach gets a slot of its
// own whose namespace exists.
func TestReconcileWhilePoolFills(t *testing.T) {
	nstest.RequireRoot(t)
	ctx := context.Background()
	for round := range 3 {
		t.Run(fmt.Sprint(round), func(t *testing.T) {
			w := nstest.NewWorld(t)
			m, _ := newManager(t, w, network.ModeNetNS, 4)
			if _, err := m.Reconcile(ctx, func(string) bool { return false }); err != nil {
				t.Fatal(err)
			}
			for deadline := time.Now().Add(30 * time.Second); m.PoolLen() < 4; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("pool holds %d slots", m.PoolLen())
				}
			}
			seen := map[uint64]string{}
			for i := range 6 {
				owner := fmt.Sprintf("vm%d", i)
				a, err := m.Attach(ctx, owner)
				if err != nil {
					t.Fatal(err)
				}
				if o, dup := seen[a.Slot]; dup {
					t.Fatalf("slot %d given to %s and %s", a.Slot, o, owner)
				}
				seen[a.Slot] = owner
				if _, err := os.Stat(a.NetNSPath); err != nil {
					t.Fatalf("%s's namespace: %v", owner, err)
				}
			}
			for _, owner := range seen {
				if err := m.Detach(ctx, owner); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

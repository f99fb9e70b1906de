package hearth_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/firewall"
	"github.com/hearth-vm/hearth/network"
	"github.com/hearth-vm/hearth/network/nstest"
	"github.com/hearth-vm/hearth/vmm"
	"github.com/hearth-vm/hearth/vmm/firecracker"
)

// TestFirecrackerSetRateLimits changes a running VM's drive limits through
// the simulator, which validates the PATCH against the pinned spec, and
// checks the record survives a daemon restart (adoption) and is what the
// next cold boot configures.
func TestFirecrackerSetRateLimits(t *testing.T) {
	ctx := context.Background()
	f := newFC(t)
	data := filepath.Join(f.dir, "data.img")
	if err := os.WriteFile(data, make([]byte, 1<<16), 0o600); err != nil {
		t.Fatal(err)
	}
	spec := f.spec
	spec.Drives = []hearth.DriveSpec{{ID: "data", Path: data}}
	if _, err := f.rt.Create(ctx, "rl", spec); err != nil {
		t.Fatal(err)
	}
	if _, err := f.rt.Start(ctx, "rl"); err != nil {
		t.Fatal(err)
	}
	f.requests(t)
	limit := &hearth.RateLimit{Bandwidth: &hearth.TokenBucket{Size: 1 << 20, OneTimeBurst: 1 << 21, RefillTimeMs: 100}}
	if _, err := f.rt.SetRateLimits(ctx, "rl", hearth.RateLimits{Drives: []hearth.DriveRateLimit{{ID: "data", RateLimit: limit}}}); err != nil {
		t.Fatal(err)
	}
	reqs := f.requests(t)
	if got := calls(reqs); !reflect.DeepEqual(got, []string{"PATCH /drives/data"}) {
		t.Fatalf("requests %v", got)
	}
	var body struct {
		RateLimiter struct {
			Bandwidth, Ops struct {
				Size, OneTimeBurst, RefillTime int64
			}
		} `json:"rate_limiter"`
	}
	if err := json.Unmarshal(reqs[0].Body, &body); err != nil {
		t.Fatal(err)
	}
	if reqs[0].Status != 204 || body.RateLimiter.Bandwidth.Size != 1<<20 || body.RateLimiter.Ops.Size != 0 {
		t.Fatalf("PATCH %d %s", reqs[0].Status, reqs[0].Body)
	}

	// A daemon restart adopts the VMM with the recorded limits.
	f.rt.Close()
	f.rt = f.open(t, fcsimBinary(t))
	v, err := f.rt.Get(ctx, "rl")
	if err != nil || !reflect.DeepEqual(v.Spec.Drives[0].RateLimit, limit) {
		t.Fatalf("after adoption: %+v %v", v.Spec.Drives, err)
	}
	// The next cold boot configures them from the record.
	if _, err := f.rt.Stop(ctx, "rl"); err != nil {
		t.Fatal(err)
	}
	f.requests(t)
	if _, err := f.rt.Start(ctx, "rl"); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range f.requests(t) {
		if r.Method == "PUT" && r.Path == "/drives/data" {
			var d struct {
				RateLimiter *struct {
					Bandwidth *struct{ Size int64 } `json:"bandwidth"`
				} `json:"rate_limiter"`
			}
			json.Unmarshal(r.Body, &d)
			found = d.RateLimiter != nil && d.RateLimiter.Bandwidth != nil && d.RateLimiter.Bandwidth.Size == 1<<20
		}
	}
	if !found {
		t.Fatal("cold boot after stop did not configure the recorded drive limit")
	}
}

// TestFirecrackerNetworkRateLimits changes a networked VM's NIC limits:
// one PATCH /network-interfaces/eth0 stating both directions, which the
// simulator validates against the spec, and a direction left out keeps
// its limit.
func TestFirecrackerNetworkRateLimits(t *testing.T) {
	nstest.RequireRoot(t)
	ctx := context.Background()
	w := nstest.NewWorld(t)
	f := newFC(t)
	f.rt.Close()
	b, err := firecracker.New(firecracker.Options{Binary: fcsimBinary(t), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	rt, err := hearth.Open(ctx, hearth.Config{StateDir: f.state, Backends: []vmm.Backend{b},
		Network: &hearth.NetworkConfig{
			Network:  network.Config{Mode: network.ModeNetNS, HostNS: w.Host.Path, NetNSDir: filepath.Join(w.Dir, "vmns"), EgressIface: nstest.EgressIface, PoolSize: -1},
			Firewall: firewall.NFTables,
		}})
	if err != nil {
		t.Fatal(err)
	}
	f.rt = rt
	spec := f.spec
	tx := &hearth.RateLimit{Ops: &hearth.TokenBucket{Size: 50, RefillTimeMs: 10}}
	spec.Network = &hearth.NetworkSpec{TxRateLimit: tx}
	if _, err := rt.Create(ctx, "n1", spec); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Start(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	f.requests(t)
	rx := &hearth.RateLimit{Bandwidth: &hearth.TokenBucket{Size: 1 << 20, RefillTimeMs: 1000}}
	v, err := rt.SetRateLimits(ctx, "n1", hearth.RateLimits{Network: &hearth.NetworkRateLimits{RxRateLimit: rx}})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(v.Spec.Network.RxRateLimit, rx) || !reflect.DeepEqual(v.Spec.Network.TxRateLimit, tx) {
		t.Fatalf("recorded rx %+v tx %+v", v.Spec.Network.RxRateLimit, v.Spec.Network.TxRateLimit)
	}
	reqs := f.requests(t)
	if got := calls(reqs); !reflect.DeepEqual(got, []string{"PATCH /network-interfaces/eth0"}) || reqs[0].Status != 204 {
		t.Fatalf("requests %v (%d)", got, reqs[0].Status)
	}
	var body struct {
		Rx struct{ Bandwidth, Ops struct{ Size int64 } } `json:"rx_rate_limiter"`
		Tx struct{ Bandwidth, Ops struct{ Size int64 } } `json:"tx_rate_limiter"`
	}
	if err := json.Unmarshal(reqs[0].Body, &body); err != nil {
		t.Fatal(err)
	}
	if body.Rx.Bandwidth.Size != 1<<20 || body.Rx.Ops.Size != 0 || body.Tx.Ops.Size != 50 || body.Tx.Bandwidth.Size != 0 {
		t.Fatalf("PATCH body %s", reqs[0].Body)
	}
	if err := rt.Destroy(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
}

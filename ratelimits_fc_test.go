package hearth_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/hearth-vm/hearth"
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

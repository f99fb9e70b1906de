package hearth

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/vmm"
)

func TestRateLimitsValidate(t *testing.T) {
	bucket := &TokenBucket{Size: 10, RefillTimeMs: 100}
	cases := []struct {
		name string
		u    RateLimits
		ok   bool
	}{
		{"drive limit", RateLimits{Drives: []DriveRateLimit{{ID: "data", RateLimit: &RateLimit{Ops: bucket}}}}, true},
		{"lift drive limit", RateLimits{Drives: []DriveRateLimit{{ID: "data"}}}, true},
		{"network rx", RateLimits{Network: &NetworkRateLimits{RxRateLimit: &RateLimit{Bandwidth: bucket}}}, true},
		{"empty", RateLimits{}, false},
		{"empty network", RateLimits{Network: &NetworkRateLimits{}}, false},
		{"root drive", RateLimits{Drives: []DriveRateLimit{{ID: "rootfs"}}}, false},
		{"bad id", RateLimits{Drives: []DriveRateLimit{{ID: "../x"}}}, false},
		{"duplicate", RateLimits{Drives: []DriveRateLimit{{ID: "a"}, {ID: "a"}}}, false},
		{"zero size", RateLimits{Drives: []DriveRateLimit{{ID: "a", RateLimit: &RateLimit{Ops: &TokenBucket{RefillTimeMs: 1}}}}}, false},
		{"negative burst", RateLimits{Network: &NetworkRateLimits{TxRateLimit: &RateLimit{Ops: &TokenBucket{Size: 1, RefillTimeMs: 1, OneTimeBurst: -1}}}}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := c.u.validate(); (err == nil) != c.ok {
				t.Fatalf("validate = %v, want ok=%v", err, c.ok)
			}
		})
	}
}

// TestSetRateLimits drives the runtime on the in-memory backend: the
// machine gets the whole new limits, the record keeps them across a
// reopen (adoption) and a stop → start, and bad input or a wrong state
// changes nothing.
func TestSetRateLimits(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	data := filepath.Join(t.TempDir(), "data.img")
	if err := os.WriteFile(data, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	spec := f.spec
	spec.Drives = []DriveSpec{{ID: "data", Path: data, RateLimit: &RateLimit{Bandwidth: &TokenBucket{Size: 1 << 20, RefillTimeMs: 1000}}}}
	if _, err := f.rt.Create(ctx, "rl", spec); err != nil {
		t.Fatal(err)
	}
	ops := &RateLimit{Ops: &TokenBucket{Size: 200, RefillTimeMs: 1000}}
	upd := RateLimits{Drives: []DriveRateLimit{{ID: "data", RateLimit: ops}}}

	// Created: refused, nothing changes.
	if _, err := f.rt.SetRateLimits(ctx, "rl", upd); !errors.Is(err, ErrInvalidTransition) {
		t.Fatalf("created VM: %v, want InvalidTransition", err)
	}
	if _, err := f.rt.Start(ctx, "rl"); err != nil {
		t.Fatal(err)
	}
	before, _ := f.rt.Get(ctx, "rl")
	for name, c := range map[string]struct {
		id   string
		u    RateLimits
		kind Kind
	}{
		"unknown vm":    {"nope", upd, KindVMNotFound},
		"unknown drive": {"rl", RateLimits{Drives: []DriveRateLimit{{ID: "other", RateLimit: ops}}}, KindInvalidArgument},
		"invalid":       {"rl", RateLimits{Drives: []DriveRateLimit{{ID: "data", RateLimit: &RateLimit{Ops: &TokenBucket{Size: -1}}}}}, KindInvalidArgument},
		"no network":    {"rl", RateLimits{Network: &NetworkRateLimits{RxRateLimit: ops}}, KindNetworkConfig},
	} {
		if _, err := f.rt.SetRateLimits(ctx, c.id, c.u); KindOf(err) != c.kind {
			t.Errorf("%s: %v, want kind %s", name, err, c.kind)
		}
	}
	if after, _ := f.rt.Get(ctx, "rl"); !reflect.DeepEqual(before.Spec, after.Spec) {
		t.Fatalf("refused updates changed the spec: %+v", after.Spec)
	}

	v, err := f.rt.SetRateLimits(ctx, "rl", upd)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(v.Spec.Drives[0].RateLimit, ops) {
		t.Fatalf("view rate limit %+v, want %+v", v.Spec.Drives[0].RateLimit, ops)
	}
	// The whole limit is replaced: the bandwidth bucket is gone.
	wantVMM := &vmm.RateLimiter{Ops: &vmm.TokenBucket{Size: 200, RefillTime: time.Second}}
	if got := f.machine("rl").Config().Drives[1].RateLimit; !reflect.DeepEqual(got, wantVMM) {
		t.Fatalf("machine limit %+v, want %+v", got, wantVMM)
	}

	// Reopen: the record is adopted with the new limits.
	f.rt.Close()
	f.rt = f.open(t, f.backend)
	if v, _ := f.rt.Get(ctx, "rl"); !reflect.DeepEqual(v.Spec.Drives[0].RateLimit, ops) {
		t.Fatalf("after reopen: %+v", v.Spec.Drives[0].RateLimit)
	}
	// Paused VMs take changes too; lifting the limit records none.
	if _, err := f.rt.Pause(ctx, "rl"); err != nil {
		t.Fatal(err)
	}
	if v, err = f.rt.SetRateLimits(ctx, "rl", RateLimits{Drives: []DriveRateLimit{{ID: "data", RateLimit: &RateLimit{}}}}); err != nil {
		t.Fatal(err)
	}
	if v.Spec.Drives[0].RateLimit != nil || f.machine("rl").Config().Drives[1].RateLimit != nil {
		t.Fatalf("lifted limit still recorded: %+v", v.Spec.Drives[0].RateLimit)
	}
	// Stopped: recorded, then applied by the next start's fresh VMM.
	if _, err := f.rt.Stop(ctx, "rl"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.rt.SetRateLimits(ctx, "rl", upd); err != nil {
		t.Fatal(err)
	}
	if _, err := f.rt.Start(ctx, "rl"); err != nil {
		t.Fatal(err)
	}
	if got := f.machine("rl").Config().Drives[1].RateLimit; !reflect.DeepEqual(got, wantVMM) {
		t.Fatalf("after stop/start machine limit %+v, want %+v", got, wantVMM)
	}
}

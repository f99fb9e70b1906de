package qemu

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/vmm"
)

func TestThrottleArgs(t *testing.T) {
	sec := time.Second
	cases := []struct {
		name    string
		u       vmm.RateLimitUpdate
		want    []blockIOThrottle
		errWant string // substring; "" = ok
		unsupp  bool
	}{
		{"bandwidth and ops", vmm.RateLimitUpdate{Drives: []vmm.DriveLimit{{ID: "data", Limit: &vmm.RateLimiter{
			Bandwidth: &vmm.TokenBucket{Size: 1 << 20, RefillTime: 500 * time.Millisecond}, Ops: &vmm.TokenBucket{Size: 100, RefillTime: sec}}}}},
			[]blockIOThrottle{{Device: "drive-data", BPS: 2 << 20, IOPS: 100}}, "", false},
		{"nil limit lifts throttling", vmm.RateLimitUpdate{Drives: []vmm.DriveLimit{{ID: "data"}}},
			[]blockIOThrottle{{Device: "drive-data"}}, "", false},
		{"nic without limits is a no-op", vmm.RateLimitUpdate{NICs: []vmm.NICLimit{{ID: "eth0", RX: &vmm.RateLimiter{}}}}, nil, "", false},
		{"nic limit unsupported", vmm.RateLimitUpdate{NICs: []vmm.NICLimit{{ID: "eth0", TX: &vmm.RateLimiter{Ops: &vmm.TokenBucket{Size: 1, RefillTime: sec}}}}},
			nil, "network-interfaces.eth0.tx_rate_limiter", true},
		{"burst unsupported", vmm.RateLimitUpdate{Drives: []vmm.DriveLimit{{ID: "d", Limit: &vmm.RateLimiter{Ops: &vmm.TokenBucket{Size: 1, OneTimeBurst: 5, RefillTime: sec}}}}},
			nil, "drives.d.rate_limiter.ops.one_time_burst", true},
		{"zero refill invalid", vmm.RateLimitUpdate{Drives: []vmm.DriveLimit{{ID: "d", Limit: &vmm.RateLimiter{Ops: &vmm.TokenBucket{Size: 1}}}}},
			nil, "drives.d.rate_limiter.ops", false},
		{"empty id invalid", vmm.RateLimitUpdate{Drives: []vmm.DriveLimit{{}}}, nil, "drives.id", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := throttleArgs(c.u)
			if c.errWant != "" {
				if err == nil || !strings.Contains(err.Error(), c.errWant) {
					t.Fatalf("err = %v, want one naming %q", err, c.errWant)
				}
				if errors.Is(err, errors.ErrUnsupported) != c.unsupp {
					t.Fatalf("errors.Is(ErrUnsupported) = %v, want %v", !c.unsupp, c.unsupp)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(c.want) {
				t.Fatalf("got %+v, want %+v", got, c.want)
			}
			for i := range got {
				if got[i] != c.want[i] {
					t.Fatalf("got %+v, want %+v", got, c.want)
				}
			}
		})
	}
}

// TestRealSetRateLimits changes a running QEMU's block throttling and
// reads it back with query-block.
func TestRealSetRateLimits(t *testing.T) {
	b := needQEMU(t)
	m, dir := launch(t, b, "thr")
	bootGuestless(t, m, guestlessConfig(t, dir))
	ctx := context.Background()
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	throttle := func() (bps, iops int64) {
		t.Helper()
		var blocks []struct {
			Device   string `json:"device"`
			Inserted *struct {
				BPS  int64 `json:"bps"`
				IOPS int64 `json:"iops"`
			} `json:"inserted"`
		}
		if err := m.command(ctx, "query-block", nil, &blocks); err != nil {
			t.Fatal(err)
		}
		for _, bl := range blocks {
			if bl.Device == "drive-rootfs" && bl.Inserted != nil {
				return bl.Inserted.BPS, bl.Inserted.IOPS
			}
		}
		t.Fatalf("drive-rootfs not in query-block: %+v", blocks)
		return 0, 0
	}
	if bps, _ := throttle(); bps != 100<<20 {
		t.Fatalf("boot-time bps %d, want %d", bps, 100<<20)
	}
	err := m.SetRateLimits(ctx, vmm.RateLimitUpdate{Drives: []vmm.DriveLimit{{ID: "rootfs", Limit: &vmm.RateLimiter{
		Ops: &vmm.TokenBucket{Size: 500, RefillTime: time.Second}}}}})
	if err != nil {
		t.Fatal(err)
	}
	if bps, iops := throttle(); bps != 0 || iops != 500 {
		t.Fatalf("after update bps %d iops %d, want 0 and 500", bps, iops)
	}
	// A refused update changes nothing.
	err = m.SetRateLimits(ctx, vmm.RateLimitUpdate{Drives: []vmm.DriveLimit{{ID: "rootfs"}},
		NICs: []vmm.NICLimit{{ID: "eth0", RX: &vmm.RateLimiter{Ops: &vmm.TokenBucket{Size: 1, RefillTime: time.Second}}}}})
	if !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("nic limit: %v, want Unsupported", err)
	}
	if _, iops := throttle(); iops != 500 {
		t.Fatalf("refused update changed iops to %d", iops)
	}
	// An unknown drive is QEMU's refusal, a RequestError.
	err = m.SetRateLimits(ctx, vmm.RateLimitUpdate{Drives: []vmm.DriveLimit{{ID: "nope"}}})
	var re *vmm.RequestError
	if !errors.As(err, &re) {
		t.Fatalf("unknown drive: %v, want a RequestError", err)
	}
}

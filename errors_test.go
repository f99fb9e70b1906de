package hearth

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/hearth-vm/hearth/vmm"
)

func TestErrorKindsAndSentinels(t *testing.T) {
	sentinels := map[Kind]error{
		KindVMAlreadyExists: ErrVMAlreadyExists, KindVMNotFound: ErrVMNotFound,
		KindInvalidTransition: ErrInvalidTransition, KindSnapshotAlreadyExists: ErrSnapshotAlreadyExists,
		KindSnapshotNotFound: ErrSnapshotNotFound, KindStatePoisoned: ErrStatePoisoned,
		KindUnsupported: ErrUnsupported, KindMetrics: ErrMetrics, KindShutdown: ErrShutdown,
		KindFirewall: ErrFirewall, KindJailer: ErrJailer, KindNetworkConfig: ErrNetworkConfig,
		KindNetworkSetup: ErrNetworkSetup, KindRootfs: ErrRootfs, KindUffd: ErrUffd,
		KindGuestMetadata: ErrGuestMetadata, KindInvalidArgument: ErrInvalidArgument,
		KindVMM: ErrVMM, KindIntegrity: ErrIntegrity, KindTimeout: ErrTimeout,
		KindImageNotFound: ErrImageNotFound, KindImageAlreadyExists: ErrImageAlreadyExists,
		KindResourceExhausted: ErrResourceExhausted,
	}
	if len(Kinds()) != 23 || len(sentinels) != 23 {
		t.Fatalf("want 23 kinds (16 seed variants + 7), have %d kinds, %d sentinels", len(Kinds()), len(sentinels))
	}
	for _, k := range Kinds() {
		s, ok := sentinels[k]
		if !ok {
			t.Fatalf("no sentinel for %s", k)
		}
		err := fmt.Errorf("outer: %w", &Error{Kind: k, Op: "start", VM: "vm1", Err: errors.New("cause")})
		if !errors.Is(err, s) {
			t.Errorf("%s: errors.Is with its sentinel failed", k)
		}
		for k2, s2 := range sentinels {
			if k2 != k && errors.Is(err, s2) {
				t.Errorf("%s matches sentinel of %s", k, k2)
			}
		}
		if KindOf(err) != k {
			t.Errorf("KindOf = %s, want %s", KindOf(err), k)
		}
		var he *Error
		if !errors.As(err, &he) || he.VM != "vm1" {
			t.Errorf("%s: errors.As failed", k)
		}
		msg := err.Error()
		if !strings.Contains(msg, "start") || !strings.Contains(msg, "vm1") || !strings.Contains(msg, "cause") {
			t.Errorf("%s: message %q should name op, vm and cause", k, msg)
		}
		// The kind's name survives JSON (the API's error body).
		b, _ := json.Marshal(k)
		var back Kind
		if err := json.Unmarshal(b, &back); err != nil || back != k {
			t.Errorf("%s: JSON round trip gave %s, %v", k, back, err)
		}
	}
	if KindOf(errors.New("plain")) != KindUnknown {
		t.Error("plain error should be KindUnknown")
	}
}

func TestVMMErrorCarriesRequest(t *testing.T) {
	re := &vmm.RequestError{Method: "PUT", Path: "/machine-config", Status: 400, Body: "vcpu_count must be positive"}
	err := vmmErr("create", "vm1", KindUnsupported, fmt.Errorf("configure: %w", re))
	if !errors.Is(err, ErrVMM) {
		t.Fatalf("want KindVMM, got %v", err)
	}
	var got *vmm.RequestError
	if !errors.As(err, &got) || got.Status != 400 || got.Path != "/machine-config" || got.Method != "PUT" {
		t.Fatalf("request details lost: %#v", got)
	}
	if !strings.Contains(err.Error(), "vcpu_count must be positive") {
		t.Errorf("message lacks the VMM's body: %s", err)
	}
	// A non-VMM error keeps the fallback kind, an *Error keeps its own.
	if k := KindOf(vmmErr("x", "v", KindJailer, errors.New("boom"))); k != KindJailer {
		t.Errorf("fallback kind = %s", k)
	}
	if k := KindOf(vmmErr("x", "v", KindJailer, newErr(KindRootfs, "x", "v", nil))); k != KindRootfs {
		t.Errorf("existing kind = %s", k)
	}
}

func TestInvalidTransitionMessage(t *testing.T) {
	_, err := Next(StatusStopped, OpPause)
	if got := err.Error(); !strings.Contains(got, "from stopped") || !strings.Contains(got, "to paused") {
		t.Errorf("message %q", got)
	}
}

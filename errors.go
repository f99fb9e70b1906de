package hearth

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
)

// Kind classifies an error so callers can react without parsing strings.
type Kind int

// The error kinds. The first sixteen mirror the seed crate's
// VmRuntimeError variants; InvalidArgument, VMM, Integrity, Timeout, the
// image kinds and ResourceExhausted are hearth's.
const (
	KindUnknown Kind = iota
	KindVMAlreadyExists
	KindVMNotFound
	KindInvalidTransition
	KindSnapshotAlreadyExists
	KindSnapshotNotFound
	// KindStatePoisoned: the state store is corrupted, locked by another
	// runtime, or closed.
	KindStatePoisoned
	KindUnsupported
	KindMetrics
	KindShutdown
	KindFirewall
	KindJailer
	KindNetworkConfig
	KindNetworkSetup
	KindRootfs
	KindUffd
	KindGuestMetadata
	// KindInvalidArgument: bad input, reported before any side effect.
	KindInvalidArgument
	// KindVMM: the VMM refused a request or could not be reached; the
	// wrapped *vmm.RequestError carries method, path, status and body.
	KindVMM
	// KindIntegrity: a file's digest does not match its manifest.
	KindIntegrity
	// KindTimeout: the VMM's API or the guest agent did not answer within
	// its deadline (a hung VMM or guest). The state did not change as
	// asked; what holds instead is documented on each operation.
	KindTimeout
	// KindImageNotFound and KindImageAlreadyExists are the image catalog's
	// counterparts of the VM and snapshot kinds (API 404 and 409).
	KindImageNotFound
	KindImageAlreadyExists
	// KindResourceExhausted: the host ran out of file descriptors or
	// memory while no other kind owns the failure; the operation left
	// nothing behind and may succeed when retried later.
	KindResourceExhausted
)

var kindNames = [...]string{
	KindUnknown:               "unknown",
	KindVMAlreadyExists:       "vm_already_exists",
	KindVMNotFound:            "vm_not_found",
	KindInvalidTransition:     "invalid_transition",
	KindSnapshotAlreadyExists: "snapshot_already_exists",
	KindSnapshotNotFound:      "snapshot_not_found",
	KindStatePoisoned:         "state_poisoned",
	KindUnsupported:           "unsupported",
	KindMetrics:               "metrics",
	KindShutdown:              "shutdown",
	KindFirewall:              "firewall",
	KindJailer:                "jailer",
	KindNetworkConfig:         "network_config",
	KindNetworkSetup:          "network_setup",
	KindRootfs:                "rootfs",
	KindUffd:                  "uffd",
	KindGuestMetadata:         "guest_metadata",
	KindInvalidArgument:       "invalid_argument",
	KindVMM:                   "vmm",
	KindIntegrity:             "integrity",
	KindTimeout:               "timeout",
	KindImageNotFound:         "image_not_found",
	KindImageAlreadyExists:    "image_already_exists",
	KindResourceExhausted:     "resource_exhausted",
}

// Kinds lists every kind except KindUnknown, in declaration order.
func Kinds() []Kind {
	ks := make([]Kind, 0, len(kindNames)-1)
	for k := KindVMAlreadyExists; int(k) < len(kindNames); k++ {
		ks = append(ks, k)
	}
	return ks
}

// String returns the kind's stable snake_case name (used in the API).
func (k Kind) String() string {
	if k >= 0 && int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// ParseKind is the inverse of String.
func ParseKind(s string) (Kind, bool) {
	for k, n := range kindNames {
		if n == s {
			return Kind(k), true
		}
	}
	return KindUnknown, false
}

// MarshalText implements encoding.TextMarshaler.
func (k Kind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (k *Kind) UnmarshalText(b []byte) error {
	v, ok := ParseKind(string(b))
	if !ok {
		return fmt.Errorf("unknown error kind %q", b)
	}
	*k = v
	return nil
}

// Sentinels for errors.Is: errors.Is(err, hearth.ErrVMNotFound) is true for
// any *Error of that kind.
var (
	ErrVMAlreadyExists       = &Error{Kind: KindVMAlreadyExists}
	ErrVMNotFound            = &Error{Kind: KindVMNotFound}
	ErrInvalidTransition     = &Error{Kind: KindInvalidTransition}
	ErrSnapshotAlreadyExists = &Error{Kind: KindSnapshotAlreadyExists}
	ErrSnapshotNotFound      = &Error{Kind: KindSnapshotNotFound}
	ErrStatePoisoned         = &Error{Kind: KindStatePoisoned}
	ErrUnsupported           = &Error{Kind: KindUnsupported}
	ErrMetrics               = &Error{Kind: KindMetrics}
	ErrShutdown              = &Error{Kind: KindShutdown}
	ErrFirewall              = &Error{Kind: KindFirewall}
	ErrJailer                = &Error{Kind: KindJailer}
	ErrNetworkConfig         = &Error{Kind: KindNetworkConfig}
	ErrNetworkSetup          = &Error{Kind: KindNetworkSetup}
	ErrRootfs                = &Error{Kind: KindRootfs}
	ErrUffd                  = &Error{Kind: KindUffd}
	ErrGuestMetadata         = &Error{Kind: KindGuestMetadata}
	ErrInvalidArgument       = &Error{Kind: KindInvalidArgument}
	ErrVMM                   = &Error{Kind: KindVMM}
	ErrIntegrity             = &Error{Kind: KindIntegrity}
	ErrTimeout               = &Error{Kind: KindTimeout}
	ErrImageNotFound         = &Error{Kind: KindImageNotFound}
	ErrImageAlreadyExists    = &Error{Kind: KindImageAlreadyExists}
	ErrResourceExhausted     = &Error{Kind: KindResourceExhausted}
)

// Error is the one error type hearth returns. Kind says what went wrong,
// VM/Snapshot/Op say where, Err carries the cause (for KindVMM a
// *vmm.RequestError with method, path, HTTP status and body).
type Error struct {
	Kind     Kind
	VM       string
	Snapshot string
	Op       string
	// From and To are set for KindInvalidTransition.
	From, To string
	Err      error
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.Op != "" {
		b.WriteString(e.Op)
	}
	if e.VM != "" {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString("vm '" + e.VM + "'")
	}
	if e.Snapshot != "" {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString("snapshot '" + e.Snapshot + "'")
	}
	if b.Len() > 0 {
		b.WriteString(": ")
	}
	switch e.Kind {
	case KindVMAlreadyExists:
		b.WriteString("vm already exists")
	case KindVMNotFound:
		b.WriteString("vm not found")
	case KindSnapshotAlreadyExists:
		b.WriteString("snapshot already exists")
	case KindSnapshotNotFound:
		b.WriteString("snapshot not found")
	case KindImageNotFound:
		b.WriteString("image not found")
	case KindImageAlreadyExists:
		b.WriteString("image already exists")
	case KindStatePoisoned:
		b.WriteString("state store unavailable")
	case KindInvalidTransition:
		b.WriteString("invalid transition")
		if e.From != "" {
			b.WriteString(" from " + e.From)
		}
		if e.To != "" {
			b.WriteString(" to " + e.To)
		}
	default:
		b.WriteString(strings.ReplaceAll(e.Kind.String(), "_", " "))
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Is matches any *Error of the same kind, so sentinels work with errors.Is.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Kind == e.Kind && t.VM == "" && t.Op == "" && t.Err == nil
}

// KindOf returns the kind of the outermost *Error in err's chain, or
// KindUnknown.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindUnknown
}

// newErr builds an *Error; a nil cause is allowed.
func newErr(kind Kind, op, vm string, cause error) *Error {
	return &Error{Kind: kind, Op: op, VM: vm, Err: cause}
}

// invalidArg reports bad input before any side effect.
func invalidArg(op, vm, format string, args ...any) *Error {
	// vm may be the rejected id itself, of any length: clip it.
	return &Error{Kind: KindInvalidArgument, Op: op, VM: clip(vm), Err: fmt.Errorf(format, args...)}
}

// asHearth keeps an error that already is an *Error (so its kind survives
// layers) and wraps anything else with the given kind.
func asHearth(kind Kind, op, vm string, err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	if exhausted(err) {
		kind = KindResourceExhausted
	}
	return newErr(kind, op, vm, err)
}

// exhausted reports whether err is the host running out of descriptors
// (the process's or the system's) or memory. A full disk is not here: the
// step that fills it (rootfs, snapshot) keeps its kind and the cause stays
// errors.Is ENOSPC.
func exhausted(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) || errors.Is(err, syscall.ENOMEM)
}

package firewall

import (
	"errors"
	"strings"
)

// Kind classifies a firewall error; the runtime maps KindInvalidArgument
// to its InvalidArgument and KindFirewall to its Firewall kind.
type Kind int

const (
	// KindInvalidArgument: a policy, rule or VM reference is malformed;
	// reported before any kernel call.
	KindInvalidArgument Kind = iota + 1
	// KindFirewall: the kernel (nftables, iptables) refused a change or
	// the backend is unavailable.
	KindFirewall
)

func (k Kind) String() string {
	switch k {
	case KindInvalidArgument:
		return "invalid argument"
	case KindFirewall:
		return "firewall"
	}
	return "unknown"
}

// Error is the error type of this package. Field names the offending
// input (e.g. "allow[2].ports") for KindInvalidArgument.
type Error struct {
	Kind  Kind
	Op    string
	Field string
	// Value is the rejected input, quoted in the message.
	Value string
	Err   error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("firewall")
	if e.Op != "" {
		b.WriteString(" " + e.Op)
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field)
		if e.Value != "" {
			b.WriteString(" " + quote(e.Value))
		}
		b.WriteString(": ")
	}
	if e.Err != nil {
		b.WriteString(e.Err.Error())
	} else {
		b.WriteString(e.Kind.String())
	}
	return b.String()
}

func quote(s string) string {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return "\"" + strings.ReplaceAll(s, "\"", "\\\"") + "\""
}

func (e *Error) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrInvalidArgument) match any *Error of that
// kind.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Op == "" && t.Field == "" && t.Err == nil && t.Kind == e.Kind
}

// Sentinels for errors.Is.
var (
	ErrInvalidArgument = &Error{Kind: KindInvalidArgument}
	ErrFirewall        = &Error{Kind: KindFirewall}
)

func fieldErr(field, value string, err error) error {
	return &Error{Kind: KindInvalidArgument, Field: field, Value: value, Err: err}
}

func kernelErr(op string, err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	return &Error{Kind: KindFirewall, Op: op, Err: err}
}

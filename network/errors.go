package network

import (
	"errors"
	"strings"
)

// Kind classifies a network error so the runtime can map it to its own
// error kinds without parsing strings.
type Kind int

const (
	// KindInvalidArgument: bad input, reported before any side effect.
	KindInvalidArgument Kind = iota + 1
	// KindConfig: the configuration cannot work (subnet too small,
	// pool exhausted, egress interface missing).
	KindConfig
	// KindSetup: the kernel refused a change (netlink, nftables, sysctl).
	KindSetup
)

func (k Kind) String() string {
	switch k {
	case KindInvalidArgument:
		return "invalid argument"
	case KindConfig:
		return "network config"
	case KindSetup:
		return "network setup"
	}
	return "unknown"
}

// Error is the error type of this package. Field names the offending
// input for KindInvalidArgument and KindConfig.
type Error struct {
	Kind  Kind
	Op    string
	Field string
	Err   error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("network")
	if e.Op != "" {
		b.WriteString(" " + e.Op)
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field + ": ")
	}
	if e.Err != nil {
		b.WriteString(e.Err.Error())
	} else {
		b.WriteString(e.Kind.String())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrNetworkSetup) etc. match any *Error of that
// kind.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Op == "" && t.Field == "" && t.Err == nil && t.Kind == e.Kind
}

// Sentinels for errors.Is.
var (
	ErrInvalidArgument = &Error{Kind: KindInvalidArgument}
	ErrNetworkConfig   = &Error{Kind: KindConfig}
	ErrNetworkSetup    = &Error{Kind: KindSetup}
	// ErrExhausted is wrapped (inside a KindConfig error) when no slot is
	// left in the configured subnet.
	ErrExhausted = errors.New("no free network slot")
)

func invalid(op, field string, err error) error {
	return &Error{Kind: KindInvalidArgument, Op: op, Field: field, Err: err}
}

func configErr(op, field string, err error) error {
	return &Error{Kind: KindConfig, Op: op, Field: field, Err: err}
}

func setupErr(op string, err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	return &Error{Kind: KindSetup, Op: op, Err: err}
}

package agent

import (
	"errors"
	"fmt"
	"io/fs"
)

var (
	// ErrUnauthorized: the agent refused the token.
	ErrUnauthorized = errors.New("agent: unauthorized (wrong or missing token)")
	// ErrTooLarge: a body or value exceeds the agent's limit.
	ErrTooLarge = errors.New("agent: too large")
	// ErrInvalid: the agent refused a malformed request (bad path, key,
	// name, argument).
	ErrInvalid = errors.New("agent: invalid request")
	// ErrClosed: the client was closed.
	ErrClosed = errors.New("agent: client closed")
	// ErrConnLost: the connection broke while a streaming call (exec,
	// file transfer) was running; whether the guest finished the work is
	// unknown.
	ErrConnLost = errors.New("agent: connection lost")
	// ErrChecksum: a transferred file's SHA-256 differs at the two ends.
	ErrChecksum = errors.New("agent: checksum mismatch")
	// ErrProtocol: the peer does not speak this protocol.
	ErrProtocol = errors.New("agent: protocol error")
)

// Error is a request the agent answered with an error status.
type Error struct {
	Op      string // "POST /v1/env"
	Status  int    // HTTP status
	Code    string // Code* constant
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("agent: %s: %s (%s, status %d)", e.Op, e.Message, e.Code, e.Status)
}

// Is maps codes to the standard sentinels, so callers can write
// errors.Is(err, fs.ErrNotExist).
func (e *Error) Is(target error) bool {
	switch e.Code {
	case CodeNotFound:
		return target == fs.ErrNotExist
	case CodeExists:
		return target == fs.ErrExist
	case CodePermission:
		return target == fs.ErrPermission
	case CodeUnauthorized:
		return target == ErrUnauthorized
	case CodeTooLarge:
		return target == ErrTooLarge
	case CodeInvalid:
		return target == ErrInvalid || target == fs.ErrInvalid
	}
	return false
}

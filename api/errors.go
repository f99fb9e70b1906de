package api

import (
	"errors"
	"net/http"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/vmm"
)

// ErrorBody is the JSON form of an error.
type ErrorBody struct {
	Kind     hearth.Kind `json:"kind"`
	Message  string      `json:"message"`
	Op       string      `json:"op,omitempty"`
	VM       string      `json:"vm,omitempty"`
	Snapshot string      `json:"snapshot,omitempty"`
	From     string      `json:"from,omitempty"`
	To       string      `json:"to,omitempty"`
	// VMM carries the refused request for kind "vmm".
	VMM *vmm.RequestError `json:"vmm,omitempty"`
}

// ErrorEnvelope wraps ErrorBody as {"error": …}.
type ErrorEnvelope struct {
	Error ErrorBody `json:"error"`
}

// StatusOf maps an error kind to its HTTP status.
func StatusOf(k hearth.Kind) int {
	switch k {
	case hearth.KindVMNotFound, hearth.KindSnapshotNotFound, hearth.KindImageNotFound:
		return http.StatusNotFound
	case hearth.KindVMAlreadyExists, hearth.KindSnapshotAlreadyExists, hearth.KindImageAlreadyExists, hearth.KindInvalidTransition:
		return http.StatusConflict
	case hearth.KindInvalidArgument:
		return http.StatusBadRequest
	case hearth.KindUnsupported:
		return http.StatusNotImplemented
	case hearth.KindVMM:
		return http.StatusBadGateway
	case hearth.KindTimeout:
		return http.StatusGatewayTimeout
	case hearth.KindResourceExhausted:
		// Nothing was left behind; the client may retry later.
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// bodyOf turns any error into its JSON form.
func bodyOf(err error) ErrorBody {
	b := ErrorBody{Kind: hearth.KindOf(err), Message: err.Error()}
	var he *hearth.Error
	if errors.As(err, &he) {
		b.Op, b.VM, b.Snapshot, b.From, b.To = he.Op, he.VM, he.Snapshot, he.From, he.To
	}
	var re *vmm.RequestError
	if errors.As(err, &re) {
		b.VMM = re
	}
	return b
}

// ToError turns a decoded error body back into a *hearth.Error so that
// clients can use errors.Is and errors.As as with the library.
func (b ErrorBody) ToError() error {
	e := &hearth.Error{Kind: b.Kind, Op: b.Op, VM: b.VM, Snapshot: b.Snapshot, From: b.From, To: b.To}
	if b.VMM != nil {
		e.Err = b.VMM
	} else {
		e.Err = remoteError(b.Message)
	}
	return e
}

// remoteError carries the server's message text.
type remoteError string

func (r remoteError) Error() string { return "server: " + string(r) }

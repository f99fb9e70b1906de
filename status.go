package hearth

import "fmt"

// Status is a VM's lifecycle state.
type Status string

// The statuses. Creating is held only while the create (or restore)
// pipeline runs; Crashed is observed, never requested; Destroyed records
// are removed, so a destroyed id can be reused.
const (
	StatusCreating  Status = "creating"
	StatusCreated   Status = "created"
	StatusRunning   Status = "running"
	StatusPaused    Status = "paused"
	StatusStopped   Status = "stopped"
	StatusCrashed   Status = "crashed"
	StatusDestroyed Status = "destroyed"
)

// Statuses lists every status.
var Statuses = []Status{StatusCreating, StatusCreated, StatusRunning, StatusPaused, StatusStopped, StatusCrashed, StatusDestroyed}

// Valid reports whether s is a known status.
func (s Status) Valid() bool {
	for _, v := range Statuses {
		if s == v {
			return true
		}
	}
	return false
}

// HasProcess reports whether a VM in this status has a live VMM process.
func (s Status) HasProcess() bool {
	return s == StatusCreated || s == StatusRunning || s == StatusPaused
}

// Op is a requested lifecycle operation.
type Op string

// The operations of the state machine.
const (
	OpStart    Op = "start"
	OpPause    Op = "pause"
	OpResume   Op = "resume"
	OpStop     Op = "stop"
	OpSnapshot Op = "snapshot"
	OpDestroy  Op = "destroy"
	OpRename   Op = "rename"
)

// Ops lists every operation.
var Ops = []Op{OpStart, OpPause, OpResume, OpStop, OpSnapshot, OpDestroy, OpRename}

// transitions is the whole state machine (DESIGN §3): for each status, the
// status each allowed operation leads to. A missing entry is refused.
// Snapshot and rename keep the status (a running VM is paused for the
// write and resumed after it).
var transitions = map[Status]map[Op]Status{
	StatusCreated: {
		OpStart: StatusRunning, OpStop: StatusStopped,
		OpDestroy: StatusDestroyed, OpRename: StatusCreated,
	},
	StatusRunning: {
		OpPause: StatusPaused, OpStop: StatusStopped, OpSnapshot: StatusRunning,
		OpDestroy: StatusDestroyed, OpRename: StatusRunning,
	},
	StatusPaused: {
		OpResume: StatusRunning, OpStop: StatusStopped, OpSnapshot: StatusPaused,
		OpDestroy: StatusDestroyed, OpRename: StatusPaused,
	},
	StatusStopped: {
		OpStart: StatusRunning, OpDestroy: StatusDestroyed, OpRename: StatusStopped,
	},
	StatusCrashed: {
		OpStart: StatusRunning, OpDestroy: StatusDestroyed,
	},
	// Creating and Destroyed allow nothing: a VM being created is not yet
	// usable, and a destroyed one is gone.
}

// Next returns the status that op leads to from s, or an
// InvalidTransition error naming both. It is pure: the runtime calls it
// before any side effect.
func Next(s Status, op Op) (Status, error) {
	if to, ok := transitions[s][op]; ok {
		return to, nil
	}
	return "", &Error{Kind: KindInvalidTransition, Op: string(op), From: string(s), To: opTarget(op)}
}

// opTarget names where op would have led, for error messages.
func opTarget(op Op) string {
	switch op {
	case OpStart, OpResume:
		return string(StatusRunning)
	case OpPause:
		return string(StatusPaused)
	case OpStop:
		return string(StatusStopped)
	case OpDestroy:
		return string(StatusDestroyed)
	case OpSnapshot:
		return "snapshot"
	case OpRename:
		return "renamed"
	}
	return fmt.Sprintf("%q", string(op))
}

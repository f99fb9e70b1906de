package hearth

import (
	"errors"
	"testing"
)

// TestStateMachine checks every status × operation pair against the table
// of DESIGN §3, written out here independently of the implementation.
func TestStateMachine(t *testing.T) {
	const x = Status("") // refused
	ops := []Op{OpStart, OpPause, OpResume, OpStop, OpSnapshot, OpDestroy, OpRename}
	want := map[Status][7]Status{
		//                start          pause         resume         stop           snapshot       destroy          rename
		StatusCreating:  {x, x, x, x, x, x, x},
		StatusCreated:   {StatusRunning, x, x, StatusStopped, x, StatusDestroyed, StatusCreated},
		StatusRunning:   {x, StatusPaused, x, StatusStopped, StatusRunning, StatusDestroyed, StatusRunning},
		StatusPaused:    {x, x, StatusRunning, StatusStopped, StatusPaused, StatusDestroyed, StatusPaused},
		StatusStopped:   {StatusRunning, x, x, x, x, StatusDestroyed, StatusStopped},
		StatusCrashed:   {StatusRunning, x, x, x, x, StatusDestroyed, x},
		StatusDestroyed: {x, x, x, x, x, x, x},
	}
	if len(want) != len(Statuses) || len(ops) != len(Ops) {
		t.Fatalf("table covers %d statuses and %d ops, the package has %d and %d", len(want), len(ops), len(Statuses), len(Ops))
	}
	pairs := 0
	for _, from := range Statuses {
		row, ok := want[from]
		if !ok {
			t.Fatalf("no expectation for status %s", from)
		}
		for i, op := range ops {
			pairs++
			got, err := Next(from, op)
			if row[i] == x {
				var he *Error
				if !errors.As(err, &he) || he.Kind != KindInvalidTransition || !errors.Is(err, ErrInvalidTransition) {
					t.Errorf("%s × %s: want InvalidTransition, got %v, %v", from, op, got, err)
					continue
				}
				if he.From != string(from) || he.To == "" {
					t.Errorf("%s × %s: error should name from/to, got from=%q to=%q", from, op, he.From, he.To)
				}
				continue
			}
			if err != nil || got != row[i] {
				t.Errorf("%s × %s: want %s, got %s, %v", from, op, row[i], got, err)
			}
		}
	}
	if pairs != 49 {
		t.Fatalf("checked %d pairs, want 49", pairs)
	}
}

func TestStatusHelpers(t *testing.T) {
	for _, s := range Statuses {
		if !s.Valid() {
			t.Errorf("%s not valid", s)
		}
	}
	if Status("bogus").Valid() {
		t.Error("bogus status valid")
	}
	withProc := map[Status]bool{StatusCreated: true, StatusRunning: true, StatusPaused: true}
	for _, s := range Statuses {
		if s.HasProcess() != withProc[s] {
			t.Errorf("%s.HasProcess() = %v", s, s.HasProcess())
		}
	}
}

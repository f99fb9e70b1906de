package hearth

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// step is one stage of a create or restore pipeline. undo reverses do and
// may be nil when do leaves nothing behind.
type step struct {
	name string
	do   func(ctx context.Context) error
	undo func(ctx context.Context) error
}

// runSteps runs steps in order. When step k fails, the undos of steps
// k-1 … 1 run in reverse order (even if ctx was cancelled: undo must not be
// skipped because the caller gave up), and the step's error is returned
// with any undo errors joined to it.
//
// inject, when set, is consulted before each step and can make it fail;
// tests use it to prove that a failure at any step leaves nothing behind.
//
// observe, when set, receives each completed step's duration (the
// lifecycle step timings of the metrics).
func runSteps(ctx context.Context, steps []step, inject func(name string) error, observe func(name string, d time.Duration)) error {
	for i, s := range steps {
		var err error
		if inject != nil {
			err = inject(s.name)
		}
		if err == nil {
			t0 := time.Now()
			err = s.do(ctx)
			if err == nil && observe != nil {
				observe(s.name, time.Since(t0))
			}
		}
		if err == nil {
			continue
		}
		undoCtx := context.WithoutCancel(ctx)
		var undoErrs []error
		for j := i - 1; j >= 0; j-- {
			if steps[j].undo == nil {
				continue
			}
			if uerr := steps[j].undo(undoCtx); uerr != nil {
				undoErrs = append(undoErrs, fmt.Errorf("undo %s: %w", steps[j].name, uerr))
			}
		}
		if len(undoErrs) > 0 {
			return &joinedErr{first: err, rest: errors.Join(undoErrs...)}
		}
		return err
	}
	return nil
}

// joinedErr keeps the failing step's error first (so errors.As finds its
// kind) while still reporting the undo errors.
type joinedErr struct {
	first error
	rest  error
}

func (e *joinedErr) Error() string {
	return e.first.Error() + " (and while rolling back: " + e.rest.Error() + ")"
}

func (e *joinedErr) Unwrap() []error { return []error{e.first, e.rest} }

package runtime

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// CleanupTimeout bounds each clean-up step so that one hung undo (a stuck
// lvremove, an unreachable hypervisor) cannot keep the others from running.
var CleanupTimeout = 10 * time.Minute

// Cleanup is a stack of undo steps. Steps run in reverse order of
// registration; every step runs even when an earlier one fails.
// It is safe for concurrent use: primitives running in goroutines may
// register undos while the script runs.
type Cleanup struct {
	mu      sync.Mutex
	steps   []*Step
	running bool
}

// Step is one registered undo. Cancel removes it from the stack, for a
// resource that was released early by the script itself.
type Step struct {
	Name string
	fn   func(ctx context.Context) error
	done bool
	c    *Cleanup
}

// Push registers fn under a name used in logs ("lvremove VGatom/master_snap").
func (c *Cleanup) Push(name string, fn func(ctx context.Context) error) *Step {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := &Step{Name: name, fn: fn, c: c}
	c.steps = append(c.steps, s)
	return s
}

// Cancel drops the step without running it.
func (s *Step) Cancel() {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	s.done = true
}

// Len reports how many steps are still pending.
func (c *Cleanup) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, s := range c.steps {
		if !s.done {
			n++
		}
	}
	return n
}

// Running reports whether Run is in progress.
func (c *Cleanup) Running() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.running
}

// StepError is the failure of one clean-up step.
type StepError struct {
	Step string
	Err  error
}

func (e *StepError) Error() string { return fmt.Sprintf("clean-up %q: %v", e.Step, e.Err) }
func (e *StepError) Unwrap() error { return e.Err }

// Run pops and runs every pending step, newest first. onFail is called for
// each failing step as it happens (for logging). The context passed to each
// step is derived from ctx, which should not be the cancelled run context:
// clean-up must still work after an interrupt. Steps registered while Run is
// in progress (an undo that itself creates something) are run too.
func (c *Cleanup) Run(ctx context.Context, onFail func(*StepError)) error {
	c.mu.Lock()
	c.running = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.running = false
		c.mu.Unlock()
	}()
	var errs []error
	for {
		s := c.pop()
		if s == nil {
			break
		}
		if err := runStep(ctx, s); err != nil {
			se := &StepError{Step: s.Name, Err: err}
			if onFail != nil {
				onFail(se)
			}
			errs = append(errs, se)
		}
	}
	return errors.Join(errs...)
}

func (c *Cleanup) pop() *Step {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.steps) > 0 {
		s := c.steps[len(c.steps)-1]
		c.steps = c.steps[:len(c.steps)-1]
		if !s.done {
			s.done = true
			return s
		}
	}
	return nil
}

func runStep(ctx context.Context, s *Step) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	sctx, cancel := context.WithTimeout(ctx, CleanupTimeout)
	defer cancel()
	return s.fn(sctx)
}

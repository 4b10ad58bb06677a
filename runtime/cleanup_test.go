package runtime

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestCleanupRunsInReverseAndSurvivesFailures(t *testing.T) {
	var c Cleanup
	var order []string
	add := func(name string, err error) *Step {
		return c.Push(name, func(ctx context.Context) error {
			if ctx.Err() != nil {
				t.Errorf("%s got a cancelled context", name)
			}
			order = append(order, name)
			return err
		})
	}
	add("first", nil)
	add("second", errors.New("boom"))
	dropped := add("dropped", nil)
	add("third", nil)
	c.Push("panics", func(context.Context) error { panic("bad undo") })
	dropped.Cancel()
	if c.Len() != 4 {
		t.Fatalf("Len = %d, want 4", c.Len())
	}
	var failed []string
	err := c.Run(context.Background(), func(e *StepError) { failed = append(failed, e.Step) })
	if got := strings.Join(order, ","); got != "third,second,first" {
		t.Errorf("order = %s", got)
	}
	if strings.Join(failed, ",") != "panics,second" {
		t.Errorf("failed = %v", failed)
	}
	if err == nil || !strings.Contains(err.Error(), `clean-up "second": boom`) || !strings.Contains(err.Error(), "panic: bad undo") {
		t.Errorf("err = %v", err)
	}
	if c.Len() != 0 {
		t.Errorf("steps left after Run: %d", c.Len())
	}
	if err := c.Run(context.Background(), nil); err != nil {
		t.Errorf("second Run: %v", err)
	}
}

// An undo that registers another undo (a primitive used inside a deferred
// function) gets that one run too.
func TestCleanupRunsStepsAddedDuringRun(t *testing.T) {
	var c Cleanup
	ran := false
	c.Push("outer", func(context.Context) error {
		c.Push("inner", func(context.Context) error { ran = true; return nil })
		return nil
	})
	if err := c.Run(context.Background(), nil); err != nil || !ran {
		t.Fatalf("inner ran=%v err=%v", ran, err)
	}
}

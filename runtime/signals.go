package runtime

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// HandleSignals turns SIGINT and SIGTERM into cancellation. In a script the
// first signal cancels the run (primitives stop, commands are killed) and the
// clean-up stack then runs; signals that arrive during clean-up are reported
// and otherwise ignored, because an interrupted undo is how a VM stays
// paused. In the REPL, SIGINT cancels only the running statement.
func (h *Host) HandleSignals(interactive bool) (stop func()) {
	ch := make(chan os.Signal, 4)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case sig := <-ch:
				h.onSignal(sig, interactive)
			}
		}
	}()
	return func() {
		signal.Stop(ch)
		close(done)
	}
}

func (h *Host) onSignal(sig os.Signal, interactive bool) {
	name := signalName(sig)
	switch {
	case h.CleaningUp():
		fmt.Fprintf(h.opts.Stderr, "bkrun: %s received: clean-up in progress (%d steps left), not stopping it\n", name, h.PendingCleanup())
	case interactive && sig == syscall.SIGINT:
		if !h.Interrupt(&SignalError{Signal: sig}) {
			fmt.Fprintln(h.opts.Stderr, "bkrun: interrupt (Ctrl-D or os.exit() leaves the REPL)")
		}
	case h.Cause() != nil:
		fmt.Fprintf(h.opts.Stderr, "bkrun: %s received: already stopping\n", name)
	default:
		h.opts.Logger.Warn("signal received: stopping, then running clean-up", "signal", name)
		h.Cancel(&SignalError{Signal: sig})
	}
}

package runtime

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	lua "github.com/yuin/gopher-lua"
	"github.com/yuin/gopher-lua/parse"
	"golang.org/x/sys/unix"
)

// Exit codes of bkrun.
const (
	ExitOK        = 0
	ExitError     = 1 // the recipe failed, or its clean-up did
	ExitUsage     = 2 // bad command line, missing recipe, syntax error, unknown module
	ExitInterrupt = 130
	ExitTerminate = 143
)

// UsageError is a problem found before anything ran: exit status 2.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

// Usagef builds a UsageError.
func Usagef(format string, args ...any) error { return &UsageError{Msg: fmt.Sprintf(format, args...)} }

// SignalError is the cause of a run cancelled by a signal.
type SignalError struct{ Signal os.Signal }

func (e *SignalError) Error() string { return "interrupted by " + signalName(e.Signal) }

// ExitCode is 128 + the signal number, as a shell reports it.
func (e *SignalError) ExitCode() int {
	if s, ok := e.Signal.(syscall.Signal); ok {
		return 128 + int(s)
	}
	return ExitInterrupt
}

func signalName(s os.Signal) string {
	if sig, ok := s.(syscall.Signal); ok {
		if name := unix.SignalName(sig); name != "" {
			return name
		}
	}
	return s.String()
}

// ScriptError is a Lua error with its traceback kept apart, so the CLI can
// print one line normally and the traceback under -v.
type ScriptError struct {
	Msg   string
	Trace string
	Cause error
}

func (e *ScriptError) Error() string { return e.Msg }
func (e *ScriptError) Unwrap() error { return e.Cause }

// ExitRequest is raised by os.exit in code paths that must not end the
// process (tests); the CLI uses the real os.Exit.
type ExitRequest struct{ Code int }

func (e *ExitRequest) Error() string { return fmt.Sprintf("exit %d", e.Code) }

// toScriptError converts gopher-lua errors: syntax errors become
// "file:line: message near 'tok'" (a UsageError: nothing ran), runtime
// errors keep their "file:line: msg" and their traceback.
func toScriptError(err error) error {
	var ae *lua.ApiError
	if !errors.As(err, &ae) {
		return err
	}
	if ae.Type == lua.ApiErrorSyntax {
		return &UsageError{Msg: syntaxMessage(ae)}
	}
	if ae.Type == lua.ApiErrorFile {
		return &UsageError{Msg: ae.Object.String()}
	}
	msg := ae.Object.String()
	if ud, ok := ae.Object.(*lua.LUserData); ok {
		if ue, ok := ud.Value.(*UsageError); ok {
			return ue
		}
		if e, ok := ud.Value.(error); ok {
			msg = e.Error()
		}
	}
	return &ScriptError{Msg: msg, Trace: ae.StackTrace, Cause: err}
}

func syntaxMessage(ae *lua.ApiError) string {
	var pe *parse.Error
	if errors.As(ae.Cause, &pe) {
		if pe.Pos.Line == parse.EOF {
			return fmt.Sprintf("%s: syntax error at end of file: %s", pe.Pos.Source, pe.Message)
		}
		return fmt.Sprintf("%s:%d: syntax error near '%s': %s", pe.Pos.Source, pe.Pos.Line, pe.Token, pe.Message)
	}
	// Compile errors (e.g. "goto" misuse) come as plain text.
	return strings.TrimSpace(ae.Object.String())
}

// Describe formats an error for the user: one line, plus the Lua traceback
// when verbose.
func Describe(err error, verbose bool) string {
	var se *ScriptError
	if errors.As(err, &se) {
		if verbose && se.Trace != "" {
			return se.Msg + "\n" + se.Trace
		}
		return se.Msg
	}
	return err.Error()
}

// ExitCodeOf maps the outcome of a run to bkrun's exit status.
func ExitCodeOf(runErr, cleanupErr, cause error) int {
	var sig *SignalError
	if errors.As(cause, &sig) {
		return sig.ExitCode()
	}
	var ue *UsageError
	if errors.As(runErr, &ue) {
		return ExitUsage
	}
	var ee *ExitRequest
	if errors.As(runErr, &ee) {
		if ee.Code == 0 && cleanupErr != nil {
			return ExitError
		}
		return ee.Code
	}
	if runErr != nil || cleanupErr != nil {
		return ExitError
	}
	return ExitOK
}

package runtime

import (
	"errors"
	"os"
)

// REPLConfig configures the interactive loop.
type REPLConfig struct {
	HistoryFile string
	Stdin       *os.File
	Stdout      interface{ Write([]byte) (int, error) }
	Stderr      interface{ Write([]byte) (int, error) }
}

// REPL is replaced by the real implementation.
func (h *Host) REPL(cfg REPLConfig) error { return errors.New("REPL not implemented yet") }

// FormatValues renders values the way the REPL shows them.
func FormatValues(vals interface{}) string { return "" }

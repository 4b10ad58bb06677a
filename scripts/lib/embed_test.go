package lib_test

import (
	"testing"

	"github.com/bkrun/bkrun/runtime/luatest"
	"github.com/bkrun/bkrun/stdlib/exec"
	"github.com/bkrun/bkrun/stdlib/fs"
	"github.com/bkrun/bkrun/stdlib/retain"
)

// TestEmbedded runs embedded_test.lua: the built-in libraries as recipes use them.
func TestEmbedded(t *testing.T) {
	luatest.Run(t, "embedded_test.lua", exec.Module, fs.Module, retain.Module)
}

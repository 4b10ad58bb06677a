// Package lib holds the Lua libraries that ship inside the bkrun binary.
// They are require-able from any recipe as "bkrun.NAME" (bkrun/NAME.lua
// here); the bkrun. prefix is reserved, so no file on disk can shadow them.
package lib

import "embed"

// FS holds bkrun/*.lua.
//
//go:embed bkrun/*.lua
var FS embed.FS

package main

import (
	"github.com/bkrun/bkrun/runtime"
	"github.com/bkrun/bkrun/stdlib/btrfs"
	"github.com/bkrun/bkrun/stdlib/catalog"
	"github.com/bkrun/bkrun/stdlib/disk"
	"github.com/bkrun/bkrun/stdlib/dump"
	"github.com/bkrun/bkrun/stdlib/exec"
	"github.com/bkrun/bkrun/stdlib/fs"
	lualog "github.com/bkrun/bkrun/stdlib/log"
	"github.com/bkrun/bkrun/stdlib/lvm"
	"github.com/bkrun/bkrun/stdlib/part"
	"github.com/bkrun/bkrun/stdlib/recover"
	"github.com/bkrun/bkrun/stdlib/retain"
	"github.com/bkrun/bkrun/stdlib/ssh"
	"github.com/bkrun/bkrun/stdlib/stream"
	"github.com/bkrun/bkrun/stdlib/tunnel"
	"github.com/bkrun/bkrun/stdlib/vm"
	"github.com/bkrun/bkrun/stdlib/zfs"
)

// modules lists the native modules, in the order `bkrun help` shows them.
// Registration is explicit: a module exists in bkrun because it is here.
func modules() []*runtime.Module {
	return []*runtime.Module{
		exec.Module,
		fs.Module,
		lualog.Module,
		disk.Module,
		stream.Module,
		ssh.Module,
		tunnel.Module,
		vm.Module,
		btrfs.Module,
		lvm.Module,
		zfs.Module,
		part.Module,
		retain.Module,
		catalog.Module,
		dump.Module,
		recover.Module,
	}
}

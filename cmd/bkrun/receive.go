package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/bkrun/bkrun/internal/receive"
	"github.com/bkrun/bkrun/runtime"
)

const receiveUsage = "usage: bkrun receive --root DIR [--overwrite]   (speaks " + receive.Proto + " on stdin/stdout; see docs/RECEIVE.md)\n"

// receiveMain is `bkrun receive`, the upload receiver meant to run as an
// authorized_keys forced command.
func receiveMain(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bkrun receive", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	root := fs.String("root", "", "")
	overwrite := fs.Bool("overwrite", false, "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, receiveUsage)
			return runtime.ExitOK
		}
		fmt.Fprintf(stderr, "bkrun receive: %v\n%s", err, receiveUsage)
		return runtime.ExitUsage
	}
	if *root == "" || fs.NArg() > 0 {
		fmt.Fprintf(stderr, "bkrun receive: --root DIR is required and nothing else\n%s", receiveUsage)
		return runtime.ExitUsage
	}
	log := slog.New(slog.NewTextHandler(stderr, nil)).With("receive", *root)
	r, err := receive.New(receive.Options{Root: *root, Overwrite: *overwrite, Logger: log})
	if err != nil {
		fmt.Fprintf(stderr, "bkrun receive: %v\n", err)
		return runtime.ExitUsage
	}
	defer r.Close()
	// A dropped connection must not kill us before the partial file is
	// removed: no death by SIGPIPE, and clean up on the usual signals.
	signal.Ignore(syscall.SIGPIPE)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM)
	go func() { s := <-sig; r.Cleanup(); os.Exit(128 + int(s.(syscall.Signal))) }()
	if err := r.Serve(stdin, stdout); err != nil {
		r.Cleanup()
		log.Error("session failed", "error", err)
		return runtime.ExitError
	}
	return runtime.ExitOK
}

module github.com/bkrun/bkrun

go 1.26.0

require (
	github.com/chzyer/readline v1.5.1
	github.com/creack/pty v1.1.24
	github.com/mattn/go-shellwords v1.0.16
	github.com/yuin/gopher-lua v1.1.2
	golang.org/x/term v0.47.0
)

require golang.org/x/sys v0.49.0

replace layeh.com/gopher-luar => github.com/layeh/gopher-luar v1.0.11

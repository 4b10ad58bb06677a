# bkrun — see README.md. Targets: build run test bench lint install docs clean
GO      ?= go
PREFIX  ?= /usr/local
VERSION := $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/bkrun/bkrun/runtime.Version=$(VERSION)
BIN     := bin/bkrun

.PHONY: build run test lint bench install docs clean FORCE

build: $(BIN)

$(BIN): FORCE
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/bkrun

# The demo: no root, no network; everything it makes lives in a temp dir.
run: build
	./$(BIN) scripts/demo.lua

lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

test: lint build
	./$(BIN) check scripts/*.lua
	./$(BIN) help --markdown | diff -u docs/MODULES.md - || (echo "docs/MODULES.md is stale: run make docs"; exit 1)
	$(GO) test -count=1 -timeout 25m ./...

bench: build
	$(GO) test -run '^$$' -bench . -benchtime 2s ./...
	bash bench/startup.sh

docs: build
	./$(BIN) help --markdown > docs/MODULES.md

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/bkrun
	install -d $(DESTDIR)/usr/share/bkrun/lib
	if [ -n "$$(ls scripts/lib 2>/dev/null)" ]; then cp -r scripts/lib/. $(DESTDIR)/usr/share/bkrun/lib/; fi

clean:
	rm -rf bin

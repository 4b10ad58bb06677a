package log

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"sort"
	"strings"
	"testing"

	"github.com/bkrun/bkrun/runtime"
	lua "github.com/yuin/gopher-lua"
)

func newHost(t *testing.T, h slog.Handler) *runtime.Host {
	t.Helper()
	host := runtime.New(runtime.Options{
		Modules: []*runtime.Module{Module},
		Stdout:  &bytes.Buffer{},
		Logger:  slog.New(h),
		Exit:    func(int) {},
	})
	t.Cleanup(host.Close)
	return host
}

func run(t *testing.T, h *runtime.Host, src string) error {
	t.Helper()
	_, err := h.RunChunk(`local log = require "log"; `+src, "test", nil)
	return err
}

// textHandler logs without time, so lines can be compared whole.
func textHandler(buf *bytes.Buffer, level slog.Level) slog.Handler {
	return slog.NewTextHandler(buf, &slog.HandlerOptions{Level: level, ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey && len(groups) == 0 {
			return slog.Attr{}
		}
		return a
	}})
}

func TestLevelsAndFields(t *testing.T) {
	var buf bytes.Buffer
	h := newHost(t, textHandler(&buf, slog.LevelDebug))
	err := run(t, h, `
		log.debug("starting")
		log.info("copied", "bytes", 123, "rate", 1.5, "ok", true, "note", nil)
		log.warn("snapshot taken", { size = "3G", lv = "master_snap", n = 2 })
		log.error("rsync failed", {})`)
	if err != nil {
		t.Fatal(err)
	}
	want := `level=DEBUG msg=starting
level=INFO msg=copied bytes=123 rate=1.5 ok=true note=<nil>
level=WARN msg="snapshot taken" lv=master_snap n=2 size=3G
level=ERROR msg="rsync failed"
`
	if got := buf.String(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

func TestLevelFilter(t *testing.T) {
	var buf bytes.Buffer
	h := newHost(t, textHandler(&buf, slog.LevelWarn))
	if err := run(t, h, `log.debug("d") log.info("i") log.warn("w") log.error("e")`); err != nil {
		t.Fatal(err)
	}
	if got := buf.String(); got != "level=WARN msg=w\nlevel=ERROR msg=e\n" {
		t.Errorf("got %q", got)
	}
	// Wrong arguments fail even when the level is off.
	err := run(t, h, `log.debug("d", "key")`)
	if err == nil || err.Error() != "test:1: bad argument #2 to 'log.debug' (field 'key' has no value)" {
		t.Errorf("got %v", err)
	}
}

func TestTypedAttrs(t *testing.T) {
	var buf bytes.Buffer
	h := newHost(t, slog.NewJSONHandler(&buf, nil))
	if err := run(t, h, `log.info("m", "i", 42, "f", 0.25, "b", false, "s", "x")`); err != nil {
		t.Fatal(err)
	}
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{"msg": "m", "i": 42.0, "f": 0.25, "b": false, "s": "x"} {
		if rec[k] != want {
			t.Errorf("%s = %#v, want %#v", k, rec[k], want)
		}
	}
	if !strings.Contains(buf.String(), `"i":42,`) {
		t.Errorf("integer logged as float: %s", buf.String())
	}
}

func TestArgumentErrors(t *testing.T) {
	var buf bytes.Buffer
	h := newHost(t, textHandler(&buf, slog.LevelDebug))
	for src, want := range map[string]string{
		`log.info()`:                    `bad argument #1 to 'log.info' (string expected, got no value)`,
		`log.info(42)`:                  `bad argument #1 to 'log.info' (string expected, got number)`,
		`log.warn({})`:                  `bad argument #1 to 'log.warn' (string expected, got table)`,
		`log.info("m", 1, 2)`:           `bad argument #2 to 'log.info' (string (field name) or table expected, got number)`,
		`log.info("m", "a", 1, "b")`:    `bad argument #4 to 'log.info' (field 'b' has no value)`,
		`log.info("m", "a", {})`:        `bad argument #3 to 'log.info' (field 'a': string, number or boolean expected, got table)`,
		`log.error("m", "f", print)`:    `bad argument #3 to 'log.error' (field 'f': string, number or boolean expected, got function)`,
		`log.info("m", { x = {} })`:     `bad argument #2 to 'log.info' (fields: field 'x': string, number or boolean expected, got table)`,
		`log.info("m", { "a" })`:        `bad argument #2 to 'log.info' (fields: string keys expected, got number key 1)`,
		`log.info("m", { a = 1 }, "b")`: `bad argument #3 to 'log.info' (no arguments expected after the fields table)`,
	} {
		err := run(t, h, src)
		if err == nil || err.Error() != "test:1: "+want {
			t.Errorf("%s\n got: %v\nwant: test:1: %s", src, err, want)
		}
	}
	if buf.Len() != 0 {
		t.Errorf("bad calls logged something: %s", buf.String())
	}
}

func TestModuleDocs(t *testing.T) {
	h := newHost(t, slog.DiscardHandler)
	vals, err := h.RunChunk(`return require "log"`, "test", nil)
	if err != nil {
		t.Fatal(err)
	}
	var inTable, documented []string
	vals[0].(*lua.LTable).ForEach(func(k, _ lua.LValue) { inTable = append(inTable, k.String()) })
	for _, f := range Module.Funcs {
		if f.Doc == "" || !strings.HasPrefix(f.Sig, "log."+f.Name+"(") {
			t.Errorf("%s: Sig %q, Doc %q", f.Name, f.Sig, f.Doc)
		}
		documented = append(documented, f.Name)
	}
	sort.Strings(inTable)
	sort.Strings(documented)
	if strings.Join(inTable, ",") != strings.Join(documented, ",") {
		t.Errorf("module table %v, documented %v", inTable, documented)
	}
}

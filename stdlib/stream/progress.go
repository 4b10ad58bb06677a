package stream

import (
	"io"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
)

// Bar is a terminal progress bar for a copy of total bytes (0: unknown).
type Bar struct {
	p   *mpb.Progress
	bar *mpb.Bar
}

// NewBar draws a bar on w (a terminal). Callers only create one when stderr
// is a terminal: under cron a backup prints its summary and nothing else.
func NewBar(w io.Writer, label string, total int64) *Bar {
	p := mpb.New(mpb.WithOutput(w), mpb.WithWidth(40))
	bar := p.AddBar(total,
		mpb.PrependDecorators(decor.Name(label+" "), decor.CountersKibiByte("% .1f / % .1f")),
		mpb.AppendDecorators(decor.AverageSpeed(decor.SizeB1024(0), "% .1f"), decor.Name(" "), decor.AverageETA(decor.ET_STYLE_MMSS)),
	)
	return &Bar{p: p, bar: bar}
}

// Set records progress; safe to call from the copying goroutine.
func (b *Bar) Set(done int64) { b.bar.SetCurrent(done) }

// Done completes or aborts the bar and waits for its last draw.
func (b *Bar) Done(ok bool) {
	if ok {
		b.bar.SetTotal(-1, true)
	} else {
		b.bar.Abort(false)
	}
	b.p.Wait()
}

// Command gen writes deterministic benchmark inputs.
//
//	go run ./bench/gen mixed SIZE_MIB OUT   # repeating 16 MiB random, 16 MiB text, 32 MiB zeros
package main

import (
	"bufio"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"strings"
)

func main() {
	if len(os.Args) != 4 || os.Args[1] != "mixed" {
		fmt.Fprintln(os.Stderr, "usage: gen mixed SIZE_MIB OUT")
		os.Exit(2)
	}
	mib, err := strconv.Atoi(os.Args[2])
	if err != nil || mib <= 0 || mib%64 != 0 {
		fmt.Fprintln(os.Stderr, "gen: SIZE_MIB must be a positive multiple of 64")
		os.Exit(2)
	}
	f, err := os.Create(os.Args[3])
	if err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
	r := rand.New(rand.NewSource(42))
	random := make([]byte, 16<<20)
	r.Read(random)
	words := strings.Fields(`the quick brown fox jumps over the lazy dog while a backup of
		the volume group snapshot is written to disk and verified by its hash before rename
		kernel: EXT4-fs (sda1): mounted filesystem with ordered data mode. Opts: (null)
		Nov 21 03:00:01 daisy CRON[4242]: (root) CMD (bkrun -q /etc/bkrun/xen-backup.lua master)`)
	var text strings.Builder
	for text.Len() < 16<<20 {
		for i := 0; i < 8+r.Intn(8); i++ {
			text.WriteString(words[r.Intn(len(words))])
			text.WriteByte(' ')
		}
		text.WriteByte('\n')
	}
	txt := []byte(text.String()[:16<<20])
	zeros := make([]byte, 32<<20)
	w := bufio.NewWriterSize(f, 4<<20)
	for i := 0; i < mib/64; i++ {
		w.Write(random)
		w.Write(txt)
		w.Write(zeros)
	}
	if err := w.Flush(); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
	if err := f.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

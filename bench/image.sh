#!/usr/bin/env bash
# Whole-disk image backup: bkrun against the seed's shell pipeline, in one run.
#
#   bash bench/image.sh [ROUNDS]
#
# Inputs (1 GiB each, built once, deterministically, under $BENCH_DIR):
#   mixed.img  repeating 16 MiB random, 16 MiB text, 32 MiB zeros
#   usr.img    a tar of /usr cut to 1 GiB
# For each input and round, alternating, it times:
#   bkrun      bkrun scripts/disk-image.lua IMG OUT.lz4   (O_DIRECT, parallel lz4, hash, fsync)
#   dd|lz4     dd if=IMG iflag=direct bs=1M | lz4 -1 > OUT         (the issue's baseline)
#   +sync      the same followed by sync OUT: durable, as bkrun's output is
#   dd read    dd if=IMG iflag=direct bs=4M of=/dev/null   (the read limit)
#   I/O floor  the same dd read while another dd writes as many bytes as
#              bkrun's backup to the same directory (oflag=direct, fdatasync,
#              from a copy in RAM): what reading the image and writing its
#              backup costs the disk alone, with no CPU work at all
# and prints the median times and the ratios. Targets (2-core machine):
#   mixed: bkrun >= 2.5x dd|lz4 and >= 0.75x dd read;  usr: bkrun >= 1.6x dd|lz4
# When the backup is written to the disk it is read from, the I/O floor
# bounds every tool: "I/O floor vs read limit" is the best ratio possible.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
BENCH_DIR=${BENCH_DIR:-/var/tmp/bkrun-bench}
BIN=bin/bkrun
make -s build
mkdir -p "$BENCH_DIR"
command -v lz4 >/dev/null || { echo "bench: lz4 not installed (apt-get install lz4)"; exit 1; }

if [ ! -s "$BENCH_DIR/mixed.img" ]; then
  go run ./bench/gen mixed 1024 "$BENCH_DIR/mixed.img"
fi
if [ ! -s "$BENCH_DIR/usr.img" ]; then
  tar -C / -cf - usr 2>/dev/null | head -c 1073741824 > "$BENCH_DIR/usr.img" || true
fi

ram=""
trap 'rm -f "$ram"' EXIT
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

run_bkrun() { rm -f "$2" "$2.json"; "$BIN" -q scripts/disk-image.lua "$1" "$2" >/dev/null; }
run_pipe() { dd if="$1" iflag=direct bs=1M status=none | lz4 -1 -q > "$2"; }
run_pipe_sync() { run_pipe "$1" "$2" && sync "$2"; }
run_read() { dd if="$1" iflag=direct bs=4M of=/dev/null status=none; }
run_io_floor() {
  dd if="$1" iflag=direct bs=4M of=/dev/null status=none &
  dd if="$2" of="$3" bs=2M oflag=direct conv=fdatasync status=none
  wait
}

echo "date: $(date -u +%Y-%m-%d)  rounds: $ROUNDS  cpus: $(nproc)  dir: $BENCH_DIR"
status=0
for name in mixed usr; do
  img="$BENCH_DIR/$name.img"
  size=$(stat -c %s "$img")
  : > "$BENCH_DIR/t.bkrun"; : > "$BENCH_DIR/t.pipe"; : > "$BENCH_DIR/t.sync"; : > "$BENCH_DIR/t.read"; : > "$BENCH_DIR/t.floor"
  # The bytes the I/O floor writes: bkrun's backup, kept in RAM so that
  # reading them costs the disk nothing.
  run_bkrun "$img" "$BENCH_DIR/out.bkrun.lz4"
  ram=$(mktemp /dev/shm/bkrun-bench-out.XXXXXX); cp "$BENCH_DIR/out.bkrun.lz4" "$ram"
  for ((i = 0; i < ROUNDS; i++)); do
    s=$(now); run_bkrun "$img" "$BENCH_DIR/out.bkrun.lz4"; e=$(now); secs "$s" "$e" >> "$BENCH_DIR/t.bkrun"
    rm -f "$BENCH_DIR/out.pipe.lz4"; s=$(now); run_pipe "$img" "$BENCH_DIR/out.pipe.lz4"; e=$(now); secs "$s" "$e" >> "$BENCH_DIR/t.pipe"
    sync; rm -f "$BENCH_DIR/out.pipe.lz4"; s=$(now); run_pipe_sync "$img" "$BENCH_DIR/out.pipe.lz4"; e=$(now); secs "$s" "$e" >> "$BENCH_DIR/t.sync"
    s=$(now); run_read "$img"; e=$(now); secs "$s" "$e" >> "$BENCH_DIR/t.read"
    rm -f "$BENCH_DIR/out.floor"; s=$(now); run_io_floor "$img" "$ram" "$BENCH_DIR/out.floor"; e=$(now); secs "$s" "$e" >> "$BENCH_DIR/t.floor"
  done
  rm -f "$ram" "$BENCH_DIR/out.floor"
  tb=$(median < "$BENCH_DIR/t.bkrun"); tp=$(median < "$BENCH_DIR/t.pipe"); ts=$(median < "$BENCH_DIR/t.sync"); tr=$(median < "$BENCH_DIR/t.read"); tf=$(median < "$BENCH_DIR/t.floor")
  ob=$(stat -c %s "$BENCH_DIR/out.bkrun.lz4"); op=$(stat -c %s "$BENCH_DIR/out.pipe.lz4")
  awk -v n="$name" -v s="$size" -v tb="$tb" -v tp="$tp" -v ts="$ts" -v tr="$tr" -v tf="$tf" -v ob="$ob" -v op="$op" 'BEGIN {
    mb = s / 1048576
    printf "%-6s bkrun %6.3f s %5.0f MiB/s (%4.0f MiB out) | dd|lz4 %6.3f s %5.0f MiB/s (%4.0f MiB out) | +sync %6.3f s | dd read %6.3f s %5.0f MiB/s\n",
      n, tb, mb / tb, ob / 1048576, tp, mb / tp, op / 1048576, ts, tr, mb / tr
    printf "%-6s ratios: bkrun vs dd|lz4 %.2fx, vs dd|lz4+sync %.2fx, vs read limit %.2fx | I/O floor %.3f s: %.2fx the read limit, bkrun %.2fx the floor\n",
      n, tp / tb, ts / tb, tr / tb, tf, tr / tf, tf / tb
  }'
  # Cross-check: the standard tool decodes bkrun's output to the input.
  lz4 -dc "$BENCH_DIR/out.bkrun.lz4" | cmp -s - "$img" || { echo "$name: lz4 -d of bkrun's output differs from the input"; status=1; }
done
rm -f "$BENCH_DIR"/out.* "$BENCH_DIR"/t.*
exit $status

#!/usr/bin/env bash
# Startup latency of `bkrun -e ''` (target: < 20 ms), against `true` as the
# floor of fork+exec on this machine. Prints the median of N runs of each.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/bkrun}
N=${N:-200}
[ -x "$BIN" ] || make -s build
median_ms() { # command... ; prints median wall time in ms over N runs
  local i s e times=()
  for ((i = 0; i < N; i++)); do
    s=$(date +%s%N); "$@" >/dev/null; e=$(date +%s%N)
    times+=($(( (e - s) / 1000 )))
  done
  printf '%s\n' "${times[@]}" | sort -n | awk -v n="$N" 'NR == int(n/2)+1 { printf "%.2f", $1/1000 }'
}
t_true=$(median_ms /bin/true)
t_bkrun=$(median_ms "$BIN" -e '')
t_help=$(median_ms "$BIN" help)
echo "date:            $(date -u +%Y-%m-%d)"
echo "runs:            $N (median)"
echo "/bin/true:       ${t_true} ms"
echo "bkrun -e '':     ${t_bkrun} ms"
echo "bkrun help:      ${t_help} ms"
awk -v b="$t_bkrun" 'BEGIN { if (b >= 20) { print "FAIL: bkrun -e \x27\x27 median " b " ms >= 20 ms"; exit 1 } else print "OK: under the 20 ms target" }'

#!/usr/bin/env bash
# SSH transport: bkrun against the OpenSSH client, in one run, alternating,
# against a real sshd started here on 127.0.0.1 (a random port, temporary keys).
#
#   bash bench/ssh.sh [ROUNDS]
#
#   upload  1 GiB file:  bkrun conn:exec("cat > f", {stdin = disk.open(file)})
#                        vs  ssh host 'cat > f' < file
#   remote  (for information) bkrun stream.copy{codec="none"} to host:path: the
#           remote-file sink (SFTP creates, syncs and renames; the data goes
#           through "cat >> TMP" when the login runs commands), BLAKE3, catalogue
#   image   mixed image: bkrun scripts/disk-image.lua IMG host:path      (remote-file sink)
#   image-r              bkrun scripts/disk-image.lua --via receive ...  (bkrun receive)
#                        vs  dd if=IMG iflag=direct bs=1M | lz4 -1 | ssh host 'cat > f'
# Targets (2-core machine): upload >= 1.2x, image >= 1.7x.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
BENCH_DIR=${BENCH_DIR:-/var/tmp/bkrun-bench}
BIN=bin/bkrun
make -s build
mkdir -p "$BENCH_DIR"
[ -s "$BENCH_DIR/mixed.img" ] || go run ./bench/gen mixed 1024 "$BENCH_DIR/mixed.img"
[ -s "$BENCH_DIR/usr.img" ] || { tar -C / -cf - usr 2>/dev/null | head -c 1073741824 > "$BENCH_DIR/usr.img" || true; }

T=$(mktemp -d)
trap 'kill $(cat "$T/sshd.pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$T"' EXIT
ssh-keygen -q -t ed25519 -N '' -f "$T/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$T/id"
ssh-keygen -q -t ed25519 -N '' -f "$T/id_recv"
OUT="$BENCH_DIR/remote"
cp "$T/id.pub" "$T/authorized_keys"
echo "command=\"$PWD/$BIN receive --root $OUT\",restrict $(cat "$T/id_recv.pub")" >> "$T/authorized_keys"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 22022)
mkdir -p /run/sshd
cat > "$T/sshd_config" <<CONF
ListenAddress 127.0.0.1
Port $PORT
HostKey $T/host_key
PidFile $T/sshd.pid
AuthorizedKeysFile $T/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
SetEnv SHLVL=1
CONF
/usr/sbin/sshd -f "$T/sshd_config"
for _ in $(seq 50); do [ -s "$T/sshd.pid" ] && break; sleep 0.1; done
echo "[127.0.0.1]:$PORT $(cut -d' ' -f1,2 "$T/host_key.pub")" > "$T/known_hosts"
USER_AT="$(id -un)@127.0.0.1"
SSH=(ssh -p "$PORT" -i "$T/id" -o UserKnownHostsFile="$T/known_hosts" -o BatchMode=yes -F none "$USER_AT")
SSHOPTS="{port = $PORT, identity = \"$T/id\", known_hosts = \"$T/known_hosts\", config = \"none\"}"
mkdir -p "$OUT"

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
clean() { rm -f "$OUT"/* "$OUT"/.*partial* 2>/dev/null || true; }

echo "date: $(date -u +%Y-%m-%d)  rounds: $ROUNDS  cpus: $(nproc)  sshd: 127.0.0.1:$PORT ($(ssh -V 2>&1 | cut -d, -f1))"
: > "$T/a.bk"; : > "$T/a.ssh"; : > "$T/b.bk"; : > "$T/b.ssh"; : > "$T/c.bk"; : > "$T/d.bk"
for ((i = 0; i < ROUNDS; i++)); do
  clean; s=$(now)
  "$BIN" -q -e "local c = ssh.connect('$USER_AT', $SSHOPTS) c:exec('cat > $OUT/up.raw', {stdin = disk.open('$BENCH_DIR/usr.img')})"
  e=$(now); secs "$s" "$e" >> "$T/a.bk"
  cmp -s "$OUT/up.raw" "$BENCH_DIR/usr.img" || { echo "upload: remote copy differs"; exit 1; }
  clean; s=$(now)
  "$BIN" -q -e "stream.copy{from = '$BENCH_DIR/usr.img', to = '$USER_AT:$OUT/up.raw', codec = 'none', ssh = $SSHOPTS}"
  e=$(now); secs "$s" "$e" >> "$T/c.bk"
  clean; s=$(now); "${SSH[@]}" "cat > $OUT/up.raw" < "$BENCH_DIR/usr.img"; e=$(now); secs "$s" "$e" >> "$T/a.ssh"
  clean; s=$(now)
  "$BIN" -q scripts/disk-image.lua "$BENCH_DIR/mixed.img" "$USER_AT:$OUT/img.lz4" --port "$PORT" --identity "$T/id" --known-hosts "$T/known_hosts" >/dev/null
  e=$(now); secs "$s" "$e" >> "$T/b.bk"
  lz4 -dc "$OUT/img.lz4" | cmp -s - "$BENCH_DIR/mixed.img" || { echo "image: remote backup does not decode to the input"; exit 1; }
  clean; s=$(now)
  "$BIN" -q scripts/disk-image.lua "$BENCH_DIR/mixed.img" "$USER_AT:img.lz4" --via receive --port "$PORT" --identity "$T/id_recv" --known-hosts "$T/known_hosts" >/dev/null
  e=$(now); secs "$s" "$e" >> "$T/d.bk"
  lz4 -dc "$OUT/img.lz4" | cmp -s - "$BENCH_DIR/mixed.img" || { echo "image via receive: remote backup does not decode to the input"; exit 1; }
  clean; s=$(now)
  dd if="$BENCH_DIR/mixed.img" iflag=direct bs=1M status=none | lz4 -1 -q | "${SSH[@]}" "cat > $OUT/img.lz4"
  e=$(now); secs "$s" "$e" >> "$T/b.ssh"
done
clean
awk -v bk="$(median < "$T/c.bk")" 'BEGIN { printf "remote  bkrun %6.3f s (%5.0f MiB/s)  stream.copy codec=none to host:path: atomic rename, hash, catalogue\n", bk, 1024 / bk }'
cp "$T/b.ssh" "$T/d.ssh"
for t in a b d; do
  bk=$(median < "$T/$t.bk"); sh=$(median < "$T/$t.ssh")
  name=upload; [ "$t" = b ] && name=image; [ "$t" = d ] && name=image-r
  awk -v n="$name" -v bk="$bk" -v sh="$sh" 'BEGIN { printf "%-7s bkrun %6.3f s (%5.0f MiB/s) | openssh %6.3f s (%5.0f MiB/s) | ratio %.2fx\n", n, bk, 1024 / bk, sh, 1024 / sh, sh / bk }'
done

#!/usr/bin/env bash
# Run benchmark (not a test), all as the user berthtest, every peer measured
# in this same run:
#   - `berth run IMAGE -- true` on a cached busybox image vs `podman run`
#     (runc) and `runc run` on a ready rootless bundle (`runc spec --rootless`);
#   - a two-container pod (main `true`, sidecar `sleep`), start to main-process
#     exit and teardown;
#   - 1 GiB through busybox `cat` in the main container vs the same cat in a
#     plain pipe;
#   - berth's RSS while a pod runs: the waiting berth process and, separately,
#     the pod process (`berth __internal pod`, PID 1 of the pod's namespaces).
# Prints medians of N runs (default 15; 3 for the 1 GiB stream).
#
#   sudo tests/bench/run.sh               # builds berth --release first
#   sudo N=25 BERTH_BIN=target/release/berth tests/bench/run.sh
. "$(dirname "$0")/common.sh"
N=${N:-15}
. "$repo/tests/lib/images.sh"
start_registry "$work"
busybox_rootfs "$work/rootfs"
push_rootfs "$work" "$work/rootfs" bench/busybox:latest
img=127.0.0.1:$port/bench/busybox:latest
podman_as=(podman --root "$work/home/podman" --runroot "$work/home/podman-run" "${PODMAN_OPTS[@]}")

# A ready rootless runc bundle of the same busybox rootfs.
rb=$work/runc-bundle
mkdir -p "$rb"
cp -a "$work/rootfs" "$rb/rootfs"
chown -R berthtest: "$rb"
as_user sh -c "cd '$rb' && runc spec --rootless"
python3 - "$rb/config.json" <<'PY'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["process"]["terminal"] = False
c["process"]["args"] = ["true"]
json.dump(c, open(p, "w"))
PY

as_user "$B" pull -q --tls-verify=false "$img"
as_user "${podman_as[@]}" pull -q --tls-verify=false "$img" >/dev/null
# Warm-up: first runs pay for page cache and podman's storage setup.
as_user "$B" run --network none "$img" -- true
as_user "${podman_as[@]}" run --rm --network=none "$img" true
as_user runc --root "$work/home/runc" run --bundle "$rb" warmup

# ms_runs FILE CMD...: runs CMD $N times, appends each wall time in ms to FILE.
ms_runs() {
  local f=$1 i t0 t1; shift
  for i in $(seq "$N"); do
    t0=$(date +%s%N)
    "$@" >/dev/null 2>"$work/err" </dev/null || { log "failed: $*"; tail -5 "$work/err" >&2; exit 1; }
    t1=$(date +%s%N)
    echo "$(( (t1 - t0) / 1000 ))" | awk '{printf "%.1f\n", $1 / 1000}' >>"$f"
  done
}
# Interleaved, one of each per round, so background load hits all alike.
# berth runs with --network none like podman and the runc bundle (a private
# namespace with loopback only): tests/bench/net.sh measures the outbound one.
rounds=$N; N=1
for i in $(seq "$rounds"); do
  ms_runs "$work/r-berth" as_user "$B" run --network none "$img" -- true
  ms_runs "$work/r-podman" as_user "${podman_as[@]}" run --rm --network=none "$img" true
  ms_runs "$work/r-runc" as_user runc --root "$work/home/runc" run --bundle "$rb" "bench-$i"
  ms_runs "$work/r-pod" as_user "$B" run --network none --grace 0 --quiet-sidecars --sidecar side="$img" \
    --sidecar-cmd "side=sleep 1000" "$img" -- true
done

# 1 GiB through busybox cat: a plain pipe vs the main container's stdio.
# The stream ends in a host `cat` rather than straight in /dev/null because
# libcontainer 0.7 (process/init/process.rs: reopen_dev_null) re-points a
# host-/dev/null stdout at a read-only /dev/null, so writes fail with EBADF.
for i in 1 2 3; do
  ms_runs "$work/r-cat-plain" as_user sh -c "head -c 1073741824 /dev/zero | '$work/rootfs/bin/cat' | cat >/dev/null"
  ms_runs "$work/r-cat-berth" as_user sh -c "head -c 1073741824 /dev/zero | '$B' run --network none '$img' -- cat | cat >/dev/null"
done
N=$rounds

# RSS while a pod runs: the waiting berth (child of runuser) and the pod process (its child).
as_user "$B" run --network none "$img" -- sleep 3 & runuser_pid=$!
sleep 1.5
waiting=
for p in $(pgrep -u berthtest -x berth || true); do
  tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q __internal || waiting=$p
done
pod=$( [ -n "$waiting" ] && pgrep -P "$waiting" | head -1 || true)
kib() { [ -n "$1" ] && awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status" 2>/dev/null || true; }
w_rss=$(kib "$waiting" VmRSS); w_hwm=$(kib "$waiting" VmHWM)
p_rss=$(kib "$pod" VmRSS); p_hwm=$(kib "$pod" VmHWM)
wait "$runuser_pid" || true

m() { median <"$work/r-$1"; }
machine
echo "image: busybox (static, one gzip layer), cached; medians of $rounds runs (3 for the 1 GiB stream)"
echo
printf '| %-44s | %9s | %14s |\n' what "time (ms)" "vs berth run"
printf '|%s|%s|%s|\n' ---------------------------------------------- ----------- ----------------
printf '| %-44s | %9s | %14s |\n' "berth run IMAGE -- true" "$(m berth)" "1.00"
printf '| %-44s | %9s | %14s |\n' "podman run --rm IMAGE true (runc)" "$(m podman)" "$(ratio "$(m podman)" "$(m berth)")x slower"
printf '| %-44s | %9s | %14s |\n' "runc run, bundle ready" "$(m runc)" "$(ratio "$(m runc)" "$(m berth)")x slower"
printf '| %-44s | %9s | %14s |\n' "berth run, 2-container pod, to exit" "$(m pod)" "-"
printf '| %-44s | %9s | %14s |\n' "1 GiB through cat, plain pipe" "$(m cat-plain)" "-"
printf '| %-44s | %9s | %14s |\n' "1 GiB through cat, berth run main container" "$(m cat-berth)" "$(ratio "$(m cat-berth)" "$(m cat-plain)")x the pipe"
echo
echo "berth RSS while a pod runs: waiting berth ${w_rss:-?} KiB (peak ${w_hwm:-?} KiB)," \
  "pod process ${p_rss:-?} KiB (peak ${p_hwm:-?} KiB)"
ok() { awk "BEGIN{print ($1)?\"met\":\"MISSED\"}"; }
echo "goals: >= 5x faster than podman: $(ok "$(m podman) >= 5 * $(m berth)");" \
  "faster than runc: $(ok "$(m runc) > $(m berth)");" \
  "pod < 60 ms: $(ok "$(m pod) < 60");" \
  "cat within 10%: $(ok "$(m cat-berth) <= 1.10 * $(m cat-plain)");" \
  "waiting berth < 15 MiB: $(ok "${w_rss:-999999} < 15360")"

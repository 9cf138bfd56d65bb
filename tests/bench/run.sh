#!/usr/bin/env bash
# Benchmark of `berth run` against its peers, all measured in this one run
# (not a test). Run as root: the containers run as the unprivileged user
# `berthtest`. Prints medians and ratios.
#   - `berth run IMAGE -- true` on a cached image vs `podman run` (runc) and
#     `runc run` on a ready bundle;
#   - a two-container pod, start to main-process exit;
#   - 1 GiB through `cat` in the main container vs the same cat in a plain pipe;
#   - berth's own RSS while a pod runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-15}
for p in docker-registry uidmap busybox-static podman runc curl; do
  dpkg -s "$p" >/dev/null 2>&1 || { apt-get update -q >&2; DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$p" >&2; }
done
cargo build --release --locked >&2
id berthtest >/dev/null 2>&1 || useradd -m -s /bin/sh berthtest

work=$(mktemp -d /tmp/berth-bench.XXXXXX); chmod 755 "$work"
reg_pid=
cleanup() { [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null; rm -rf "$work" 2>/dev/null || true; }
trap cleanup EXIT
. tests/lib/images.sh
start_registry "$work"
busybox_rootfs "$work/rootfs"
push_rootfs "$work" "$work/rootfs" bench/busybox:latest
img="127.0.0.1:$port/bench/busybox:latest"
install -m 755 target/release/berth "$work/berth"
mkdir -p "$work/home"; chown berthtest "$work/home"
as_user() { runuser -u berthtest -- env HOME="$work/home" XDG_RUNTIME_DIR= XDG_DATA_HOME= XDG_CONFIG_HOME= "$@"; }
B="$work/berth"

# median_ms CMD...: runs CMD $N times, prints the median wall time in ms.
median_ms() {
  local i t0 t1 times=()
  for i in $(seq "$N"); do
    t0=$(date +%s%N); "$@" >/dev/null 2>&1 </dev/null || { echo "failed: $*" >&2; return 1; }; t1=$(date +%s%N)
    times+=($(( (t1 - t0) / 1000 )))
  done
  printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.1f\n", m/1000}'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

as_user "$B" pull --tls-verify=false -q "$img"
as_user podman pull --tls-verify=false -q "$img" >/dev/null
as_user "$B" bundle "$img" "$work/bundle" >/dev/null
chown -R berthtest "$work/bundle" 2>/dev/null || true

berth_true=$(median_ms as_user "$B" run "$img" -- true)
podman_true=$(median_ms as_user podman run --rm --runtime runc --cgroup-manager=cgroupfs --network=none "$img" true)
runc_true=$(median_ms as_user bash -c "cd '$work/bundle' && runc --root '$work/home/runc' run bench-\$\$ >/dev/null")
pod_ms=$(median_ms as_user "$B" run --grace 0 --sidecar side="$img" --sidecar-cmd "side=sleep 1000" "$img" -- true)

gib_plain=$(median_ms bash -c "head -c 1073741824 /dev/zero | $work/rootfs/bin/cat > /dev/null")
N=3 gib_berth=$(N=3 median_ms as_user bash -c "head -c 1073741824 /dev/zero | '$B' run '$img' -- cat > /dev/null")

as_user "$B" run "$img" -- sleep 2 & bpid=$!
sleep 1
rss_kb=$(for p in $(pgrep -u berthtest -x berth); do awk '/VmRSS/ {print $2}' /proc/$p/status; done | sort -n | head -1)
wait "$bpid" || true

cat <<OUT
machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r), $(. /etc/os-release; echo "$PRETTY_NAME")
berth run IMAGE -- true        ${berth_true} ms
podman run IMAGE true (runc)   ${podman_true} ms   (berth $(ratio "$podman_true" "$berth_true")x faster)
runc run (ready bundle)        ${runc_true} ms   (berth $(ratio "$runc_true" "$berth_true")x faster)
two-container pod, to exit     ${pod_ms} ms
1 GiB through cat: plain pipe  ${gib_plain} ms, berth ${gib_berth} ms (ratio $(ratio "$gib_berth" "$gib_plain"))
berth RSS while a pod runs     ${rss_kb:-?} KiB
OUT

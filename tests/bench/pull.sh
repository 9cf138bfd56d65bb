#!/usr/bin/env bash
# Pull benchmark (not a test): one run each of `berth pull`, `skopeo copy
# docker://… oci:…` and `podman pull` of the same ~400 MB multi-layer image
# served by a loopback docker-registry, with berth's peak RSS.
#
#   tests/bench/pull.sh                 # builds berth --release first
#   BERTH_BIN=target/debug/berth tests/bench/pull.sh
#
# The image is a debootstrap'ed Debian 12 with openjdk-17-jre-headless (three
# gzip layers: base, /usr/share, /usr/lib/jvm) when debootstrap works (root,
# Debian mirror reachable); otherwise (or with BENCH_SYNTHETIC=1) a synthetic
# image of real host binaries from /usr. Work files stay in .bench/ (ignored
# by git) so later runs reuse the image; BENCH_DIR moves them.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${BENCH_DIR:-$PWD/.bench}
mkdir -p "$work"
log() { echo "bench: $*" >&2; }

berth=${BERTH_BIN:-}
if [ -z "$berth" ]; then
  cargo build --release --locked --bin berth >&2
  berth=$PWD/target/release/berth
fi
berth=$(readlink -f "$berth")
for t in docker-registry skopeo podman /usr/bin/time curl; do
  command -v "$t" >/dev/null || { log "missing $t (apt-get install docker-registry skopeo podman time curl)"; exit 1; }
done

# 1. A root filesystem.
rootfs=$work/rootfs
if [ ! -e "$work/rootfs.done" ]; then
  rm -rf "$rootfs"
  kind=synthetic
  if [ "${BENCH_SYNTHETIC:-0}" != 1 ] && [ "$(id -u)" = 0 ]; then
    command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2 || true
    if command -v debootstrap >/dev/null; then
      log "debootstrap bookworm with openjdk-17-jre-headless (a few minutes)"
      if debootstrap --variant=minbase --include=openjdk-17-jre-headless bookworm "$rootfs" >"$work/debootstrap.log" 2>&1; then
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        kind=debian-openjdk
      else
        log "debootstrap failed (see $work/debootstrap.log); using the synthetic image"
        rm -rf "$rootfs"
      fi
    fi
  fi
  if [ "$kind" = synthetic ]; then
    log "synthetic rootfs from /usr"
    mkdir -p "$rootfs/usr/lib" "$rootfs/usr/share"
    cp -a /usr/bin /usr/sbin /usr/libexec "$rootfs/usr/"
    cp -a /usr/lib/gcc "$rootfs/usr/lib/"
    cp -a /usr/share/doc /usr/share/locale "$rootfs/usr/share/" 2>/dev/null || true
    mkdir -p "$rootfs/usr/lib/jvm"
    cp -a /usr/lib/x86_64-linux-gnu "$rootfs/usr/lib/jvm/"
  fi
  echo "$kind" >"$work/rootfs.done"
fi
kind=$(cat "$work/rootfs.done")

# 2. An OCI layout: three gzip layers.
layout=$work/layout
if [ ! -e "$layout/index.json" ]; then
  rm -rf "$layout"; mkdir -p "$layout/blobs/sha256"
  diff_ids=(); layers=()
  add_layer() { # tar args...
    local tarf=$work/layer.tar
    tar --numeric-owner --sort=name -C "$rootfs" -cf "$tarf" "$@"
    local diff; diff=$(sha256sum "$tarf" | cut -d' ' -f1)
    gzip -6 -c "$tarf" >"$work/layer.tar.gz"
    local dig; dig=$(sha256sum "$work/layer.tar.gz" | cut -d' ' -f1)
    local size; size=$(stat -c %s "$work/layer.tar.gz")
    mv "$work/layer.tar.gz" "$layout/blobs/sha256/$dig"; rm -f "$tarf"
    diff_ids+=("\"sha256:$diff\"")
    layers+=("{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$dig\",\"size\":$size}")
    log "layer sha256:${dig:0:12} $((size / 1000000)) MB"
  }
  add_layer --exclude=./usr/share --exclude=./usr/lib/jvm .
  add_layer ./usr/share
  add_layer ./usr/lib/jvm
  join() { local IFS=,; echo "$*"; }
  config="{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{\"Env\":[\"PATH=/usr/sbin:/usr/bin:/sbin:/bin\"],\"Cmd\":[\"/bin/sh\"]},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[$(join "${diff_ids[@]}")]}}"
  cdig=$(printf %s "$config" | sha256sum | cut -d' ' -f1)
  printf %s "$config" >"$layout/blobs/sha256/$cdig"
  manifest="{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$cdig\",\"size\":${#config}},\"layers\":[$(join "${layers[@]}")]}"
  mdig=$(printf %s "$manifest" | sha256sum | cut -d' ' -f1)
  printf %s "$manifest" >"$layout/blobs/sha256/$mdig"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"annotations":{"org.opencontainers.image.ref.name":"bench"}}]}' \
    "$mdig" "${#manifest}" >"$layout/index.json"
fi
image_mb=$(du -sm "$layout/blobs" | cut -f1)

# 3. A loopback registry serving it.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
reg=$work/registry; rm -rf "$reg"; mkdir -p "$reg"
printf 'version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' "$reg/storage" "$port" >"$reg/config.yml"
docker-registry serve "$reg/config.yml" >"$reg/log" 2>&1 &
reg_pid=$!
trap 'kill $reg_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
ref=127.0.0.1:$port/bench:1
skopeo copy -q --dest-tls-verify=false "oci:$layout:bench" "docker://$ref" >&2

# 4. One run of each, from a fresh destination.
measure() { # name cmd...
  local name=$1; shift
  local out=$work/time-$name
  /usr/bin/time -v "$@" >/dev/null 2>"$out" || { log "$name failed:"; tail -5 "$out" >&2; exit 1; }
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$out")
  rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.1f", $2/1024}' "$out")
  echo "$name $wall $rss"
}
rm -rf "$work/berth-root" "$work/skopeo-out" "$work/podman-root" "$work/podman-run"
read -r _ b_wall b_rss < <(measure berth "$berth" --root "$work/berth-root" pull -q --tls-verify=false "$ref")
read -r _ s_wall s_rss < <(measure skopeo skopeo copy -q --src-tls-verify=false "docker://$ref" "oci:$work/skopeo-out:bench")
podman_args=(--root "$work/podman-root" --runroot "$work/podman-run" --runtime runc --cgroup-manager=cgroupfs)
read -r _ p_wall p_rss < <(measure podman podman "${podman_args[@]}" pull -q --tls-verify=false "$ref")
podman "${podman_args[@]}" rmi -a -f >/dev/null 2>&1 || true
rm -rf "$work/podman-root" "$work/podman-run" 2>/dev/null || true

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
echo "image: $kind, ${image_mb} MB compressed, 3 gzip layers, from 127.0.0.1 ($(nproc) cores)"
echo "berth: $berth"
printf '%-13s %9s %15s %16s\n' tool "time (s)" "peak RSS (MiB)" "time vs berth"
printf '%-13s %9s %15s %16s\n' "berth pull" "$b_wall" "$b_rss" "1.00x"
printf '%-13s %9s %15s %16s\n' "skopeo copy" "$s_wall" "$s_rss" "$(ratio "$s_wall" "$b_wall")"
printf '%-13s %9s %15s %16s\n' "podman pull" "$p_wall" "$p_rss" "$(ratio "$p_wall" "$b_wall")"

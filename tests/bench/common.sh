# Shared by the benchmarks in tests/bench (sourced, not run). Not tests: they
# print medians of a few runs and ratios against the peers measured in the same
# run. Run them as root: berth and the rootless peers run as the unprivileged
# user `berthtest` (created if missing), as in the integration tests.
#
#   BERTH_BIN=PATH   berth binary to measure (default: cargo build --release)
#   BENCH_DIR=DIR    where the Debian + OpenJDK image is built and kept
#                    (default: .bench in the repository, ignored by git)
#   N=K              runs per measurement (each script has its own default)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
repo=$PWD
log() { echo "bench: $*" >&2; }

# need_packages PKG...: installs the Debian packages that are missing.
need_packages() {
  local p missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
}

[ "$(id -u)" = 0 ] || { log "run as root (berth runs as the user berthtest)"; exit 1; }
need_packages docker-registry uidmap busybox-static skopeo umoci podman runc curl time python3
id berthtest >/dev/null 2>&1 || useradd -m -s /bin/sh berthtest

# A scratch directory the user berthtest can use; removed at exit.
work=$(mktemp -d /tmp/berth-bench.XXXXXX)
chmod 755 "$work"
mkdir -p "$work/home"
chown berthtest: "$work/home"
reg_pid=
cleanup() {
  [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null
  rm -rf "$work" 2>/dev/null || true
}
trap cleanup EXIT

# The berth under test, copied where berthtest can run it.
berth_src=${BERTH_BIN:-}
if [ -z "$berth_src" ]; then
  cargo build --release --locked --bin berth >&2
  berth_src=$repo/target/release/berth
fi
install -m 755 "$berth_src" "$work/berth"
B=$work/berth

# as_user CMD...: CMD as berthtest, with a private HOME and no XDG variables
# from root's environment.
U=(runuser -u berthtest -- env -u XDG_RUNTIME_DIR -u XDG_DATA_HOME -u XDG_CONFIG_HOME
  -u BERTH_ROOT -u BERTH_RUN_ROOT HOME="$work/home")
as_user() { "${U[@]}" "$@"; }
# Rootless podman on this host (see docs: hybrid cgroups, no /dev/net/tun).
PODMAN_OPTS=(--runtime runc --cgroup-manager=cgroupfs)

# timed OUT [as_user] CMD...: runs CMD under /usr/bin/time -v (stdout discarded); on
# success prints "SECONDS PEAK_RSS_KIB": wall time (ms precision, from date)
# and the largest peak RSS among CMD and its children.
timed() {
  local out=$1 t0 t1; shift
  [ "$1" = as_user ] && { shift; set -- "${U[@]}" "$@"; }
  # Start every tool with no dirty pages left by the previous one: berth
  # fsyncs what it stores, and an fsync behind gigabytes of another tool's
  # writeback measured that writeback, not berth (seconds of noise).
  sync
  t0=$(date +%s%N)
  if ! /usr/bin/time -v "$@" >/dev/null 2>"$out" </dev/null; then
    log "failed: $*"; tail -5 "$out" >&2; return 1
  fi
  t1=$(date +%s%N)
  awk -v ns=$((t1 - t0)) -F': ' '/Maximum resident set size/ {r=$2} END {printf "%.3f %d\n", ns / 1e9, r}' "$out"
}

# median: the median of the numbers on stdin, one a line.
median() {
  sort -g | awk '{a[NR]=$1} END {if (NR==0) exit 1; m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; print m}'
}
# med FILE FIELD / maxof FILE FIELD: median / largest of a column of results.
med() { cut -d' ' -f"$2" "$1" | median; }
maxof() { cut -d' ' -f"$2" "$1" | sort -g | tail -1; }
# ratio A B: A/B with two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

machine() {
  local cpu
  cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
  echo "machine: $(nproc) cores ($cpu), $(free -g | awk '/Mem:/ {print $2}') GiB RAM," \
    "kernel $(uname -r), $(. /etc/os-release; echo "$PRETTY_NAME"), load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "berth: $berth_src ($("$B" --version 2>/dev/null))"
}

# bench_image: builds (once, kept in $BENCH_DIR) an OCI layout of a ~400 MB
# multi-layer image and sets $layout, $image_desc. The image is a
# debootstrap'ed Debian 12 with openjdk-17-jre-headless (three gzip layers:
# base, /usr/share, /usr/lib/jvm) when debootstrap works (root, Debian mirror
# reachable); otherwise (or with BENCH_SYNTHETIC=1) a synthetic image of real
# host binaries from /usr.
bench_image() {
  local dir=${BENCH_DIR:-$repo/.bench}
  mkdir -p "$dir"
  local rootfs=$dir/rootfs kind
  if [ ! -e "$dir/rootfs.done" ]; then
    rm -rf "$rootfs" "$dir/layout"
    kind=synthetic
    if [ "${BENCH_SYNTHETIC:-0}" != 1 ]; then
      command -v debootstrap >/dev/null || need_packages debootstrap || true
      if command -v debootstrap >/dev/null; then
        log "debootstrap bookworm with openjdk-17-jre-headless (a few minutes)"
        if debootstrap --variant=minbase --include=openjdk-17-jre-headless bookworm "$rootfs" >"$dir/debootstrap.log" 2>&1; then
          rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
          kind=debian-openjdk
        else
          log "debootstrap failed (see $dir/debootstrap.log); using the synthetic image"
          rm -rf "$rootfs"
        fi
      fi
    fi
    if [ "$kind" = synthetic ]; then
      log "synthetic rootfs from /usr"
      mkdir -p "$rootfs/usr/lib" "$rootfs/usr/share" "$rootfs/bin"
      cp -a /usr/bin /usr/sbin /usr/libexec "$rootfs/usr/"
      cp -a /usr/lib/gcc "$rootfs/usr/lib/"
      cp -a /usr/share/doc /usr/share/locale "$rootfs/usr/share/" 2>/dev/null || true
      mkdir -p "$rootfs/usr/lib/jvm"
      cp -a /usr/lib/x86_64-linux-gnu "$rootfs/usr/lib/jvm/"
    fi
    echo "$kind" >"$dir/rootfs.done"
  fi
  kind=$(cat "$dir/rootfs.done")

  layout=$dir/layout
  if [ ! -e "$layout/index.json" ]; then
    rm -rf "$layout"; mkdir -p "$layout/blobs/sha256"
    local diff_ids=() layers=()
    add_layer() { # tar args...
      local tarf=$dir/layer.tar diff dig size
      tar --numeric-owner --sort=name -C "$rootfs" -cf "$tarf" "$@"
      diff=$(sha256sum "$tarf" | cut -d' ' -f1)
      gzip -6 -n -c "$tarf" >"$dir/layer.tar.gz"
      dig=$(sha256sum "$dir/layer.tar.gz" | cut -d' ' -f1)
      size=$(stat -c %s "$dir/layer.tar.gz")
      mv "$dir/layer.tar.gz" "$layout/blobs/sha256/$dig"; rm -f "$tarf"
      diff_ids+=("\"sha256:$diff\"")
      layers+=("{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$dig\",\"size\":$size}")
      log "layer sha256:${dig:0:12} $((size / 1000000)) MB"
    }
    add_layer --exclude=./usr/share --exclude=./usr/lib/jvm .
    add_layer ./usr/share
    add_layer ./usr/lib/jvm
    local IFS=,
    local config manifest cdig mdig
    config="{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{\"Env\":[\"PATH=/usr/sbin:/usr/bin:/sbin:/bin\"],\"Cmd\":[\"/bin/sh\"]},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[${diff_ids[*]}]}}"
    cdig=$(printf %s "$config" | sha256sum | cut -d' ' -f1)
    printf %s "$config" >"$layout/blobs/sha256/$cdig"
    manifest="{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$cdig\",\"size\":${#config}},\"layers\":[${layers[*]}]}"
    mdig=$(printf %s "$manifest" | sha256sum | cut -d' ' -f1)
    printf %s "$manifest" >"$layout/blobs/sha256/$mdig"
    unset IFS
    printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"annotations":{"org.opencontainers.image.ref.name":"bench"}}]}' \
      "$mdig" "${#manifest}" >"$layout/index.json"
  fi
  local packed unpacked
  packed=$(du -sm "$layout/blobs" | cut -f1)
  unpacked=$(du -sm "$rootfs" | cut -f1)
  image_desc="$kind image, 3 gzip layers, ${packed} MB compressed, ${unpacked} MB unpacked"
}

# serve_bench_image: a loopback docker-registry serving the bench image; sets
# $ref (HOST:PORT/bench:1) and $reg_pid.
serve_bench_image() {
  . "$repo/tests/lib/images.sh"
  start_registry "$work"
  skopeo copy -q --dest-tls-verify=false "oci:$layout:bench" "docker://127.0.0.1:$port/bench:1" >&2
  ref=127.0.0.1:$port/bench:1
}

# fresh DIR: an empty directory owned by berthtest (removed first, as root,
# since rootless stores hold files owned by subordinate ids).
fresh() {
  rm -rf "$1"
  mkdir -p "$1"
  chown berthtest: "$1"
}

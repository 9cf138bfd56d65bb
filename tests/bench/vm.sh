#!/usr/bin/env bash
# VM-mode benchmark (not a test), all as the user berthtest, the container
# mode measured in the same run:
#   - boot to main-process start of `berth run --isolation vm IMAGE` (busybox,
#     cached: images flattened, initramfs built), broken down into berth's
#     own preparation, QEMU's start, the guest kernel, berth's guest init and
#     the pod up to the main process (from berth -vv's breakdown and the main
#     process printing the guest clock);
#   - the whole run of `-- true` in the VM and in container mode;
#   - QEMU's memory overhead: its RSS minus what the guest's RAM mapping has
#     resident (Firecracker's method), while the main process sleeps;
#   - 64 MiB through `cat` in the VM and in container mode; and, since under
#     TCG the guest's own CPU is the limit, 64 MiB from /dev/zero in the
#     guest written to its /dev/null vs through berth's stdout: the cost of
#     the channel itself.
# Prints medians of N runs (default 5).
#
#   sudo tests/bench/vm.sh                  # builds berth --release first
#   sudo ACCEL=tcg N=9 BERTH_BIN=target/release/berth tests/bench/vm.sh
#
#   ACCEL=auto|kvm|tcg  (default auto: KVM if it boots the guest, else tcg)
#   KERNEL_DIR=DIR      an extracted linux-image-cloud-amd64 (tests/run's
#                       /var/cache/berth-test/kernel); default: `berth vm setup`
. "$(dirname "$0")/common.sh"
N=${N:-5}
need_packages qemu-system-x86 erofs-utils
. "$repo/tests/lib/images.sh"
start_registry "$work"
busybox_rootfs "$work/rootfs"
push_rootfs "$work" "$work/rootfs" bench/busybox:latest
img=127.0.0.1:$port/bench/busybox:latest
as_user "$B" pull -q --tls-verify=false "$img"

kdir=${KERNEL_DIR:-/var/cache/berth-test/kernel}
kargs=()
if [ -d "$kdir/boot" ]; then
  kargs=(--kernel "$(ls "$kdir"/boot/vmlinuz-* | head -1)" --modules "$(ls -d "$kdir"/lib/modules/* | head -1)")
else
  as_user "$B" vm setup >&2
fi

accel=${ACCEL:-auto}
if [ "$accel" = auto ]; then
  accel=tcg
  if as_user "$B" run --isolation vm --accel kvm "${kargs[@]}" --boot-timeout 10s --network none "$img" -- true 2>"$work/kvm.err"; then
    accel=kvm
  else
    log "KVM does not boot the guest here ($(tail -1 "$work/kvm.err")): tcg"
  fi
fi
V=(run --isolation vm --accel "$accel" "${kargs[@]}" --network none)
# Warm-up: the first run flattens the image and builds the initramfs.
as_user "$B" "${V[@]}" "$img" -- true

# One run of `cat /proc/uptime` in the VM: the breakdown in ms as
# "prep qemu kernel init pod total", from berth -vv and the guest's clock at
# the main process's start.
breakdown() {
  local t0 t1
  t0=$(date +%s%N)
  as_user "$B" -vv "${V[@]}" "$img" -- cat /proc/uptime >"$work/up" 2>"$work/log" </dev/null || { tail -5 "$work/log" >&2; exit 1; }
  t1=$(date +%s%N)
  python3 - "$work/up" "$work/log" $(( (t1 - t0) / 1000000 )) <<'PY'
import re, sys
up = float(open(sys.argv[1]).read().split()[0]) * 1000
log = open(sys.argv[2]).read()
prep = int(re.search(r"QEMU started (\d+) ms after berth", log).group(1))
m = re.search(r"QEMU (\d+) ms, kernel (\d+) ms, init (\d+) ms", log)
qemu, kernel, init = (int(x) for x in m.groups())
pod = up - kernel - init
print(f"{prep} {qemu} {kernel} {init} {pod:.0f} {prep + qemu + up:.0f} {sys.argv[3]}")
PY
}
: >"$work/boot"
for i in $(seq "$N"); do breakdown >>"$work/boot"; done

# Whole runs of `true`, VM and container, interleaved.
: >"$work/vm_true"; : >"$work/ct_true"
for i in $(seq "$N"); do
  timed "$work/t" as_user "$B" "${V[@]}" "$img" -- true | cut -d' ' -f1 >>"$work/vm_true"
  timed "$work/t" as_user "$B" run --network none "$img" -- true | cut -d' ' -f1 >>"$work/ct_true"
done

# QEMU's overhead: RSS minus the resident part of the guest RAM mapping
# (the one mapping of exactly the guest's size).
: >"$work/mem"
for i in $(seq "$N"); do
  as_user "$B" "${V[@]}" --vm-memory 512Mi --name benchmem "$img" -- sh -c 'echo up; sleep 3' >"$work/out" 2>/dev/null &
  bpid=$!
  for _ in $(seq 600); do grep -q up "$work/out" 2>/dev/null && break; sleep 0.05; done
  q=$(pgrep -f "qemu-system-x86_64 .*-name berth-benchmem" | head -1)
  [ -n "$q" ] || { log "no QEMU found for the memory sample"; exit 1; }
  # QEMU keeps the -initrd file mapped (clean page cache, shared): counted
  # in the overhead, and shown apart.
  awk -v guest=$((512 * 1024)) '
    /^[0-9a-f]+-[0-9a-f]+ / {size=0; initrd=($6 ~ /initramfs-|\/vm\/initrd/)}
    /^Size:/ {size=$2}
    /^Rss:/ {rss+=$2; if (size == guest) g+=$2; if (initrd) i+=$2}
    END {printf "%d %d %d\n", rss - g, rss, i}' "/proc/$q/smaps" >>"$work/mem"
  wait "$bpid"
done

# 64 MiB through cat.
head -c $((64 << 20)) /dev/urandom >"$work/data"
chmod 644 "$work/data"
stream() { # ARGS...: seconds for 64 MiB through `cat`, start included
  local t0 t1
  t0=$(date +%s%N)
  as_user "$B" "$@" "$img" -- cat <"$work/data" | sha256sum | cut -c1-16 >"$work/sum"
  t1=$(date +%s%N)
  [ "$(cat "$work/sum")" = "$(sha256sum "$work/data" | cut -c1-16)" ] || { log "stream corrupted"; exit 1; }
  awk -v ns=$((t1 - t0)) 'BEGIN { printf "%.3f\n", ns / 1e9 }'
}
: >"$work/vm_cat"; : >"$work/ct_cat"
for i in $(seq 3); do
  stream "${V[@]}" >>"$work/vm_cat"
  stream run --network none >>"$work/ct_cat"
done

# The channel against the guest's own speed: the same 64 MiB to /dev/null
# inside the guest, and out through the control port to berth's stdout.
: >"$work/vm_null"; : >"$work/vm_out"
for i in $(seq 3); do
  timed "$work/t" as_user "$B" "${V[@]}" "$img" -- sh -c 'head -c 67108864 /dev/zero >/dev/null' | cut -d' ' -f1 >>"$work/vm_null"
  timed "$work/t" as_user "$B" "${V[@]}" "$img" -- head -c 67108864 /dev/zero | cut -d' ' -f1 >>"$work/vm_out"
done

machine
echo "accel: $accel; guest: $(basename "${kargs[1]:-berth vm setup}"), image $img (busybox), N=$N"
printf 'boot to main process (ms, median): prep %s  QEMU %s  kernel %s  init %s  pod %s  = %s\n' \
  "$(med "$work/boot" 1)" "$(med "$work/boot" 2)" "$(med "$work/boot" 3)" "$(med "$work/boot" 4)" "$(med "$work/boot" 5)" "$(med "$work/boot" 6)"
vt=$(median <"$work/vm_true"); ct=$(median <"$work/ct_true")
printf 'run -- true, whole (s, median): vm %s  container %s  ratio %s\n' "$vt" "$ct" "$(ratio "$vt" "$ct")"
printf "QEMU memory (MiB, median): overhead %s (RSS %s with the guest's resident RAM; of the overhead, the mapped initramfs %s)\n" \
  "$(mib "$(med "$work/mem" 1)")" "$(mib "$(med "$work/mem" 2)")" "$(mib "$(med "$work/mem" 3)")"
vc=$(median <"$work/vm_cat"); cc=$(median <"$work/ct_cat")
printf '64 MiB through cat (s, median of 3, start included): vm %s  container %s  ratio %s\n' "$vc" "$cc" "$(ratio "$vc" "$cc")"
printf '64 MiB through cat after start (MiB/s): vm %s\n' "$(awk -v v="$vc" -v t="$vt" 'BEGIN { d = v - t; if (d > 0) printf "%.0f", 64 / d; else print "-" }')"
vn=$(median <"$work/vm_null"); vo=$(median <"$work/vm_out")
printf '64 MiB from the guest (s, median of 3, start included): to its /dev/null %s  through berth stdout %s  channel cost %s s (%s MiB/s over the guest alone: ratio %s)\n' \
  "$vn" "$vo" "$(awk -v a="$vo" -v b="$vn" 'BEGIN { printf "%.2f", a - b }')" \
  "$(awk -v a="$vo" -v t="$vt" 'BEGIN { d = a - t; if (d > 0) printf "%.0f", 64 / d; else print "-" }')" \
  "$(ratio "$(awk -v a="$vo" -v t="$vt" 'BEGIN { print a - t }')" "$(awk -v a="$vn" -v t="$vt" 'BEGIN { print a - t }')")"

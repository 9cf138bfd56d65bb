#!/usr/bin/env bash
# Network benchmark (not a test), all as the user berthtest, every peer
# measured in this same run:
#   - TCP throughput from a container to an HTTP server on the host's
#     loopback (busybox httpd, a sized download with busybox wget, timed
#     inside the container): berth's outbound network with pasta and with
#     slirp4netns vs `podman run --network pasta` and `--network slirp4netns`
#     vs wget on the host itself;
#   - the time the outbound network adds to `berth run IMAGE -- true`
#     (vs `--network none`).
# Prints medians of N runs (default 5 for the downloads, 15 for the runs).
# Needs /dev/net/tun usable by the user (Debian's mode 0666; tests/run sets it).
#
#   sudo tests/bench/net.sh               # builds berth --release first
#   sudo N=9 SIZE_MIB=1024 BERTH_BIN=target/release/berth tests/bench/net.sh
. "$(dirname "$0")/common.sh"
N=${N:-5}
RUNS=${RUNS:-15}
SIZE_MIB=${SIZE_MIB:-512}
need_packages passt slirp4netns
[ "$(stat -c %a /dev/net/tun)" = 666 ] || { log "/dev/net/tun is not 0666 (chmod 0666 /dev/net/tun)"; exit 1; }
. "$repo/tests/lib/images.sh"
start_registry "$work"
busybox_rootfs "$work/rootfs"
push_rootfs "$work" "$work/rootfs" bench/busybox:latest
img=127.0.0.1:$port/bench/busybox:latest
podman_as=(podman --root "$work/home/podman" --runroot "$work/home/podman-run" "${PODMAN_OPTS[@]}")

# The host's server: SIZE_MIB of zeros on 127.0.0.1.
mkdir -p "$work/www"
head -c $((SIZE_MIB << 20)) /dev/zero >"$work/www/big"
http_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
busybox httpd -f -p "127.0.0.1:$http_port" -h "$work/www" & httpd_pid=$!
trap 'kill $httpd_pid 2>/dev/null; cleanup' EXIT

# A PATH where slirp4netns is the only helper berth finds.
mkdir -p "$work/slirp-path"
for t in newuidmap newgidmap slirp4netns; do ln -s "/usr/bin/$t" "$work/slirp-path/$t"; done

as_user "$B" pull -q --tls-verify=false "$img"
as_user "${podman_as[@]}" pull -q --tls-verify=false "$img" >/dev/null
gw=$(ip route | awk '/^default/ {print $3; exit}')

# download URL: the download timed inside the container (busybox date has
# no %N: /proc/uptime, 10 ms steps), in ns; busybox wget everywhere.
download() {
  echo "s=\$(busybox cut -d' ' -f1 /proc/uptime); busybox wget -q -O /dev/null $1 || exit 1;" \
    "e=\$(busybox cut -d' ' -f1 /proc/uptime); busybox awk -v s=\$s -v e=\$e 'BEGIN { printf \"%d\\n\", (e - s) * 1e9 }'"
}
# mbs FILE CMD...: runs CMD (which prints ns) $N times; appends MB/s to FILE.
mbs() {
  local f=$1 i ns; shift
  for i in $(seq "$N"); do
    ns=$("$@" 2>"$work/err" </dev/null | tail -1) || { log "failed: $*"; tail -5 "$work/err" >&2; echo "-" >>"$f"; return 0; }
    awk -v ns="$ns" -v mib="$SIZE_MIB" 'BEGIN { printf "%.0f\n", mib * 1048576 / ns * 1000 }' >>"$f"
  done
}
url_host=http://127.0.0.1:$http_port/big
url_berth=http://host.containers.internal:$http_port/big
podman_pasta_ok=1
as_user "${podman_as[@]}" run --rm --network pasta "$img" true >/dev/null 2>"$work/podman-pasta.err" || podman_pasta_ok=0
[ $podman_pasta_ok = 1 ] || log "podman --network pasta fails here: $(tail -1 "$work/podman-pasta.err"); measuring pasta --config-net directly"

# Interleaved, one of each per round, so background load hits all alike.
rounds=$N; N=1
for i in $(seq "$rounds"); do
  mbs "$work/t-host" as_user sh -c "$(download "$url_host")"
  mbs "$work/t-berth-pasta" as_user "$B" run "$img" -- sh -c "$(download "$url_berth")"
  mbs "$work/t-berth-slirp" as_user env PATH="$work/slirp-path" "$B" run "$img" -- sh -c "$(download "$url_berth")"
  if [ $podman_pasta_ok = 1 ]; then
    mbs "$work/t-podman-pasta" as_user "${podman_as[@]}" run --rm --network pasta "$img" sh -c "$(download "http://$gw:$http_port/big")"
  else
    mbs "$work/t-podman-pasta" as_user pasta --config-net -q -- sh -c "$(download "http://$gw:$http_port/big")"
  fi
  mbs "$work/t-podman-slirp" as_user "${podman_as[@]}" run --rm --network slirp4netns:allow_host_loopback=true "$img" \
    sh -c "$(download "http://10.0.2.2:$http_port/big")"
done
N=$rounds

# Set-up cost: `true` with the outbound network vs none, interleaved.
ms() { local t0 t1; t0=$(date +%s%N); "$@" >/dev/null 2>"$work/err" </dev/null || { log "failed: $*"; tail -3 "$work/err" >&2; exit 1; }; t1=$(date +%s%N); awk -v ns=$((t1 - t0)) 'BEGIN { printf "%.1f\n", ns / 1e6 }'; }
as_user "$B" run "$img" -- true
for i in $(seq "$RUNS"); do
  ms as_user "$B" run --network none "$img" -- true >>"$work/r-none"
  ms as_user "$B" run "$img" -- true >>"$work/r-pasta"
  ms as_user env PATH="$work/slirp-path" "$B" run "$img" -- true >>"$work/r-slirp"
done

m() { grep -v '^-$' "$work/$1" | median || echo "-"; }
machine
echo "pasta: $(dpkg-query -W -f '${Version}' passt), slirp4netns $(dpkg-query -W -f '${Version}' slirp4netns), $(podman --version)"
echo "download: ${SIZE_MIB} MiB over HTTP from busybox httpd on the host's 127.0.0.1, busybox wget, median of $N (MB/s = MiB/s)"
echo
pp="podman run --network pasta"; [ $podman_pasta_ok = 1 ] || pp="pasta --config-net (podman fails)"
printf '| %-44s | %10s | %9s |\n' "container -> host server" "MiB/s" "vs host"
printf '|%s|%s|%s|\n' ---------------------------------------------- ------------ -----------
for row in "host itself (no container):t-host" "berth, outbound (pasta):t-berth-pasta" "berth, outbound (slirp4netns):t-berth-slirp" \
  "$pp:t-podman-pasta" "podman run --network slirp4netns:t-podman-slirp"; do
  printf '| %-44s | %10s | %9s |\n' "${row%%:*}" "$(m "${row##*:}")" "$(ratio "$(m "${row##*:}")" "$(m t-host)")"
done
echo
none=$(m r-none); pasta=$(m r-pasta); slirp=$(m r-slirp)
printf '| %-44s | %9s | %9s |\n' "berth run IMAGE -- true (median of $RUNS)" "time (ms)" "added"
printf '|%s|%s|%s|\n' ---------------------------------------------- ----------- -----------
printf '| %-44s | %9s | %9s |\n' "--network none" "$none" "-"
printf '| %-44s | %9s | %9s |\n' "outbound, pasta (the default)" "$pasta" "$(awk -v a="$pasta" -v b="$none" 'BEGIN{printf "%.1f", a-b}')"
printf '| %-44s | %9s | %9s |\n' "outbound, slirp4netns" "$slirp" "$(awk -v a="$slirp" -v b="$none" 'BEGIN{printf "%.1f", a-b}')"
# ok A OP B: met/MISSED, or - where a number is missing.
ok() { case "$1 $3" in -\ *|*\ -) echo "-";; *) awk -v a="$1" -v b="$3" "BEGIN{print (a $2 b)?\"met\":\"MISSED\"}";; esac; }
echo
echo "goals: pasta throughput >= 0.95 x the same pasta under podman (or alone):" \
  "$(ok "$(m t-berth-pasta)" ">=" "$(awk -v t="$(m t-podman-pasta)" 'BEGIN{print t == "-" ? "-" : 0.95 * t}')");" \
  "set-up <= 15 ms: $(ok "$(awk -v a="$pasta" -v b="$none" 'BEGIN{print a - b}')" "<=" 15)"

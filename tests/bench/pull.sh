#!/usr/bin/env bash
# Pull benchmark (not a test): `berth pull` vs `skopeo copy docker://… oci:…`
# vs `podman pull` of the same ~400 MB multi-layer image served by a loopback
# docker-registry, each run from a cold store, all as the user berthtest.
# Prints the medians of N runs (default 3), berth's peak RSS, and ratios.
#
#   sudo tests/bench/pull.sh            # builds berth --release first
#   sudo N=5 BERTH_BIN=target/release/berth tests/bench/pull.sh
. "$(dirname "$0")/common.sh"
N=${N:-3}

bench_image
serve_bench_image

s=$work/s
for i in $(seq "$N"); do
  # Interleaved so that load on this shared machine hits every tool alike.
  fresh "$s"
  timed "$work/t" as_user "$B" --root "$s/berth" pull -q --tls-verify=false "$ref" >>"$work/r-berth"
  fresh "$s"
  timed "$work/t" as_user skopeo copy -q --src-tls-verify=false "docker://$ref" "oci:$s/oci:bench" >>"$work/r-skopeo"
  fresh "$s"
  timed "$work/t" as_user podman --root "$s/root" --runroot "$s/run" "${PODMAN_OPTS[@]}" \
    pull -q --tls-verify=false "$ref" >>"$work/r-podman"
  log "run $i: berth $(tail -1 "$work/r-berth"), skopeo $(tail -1 "$work/r-skopeo"), podman $(tail -1 "$work/r-podman") (s, KiB)"
done
rm -rf "$s"

b=$(cut -d' ' -f1 "$work/r-berth" | median); b_rss=$(cut -d' ' -f2 "$work/r-berth" | median)
b_rss_max=$(cut -d' ' -f2 "$work/r-berth" | sort -n | tail -1)
sk=$(cut -d' ' -f1 "$work/r-skopeo" | median); sk_rss=$(cut -d' ' -f2 "$work/r-skopeo" | median)
p=$(cut -d' ' -f1 "$work/r-podman" | median); p_rss=$(cut -d' ' -f2 "$work/r-podman" | median)

machine
echo "image: $image_desc, from 127.0.0.1; medians of $N cold-store runs"
printf '| %-12s | %8s | %14s | %13s |\n' tool "time (s)" "peak RSS (MiB)" "time / berth"
printf '|%s|%s|%s|%s|\n' -------------- ---------- ---------------- ---------------
printf '| %-12s | %8s | %14s | %13s |\n' "berth pull" "$b" "$(mib "$b_rss")" "1.00"
printf '| %-12s | %8s | %14s | %13s |\n' "skopeo copy" "$sk" "$(mib "$sk_rss")" "$(ratio "$sk" "$b")"
printf '| %-12s | %8s | %14s | %13s |\n' "podman pull" "$p" "$(mib "$p_rss")" "$(ratio "$p" "$b")"
echo "goals: berth >= 3x faster than skopeo copy: $(awk -v r="$(ratio "$sk" "$b")" 'BEGIN{print (r>=3)?"met":"MISSED"}') ($(ratio "$sk" "$b")x);" \
  "peak RSS < 64 MiB: $(awk -v k="$b_rss_max" 'BEGIN{print (k<65536)?"met":"MISSED"}') (max $(mib "$b_rss_max") MiB)"

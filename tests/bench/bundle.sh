#!/usr/bin/env bash
# Bundle benchmark (not a test), on the ~400 MB image of tests/bench/pull.sh
# served by a loopback docker-registry, all as the user berthtest:
#  (a) pull + unpack to a runnable bundle from a cold store: `berth bundle`
#      vs `skopeo copy` + `umoci unpack --rootless` vs `podman pull` (which
#      leaves podman's store ready to run, not a bundle);
#  (b) a second bundle of the same image, store warm. Two berth numbers:
#      `berth bundle` writes a self-contained copy of the rootfs (it copies
#      every file), while a pod never copies: `berth run IMAGE -- true` mounts
#      an overlay of the cached layers, so its time (the whole run, container
#      included) is what a second pod of the image costs. Peers: `umoci unpack`
#      from the local layout, `podman run --rm IMAGE true`.
# Prints medians of N runs (default 3) and berth's peak RSS.
#
#   sudo tests/bench/bundle.sh            # builds berth --release first
#   sudo N=5 BERTH_BIN=target/release/berth tests/bench/bundle.sh
. "$(dirname "$0")/common.sh"
N=${N:-3}

bench_image
serve_bench_image

s=$work/s
for i in $(seq "$N"); do
  fresh "$s"
  timed "$work/t" as_user "$B" --root "$s/berth" bundle --tls-verify=false "$ref" "$s/b1" >>"$work/a-berth"
  timed "$work/t" as_user "$B" --root "$s/berth" bundle "$ref" "$s/b2" >>"$work/b-berth"
  # The first run right after a bundle write is slower (see README); both shown.
  timed "$work/t" as_user "$B" --root "$s/berth" run --network none "$ref" -- true >>"$work/b-run1"
  timed "$work/t" as_user "$B" --root "$s/berth" run --network none "$ref" -- true >>"$work/b-run"
  [ -x "$s/b1/rootfs/usr/bin/java" ] || [ -e "$s/b1/rootfs/bin/sh" ] || { log "berth bundle left no rootfs"; exit 1; }
  fresh "$s"
  timed "$work/t" as_user sh -c "skopeo copy -q --src-tls-verify=false 'docker://$ref' 'oci:$s/oci:bench' &&
    umoci unpack --rootless --image '$s/oci:bench' '$s/u1'" >>"$work/a-umoci"
  timed "$work/t" as_user umoci unpack --rootless --image "$s/oci:bench" "$s/u2" >>"$work/b-umoci"
  fresh "$s"
  timed "$work/t" as_user podman --root "$s/root" --runroot "$s/run" "${PODMAN_OPTS[@]}" \
    pull -q --tls-verify=false "$ref" >>"$work/a-podman"
  timed "$work/t" as_user podman --root "$s/root" --runroot "$s/run" "${PODMAN_OPTS[@]}" \
    run --rm --network=none "$ref" true >>"$work/b-podman"
  log "run $i: cold berth $(tail -1 "$work/a-berth"), skopeo+umoci $(tail -1 "$work/a-umoci")," \
    "podman $(tail -1 "$work/a-podman"); warm berth bundle $(tail -1 "$work/b-berth")," \
    "berth run $(tail -1 "$work/b-run") (s, KiB)"
done
rm -rf "$s"

row() { # label file reference-seconds
  printf '| %-44s | %8s | %14s | %12s |\n' "$1" "$(med "$2" 1)" "$(mib "$(med "$2" 2)")" "$(ratio "$(med "$2" 1)" "$3")"
}
machine
echo "image: $image_desc, from 127.0.0.1; medians of $N runs"
echo
echo "(a) pull + unpack to a runnable bundle, cold store"
printf '| %-44s | %8s | %14s | %12s |\n' tool "time (s)" "peak RSS (MiB)" "time / berth"
printf '|%s|%s|%s|%s|\n' ---------------------------------------------- ---------- ---------------- --------------
a=$(med "$work/a-berth" 1)
row "berth bundle" "$work/a-berth" "$a"
row "skopeo copy + umoci unpack --rootless" "$work/a-umoci" "$a"
row "podman pull (its store, not a bundle)" "$work/a-podman" "$a"
echo
echo "(b) a second bundle / container of the same image, warm store"
printf '| %-44s | %8s | %14s | %12s |\n' tool "time (s)" "peak RSS (MiB)" "time / berth run"
printf '|%s|%s|%s|%s|\n' ---------------------------------------------- ---------- ---------------- --------------
r=$(med "$work/b-run" 1)
row "berth run IMAGE -- true (overlay of layers)" "$work/b-run" "$r"
row "  same, first run just after berth bundle" "$work/b-run1" "$r"
row "berth bundle (self-contained rootfs copy)" "$work/b-berth" "$r"
row "umoci unpack --rootless (from oci layout)" "$work/b-umoci" "$r"
row "podman run --rm IMAGE true" "$work/b-podman" "$r"
rss_max=$(cat "$work/a-berth" "$work/b-berth" "$work/b-run" "$work/b-run1" | cut -d' ' -f2 | sort -n | tail -1)
ra=$(ratio "$(med "$work/a-umoci" 1)" "$a")
echo
echo "goals: (a) >= 2.5x faster than skopeo+umoci: $(awk -v r="$ra" 'BEGIN{print (r>=2.5)?"met":"MISSED"}') (${ra}x);" \
  "(b) second bundle < 50 ms: berth run $(awk -v t="$r" 'BEGIN{print (t<0.05)?"met":"MISSED"}') ($(awk -v t="$r" 'BEGIN{printf "%d", t*1000}') ms)," \
  "berth bundle $(awk -v t="$(med "$work/b-berth" 1)" 'BEGIN{print (t<0.05)?"met":"MISSED"}') ($(awk -v t="$(med "$work/b-berth" 1)" 'BEGIN{printf "%d", t*1000}') ms);" \
  "peak RSS < 128 MiB: $(awk -v k="$rss_max" 'BEGIN{print (k<131072)?"met":"MISSED"}') (max $(mib "$rss_max") MiB)"

#!/usr/bin/env bash
# `berth agent` benchmark (not a test): time from start to a live remoting
# channel, and 64 MiB both ways through it, with the stand-in agent jar and
# controller of tests/it/agent/ (compiled here with javac, never committed):
#   - direct: the stand-in agent started by the controller on the same JRE
#     tree, on the host (the floor);
#   - berth:  `berth agent` with a busybox build image and a JRE image made
#     from the host's JDK (jlink'd java.base, its ldd libraries, glibc's
#     loader), images cached;
#   - podman: `podman run -i` of the same images and command, when podman is
#     installed (it is not required);
#   - the jar cache: a build's 200 jars of 100 KiB (looked up by checksum and
#     sent on a miss, as remoting's JarLoader does) through `berth agent`
#     with a fresh jar cache (as every fresh container has) vs the
#     controller's shared one after a first build.
# Every command runs as the user berthtest; the controller as root. Medians
# of N interleaved rounds (default 10; 3 for the 64 MiB stream).
#
#   sudo tests/bench/agent.sh                 # builds berth --release first
#   sudo BERTH_BIN=target/release/berth N=20 tests/bench/agent.sh
. "$(dirname "$0")/common.sh"
N=${N:-10}
JDK=${JDK:-/usr/lib/jvm/java-17-openjdk-amd64}
mkdir -p "$work/ws"
chown berthtest: "$work/ws"
. "$repo/tests/lib/images.sh"

# The stand-ins.
mkdir -p "$work/classes"
"$JDK/bin/javac" --release 17 -d "$work/classes" "$repo"/tests/it/agent/*.java
"$JDK/bin/jar" --create --file "$work/agent.jar" --main-class Agent -C "$work/classes" Agent.class -C "$work/classes" Frames.class
chmod -R a+rX "$work/classes" "$work/agent.jar"

# The JRE image: java.base of the host's JDK, the libraries ldd lists, the loader.
jre=$work/jre-root
# With a CDS archive, as distribution JREs (Temurin's included) have.
"$JDK/bin/jlink" --add-modules java.base --strip-debug --no-header-files --no-man-pages --generate-cds-archive \
  --output "$jre/opt/java/openjdk" >"$work/jlink.log" 2>&1
mkdir -p "$jre/usr/lib/x86_64-linux-gnu" "$jre/usr/bin" "$jre/lib64"
ln -s usr/lib "$jre/lib"
for f in $(ldd "$jre"/opt/java/openjdk/bin/java "$jre"/opt/java/openjdk/lib/*.so "$jre"/opt/java/openjdk/lib/server/libjvm.so 2>/dev/null |
  awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\/.*ld-linux/ {print $1}' | grep -v "$jre" | sort -u); do
  cp "$(readlink -f "$f")" "$jre/usr/lib/x86_64-linux-gnu/$(basename "$f")"
done
ln -s /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$jre/lib64/ld-linux-x86-64.so.2"
ln -s ../../opt/java/openjdk/bin/java "$jre/usr/bin/java"
busybox_rootfs "$work/bb"

start_registry "$work"
push_rootfs "$work" "$jre" bench/jre:latest
push_rootfs "$work" "$work/bb" bench/busybox:latest
jre_img=127.0.0.1:$port/bench/jre:latest
bb_img=127.0.0.1:$port/bench/busybox:latest
"${U[@]}" "$B" pull -q --tls-verify=false "$jre_img"
"${U[@]}" "$B" pull -q --tls-verify=false "$bb_img"

controller() { "$JDK/bin/java" -cp "$work/classes" Controller "$@"; }
# The floor: the same JRE and jar on the host, started by its own path.
direct=("${U[@]}" "$jre/opt/java/openjdk/bin/java" -jar "$work/agent.jar" -workDir "$work/ws" -jar-cache "$work/ws/jars")
berth=("${U[@]}" "$B" agent --tls-verify=false --agent-image "$jre_img" --agent-jar "$work/agent.jar" "$bb_img")
# The same with --network none, as the podman row runs (the default outbound
# network starts pasta, which tests/bench/net.sh measures).
berth_none=("${U[@]}" "$B" agent --network none --tls-verify=false --agent-image "$jre_img" --agent-jar "$work/agent.jar" "$bb_img")
podman_cmd=()
if command -v podman >/dev/null; then
  P=(podman --root "$work/home/podman" --runroot "$work/home/podman-run" "${PODMAN_OPTS[@]}")
  "${U[@]}" "${P[@]}" pull -q --tls-verify=false "$jre_img" "$bb_img" >/dev/null
  podman_cmd=("${U[@]}" "${P[@]}" run -i --rm --network=none --mount "type=image,source=$jre_img,destination=/.berth/agent/jre"
    -v "$work/agent.jar:/.berth/agent/agent.jar:ro" "$bb_img"
    /.berth/agent/jre/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 --library-path
    /.berth/agent/jre/opt/java/openjdk/lib:/.berth/agent/jre/opt/java/openjdk/lib/server:/.berth/agent/jre/usr/lib/x86_64-linux-gnu
    /.berth/agent/jre/opt/java/openjdk/bin/java -Djdk.lang.Process.launchMechanism=VFORK -jar /.berth/agent/agent.jar
    -workDir /tmp -jar-cache /tmp/jars)
else
  log "podman is not installed: no podman column"
fi

# up NAME CMD...: one start-to-channel time (ms) appended to $work/up-NAME.
up() {
  local name=$1; shift
  controller close -- "$@" 2>"$work/err" | awk '/^channel up/ {print $3}' >>"$work/up-$name"
  tail -1 "$work/up-$name" | grep -q . || { log "no channel: $name"; tail -5 "$work/err" >&2; exit 1; }
}
# stream NAME CMD...: 64 MiB each way, ms appended to $work/mb-NAME.
stream() {
  local name=$1; shift
  controller echo:64 close -- "$@" 2>"$work/err" | awk '/^echo/ {split($6, a, "="); print a[2]}' >>"$work/mb-$name"
}

# Warm-up, then interleaved rounds so background load hits all alike.
up warm "${direct[@]}"; up warm "${berth[@]}"; up warm "${berth_none[@]}"
[ ${#podman_cmd[@]} -gt 0 ] && up warm "${podman_cmd[@]}"
for _ in $(seq "$N"); do
  up direct "${direct[@]}"
  up berth "${berth[@]}"
  up berth-none "${berth_none[@]}"
  [ ${#podman_cmd[@]} -gt 0 ] && up podman "${podman_cmd[@]}"
done
for _ in 1 2 3; do
  stream direct "${direct[@]}"
  stream berth "${berth[@]}"
done

# jars KEY: one build's jar traffic with the jar cache of controller KEY.
jars() {
  controller jars:200:100 close -- "${berth[@]:0:${#berth[@]}-1}" --jenkins-url "http://$1/" "$bb_img" 2>"$work/err" | awk '/^jars/ {print $3, $4, $5}'
}
jars shared >/dev/null
for i in 1 2 3; do
  jars "fresh-$i" >>"$work/jars-fresh"
  jars shared >>"$work/jars-shared"
done
jar_ms() { awk '{split($3, a, "="); print a[2]}' "$1" | median; }
jar_line() { head -1 "$1" | awk '{print $1, $2}'; }

d=$(median <"$work/up-direct"); b=$(median <"$work/up-berth"); bn=$(median <"$work/up-berth-none"); p=$(median <"$work/up-podman" 2>/dev/null || echo -)
sd=$(median <"$work/mb-direct"); sb=$(median <"$work/mb-berth")
echo "machine: $(nproc) cores, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| start to channel up (median of $N) | ms |"
echo "|---|---|"
echo "| stand-in agent, direct | $d |"
echo "| \`berth agent\` (busybox + injected JRE; outbound network) | $b (+$(awk -v a="$b" -v b="$d" 'BEGIN {print a - b}')) |"
echo "| \`berth agent --network none\` | $bn (+$(awk -v a="$bn" -v b="$d" 'BEGIN {print a - b}')) |"
echo "| \`podman run -i --network=none\` (same images, command) | $p |"
echo
echo "| 64 MiB each way (median of 3) | ms | MB/s each way |"
echo "|---|---|---|"
echo "| direct | $sd | $(awk -v t="$sd" 'BEGIN {printf "%.1f", 67.108864 / (t / 1000)}') |"
echo "| \`berth agent\` | $sb | $(awk -v t="$sb" 'BEGIN {printf "%.1f", 67.108864 / (t / 1000)}') |"
echo
echo "| a second build's 200 jars of 100 KiB (median of 3) | jars sent | ms |"
echo "|---|---|---|"
echo "| fresh jar cache (no sharing) | $(jar_line "$work/jars-fresh") | $(jar_ms "$work/jars-fresh") |"
echo "| the controller's shared jar cache | $(jar_line "$work/jars-shared") | $(jar_ms "$work/jars-shared") |"

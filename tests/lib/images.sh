# Shell helpers shared by tests/demo and the benchmarks: a docker-registry on
# 127.0.0.1 and a busybox image pushed to it through the registry HTTP API.
# Needs: docker-registry, busybox-static, curl, python3, gzip, tar.

# start_registry WORKDIR: sets $port and $reg_pid; the caller kills $reg_pid.
start_registry() {
  local work=$1
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$work/registry"
  cat > "$work/registry.yml" <<YML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: 127.0.0.1:$port}
YML
  docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
  reg_pid=$!
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && return 0; sleep 0.1; done
  echo "registry did not start: $(cat "$work/registry.log")" >&2
  return 1
}

# push_blob REPO FILE: uploads FILE, prints its digest.
push_blob() {
  local d loc
  d="sha256:$(sha256sum "$2" | cut -d' ' -f1)"
  loc=$(curl -sfi -X POST "http://127.0.0.1:$port/v2/$1/blobs/uploads/" | tr -d '\r' | awk -F': ' 'tolower($1)=="location"{print $2}')
  case "$loc" in http*) ;; *) loc="http://127.0.0.1:$port$loc";; esac
  curl -sf -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$2" "$loc&digest=$d" >/dev/null
  echo "$d"
}

# push_rootfs WORKDIR ROOTFS REPO:TAG [CMD-JSON]: one gzip layer of ROOTFS as an OCI image.
push_rootfs() {
  local work=$1 root=$2 repo=${3%:*} tag=${3##*:} cmd=${4:-'["sh"]'}
  local tmp; tmp=$(mktemp -d "$work/img.XXXXXX")
  tar --numeric-owner --owner=0 --group=0 -C "$root" -cf "$tmp/layer.tar" .
  local diff_id="sha256:$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)"
  gzip -n -1 < "$tmp/layer.tar" > "$tmp/layer.tar.gz"
  printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":%s},"rootfs":{"type":"layers","diff_ids":["%s"]}}' "$cmd" "$diff_id" > "$tmp/config.json"
  local layer_d config_d
  layer_d=$(push_blob "$repo" "$tmp/layer.tar.gz")
  config_d=$(push_blob "$repo" "$tmp/config.json")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%d}]}' \
    "$config_d" "$(stat -c %s "$tmp/config.json")" "$layer_d" "$(stat -c %s "$tmp/layer.tar.gz")" > "$tmp/manifest.json"
  curl -sf -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary "@$tmp/manifest.json" \
    "http://127.0.0.1:$port/v2/$repo/manifests/$tag" >/dev/null
  rm -rf "$tmp"
}

# busybox_rootfs DIR: a minimal root filesystem from busybox-static.
busybox_rootfs() {
  local root=$1
  mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/root"
  cp /bin/busybox "$root/bin/busybox"
  local a
  for a in $("$root/bin/busybox" --list); do [ "$a" = busybox ] || ln -sf busybox "$root/bin/$a"; done
  echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
  echo 'nobody:x:65534:65534:nobody:/:/bin/false' >> "$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
  chmod 1777 "$root/tmp"
}

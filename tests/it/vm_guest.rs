//! berth in a Linux guest with a pure cgroup v2 hierarchy (QEMU, software
//! emulation; see `common::vm`): what this hybrid-cgroup host cannot show.
//! berth runs as the unprivileged guest user `u`, from an OCI layout. The
//! guest has no network device (nor /dev/net/tun): pods use --network none.

use std::time::Duration;

use crate::common::vm::{values, Guest};
use crate::common::*;

/// The guest with a busybox image at `oci:/images/bb:v1`.
fn guest() -> Option<(Guest, tempfile::TempDir)> {
    let guest = Guest::new()?;
    let dir = tempfile::tempdir().unwrap();
    let img = Image::new(vec![Layer::new(&busybox_tar_with(&["dd"]), Comp::Gzip, false)]);
    let layout = dir.path().join("bb");
    write_oci_layout(&layout, &[LayoutEntry::Image(&img, "v1")]);
    Some((guest.file(&layout, "/images/bb"), dir))
}

/// berth runs unchanged as an unprivileged user in a guest under a small
/// init: the container's output and exit status come through.
#[test]
fn vm_guest_berth_runs_as_a_user_under_a_small_init() {
    let Some((g, _dir)) = guest() else { return };
    let r = g.run(
        r#"
set +e
echo "R:controllers=$(cat /sys/fs/cgroup/cgroup.controllers)"
as-user berth run --network none oci:/images/bb:v1 -- sh -c 'echo "R:out=hello $(id -u)"; exit 3' 2>/tmp/err
echo "R:status=$?"
"#,
        Duration::from_secs(120),
    );
    let v = values(&r.output);
    assert_eq!(r.status, Some(0), "{}", r.output);
    let controllers: Vec<&str> = v["controllers"].split_whitespace().collect();
    for c in ["cpu", "memory", "pids"] {
        assert!(controllers.contains(&c), "{controllers:?}");
    }
    assert_eq!(v.get("out").map(String::as_str), Some("hello 0"), "{}", r.output);
    assert_eq!(v.get("status").map(String::as_str), Some("3"), "{}", r.output);
}


/// Limits in a cgroup delegated to the user, as `systemd-run --user --scope
/// -p Delegate=yes` makes one: applied to each container, enforced, the pod
/// capped, peak memory reported, the pod's cgroup removed at the end or by
/// the next berth command after a SIGKILL; and a warning, not a failure,
/// where berth may not make the cgroups.
#[test]
fn vm_guest_cgroup_v2_limits_in_a_delegated_tree() {
    let Some((g, _dir)) = guest() else { return };
    let r = g.run(
        r#"
set +e
as-user berth pull oci:/images/bb:v1 2>/dev/null
IMG=localhost/bb:v1
real() { grep -v 'subordinate id range' "$1" | grep . || true; }
poll() { i=0; while ! eval "$1" 2>/dev/null; do i=$((i+1)); [ $i -lt 300 ] || { echo "R:timeout=$1"; return 1; }; sleep 0.1; done; }

# Each container gets its limits; the pod's cgroup goes at the end.
as-user-in j1 berth run --network none --memory 32Mi --cpus 500m $IMG -- sh -c 'echo "R:mem=$(cat /sys/fs/cgroup/memory.max)"; echo "R:cpu=$(cat /sys/fs/cgroup/cpu.max)"; echo "R:own=$(cat /proc/self/cgroup)"' 2>/tmp/e1
echo "R:j1_status=$?"
echo "R:j1_stderr=$(real /tmp/e1 | tr '\n' '|')"
echo "R:j1_left=$(cd /sys/fs/cgroup/j1 && find . -mindepth 1 -type d | tr '\n' ' ')"

# The memory limit is enforced: the OOM killer's SIGKILL comes through.
as-user-in j2 berth run --network none --memory 16Mi $IMG -- dd if=/dev/zero of=/dev/null bs=64M count=1 2>/tmp/e2
echo "R:oom_status=$?"

# A running pod: its cgroups from outside, ps, exec from outside and from
# inside the delegated tree, then berth SIGKILLed.
as-user-in j3 berth run --network none --name p3 --pids-limit 40 $IMG -- sh -c 'echo started; sleep 60' >/tmp/o3 2>/tmp/e3 &
poll 'grep -q started /tmp/o3'
P=/sys/fs/cgroup/j3/p3.pod
echo "R:pids_max=$(cat $P/pids.max)"
echo "R:subtree=$(cat $P/cgroup.subtree_control)"
echo "R:init_procs=$(wc -l < $P/berth.init/cgroup.procs)"
echo "R:bb_procs=$(wc -l < $P/bb/cgroup.procs)"
echo "R:supervisor=$(wc -l < /sys/fs/cgroup/j3/berth.supervisor/cgroup.procs)"
echo "R:ps=$(as-user berth ps | grep '^p3' | tr '\t' ' ')"
as-user berth -v exec p3 bb -- sh -c 'exit 5' 2>/tmp/e3x
echo "R:exec_outside=$?"
as-user berth -v exec p3 bb -- sleep 3 2>>/tmp/e3x &
sleep 1
echo "R:bb_procs_outside=$(wc -l < $P/bb/cgroup.procs)"
wait $!
sh -c 'echo $$ > /sys/fs/cgroup/j3/berth.supervisor/cgroup.procs; exec as-user berth -v exec p3 bb -- sleep 3' 2>>/tmp/e3x &
poll '[ $(wc -l < $P/bb/cgroup.procs) -gt 1 ]'
echo "R:bb_procs_inside=$(wc -l < $P/bb/cgroup.procs)"
wait $!
echo "R:exec_stderr=$(real /tmp/e3x | tr '\n' '|')"
kill -9 $(cat /sys/fs/cgroup/j3/berth.supervisor/cgroup.procs)
poll 'grep -q "populated 0" $P/cgroup.events'
echo "R:after_kill=$(ls -d $P 2>/dev/null)"
as-user berth ps -a >/dev/null 2>&1
echo "R:after_next=$(ls -d $P 2>/dev/null)"

# berth shares its cgroup with a shell: it moves nobody, warns and runs.
as-user-in j4 sh -c "berth run --network none --memory 32Mi $IMG -- true; true" 2>/tmp/e4
echo "R:shared_stderr=$(real /tmp/e4 | tr '\n' '|')"

# A cgroup not delegated to the user: the same.
as-user berth run --network none --memory 32Mi $IMG -- sh -c 'exit 6' 2>/tmp/e5
echo "R:undelegated_status=$?"
echo "R:undelegated_stderr=$(real /tmp/e5 | tr '\n' '|')"

as-user-in j6 berth -v run --network none $IMG -- true 2>/tmp/e6
echo "R:peak=$(grep 'peak memory' /tmp/e6)"
"#,
        Duration::from_secs(300),
    );
    let v = values(&r.output);
    let get = |k: &str| v.get(k).map(String::as_str).unwrap_or_else(|| panic!("no {k} in the guest's output:\n{}", r.output));
    assert_eq!(r.status, Some(0), "{}", r.output);

    assert_eq!(get("j1_status"), "0", "{}", r.output);
    assert_eq!(get("mem"), "33554432");
    assert_eq!(get("cpu"), "50000 100000");
    assert_eq!(get("own"), "0::/", "a container sees only its own cgroup");
    assert_eq!(get("j1_stderr"), "", "no warning where limits apply");
    assert_eq!(get("j1_left"), "./berth.supervisor", "the pod's cgroup is removed");

    assert_eq!(get("oom_status"), "137", "{}", r.output);

    assert_eq!(get("pids_max"), "40");
    assert_eq!(get("subtree"), "cpu memory pids");
    assert_eq!(get("init_procs"), "1", "the pod process alone in berth.init");
    assert_eq!(get("bb_procs"), "1", "the container's init (sh execs sleep) in its cgroup");
    assert_eq!(get("supervisor"), "1", "berth alone in berth.supervisor");
    let ps: Vec<&str> = get("ps").split_whitespace().collect();
    assert!(ps.len() >= 5 && ps[1] == "running" && ps[4] == "MiB", "ps: {ps:?}");
    let mib: f64 = ps[3].parse().unwrap();
    assert!(mib > 0.1 && mib < 64.0, "peak {mib} MiB");
    assert_eq!(get("exec_outside"), "5");
    assert_eq!(get("bb_procs_outside"), "1", "from outside the tree the command stays out of the container's cgroup");
    // (with, for a moment, libcontainer's helper that moved it there)
    assert!(get("bb_procs_inside").parse::<u32>().unwrap() >= 2, "from inside the tree it joins it");
    assert_eq!(get("exec_stderr").matches("outside the pod's cgroup").count(), 2, "{}", get("exec_stderr"));
    assert_eq!(get("after_kill"), "/sys/fs/cgroup/j3/p3.pod", "a SIGKILLed berth cannot clean up");
    assert_eq!(get("after_next"), "", "the next berth command removes it");

    let shared = get("shared_stderr");
    assert!(shared.contains("resource limits are not applied") && shared.contains("also holds other processes"), "{shared}");
    assert_eq!(shared.matches('|').count(), 1, "one line: {shared}");

    assert_eq!(get("undelegated_status"), "6");
    let und = get("undelegated_stderr");
    assert!(und.contains("resource limits are not applied") && und.contains("Permission denied"), "{und}");
    assert_eq!(und.matches('|').count(), 1, "one line: {und}");

    assert!(get("peak").contains("the pod cgroup's memory.peak"), "{}", get("peak"));
}

//! The default seccomp profile loaded by libcontainer 0.7's own loader
//! (what berth's pod runtime uses), in a child process, then probed with
//! syscalls whose unfiltered result differs from the filtered one.
//!
//! The child is this test binary run again with `BERTH_SECCOMP_CHILD` set:
//! loading a filter is irreversible, so it must not happen in the test
//! harness's own process.

use std::process::Command;

use berth::bundle::{default_seccomp, libcontainer_compat};

use crate::common::test_name;

const CHILD_ENV: &str = "BERTH_SECCOMP_CHILD";

fn errno_of(ret: libc::c_long) -> String {
    if ret == -1 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0).to_string()
    } else {
        "ok".to_string()
    }
}

/// Runs in the child: loads the profile (as libcontainer reads it from
/// config.json), then prints one `probe=result` line per syscall.
fn child(profile: &str) {
    let subscriber = tracing_subscriber::fmt().with_writer(std::io::stderr).with_max_level(tracing::Level::WARN).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut spec = oci_spec::runtime::Spec::default();
    spec.linux_mut().get_or_insert_with(Default::default).set_seccomp(Some(default_seccomp()));
    if profile == "compat" || profile == "precompiled" {
        libcontainer_compat(&mut spec);
    }
    let json = serde_json::to_string(spec.linux().as_ref().unwrap().seccomp().as_ref().unwrap()).unwrap();
    let seccomp: libcontainer::oci_spec::runtime::LinuxSeccomp = serde_json::from_str(&json).unwrap();
    // berth's pod runtime compiles the profile once, ahead of the container.
    let precompiled = (profile == "precompiled")
        .then(|| berth::runtime::pod::seccomp::compile(spec.linux().as_ref().unwrap().seccomp().as_ref().unwrap()).unwrap());
    nix::sys::prctl::set_no_new_privs().unwrap();
    match precompiled {
        Some(filter) => filter.load().unwrap(),
        None => {
            libcontainer::seccomp::initialize_seccomp(&seccomp).unwrap();
        }
    }

    let mut out = String::new();
    let mut probe = |name: &str, ret: libc::c_long| out.push_str(&format!("{name}={}\n", errno_of(ret)));
    unsafe {
        probe("getpid", libc::syscall(libc::SYS_getpid));
        let pid = libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0);
        if pid == 0 {
            libc::_exit(0);
        }
        probe("fork", pid);
        let pid = libc::syscall(libc::SYS_clone, (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_long, 0, 0, 0, 0);
        if pid == 0 {
            libc::_exit(0);
        }
        probe("clone_newuser", pid);
        probe("clone3", libc::syscall(libc::SYS_clone3, 0, 0));
        probe("unshare_newuser", libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER as libc::c_long));
        probe("personality_query", libc::syscall(libc::SYS_personality, 0xffff_ffffu32 as libc::c_long));
        probe("personality_norandom", libc::syscall(libc::SYS_personality, 0x0040000 as libc::c_long));
        probe("socket_vsock", libc::syscall(libc::SYS_socket, libc::AF_VSOCK as libc::c_long, libc::SOCK_STREAM as libc::c_long, 0));
        probe("socket_unix", libc::syscall(libc::SYS_socket, libc::AF_UNIX as libc::c_long, libc::SOCK_STREAM as libc::c_long, 0));
        probe("keyctl", libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0));
        probe("kexec_load", libc::syscall(libc::SYS_kexec_load, 0, 0, 0, 0));
        probe("chroot", libc::syscall(libc::SYS_chroot, c"/".as_ptr()));
        probe("mount", libc::syscall(libc::SYS_mount, c"none".as_ptr(), c"/nonexistent".as_ptr(), c"tmpfs".as_ptr(), 0, 0));
    }
    print!("{out}");
    std::process::exit(0);
}

fn run_child(profile: &str) -> (String, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &test_name(module_path!(), "child_entry"), "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, profile)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "child failed: {:?}\n{stdout}\n{stderr}", out.status);
    (stdout, stderr)
}

/// Entry point of the child; a no-op when run as an ordinary test.
#[test]
fn child_entry() {
    if let Ok(profile) = std::env::var(CHILD_ENV) {
        child(&profile);
    }
}

#[test]
fn libcontainer_loads_the_default_profile_with_docker_semantics() {
    assert_docker_semantics("compat");
}

/// What the pod runtime loads instead: the same profile compiled by berth
/// (`runtime::seccomp`) and loaded as a ready BPF program.
#[test]
fn the_precompiled_default_profile_has_docker_semantics() {
    assert_docker_semantics("precompiled");
}

fn assert_docker_semantics(mode: &str) {
    let (stdout, stderr) = run_child(mode);
    let eperm = libc::EPERM.to_string();
    let enosys = libc::ENOSYS.to_string();
    let expect = [
        ("getpid", "ok"),
        ("fork", "ok"),
        ("clone_newuser", eperm.as_str()),
        ("clone3", enosys.as_str()),
        ("unshare_newuser", eperm.as_str()),
        ("personality_query", "ok"),
        ("personality_norandom", eperm.as_str()),
        ("socket_vsock", eperm.as_str()),
        ("socket_unix", "ok"),
        ("keyctl", eperm.as_str()),
        ("kexec_load", eperm.as_str()),
        ("chroot", "ok"),
        ("mount", eperm.as_str()),
    ];
    for (probe, want) in expect {
        let line = format!("{probe}={want}");
        assert!(stdout.lines().any(|l| l.split(' ').next_back() == Some(line.as_str())), "want {line} in:\n{stdout}");
    }
    // Every syscall name resolves in this libseccomp: libcontainer warns
    // once per unknown name at every container start.
    assert!(!stderr.contains("failed to resolve syscall"), "{stderr}");
}

/// Why [`libcontainer_compat`] exists: libcontainer 0.7 reads
/// SCMP_CMP_MASKED_EQ's operands the other way round from runc and the
/// runtime spec, and the spec-correct clone rule then allows every clone,
/// user namespaces included.
#[test]
fn libcontainer_without_compat_fails_open_on_clone_flags() {
    let (stdout, _) = run_child("spec");
    assert!(stdout.lines().any(|l| l.split(' ').next_back() == Some("clone_newuser=ok")), "{stdout}");
}

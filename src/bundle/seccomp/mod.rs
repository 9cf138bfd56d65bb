//! The default seccomp profile, with the semantics of Docker's (moby's
//! `profiles/seccomp/default.json`, which podman's containers-common profile
//! also derives from):
//!
//! * default action `SCMP_ACT_ERRNO` with `defaultErrnoRet` EPERM;
//! * one allow rule for the syscalls every container may use, the ones of
//!   the native architecture, and the capability-gated groups whose
//!   capability the container holds ([`syscalls`] holds the lists as data);
//! * argument filters: `personality` only for the harmless personas,
//!   `socket` for every family except `AF_VSOCK`, and — without
//!   CAP_SYS_ADMIN — `clone` only without namespace flags, while `clone3`
//!   fails with ENOSYS (its flags live in memory seccomp cannot read), so
//!   that glibc falls back to `clone`;
//! * the architectures of the native family (x86_64 + x86 + x32, or
//!   aarch64 + arm), so 32-bit syscalls are filtered too.

mod syscalls;

use std::collections::BTreeSet;

use oci_spec::runtime::{
    Arch, Capabilities, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder, LinuxSeccompOperator,
    LinuxSyscall,
};

use super::spec::default_capabilities;
use oci_spec::runtime::Spec;
use oci_spec::runtime::Capability;

/// Namespace flags of `clone(2)`: CLONE_NEWNS, CLONE_NEWCGROUP,
/// CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// `personality(2)` values allowed: PER_LINUX, PER_LINUX32, UNAME26,
/// UNAME26|PER_LINUX32, and 0xffffffff (query).
const PERSONAS: [u64; 5] = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

const AF_VSOCK: u64 = 40;

/// The profile for Docker's default capability set.
pub fn default_seccomp() -> LinuxSeccomp {
    seccomp_for(&default_capabilities())
}

/// The profile for a container holding `caps` (its bounding set).
pub fn seccomp_for(caps: &Capabilities) -> LinuxSeccomp {
    let sys_admin = caps.contains(&Capability::SysAdmin);

    let mut allowed: BTreeSet<&str> = syscalls::ALLOW.iter().copied().collect();
    allowed.extend(syscalls::ALLOW_NATIVE_ARCH);
    for (cap, names) in syscalls::ALLOW_WITH_CAP {
        if caps.contains(cap) {
            allowed.extend(names.iter().copied());
        }
    }

    let mut rules = vec![syscall(&allowed.into_iter().collect::<Vec<_>>(), LinuxSeccompAction::ScmpActAllow, None, vec![])];
    for persona in PERSONAS {
        rules.push(allow_if("personality", arg(0, LinuxSeccompOperator::ScmpCmpEq, persona, None)));
    }
    rules.push(allow_if("socket", arg(0, LinuxSeccompOperator::ScmpCmpNe, AF_VSOCK, None)));
    if !sys_admin {
        // clone without any namespace flag: (flags & MASK) == 0, written as
        // the runtime spec, runc and crun read SCMP_CMP_MASKED_EQ
        // (value = mask, valueTwo = datum). See [`libcontainer_compat`].
        let masked = LinuxSeccompOperator::ScmpCmpMaskedEq;
        rules.push(allow_if("clone", arg(clone_flags_arg(), masked, CLONE_NAMESPACE_FLAGS, Some(0))));
        rules.push(syscall(&["clone3"], LinuxSeccompAction::ScmpActErrno, Some(libc::ENOSYS as u32), vec![]));
    }

    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(LinuxSeccompAction::ScmpActErrno);
    profile.set_default_errno_ret(Some(libc::EPERM as u32));
    profile.set_architectures(native_architectures());
    profile.set_syscalls(Some(rules));
    profile
}

/// Rewrites `spec`'s seccomp profile for youki's libcontainer 0.7, which
/// reads SCMP_CMP_MASKED_EQ the other way round (valueTwo as the mask,
/// value as the datum). libseccomp reduces the datum to `datum & mask`, so
/// the spec-correct `clone` rule would read `(flags & 0) == 0` there and
/// allow every clone, user namespaces included. The pod runtime calls this
/// on every spec it hands to libcontainer.
pub fn libcontainer_compat(spec: &mut Spec) {
    let Some(seccomp) = spec.linux_mut().as_mut().and_then(|l| l.seccomp_mut().as_mut()) else {
        return;
    };
    let Some(rules) = seccomp.syscalls().clone() else {
        return;
    };
    let rules = rules
        .into_iter()
        .map(|mut rule| {
            if let Some(args) = rule.args().clone() {
                let swapped = args
                    .into_iter()
                    .map(|a| match a.op() {
                        LinuxSeccompOperator::ScmpCmpMaskedEq => {
                            arg(a.index(), a.op(), a.value_two().unwrap_or(0), Some(a.value()))
                        }
                        _ => a,
                    })
                    .collect();
                rule.set_args(Some(swapped));
            }
            rule
        })
        .collect();
    seccomp.set_syscalls(Some(rules));
}

/// s390 passes clone's flags second; every other architecture first.
fn clone_flags_arg() -> usize {
    if cfg!(target_arch = "s390x") {
        1
    } else {
        0
    }
}

fn native_architectures() -> Option<Vec<Arch>> {
    if cfg!(target_arch = "x86_64") {
        Some(vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32])
    } else if cfg!(target_arch = "aarch64") {
        Some(vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm])
    } else {
        // Only the native architecture (libseccomp's default).
        None
    }
}

fn syscall(names: &[&str], action: LinuxSeccompAction, errno: Option<u32>, args: Vec<LinuxSeccompArg>) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(names.iter().map(|n| n.to_string()).collect());
    s.set_action(action);
    s.set_errno_ret(errno);
    s.set_args(if args.is_empty() { None } else { Some(args) });
    s
}

fn allow_if(name: &str, condition: LinuxSeccompArg) -> LinuxSyscall {
    syscall(&[name], LinuxSeccompAction::ScmpActAllow, None, vec![condition])
}

fn arg(index: usize, op: LinuxSeccompOperator, value: u64, value_two: Option<u64>) -> LinuxSeccompArg {
    let b = LinuxSeccompArgBuilder::default().index(index).op(op).value(value);
    let b = match value_two {
        Some(v) => b.value_two(v),
        None => b,
    };
    // Every field has a default (`#[builder(default)]`): build cannot fail.
    b.build().expect("LinuxSeccompArg has defaults for all fields")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules_for<'a>(p: &'a LinuxSeccomp, name: &str) -> Vec<&'a LinuxSyscall> {
        p.syscalls().as_ref().unwrap().iter().filter(|s| s.names().iter().any(|n| n == name)).collect()
    }

    fn unconditionally_allowed(p: &LinuxSeccomp, name: &str) -> bool {
        rules_for(p, name).iter().any(|r| r.action() == LinuxSeccompAction::ScmpActAllow && r.args().is_none())
    }

    #[test]
    fn default_profile_shape() {
        let p = default_seccomp();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(libc::EPERM as u32));
        #[cfg(target_arch = "x86_64")]
        assert_eq!(p.architectures().as_deref(), Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..]));
        for name in ["read", "write", "execve", "exit_group", "openat", "wait4", "chroot", "setuid"] {
            assert!(unconditionally_allowed(&p, name), "{name} should be allowed");
        }
        #[cfg(target_arch = "x86_64")]
        assert!(unconditionally_allowed(&p, "arch_prctl"));
        // Not allowed at all without the capability (the default action).
        for name in ["kexec_load", "mount", "umount2", "unshare", "setns", "bpf", "ptrace_bogus", "reboot", "init_module", "open_by_handle_at", "keyctl", "add_key"] {
            assert!(rules_for(&p, name).is_empty(), "{name} should fall to the default action");
        }
        // clone: only without namespace flags; clone3: ENOSYS.
        let clone = rules_for(&p, "clone");
        assert_eq!(clone.len(), 1);
        let a = clone[0].args().as_ref().unwrap()[0];
        assert_eq!((a.value(), a.value_two()), (CLONE_NAMESPACE_FLAGS, Some(0)));
        assert_eq!(a.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        let clone3 = rules_for(&p, "clone3");
        assert_eq!(clone3.len(), 1);
        assert_eq!((clone3[0].action(), clone3[0].errno_ret()), (LinuxSeccompAction::ScmpActErrno, Some(libc::ENOSYS as u32)));
        assert_eq!(rules_for(&p, "personality").len(), 5);
        // The whole profile serialises as the runtime spec has it.
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(json["defaultErrnoRet"], 1);
        assert!(json["syscalls"].as_array().unwrap().iter().any(|s| s["names"][0] == "clone3" && s["errnoRet"] == 38));
        let back: LinuxSeccomp = serde_json::from_value(json).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn sys_admin_unlocks_its_group() {
        let mut caps = default_capabilities();
        caps.insert(Capability::SysAdmin);
        let p = seccomp_for(&caps);
        for name in ["mount", "unshare", "setns", "clone", "clone3"] {
            assert!(unconditionally_allowed(&p, name), "{name}");
        }
        assert!(rules_for(&p, "clone3").iter().all(|r| r.action() == LinuxSeccompAction::ScmpActAllow));
        // Without CHROOT, chroot is gone.
        let mut caps = default_capabilities();
        caps.remove(&Capability::SysChroot);
        assert!(rules_for(&seccomp_for(&caps), "chroot").is_empty());
    }
}

#[cfg(test)]
mod compat_tests {
    use super::*;

    #[test]
    fn libcontainer_compat_swaps_only_masked_eq_operands() {
        let mut spec = Spec::default();
        spec.linux_mut().get_or_insert_with(Default::default).set_seccomp(Some(default_seccomp()));
        libcontainer_compat(&mut spec);
        let p = spec.linux().as_ref().unwrap().seccomp().clone().unwrap();
        let rules = p.syscalls().as_ref().unwrap();
        let clone = rules.iter().find(|r| r.names()[0] == "clone").unwrap();
        let a = clone.args().as_ref().unwrap()[0];
        assert_eq!((a.value(), a.value_two()), (0, Some(CLONE_NAMESPACE_FLAGS)));
        let socket = rules.iter().find(|r| r.names()[0] == "socket").unwrap();
        assert_eq!(socket.args().as_ref().unwrap()[0].value(), AF_VSOCK);
        assert_eq!(rules.len(), default_seccomp().syscalls().as_ref().unwrap().len());
    }
}

//! The pod's network namespace, by mode: `none` gets loopback only;
//! `outbound` gets a namespace served by a network helper ([`crate::net`],
//! started here, in the host's network namespace, before the pod process
//! joins the new one); `host` keeps the host's.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::net::{self, netns, Helper, NetError, NetOptions};
use crate::runtime::plan::PodPlan;

/// Moves the pod process into a fresh network namespace pinned at
/// `dir/netns`, served by a helper started first. The helper sets the
/// namespace up while the pod prepares its bundles: call
/// [`Helper::wait_ready`] before a container starts.
pub(super) fn outbound(plan: &PodPlan, dir: &Path) -> Result<Helper, NetError> {
    // Fail with the clear reasons before making anything.
    net::check_tun()?;
    net::find()?;
    let pin = dir.join("netns");
    let setup = |what: &'static str| move |source: io::Error| NetError::Namespace { what, source };
    netns::create(&pin).map_err(setup("making the pod's network namespace"))?;
    let opts = NetOptions { netns: &pin, ports: &plan.ports, host_loopback: plan.host_loopback, work_dir: dir };
    let helper = Helper::spawn(&opts)?;
    let joined = netns::enter(&pin).and_then(|()| loopback_up());
    if let Err(e) = joined {
        helper.stop();
        return Err(setup("joining the pod's network namespace")(e));
    }
    Ok(helper)
}

/// Sets `IFF_UP` on `lo` in the current network namespace.
pub fn loopback_up() -> io::Result<()> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data; the name is NUL-terminated within IFNAMSIZ.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: valid socket and ifreq pointer for these two ioctls.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

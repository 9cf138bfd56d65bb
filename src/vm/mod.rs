//! `--isolation vm`: the whole pod inside one QEMU microVM.
//!
//! The host side provisions as in container mode (images into the store,
//! layers into the cache, the [`crate::runtime::PodPlan`]), then:
//! - [`kernel`]: the guest kernel and its modules (`berth vm setup`);
//! - [`initramfs`] (over [`cpio`]): the guest's initramfs, berth itself as
//!   `/init`, generated without root and cached by content;
//! - [`rootfs`]: each image flattened once into a read-only EROFS image,
//!   cached by its layers, attached as a read-only disk;
//! - [`virtiofs`]: the workspace shared through virtiofsd, rootless;
//! - [`qemu`]: the VMM's command line and process, confined by [`jail`];
//! - [`proto`]: the framed protocol over one virtio-serial port that carries
//!   the plan in and stdio, signals and the exit status;
//! - [`host`]: berth's side while the VM runs; [`guest`]: berth as the
//!   guest's init, which runs the pod with the same runtime as on the host.

pub mod cpio;
pub mod guest;
mod guest_net;
pub mod host;
pub mod initramfs;
pub mod jail;
pub mod kernel;
pub mod plan;
pub mod proto;
pub mod qemu;
pub mod rootfs;
pub mod virtiofs;

/// Sets or clears `O_NONBLOCK` on `fd` (the control port and socket, the
/// relay's pipes).
fn set_nonblocking(fd: std::os::fd::BorrowedFd<'_>, on: bool) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::fd::AsRawFd as _;
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    let flags = if on { flags | OFlag::O_NONBLOCK } else { flags - OFlag::O_NONBLOCK };
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags))?;
    Ok(())
}

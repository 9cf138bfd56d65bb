//! `berth vm setup` and `berth vm initramfs`: the guest's kernel and
//! initramfs for `--isolation vm`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::Global;
use berth::vm::{initramfs, kernel};

#[derive(Debug, Args)]
pub struct VmArgs {
    #[command(subcommand)]
    pub command: VmCommand,
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Get the guest kernel for `--isolation vm` (once per host, no root).
    ///
    /// Downloads Debian's cloud kernel package, the `linux-image-*-cloud-amd64`
    /// that `linux-image-cloud-amd64` depends on (`apt-cache depends`), with
    /// `apt-get download`: from the host's own apt sources (and its proxy
    /// settings), nothing else, as you: no root, no sudo. The package (about
    /// 30 MB) goes to a temporary directory under ROOT/vm and is extracted with
    /// `dpkg -x`, never installed (no hooks run, nothing in /boot or /lib).
    /// berth keeps its vmlinuz (about 14 MB) and the few modules the guest
    /// loads (virtio, virtio-fs, EROFS, overlay, their dependencies: about
    /// 1.5 MB) in ROOT/vm/kernel/VERSION, with ROOT/vm/kernel/current naming
    /// it, removes the one it replaces and the download.
    ///
    /// Run it again to move to the kernel apt now offers (after `apt-get
    /// update`). Without apt, give the package itself with --deb. Instead of
    /// any of this, `--kernel FILE --modules DIR` run a kernel of your own.
    Setup(SetupArgs),
    /// Print the path of the guest's initramfs, making it if needed.
    ///
    /// The initramfs holds this berth binary as /init (without debug info),
    /// its libraries and the guest kernel's modules; it is cached in
    /// ROOT/vm/initramfs by what went in. `berth run --isolation vm` makes it
    /// by itself: this is for looking inside (`cpio -t < PATH`) and for tests.
    Initramfs(InitramfsArgs),
}

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Extract this kernel package (.deb) instead of downloading one; may
    /// be given more than once (e.g. a separate modules package).
    #[arg(long = "deb", value_name = "FILE")]
    pub debs: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct InitramfsArgs {
    /// The guest kernel (vmlinuz-VERSION) instead of the one `berth vm setup` keeps.
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// Its modules (.../lib/modules/VERSION).
    #[arg(long, value_name = "DIR")]
    pub modules: Option<PathBuf>,
}

pub fn run(g: &Global, a: VmArgs) -> anyhow::Result<u8> {
    let paths = g.paths();
    match a.command {
        VmCommand::Setup(s) => {
            let k = kernel::setup(&paths, &kernel::SetupOptions { debs: s.debs }).context("berth vm setup")?;
            eprintln!("berth: guest kernel {} in {}", k.version, k.vmlinuz.parent().and_then(|p| p.parent()).unwrap_or(&k.vmlinuz).display());
            Ok(0)
        }
        VmCommand::Initramfs(i) => {
            let k = kernel::GuestKernel::find(&paths, i.kernel.as_deref(), i.modules.as_deref())?;
            let path = initramfs::build(&paths, &k).context("cannot make the guest's initramfs")?;
            writeln!(std::io::stdout().lock(), "{}", path.display())?;
            Ok(0)
        }
    }
}

//! `berth pull`.

use anyhow::Context as _;
use clap::Args;

use super::Global;
use berth::fetch::progress::{Mode, Progress};
use berth::fetch::pull::{self, PullOptions};
use berth::image::reference;
use berth::store::{Platform, Store};

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Platform to pick from a multi-platform image [default: the host's].
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Verify the registry's TLS certificate (false also allows plain HTTP).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub tls_verify: bool,
    /// No progress output.
    #[arg(short, long)]
    pub quiet: bool,
    /// Image reference.
    #[arg(value_name = "REF")]
    pub reference: String,
}

pub fn run(g: &Global, a: PullArgs) -> anyhow::Result<u8> {
    let image = reference::parse(&a.reference)?;
    let platform = a.platform.as_deref().map(Platform::parse).transpose()?;
    let store = open_store(g)?;
    let opts = PullOptions { platform, tls_verify: a.tls_verify, ..PullOptions::default() };
    let progress = Progress::new(Mode::detect(a.quiet));
    runtime()?
        .block_on(pull::pull(&store, &image, &opts, &progress))
        .with_context(|| format!("pull {}", a.reference))
        .map_err(|e| if berth::store::is_disk_full(e.as_ref()) { e.context(berth::store::disk_full_hint(store.root())) } else { e })?;
    Ok(0)
}

/// Opens the store named by `--root` / `$BERTH_ROOT` / the XDG default.
pub fn open_store(g: &Global) -> anyhow::Result<Store> {
    let root = g.paths().root;
    Store::open(&root).with_context(|| format!("cannot open the store at {}", root.display()))
}

/// The runtime a pull runs on.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    pull::runtime().context("cannot start the async runtime")
}

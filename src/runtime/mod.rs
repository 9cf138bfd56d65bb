//! Runs a pod of prepared OCI bundles with libcontainer inside one user
//! namespace. Two sides, one contract between them:
//!
//! ```text
//! host side: runtime::host                    pod side: runtime::pod
//! berth (main thread, no tokio left)
//!  launch::launch ── plan.json, owner.json ──▶ berth __internal pod STATE_DIR
//!  (cgroup, signals, wait, cleanup)            pod::run — PID 1 of a new user+PID
//!                                              namespace; own mount, cgroup, net, IPC, UTS
//!                                              ├─ init containers, in order  (/dev/null + log pipe)
//!                                              ├─ sidecars                   (/dev/null + log pipe)
//!                                              └─ main container             (berth's fds 0/1/2)
//!  exec::exec ── joins the pod's namespaces ─▶ a tenant exec in one container
//! ```
//!
//! Shared by both: [`plan`] (the validated plain-data input), [`state`] (the
//! state directory, where the sides meet), [`signals`] and [`event_loop`]
//! (the single-threaded poll loop of the pod process and the `exec -t`
//! helper). [`host`]: [`host::launch`], [`cgroup`], [`cleanup`],
//! [`host::exec`].
//! [`pod`]: the pod process and [`container`], [`stdio`], [`pty`],
//! [`seccomp`], [`net`].

pub mod event_loop;
pub mod host;
pub mod plan;
pub mod pod;
pub mod signals;
pub mod state;

pub use host::launch::{launch, LaunchError, LaunchOptions};
pub use plan::{BindMount, ImageVolume, Limits, Network, PlannedContainer, PodPlan, Probe, ProbeAction, Role, RootfsSource};
pub use state::PodDir;

/// An error and its causes on one line, for log lines; errors here keep
/// causes out of their own message, as `anyhow`'s `{:#}` expects.
pub use crate::exit::chain as error_chain;

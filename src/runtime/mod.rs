//! Runs a pod of prepared OCI bundles with libcontainer inside one user
//! namespace.
//!
//! ```text
//! berth (main thread, no tokio left)          launch::launch
//!  └─ berth __internal pod STATE_DIR           podinit::run — PID 1 of a new user+PID
//!     │                                        namespace; own mount, cgroup, net, IPC, UTS
//!     ├─ init containers, in order            stdio: /dev/null + log pipe
//!     ├─ sidecars                             stdio: /dev/null + log pipe
//!     └─ main container                       berth's own fds 0/1/2
//! ```
//!
//! Modules: [`plan`] (the input), [`state`] (the state directory),
//! [`launch`] (berth's side), [`cgroup`] (the pod's cgroup), [`podinit`] (the pod process), [`container`]
//! (one container's spec and libcontainer calls), [`stdio`] (sidecar logs),
//! [`signals`], [`net`], [`cleanup`], [`exec`] (`berth exec`), [`pty`] (`-t`),
//! [`seccomp`] (filters compiled once, loaded by the container).

pub mod cgroup;
pub mod cleanup;
pub mod container;
pub mod event_loop;
pub mod exec;
pub mod launch;
pub mod net;
pub mod plan;
pub mod podinit;
pub mod pty;
pub mod seccomp;
pub mod signals;
pub mod state;
pub mod stdio;

pub use launch::{launch, LaunchError, LaunchOptions};
pub use plan::{BindMount, Limits, Network, PlannedContainer, PodPlan, Probe, ProbeAction, Role, RootfsSource};
pub use state::PodDir;

/// An error and its causes on one line (`a: b: c`), for log lines; errors
/// here keep causes out of their own message, as `anyhow`'s `{:#}` expects.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

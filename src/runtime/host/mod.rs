//! berth's side of a pod, in the invoking user's process: start the pod
//! process and wait for it ([`launch`]), give the pod a cgroup of its own
//! ([`cgroup`]), remove what it leaves ([`cleanup`]), and run a command in a
//! running pod ([`exec`], which joins the pod's namespaces and then uses the
//! pod side's container calls and terminal relay).

pub mod cgroup;
pub mod cleanup;
pub mod exec;
pub mod launch;

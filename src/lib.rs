//! berth: a rootless, daemon-less launcher that runs a CI build inside a pod of
//! OCI containers.
//!
//! Data flows one way through the stages, each a module that knows nothing of
//! the next:
//!
//! ```text
//! image → config → registry → store → fetch → unpack → provision
//!       → bundle → pod → planner → runtime (→ vm)
//! ```
//!
//! The binary (`src/main.rs`, `src/cli/`) is a thin CLI over this library: its
//! commands build plain settings structs from the arguments and call in here;
//! nothing in the library knows the command line.

// Every `unsafe` says why it is sound, and an `unsafe fn` is no licence for
// unchecked calls inside it.
#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

pub mod exit;
pub mod paths;
pub mod reexec;
pub mod userns;

// Stage 1: images into the store.
pub mod image;
pub mod config;
pub mod registry;
pub mod store;
pub mod fetch;

// Stage 2: layers unpacked into the cache, images ready for a pod.
pub mod unpack;
pub mod provision;
pub mod bundle;

// Stage 3: a pod, its plan, and the runtime that runs it.
pub mod pod;
pub mod planner;
pub mod runtime;
/// The pod's outbound network helper (pasta, slirp4netns).
pub mod net;

// Stage 4: what runs on top of a pod.
pub mod agent;
/// `--isolation vm`: the pod inside a QEMU microVM.
pub mod vm;

//! berth: a rootless, daemon-less launcher that runs a CI build inside a pod of
//! OCI containers.
//!
//! Data flows one way through the stages, each a module that knows nothing of
//! the next:
//!
//! ```text
//! reference → registry → store → unpack/layers → bundle → pod → runtime (→ vm)
//! ```
//!
//! The binary (`src/main.rs`) is a thin CLI over this library; `cmd` holds one
//! file per subcommand that wires the stages together.

pub mod paths;
pub mod exit;
pub mod digest;
pub mod media;

// Stage 1: pull.
pub mod reference;
pub mod config;
pub mod registry;
pub mod store;
pub mod archive;
pub mod pull;
pub mod progress;

// Stage 2: unpack into bundles.
pub mod unpack;
pub mod layers;
pub mod bundle;

// Stage 3: run a pod.
pub mod userns;
pub mod pod;
pub mod runtime;

pub mod cli;
pub mod cmd;

//! berth's integration tests, in one test binary: each file once linked
//! libcontainer and reqwest into a binary of its own, which made building
//! the tests slow. A test is named `MODULE::NAME` (`runtime::…`, `pull::…`);
//! run one part with `cargo nextest run --test it -E 'test(/^pull::/)'`.
//!
//! `common` is the shared harness (registries, images, berth as a process,
//! the test user); `hostile` builds tar layers for the unpacker's tests.

mod common;
mod hostile;

mod agent;
mod bundle_runc;
mod bundle_seccomp;
mod e2e;
mod nothing_lost;
mod error_lines;
mod network;
mod pod_files;
mod pod_templates;
mod pull;
mod pull_concurrency;
mod pull_faults;
mod registry_client;
mod run_options;
mod runtime;
mod runtime_plan;
mod runtime_tty;
mod unpack_bench;
mod unpack_hostile;
mod unpack_layers;
mod unpack_rootless;
mod validate;
mod userns_keepid;
mod vm_guest;
mod vm_mode;
mod vm_rootfs;
mod vm_virtiofs;
mod vm_image;

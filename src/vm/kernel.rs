//! (placeholder while the helper writes it)
use std::path::{Path, PathBuf};
#[derive(Debug, thiserror::Error)]
#[error("kernel")]
pub struct KernelError;
pub struct GuestKernel { pub vmlinuz: PathBuf, pub modules: PathBuf, pub version: String }
impl GuestKernel { pub fn find(_p: &crate::paths::Paths, _k: Option<&Path>, _m: Option<&Path>) -> Result<GuestKernel, KernelError> { Err(KernelError) } }

//! (placeholder)
use std::path::PathBuf;
#[derive(Debug, thiserror::Error)]
#[error("initramfs")]
pub struct InitramfsError;
pub fn build(_p: &crate::paths::Paths, _k: &super::kernel::GuestKernel) -> Result<PathBuf, InitramfsError> { Err(InitramfsError) }

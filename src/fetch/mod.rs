//! Getting images into the store: from a registry ([`pull`]) or from an OCI
//! layout or archive ([`archive`]), with progress on stderr ([`progress`]).

pub mod archive;
pub mod progress;
pub mod pull;

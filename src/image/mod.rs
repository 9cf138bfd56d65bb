//! What names an image and its parts, before anything is fetched: references
//! as podman reads them, strict `sha256:` digests, and the media types shared
//! by the registry client and the store.

pub mod digest;
pub mod media;
pub mod reference;

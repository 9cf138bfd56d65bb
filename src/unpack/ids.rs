//! Who owns the unpacked files.

/// The ownership policy for unpacked files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdPolicy {
    /// Owner and group as in the tar header (`fchown`/`lchown`). The caller
    /// runs inside a user namespace in which ids `0..=max_uid` and
    /// `0..=max_gid` are mapped (or as real root); an id outside that range
    /// is an error naming the file and the range the image needs.
    Keep { max_uid: u32, max_gid: u32 },
    /// Every file belongs to the caller: ownership is never changed.
    Squash,
}

impl IdPolicy {
    /// The owner to set for an entry with tar ids `uid`/`gid`: `None` when
    /// ownership is left to the caller.
    pub(crate) fn owner(&self, uid: u64, gid: u64) -> Result<Option<(u32, u32)>, super::ErrorKind> {
        match *self {
            IdPolicy::Squash => Ok(None),
            IdPolicy::Keep { max_uid, max_gid } => {
                let uid = check("uid", uid, max_uid)?;
                let gid = check("gid", gid, max_gid)?;
                Ok(Some((uid, gid)))
            }
        }
    }
}

fn check(what: &'static str, id: u64, max: u32) -> Result<u32, super::ErrorKind> {
    match u32::try_from(id) {
        Ok(id) if id <= max => Ok(id),
        _ => Err(super::ErrorKind::IdOutOfRange { what, id: u32::try_from(id).unwrap_or(u32::MAX), max }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_checks_the_range() {
        let p = IdPolicy::Keep { max_uid: 65535, max_gid: 65535 };
        assert_eq!(p.owner(1000, 100).unwrap(), Some((1000, 100)));
        let err = p.owner(70000, 0).unwrap_err().to_string();
        assert!(err.contains("uid 70000") && err.contains("0-65535") && err.contains("70001"), "{err}");
        assert!(p.owner(0, 1 << 40).is_err());
        assert_eq!(IdPolicy::Squash.owner(70000, 70000).unwrap(), None);
    }
}

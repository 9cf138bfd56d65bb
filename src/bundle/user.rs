//! `USER` resolution: `NAME`, `UID`, `NAME:GROUP`, `UID:GID` (any mix),
//! against the image's own `/etc/passwd` and `/etc/group`.
//!
//! The files are read in-root (pathrs: every symlink, absolute or `..`,
//! stays inside the rootfs), only when they are regular files, and at most
//! [`MAX_USER_DB`] bytes (CVE-2024-9676: podman read them by host path).
//! The semantics are runc's (`GetExecUser`): a numeric uid needs no passwd
//! entry; a name must have one; supplementary groups come from the groups
//! listing the user, and only when no group was given.

use std::fmt;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};

use nix::sys::stat::SFlag;
use std::path::Path;
use std::str::FromStr;

use pathrs::flags::OpenFlags;
use pathrs::Root;

use super::BundleError;

/// Largest `/etc/passwd` or `/etc/group` read (1 MiB, some 15,000 users).
pub const MAX_USER_DB: u64 = 1 << 20;

/// A user or a group, by number or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdOrName {
    Id(u32),
    Name(String),
}

/// What to run the process as: `USER` of the image, `--user`, or
/// Kubernetes' `runAsUser`/`runAsGroup` ([`UserSpec::ids`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    user: IdOrName,
    group: Option<IdOrName>,
}

/// A [`UserSpec`] resolved against an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// Home directory from passwd, `/` when the user has no entry.
    pub home: String,
    /// The passwd entry's name; `None` when the uid has no entry.
    pub name: Option<String>,
}

/// The image's `/etc/passwd` and `/etc/group` (empty when absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserDb {
    pub passwd: String,
    pub group: String,
}

impl UserDb {
    /// Reads both files in-root from the image at `rootfs`.
    pub fn read(rootfs: &Path) -> Result<UserDb, BundleError> {
        let root = Root::open(rootfs).map_err(|source| BundleError::Rootfs {
            rootfs: rootfs.to_path_buf(),
            op: "opening",
            path: "/",
            source,
        })?;
        Ok(UserDb {
            passwd: read_db(&root, "/etc/passwd")?.unwrap_or_default(),
            group: read_db(&root, "/etc/group")?.unwrap_or_default(),
        })
    }

    /// The files with an entry added for `user`, who has none (as the
    /// docker-slaves plugin did for Jenkins): named `name` (else
    /// `user<UID>` when the image has that name already), home
    /// `/home/NAME`, shell `/bin/sh`; and a group of the same name when
    /// the gid has no entry. Returns the new files and the home.
    pub fn with_entry_for(&self, user: &ResolvedUser, name: &str) -> (UserDb, String) {
        let taken = |n: &str| passwd_entries(&self.passwd).any(|p| p.name == n) || group_entries(&self.group).any(|g| g.name == n);
        let valid = !name.is_empty() && !name.contains([':', '\n', '\0', '/', ',']) && name != "." && name != "..";
        let name = if valid && !taken(name) { name.to_string() } else { format!("user{}", user.uid) };
        let home = format!("/home/{name}");
        let line = |db: &str, entry: String| {
            let mut db = db.to_string();
            if !db.is_empty() && !db.ends_with('\n') {
                db.push('\n');
            }
            db + &entry
        };
        let passwd = line(&self.passwd, format!("{name}:x:{}:{}:{name}:{home}:/bin/sh\n", user.uid, user.gid));
        let group = match group_entries(&self.group).any(|g| g.gid == user.gid) {
            true => self.group.clone(),
            false => line(&self.group, format!("{name}:x:{}:\n", user.gid)),
        };
        (UserDb { passwd, group }, home)
    }
}

impl UserSpec {
    /// Parses `USER[:GROUP]`, each a number or a name.
    pub fn parse(s: &str) -> Result<Self, BundleError> {
        let bad = |why| BundleError::UserSpec { spec: s.to_string(), why };
        let (user, group) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        let part = |p: &str| -> Result<IdOrName, BundleError> {
            if p.is_empty() {
                return Err(bad("empty user or group"));
            }
            if p.bytes().all(|b| b.is_ascii_digit()) {
                return match p.parse::<u32>() {
                    Ok(id) if id != u32::MAX => Ok(IdOrName::Id(id)),
                    _ => Err(bad("id out of range")),
                };
            }
            if p.contains([':', '\n', '\0', '/']) {
                return Err(bad("invalid character in a name"));
            }
            Ok(IdOrName::Name(p.to_string()))
        };
        Ok(UserSpec { user: part(user)?, group: group.map(part).transpose()? })
    }

    /// Numeric ids, as Kubernetes' `runAsUser` and `runAsGroup`.
    pub fn ids(uid: u32, gid: Option<u32>) -> Self {
        UserSpec { user: IdOrName::Id(uid), group: gid.map(IdOrName::Id) }
    }

    pub fn user(&self) -> &IdOrName {
        &self.user
    }

    pub fn group(&self) -> Option<&IdOrName> {
        self.group.as_ref()
    }

    /// Resolves against the image at `rootfs`.
    pub fn resolve(&self, rootfs: &Path) -> Result<ResolvedUser, BundleError> {
        self.resolve_in_db(&UserDb::read(rootfs)?)
    }

    /// Resolves against user databases already read.
    pub fn resolve_in_db(&self, db: &UserDb) -> Result<ResolvedUser, BundleError> {
        self.resolve_in(&db.passwd, &db.group)
    }

    fn resolve_in(&self, passwd: &str, group: &str) -> Result<ResolvedUser, BundleError> {
        let entry = passwd_entries(passwd).find(|p| match &self.user {
            IdOrName::Id(id) => p.uid == *id,
            IdOrName::Name(name) => p.name == name,
        });
        let (uid, mut gid, home, name) = match (&self.user, entry) {
            (_, Some(p)) => (p.uid, p.gid, p.home.to_string(), Some(p.name.to_string())),
            (IdOrName::Id(id), None) => (*id, 0, "/".to_string(), None),
            (IdOrName::Name(n), None) => return Err(BundleError::UnknownUser(n.clone())),
        };
        let mut additional_gids = Vec::new();
        match &self.group {
            Some(IdOrName::Id(id)) => gid = *id,
            Some(IdOrName::Name(n)) => {
                gid = group_entries(group)
                    .find(|g| g.name == n)
                    .map(|g| g.gid)
                    .ok_or_else(|| BundleError::UnknownGroup(n.clone()))?;
            }
            None => {
                if let Some(name) = &name {
                    for g in group_entries(group).filter(|g| g.members.split(',').any(|m| m == name)) {
                        if !additional_gids.contains(&g.gid) {
                            additional_gids.push(g.gid);
                        }
                    }
                }
            }
        }
        Ok(ResolvedUser { uid, gid, additional_gids, home: if home.is_empty() { "/".into() } else { home }, name })
    }
}

impl FromStr for UserSpec {
    type Err = BundleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UserSpec::parse(s)
    }
}

impl fmt::Display for IdOrName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdOrName::Id(id) => write!(f, "{id}"),
            IdOrName::Name(n) => f.write_str(n),
        }
    }
}

impl fmt::Display for UserSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.group {
            Some(g) => write!(f, "{}:{g}", self.user),
            None => write!(f, "{}", self.user),
        }
    }
}

/// Reads a user database of the image: `None` when it does not exist.
fn read_db(root: &Root, path: &'static str) -> Result<Option<String>, BundleError> {
    let bad = |why: String| BundleError::UserDb { path, why };
    let handle = match root.resolve(path) {
        Ok(h) => h,
        Err(e) => {
            return match e.kind() {
                pathrs::error::ErrorKind::OsError(Some(libc::ENOENT | libc::ENOTDIR)) => Ok(None),
                _ => Err(bad(format!("cannot be resolved in the rootfs: {e}"))),
            }
        }
    };
    // fstat of the O_PATH handle: a FIFO must not be opened (it would block).
    let st = nix::sys::stat::fstat(handle.as_fd().as_raw_fd()).map_err(|e| bad(e.to_string()))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(bad("not a regular file".into()));
    }
    if st.st_size as u64 > MAX_USER_DB {
        return Err(bad(format!("larger than {} bytes", MAX_USER_DB)));
    }
    let file = handle.reopen(OpenFlags::O_RDONLY | OpenFlags::O_CLOEXEC).map_err(|e| bad(e.to_string()))?;
    let mut bytes = Vec::new();
    // The size was checked, but the file may grow: read one byte more than allowed.
    file.take(MAX_USER_DB + 1).read_to_end(&mut bytes).map_err(|e| bad(e.to_string()))?;
    if bytes.len() as u64 > MAX_USER_DB {
        return Err(bad(format!("larger than {} bytes", MAX_USER_DB)));
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: &'a str,
}

/// Well-formed lines only; comments, NIS `+`/`-` lines and junk are skipped.
fn records(db: &str) -> impl Iterator<Item = Vec<&str>> {
    db.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(['#', '+', '-']))
        .map(|l| l.split(':').collect())
}

fn id(field: Option<&&str>) -> Option<u32> {
    field.and_then(|f| f.parse::<u32>().ok()).filter(|&i| i != u32::MAX)
}

fn passwd_entries(db: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    records(db).filter_map(|f| {
        Some(PasswdEntry { name: f.first()?, uid: id(f.get(2))?, gid: id(f.get(3))?, home: f.get(5).copied().unwrap_or("") })
    })
}

fn group_entries(db: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    records(db).filter_map(|f| Some(GroupEntry { name: f.first()?, gid: id(f.get(2))?, members: f.get(3).copied().unwrap_or("") }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # a comment\n\
        daemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n\
        broken line\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:root,app\naudio:x:29:app\napp:x:1000:\nstaff:x:50:\n";

    fn rootfs(passwd: &str, group: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        fs::write(dir.path().join("etc/passwd"), passwd).unwrap();
        fs::write(dir.path().join("etc/group"), group).unwrap();
        dir
    }

    fn resolve(rootfs: &Path, spec: &str) -> Result<ResolvedUser, BundleError> {
        UserSpec::parse(spec)?.resolve(rootfs)
    }

    #[test]
    fn parse_forms() {
        assert_eq!(UserSpec::parse("app").unwrap(), UserSpec { user: IdOrName::Name("app".into()), group: None });
        assert_eq!(UserSpec::parse("1000:50").unwrap(), UserSpec::ids(1000, Some(50)));
        assert_eq!(
            UserSpec::parse("app:staff").unwrap(),
            UserSpec { user: IdOrName::Name("app".into()), group: Some(IdOrName::Name("staff".into())) }
        );
        for bad in ["", ":", "app:", ":staff", "4294967295", "99999999999", "a:b:c", "a\0b"] {
            assert!(UserSpec::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(UserSpec::parse("app:staff").unwrap().to_string(), "app:staff");
    }

    #[test]
    fn name_resolves_with_supplementary_groups() {
        let r = rootfs(PASSWD, GROUP);
        let u = resolve(r.path(), "app").unwrap();
        assert_eq!(
            u,
            ResolvedUser { uid: 1000, gid: 1000, additional_gids: vec![10, 29], home: "/home/app".into(), name: Some("app".into()) }
        );
        // An explicit group: no supplementary groups (runc's semantics).
        let u = resolve(r.path(), "app:staff").unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids.len()), (1000, 50, 0));
        let u = resolve(r.path(), "root").unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids, u.home.as_str()), (0, 0, vec![10], "/root"));
    }

    #[test]
    fn numeric_ids_need_no_passwd() {
        let r = tempfile::tempdir().unwrap();
        assert_eq!(
            resolve(r.path(), "1234").unwrap(),
            ResolvedUser { uid: 1234, gid: 0, additional_gids: vec![], home: "/".into(), name: None }
        );
        assert_eq!(resolve(r.path(), "1234:99").unwrap().gid, 99);
        // A numeric uid that has an entry takes its gid and home.
        let r = rootfs(PASSWD, GROUP);
        let u = resolve(r.path(), "1000").unwrap();
        assert_eq!((u.gid, u.home.as_str(), u.additional_gids), (1000, "/home/app", vec![10, 29]));
    }

    #[test]
    fn an_entry_is_added_for_a_uid_without_one() {
        let db = UserDb { passwd: PASSWD.trim_end().into(), group: GROUP.into() };
        let u = UserSpec::ids(4242, None).resolve_in_db(&db).unwrap();
        assert_eq!(u.name, None);
        let (new, home) = db.with_entry_for(&u, "jenkins");
        assert_eq!(home, "/home/jenkins");
        assert!(new.passwd.starts_with(PASSWD.trim_end()) && new.passwd.ends_with("\njenkins:x:4242:0:jenkins:/home/jenkins:/bin/sh\n"));
        assert_eq!(new.group, GROUP, "gid 0 has an entry");
        let u2 = UserSpec::ids(4242, None).resolve_in_db(&new).unwrap();
        assert_eq!((u2.name.as_deref(), u2.home.as_str()), (Some("jenkins"), "/home/jenkins"));
        // A taken or hostile name is replaced; a new gid gets a group.
        let u = UserSpec::ids(4242, Some(4242)).resolve_in_db(&db).unwrap();
        for name in ["app", "a:b", "", "x\ny", ".."] {
            let (new, home) = db.with_entry_for(&u, name);
            assert_eq!(home, "/home/user4242", "{name:?}");
            assert!(new.group.ends_with("\nuser4242:x:4242:\n"), "{name:?}");
            assert_eq!(UserSpec::parse("user4242").unwrap().resolve_in_db(&new).unwrap().uid, 4242);
        }
        let (new, _) = UserDb::default().with_entry_for(&u, "me");
        assert_eq!(new.passwd, "me:x:4242:4242:me:/home/me:/bin/sh\n");
    }

    #[test]
    fn unknown_names_are_errors_naming_them() {
        let r = rootfs(PASSWD, GROUP);
        let e = resolve(r.path(), "nobody").unwrap_err().to_string();
        assert!(e.contains("nobody"), "{e}");
        let e = resolve(r.path(), "app:nogroup").unwrap_err().to_string();
        assert!(e.contains("nogroup"), "{e}");
        let e = resolve(tempfile::tempdir().unwrap().path(), "app").unwrap_err();
        assert!(matches!(e, BundleError::UnknownUser(ref n) if n == "app"), "{e}");
    }

    /// /etc/passwd a symlink to the host's /etc/shadow, absolute and by `..`:
    /// resolved in-root, so the host file is never read. (Read by host
    /// path, shadow's `root:HASH:LASTCHG:MIN:...` would give root uid
    /// LASTCHG.)
    #[test]
    fn hostile_symlink_to_host_file_stays_in_root() {
        for target in ["/etc/shadow", "../../../../../../../../etc/shadow", "/proc/1/root/etc/passwd"] {
            let r = tempfile::tempdir().unwrap();
            fs::create_dir(r.path().join("etc")).unwrap();
            symlink(target, r.path().join("etc/passwd")).unwrap();
            let e = resolve(r.path(), "root").unwrap_err();
            assert!(matches!(e, BundleError::UnknownUser(_)), "{target}: {e}");
        }
        // A symlink to a file inside the rootfs is followed there.
        let r = rootfs("", GROUP);
        fs::write(r.path().join("etc/passwd.real"), PASSWD).unwrap();
        fs::remove_file(r.path().join("etc/passwd")).unwrap();
        symlink("/etc/passwd.real", r.path().join("etc/passwd")).unwrap();
        assert_eq!(resolve(r.path(), "app").unwrap().uid, 1000);
    }

    #[test]
    fn hostile_huge_passwd_is_refused_without_reading_it() {
        let r = rootfs("", GROUP);
        // 100 MB, sparse: refused by size before any read.
        let f = fs::File::create(r.path().join("etc/passwd")).unwrap();
        f.set_len(100 << 20).unwrap();
        let e = resolve(r.path(), "1000").unwrap_err().to_string();
        assert!(e.contains("/etc/passwd") && e.contains("larger than"), "{e}");
    }

    #[test]
    fn hostile_passwd_directory_fifo_and_loop_are_errors() {
        let r = tempfile::tempdir().unwrap();
        fs::create_dir_all(r.path().join("etc/passwd")).unwrap();
        let e = resolve(r.path(), "root").unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");

        let r = tempfile::tempdir().unwrap();
        fs::create_dir(r.path().join("etc")).unwrap();
        nix::unistd::mkfifo(&r.path().join("etc/passwd"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let e = resolve(r.path(), "root").unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");

        let r = tempfile::tempdir().unwrap();
        fs::create_dir(r.path().join("etc")).unwrap();
        symlink("/etc/passwd", r.path().join("etc/passwd")).unwrap();
        assert!(resolve(r.path(), "root").is_err());
    }
}

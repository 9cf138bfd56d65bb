//! The downward API under berth: the values `env[].valueFrom.fieldRef`
//! gives a container, as the pod has them here (one host, the pod's
//! address 127.0.0.1, namespace `default` unless the file names one).

/// What a pod knows about itself, filled in as its file is read.
#[derive(Debug, Clone, Default)]
pub(super) struct Downward {
    pub(super) name: String,
    pub(super) namespace: String,
    pub(super) uid: String,
    pub(super) labels: Vec<(String, String)>,
    pub(super) annotations: Vec<(String, String)>,
    pub(super) service_account: String,
}

/// The pod's address under berth: every container reaches the others, and
/// their ports, on loopback (private network) or the host's (host network).
pub(super) const POD_IP: &str = "127.0.0.1";

const SUPPORTED: &str = "metadata.name, metadata.namespace, metadata.uid, metadata.labels['KEY'], \
metadata.annotations['KEY'], spec.nodeName, spec.serviceAccountName, status.podIP, status.hostIP";

impl Downward {
    /// The value of `field_path`, or why there is none.
    pub(super) fn value(&self, field_path: &str) -> Result<String, String> {
        Ok(match field_path {
            "metadata.name" => self.name.clone(),
            "metadata.namespace" => self.namespace.clone(),
            "metadata.uid" => self.uid.clone(),
            "spec.nodeName" => nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .map_err(|e| format!("cannot read the host name: {e}"))?,
            "spec.serviceAccountName" => self.service_account.clone(),
            "status.podIP" | "status.podIPs" | "status.hostIP" | "status.hostIPs" => POD_IP.to_string(),
            p => {
                let (map, key) = if let Some(k) = subscript(p, "metadata.labels") {
                    (&self.labels, k)
                } else if let Some(k) = subscript(p, "metadata.annotations") {
                    (&self.annotations, k)
                } else {
                    return Err(format!("fieldRef {p:?} has no value under berth (it has {SUPPORTED})"));
                };
                // Kubernetes gives an absent key as the empty string.
                map.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).unwrap_or_default()
            }
        })
    }
}

/// `KEY` of `base['KEY']`.
fn subscript<'a>(path: &'a str, base: &str) -> Option<&'a str> {
    path.strip_prefix(base)?.strip_prefix("['")?.strip_suffix("']")
}

/// A UUID-shaped random id for `metadata.uid`.
pub(super) fn random_uid() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let word = |salt: u64| {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(salt);
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
        h.finish()
    };
    let hex = format!("{:016x}{:016x}", word(1), word(2));
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        let d = Downward {
            name: "p".into(),
            namespace: "default".into(),
            labels: vec![("app".into(), "web".into())],
            service_account: "default".into(),
            ..Downward::default()
        };
        assert_eq!(d.value("metadata.name").unwrap(), "p");
        assert_eq!(d.value("metadata.namespace").unwrap(), "default");
        assert_eq!(d.value("metadata.labels['app']").unwrap(), "web");
        assert_eq!(d.value("metadata.labels['none']").unwrap(), "");
        assert_eq!(d.value("status.podIP").unwrap(), "127.0.0.1");
        assert!(!d.value("spec.nodeName").unwrap().is_empty());
        assert!(d.value("status.phase").unwrap_err().contains("status.podIP"));
        assert_eq!(random_uid().len(), 36);
    }
}

//! The Pod API mapped onto [`Pod`]: which fields berth reads, with
//! Kubernetes' defaults, and which it ignores or rejects, and why.

use std::path::PathBuf;

use super::container::RunAs;
use super::scalar::{boolean, integer, scalar_text, string};
use super::walk::Ignore::{self, Silent, SilentIf, Warn};
use super::walk::{fail, join, Located, Res, Walk};
use super::yaml::{short, Node, ScalarKind, Value};
use crate::pod::{Network, Pod, Volume, VolumeSource};

impl Walk {
    /// `pod.yaml` as a whole. The header (`apiVersion`, `kind`,
    /// `metadata`) may be absent, as in the Kubernetes plugin's templates;
    /// what is wrong in it is reported at once, every field in one error.
    pub(super) fn pod(&mut self, root: &Node) -> Res<Pod> {
        let mut top = self.obj(root, "")?;
        let mut wrong: Vec<Located> = Vec::new();
        if let Some((api, path)) = self.field(&mut top, "apiVersion") {
            match string(api, &path) {
                Ok(v) if v == "v1" => {}
                Ok(_) => wrong.push(Located { mark: api.mark, message: format!("apiVersion must be v1 for a Pod, not {}", scalar_text(api)) }),
                Err(e) => wrong.push(e),
            }
        }
        if let Some((kind, path)) = self.field(&mut top, "kind") {
            match string(kind, &path) {
                Ok(v) if v == "Pod" => {}
                Ok(_) => wrong.push(Located { mark: kind.mark, message: format!("kind must be Pod (berth runs Pods), not {}", scalar_text(kind)) }),
                Err(e) => wrong.push(e),
            }
        }
        let name = match self.field(&mut top, "metadata") {
            Some((meta, path)) => self.metadata(meta, &path).unwrap_or_else(|e| {
                wrong.extend(e);
                None
            }),
            None => None,
        };
        if let Some(first) = wrong.first() {
            let mut message = first.message.clone();
            for w in &wrong[1..] {
                message.push_str(&format!("; {} (at {}:{})", w.message, w.mark.line, w.mark.column));
            }
            return fail(first.mark, message);
        }
        let name = self.opts.name.clone().or(name).unwrap_or_else(|| self.default_name.clone());
        self.downward.name = name.clone();
        if self.downward.namespace.is_empty() {
            self.downward.namespace = "default".into();
        }
        self.downward.uid = super::downward::random_uid();
        let (spec, path) = self.required(&mut top, "spec")?;
        let pod = self.spec(spec, &path, name)?;
        self.finish(top, &[("status", Silent)])?;
        Ok(pod)
    }

    /// The name the file gives, if any; every problem found, not the first.
    fn metadata(&mut self, node: &Node, path: &str) -> Result<Option<String>, Vec<Located>> {
        let mut o = self.obj(node, path).map_err(|e| vec![e])?;
        let mut wrong = Vec::new();
        let name = match (self.field(&mut o, "name"), self.field(&mut o, "generateName")) {
            (Some((n, p)), _) => match string(n, &p) {
                // An override makes the file's name irrelevant.
                Ok(name) if self.opts.name.is_none() && !crate::pod::is_dns_label(&name) => {
                    wrong.push(Located {
                        mark: n.mark,
                        message: format!("{p}: invalid pod name {}: {}", short(&name), crate::pod::LABEL_RULE),
                    });
                    None
                }
                Ok(name) => Some(name),
                Err(e) => {
                    wrong.push(e);
                    None
                }
            },
            (None, Some((g, p))) => match string(g, &p) {
                Ok(prefix) => Some(format!("{prefix}{}", crate::pod::random_suffix(5))),
                Err(e) => {
                    wrong.push(e);
                    None
                }
            },
            (None, None) => None,
        };
        if let Some((ns, p)) = self.field(&mut o, "namespace") {
            match string(ns, &p) {
                Ok(ns) => self.downward.namespace = ns,
                Err(e) => wrong.push(e),
            }
        }
        for key in ["labels", "annotations"] {
            if let Some((m, p)) = self.field(&mut o, key) {
                // Only a fieldRef reads them: anything but strings is left out.
                let pairs: Vec<(String, String)> = match &m.value {
                    Value::Map(entries) => entries
                        .iter()
                        .filter_map(|(k, v)| match &v.value {
                            Value::Scalar(s) if s.kind == ScalarKind::Str => Some((k.text.clone(), s.text.clone())),
                            _ => None,
                        })
                        .collect(),
                    _ => {
                        wrong.push(Located { mark: m.mark, message: format!("{p} must be a mapping, not {}", m.describe()) });
                        Vec::new()
                    }
                };
                if key == "labels" {
                    self.downward.labels = pairs;
                } else {
                    if let Some((_, v)) = pairs.iter().find(|(k, _)| k == crate::pod::ISOLATION_ANNOTATION) {
                        match v.as_str() {
                            "vm" => self.isolation = crate::pod::Isolation::Vm,
                            "container" => self.isolation = crate::pod::Isolation::Container,
                            other => wrong.push(Located {
                                mark: m.mark,
                                message: format!("{p}.{}: {} is not an isolation (container, vm)", crate::pod::ISOLATION_ANNOTATION, short(other)),
                            }),
                        }
                    }
                    self.downward.annotations = pairs;
                }
            }
        }
        const META: &[(&str, Ignore)] = &[
            ("uid", Silent),
            ("resourceVersion", Silent),
            ("generation", Silent),
            ("creationTimestamp", Silent),
            ("deletionTimestamp", Silent),
            ("deletionGracePeriodSeconds", Silent),
            ("ownerReferences", Silent),
            ("finalizers", Silent),
            ("managedFields", Silent),
            ("selfLink", Silent),
        ];
        if let Err(e) = self.finish(o, META) {
            wrong.push(e);
        }
        if wrong.is_empty() { Ok(name) } else { Err(wrong) }
    }

    fn spec(&mut self, node: &Node, path: &str, name: String) -> Res<Pod> {
        let mut o = self.obj(node, path)?;
        let o_mark = o.mark;
        self.downward.service_account = "default".into();
        for key in ["serviceAccountName", "serviceAccount"] {
            if let Some((v, p)) = self.field(&mut o, key) {
                self.downward.service_account = string(v, &p)?;
                break;
            }
        }

        let mut defaults = RunAs::default();
        if let Some((sc, p)) = self.field(&mut o, "securityContext") {
            let mut sc = self.obj(sc, &p)?;
            defaults = self.run_as(&mut sc)?;
            self.seccomp_profile(&mut sc)?;
            const POD_SC: &[(&str, Ignore)] = &[
                ("runAsNonRoot", SilentIf(&["false"], "not enforced")),
                ("fsGroup", Warn("berth does not change volume ownership")),
                ("fsGroupChangePolicy", Silent),
                ("supplementalGroups", Warn("not supported")),
                ("supplementalGroupsPolicy", Silent),
                ("sysctls", Warn("not supported")),
                ("seLinuxOptions", Warn("not supported")),
                ("seLinuxChangePolicy", Silent),
                ("appArmorProfile", Warn("not supported")),
                ("windowsOptions", Silent),
            ];
            self.finish(sc, POD_SC)?;
        }

        let volumes = match self.field(&mut o, "volumes") {
            Some((v, p)) => {
                let items = self.list(v, &p)?;
                items.iter().enumerate().map(|(i, n)| self.volume(n, &format!("{p}[{i}]"))).collect::<Res<Vec<_>>>()?
            }
            None => Vec::new(),
        };
        let init_containers = match self.field(&mut o, "initContainers") {
            Some((v, p)) => {
                let items = self.list(v, &p)?;
                items
                    .iter()
                    .enumerate()
                    .map(|(i, n)| self.container(n, &format!("{p}[{i}]"), true, &defaults))
                    .collect::<Res<Vec<_>>>()?
            }
            None => Vec::new(),
        };
        let (list, p) = self.required(&mut o, "containers")?;
        let items = self.list(list, &p)?;
        if items.is_empty() {
            return fail(list.mark, format!("{p} must name at least one container"));
        }
        let containers = items
            .iter()
            .enumerate()
            .map(|(i, n)| self.container(n, &format!("{p}[{i}]"), false, &defaults))
            .collect::<Res<Vec<_>>>()?;

        let share_process_namespace = match self.field(&mut o, "shareProcessNamespace") {
            Some((v, p)) => boolean(v, &p)?,
            None => false,
        };
        let network = match self.field(&mut o, "hostNetwork") {
            Some((v, p)) if boolean(v, &p)? => Network::Host,
            _ => Network::Outbound,
        };
        // 0 is meaningful here (kill at once), unlike a probe's 0 = unset.
        let grace_seconds = match self.field(&mut o, "terminationGracePeriodSeconds") {
            Some((v, p)) => match integer(v, &p)? {
                n if (0..=i64::from(i32::MAX)).contains(&n) => Some(n.unsigned_abs()),
                n if n < 0 => return fail(v.mark, format!("{p} must not be negative, not {n}")),
                n => return fail(v.mark, format!("{p} is too large: {n}")),
            },
            None => None,
        };

        const SPEC: &[(&str, Ignore)] = &[
            ("restartPolicy", SilentIf(&["Never"], "berth never restarts containers")),
            ("activeDeadlineSeconds", Warn("not enforced")),
            ("dnsPolicy", Silent),
            ("dnsConfig", Warn("containers use the host's /etc/resolv.conf")),
            ("hostname", Warn("the hostname is the pod name")),
            ("subdomain", Silent),
            ("setHostnameAsFQDN", Silent),
            ("hostAliases", Warn("not supported")),
            ("hostPID", SilentIf(&["false"], "berth never shares the host's PID namespace")),
            ("hostIPC", SilentIf(&["false"], "berth never shares the host's IPC namespace")),
            ("hostUsers", SilentIf(&["false"], "berth always runs a pod in a user namespace")),
            ("nodeName", Silent),
            ("nodeSelector", Silent),
            ("affinity", Silent),
            ("tolerations", Silent),
            ("schedulerName", Silent),
            ("schedulingGates", Silent),
            ("priority", Silent),
            ("priorityClassName", Silent),
            ("preemptionPolicy", Silent),
            ("topologySpreadConstraints", Silent),
            ("runtimeClassName", Silent),
            ("overhead", Silent),
            ("readinessGates", Silent),
            ("os", Silent),
            ("serviceAccount", Silent),
            ("automountServiceAccountToken", Silent),
            ("enableServiceLinks", Silent),
            ("imagePullSecrets", Silent),
            ("resourceClaims", Warn("not supported")),
            ("resources", Warn("pod-level resources are not supported; set them per container")),
            ("ephemeralContainers", Warn("not supported")),
        ];
        self.finish(o, SPEC)?;

        for (v, _) in &self.opts.volume_from {
            if !volumes.iter().any(|vol| vol.name == *v) {
                let names: Vec<&str> = volumes.iter().map(|vol| vol.name.as_str()).collect();
                return fail(o_mark, format!("--volume-from names {}, which is no volume of this pod (volumes: {})", short(v), names.join(", ")));
            }
        }
        // The agent's container is the main one: its stdio is the channel.
        let main = containers.iter().position(|c| c.agent).unwrap_or(0);
        let isolation = self.isolation;
        let mut pod = Pod { name, init_containers, containers, main, volumes, share_process_namespace, network, grace_seconds, isolation };
        for c in pod.init_containers.iter_mut().chain(pod.containers.iter_mut()) {
            for m in &mut c.volume_mounts {
                m.read_only |= self.read_only_volumes.contains(&m.name);
            }
        }
        // Only the main container gets a terminal. Jenkins templates set tty
        // on every container out of habit, to keep a `cat` waiting on it:
        // the others get a stdin that stays open instead, which does the
        // same, so this is no news worth a warning.
        for (init, list) in [(true, &pod.init_containers), (false, &pod.containers)] {
            for (i, c) in list.iter().enumerate() {
                if c.tty && (init || i != main) {
                    let p = format!("{path}.{}[{i}].tty", if init { "initContainers" } else { "containers" });
                    let mark = self.marks.get(&p).copied().unwrap_or_default();
                    tracing::debug!("{}:{}: {p}: no terminal but the main container's; stdin stays open", mark.line, mark.column);
                }
            }
        }
        Ok(pod)
    }

    fn volume(&mut self, node: &Node, path: &str) -> Res<Volume> {
        let mut o = self.obj(node, path)?;
        let (n, p) = self.required(&mut o, "name")?;
        let name = string(n, &p)?;
        if let Some((_, host)) = self.opts.volume_from.iter().find(|(v, _)| *v == name) {
            // Mapped on the command line: whatever the file's source, the
            // host path replaces it; a cluster's read-only kinds stay read-only.
            let host = host.clone();
            let read_only = o.entries.iter().any(|(k, v)| READ_ONLY_VOLUMES.contains(&k.text.as_str()) && !v.is_null());
            o.used.iter_mut().for_each(|u| *u = true);
            if read_only {
                self.read_only_volumes.push(name.clone());
            }
            return Ok(Volume { name, source: VolumeSource::HostPath(host) });
        }
        let mut sources = Vec::new();
        if let Some((v, p)) = self.field(&mut o, "emptyDir") {
            let e = self.obj(v, &p)?;
            self.finish(
                e,
                &[("medium", SilentIf(&[""], "emptyDir is a directory on disk")), ("sizeLimit", Warn("not enforced"))],
            )?;
            sources.push((v.mark, VolumeSource::EmptyDir));
        }
        if let Some((v, p)) = self.field(&mut o, "hostPath") {
            let mut h = self.obj(v, &p)?;
            let (hp, hpp) = self.required(&mut h, "path")?;
            let host = PathBuf::from(string(hp, &hpp)?);
            self.finish(h, &[("type", SilentIf(&["", "Directory"], "berth does not check or create hostPath types"))])?;
            sources.push((v.mark, VolumeSource::HostPath(host)));
        }
        if let Some((v, p)) = self.field(&mut o, "image") {
            let mut i = self.obj(v, &p)?;
            let (r, rp) = self.required(&mut i, "reference")?;
            let reference = string(r, &rp)?;
            self.finish(i, &[("pullPolicy", SilentIf(&["", "IfNotPresent"], "berth pulls an image only when the store lacks it"))])?;
            sources.push((v.mark, VolumeSource::Image { reference }));
        }
        for (key, value) in o.entries {
            if READ_ONLY_VOLUMES.contains(&key.text.as_str()) && !value.is_null() {
                return fail(
                    key.mark,
                    format!(
                        "{}: a {} volume has no content outside a cluster; map it to a host file or directory with --volume-from {}=PATH",
                        join(path, &key.text),
                        key.text,
                        name
                    ),
                );
            }
            if UNSUPPORTED_VOLUMES.contains(&key.text.as_str()) && !value.is_null() {
                return fail(
                    key.mark,
                    format!("{}: {} volumes are not supported (berth has emptyDir, hostPath and image)", join(path, &key.text), key.text),
                );
            }
        }
        self.finish(o, &[])?;
        match sources.len() {
            // Kubernetes defaults a volume without a source to emptyDir.
            0 => Ok(Volume { name, source: VolumeSource::EmptyDir }),
            1 => Ok(Volume { name, source: sources.remove(0).1 }),
            _ => fail(sources[1].0, format!("{path}: a volume has one source, not several of emptyDir, hostPath and image")),
        }
    }

}

/// Volumes a cluster fills from its API objects, read-only: outside one
/// they need `--volume-from`.
const READ_ONLY_VOLUMES: &[&str] = &["configMap", "downwardAPI", "projected", "secret"];

const UNSUPPORTED_VOLUMES: &[&str] = &[
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "cephfs",
    "cinder",
    "configMap",
    "csi",
    "downwardAPI",
    "ephemeral",
    "fc",
    "flexVolume",
    "flocker",
    "gcePersistentDisk",
    "gitRepo",
    "glusterfs",
    "iscsi",
    "nfs",
    "persistentVolumeClaim",
    "photonPersistentDisk",
    "portworxVolume",
    "projected",
    "quobyte",
    "rbd",
    "scaleIO",
    "secret",
    "storageos",
    "vsphereVolume",
];

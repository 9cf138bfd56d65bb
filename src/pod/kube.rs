//! Kubernetes Pod manifests (`apiVersion: v1`, `kind: Pod`) → [`Pod`].
//!
//! berth reads the subset of the Pod API it can honour, with Kubernetes'
//! types, defaults and validation, so that a file that runs here runs on a
//! cluster unchanged. Everything else is sorted three ways:
//!
//! * fields that only matter to a cluster (scheduling, labels, pull
//!   secrets, `restartPolicy: Never`, ...) are accepted silently;
//! * fields berth cannot honour but whose absence leaves the build working
//!   (`livenessProbe`, `lifecycle`, unknown fields, ...) give one warning
//!   each, naming the field's path;
//! * fields whose absence would run something different from what the file
//!   says (`valueFrom`, `envFrom`, secret volumes, `httpGet` probes, ...) are
//!   errors.
//!
//! Every error names `file:line:column`.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::yaml::{self, short, Key, Mark, Node, ScalarKind, Value};
use super::{quantity, Container, Limits, Network, Pod, Probe, ProbeAction, Volume, VolumeMount, VolumeSource};

/// A Pod manifest is a few kilobytes; anything near this is not one.
pub const MAX_FILE_SIZE: u64 = 1 << 20;

#[derive(Debug, Error)]
pub enum PodFileError {
    #[error("cannot read pod file {file}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: pod file is larger than {limit} bytes")]
    TooLarge { file: String, limit: u64 },
    #[error("{file}:{line}:{column}: {message}")]
    Invalid { file: String, line: usize, column: usize, message: String },
}

/// A field berth ignores, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// The field, e.g. `spec.containers[0].lifecycle`.
    pub path: String,
    /// The whole sentence, e.g. `ignoring unknown field spec.containers[0].lifecycle`.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)
    }
}

/// Reads and parses a pod file; each warning goes to `tracing::warn!`.
pub fn from_file(path: &Path) -> Result<Pod, PodFileError> {
    let file = path.display().to_string();
    let read_err = |source| PodFileError::Read { file: file.clone(), source };
    let f = std::fs::File::open(path).map_err(read_err)?;
    // Read one byte past the cap rather than trusting metadata, which a
    // FIFO or /proc file does not have.
    let mut bytes = Vec::new();
    f.take(MAX_FILE_SIZE + 1).read_to_end(&mut bytes).map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE_SIZE {
        return Err(PodFileError::TooLarge { file, limit: MAX_FILE_SIZE });
    }
    let text = match std::str::from_utf8(&bytes) {
        Ok(t) => t,
        Err(e) => {
            let before = String::from_utf8_lossy(&bytes[..e.valid_up_to()]);
            let mark = end_mark(&before);
            return Err(PodFileError::Invalid {
                file,
                line: mark.line,
                column: mark.column,
                message: "the file is not UTF-8 text".into(),
            });
        }
    };
    let (pod, warnings) = from_str(text, &file)?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    Ok(pod)
}

/// Parses a Pod manifest. `file_name` is used in messages only.
pub fn from_str(text: &str, file_name: &str) -> Result<(Pod, Vec<Warning>), PodFileError> {
    if text.len() as u64 > MAX_FILE_SIZE {
        return Err(PodFileError::TooLarge { file: file_name.into(), limit: MAX_FILE_SIZE });
    }
    let invalid = |mark: Mark, message: String| PodFileError::Invalid {
        file: file_name.into(),
        line: mark.line.max(1),
        column: mark.column.max(1),
        message,
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let root = yaml::parse_one(text)
        .map_err(|e| invalid(e.mark, e.message))?
        .ok_or_else(|| invalid(Mark { line: 1, column: 1 }, "the file holds no Pod".into()))?;
    let mut walk = Walk { warnings: Vec::new(), marks: HashMap::new() };
    let pod = walk.pod(&root).map_err(|e| invalid(e.mark, e.message))?;
    pod.validate().map_err(|e| {
        let mark = walk.mark_of(&e.path).unwrap_or(root.mark);
        invalid(mark, format!("{}: {}", e.path, e.message))
    })?;
    let warnings = walk
        .warnings
        .into_iter()
        .map(|(mark, path, message)| Warning { file: file_name.into(), line: mark.line, column: mark.column, path, message })
        .collect();
    Ok((pod, warnings))
}

/// The position just after `text`.
fn end_mark(text: &str) -> Mark {
    let line = 1 + text.matches('\n').count();
    let column = 1 + text.rsplit('\n').next().map_or(0, |l| l.chars().count());
    Mark { line, column }
}

/// An error at a node.
struct Located {
    mark: Mark,
    message: String,
}

type Res<T> = Result<T, Located>;

fn fail<T>(mark: Mark, message: impl Into<String>) -> Res<T> {
    Err(Located { mark, message: message.into() })
}

/// What berth does with a field that Kubernetes knows and berth does not use.
#[derive(Clone, Copy)]
enum Ignore {
    /// Only meaningful on a cluster.
    Silent,
    /// A warning with this reason.
    Warn(&'static str),
    /// Silent for these values (a boolean as `true`/`false`), else a warning.
    SilentIf(&'static [&'static str], &'static str),
    /// An error with this reason: running without it would not be running the file.
    Reject(&'static str),
}

use Ignore::{Reject, Silent, SilentIf, Warn};

/// A mapping being read: fields are taken one by one; what is left over is
/// judged by [`Walk::finish`].
struct Obj<'n> {
    path: String,
    mark: Mark,
    entries: &'n [(Key, Node)],
    used: Vec<bool>,
}

struct Walk {
    warnings: Vec<(Mark, String, String)>,
    /// Where each field read lives, for validation errors found later.
    marks: HashMap<String, Mark>,
}

/// `path.key`, with odd keys quoted so a message stays one line.
fn join(path: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || "-_/".contains(c));
    let key = if plain { key.to_string() } else { format!("[{}]", short(key)) };
    match (path.is_empty(), key.starts_with('[')) {
        (true, _) | (false, true) => format!("{path}{key}"),
        (false, false) => format!("{path}.{key}"),
    }
}

impl Walk {
    /// The position of `path`, or of its nearest ancestor that was read.
    fn mark_of(&self, path: &str) -> Option<Mark> {
        let mut p = path;
        loop {
            if let Some(m) = self.marks.get(p) {
                return Some(*m);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    fn obj<'n>(&mut self, node: &'n Node, path: &str) -> Res<Obj<'n>> {
        match &node.value {
            Value::Map(entries) => {
                self.marks.insert(path.to_string(), node.mark);
                Ok(Obj { path: path.to_string(), mark: node.mark, entries, used: vec![false; entries.len()] })
            }
            _ => fail(node.mark, format!("{} must be a mapping, not {}", name_of(path), node.describe())),
        }
    }

    /// The value of `key`, unless absent or null (which Kubernetes treats
    /// alike), with its path.
    fn field<'n>(&mut self, o: &mut Obj<'n>, key: &str) -> Option<(&'n Node, String)> {
        let i = o.entries.iter().position(|(k, _)| k.text == key)?;
        o.used[i] = true;
        let (_, value) = &o.entries[i];
        let path = join(&o.path, key);
        self.marks.insert(path.clone(), value.mark);
        (!value.is_null()).then_some((value, path))
    }

    fn required<'n>(&mut self, o: &mut Obj<'n>, key: &str) -> Res<(&'n Node, String)> {
        match self.field(o, key) {
            Some(f) => Ok(f),
            None => fail(o.mark, format!("{} is required", join(&o.path, key))),
        }
    }

    /// Judges the fields nobody took.
    fn finish(&mut self, o: Obj<'_>, known: &[(&str, Ignore)]) -> Res<()> {
        for ((key, value), used) in o.entries.iter().zip(&o.used) {
            if *used {
                continue;
            }
            let path = join(&o.path, &key.text);
            let message = match known.iter().find(|(k, _)| *k == key.text).map(|(_, i)| *i) {
                Some(Silent) => continue,
                Some(SilentIf(values, _)) if value.is_null() || canonical(value).is_some_and(|v| values.contains(&v.as_str())) => {
                    continue
                }
                Some(Warn(reason) | SilentIf(_, reason)) => format!("ignoring {path}: {reason}"),
                Some(Reject(reason)) => return fail(key.mark, format!("{path}: {reason}")),
                None => format!("ignoring unknown field {path}"),
            };
            self.warnings.push((key.mark, path, message));
        }
        Ok(())
    }

    fn warn(&mut self, mark: Mark, path: &str, message: String) {
        self.warnings.push((mark, path.to_string(), message));
    }

    fn list<'n>(&mut self, node: &'n Node, path: &str) -> Res<&'n [Node]> {
        match &node.value {
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.marks.insert(format!("{path}[{i}]"), item.mark);
                }
                Ok(items)
            }
            _ => fail(node.mark, format!("{} must be a list, not {}", name_of(path), node.describe())),
        }
    }

    fn string_list(&mut self, node: &Node, path: &str) -> Res<Vec<String>> {
        let items = self.list(node, path)?;
        items.iter().enumerate().map(|(i, n)| string(n, &format!("{path}[{i}]"))).collect()
    }

    /// `pod.yaml` as a whole.
    fn pod(&mut self, root: &Node) -> Res<Pod> {
        let mut top = self.obj(root, "")?;
        let (api, path) = self.required(&mut top, "apiVersion")?;
        if string(api, &path)? != "v1" {
            return fail(api.mark, format!("apiVersion must be v1 for a Pod, not {}", scalar_text(api)));
        }
        let (kind, path) = self.required(&mut top, "kind")?;
        if string(kind, &path)? != "Pod" {
            return fail(kind.mark, format!("kind must be Pod (berth runs Pods), not {}", scalar_text(kind)));
        }
        let (meta, path) = self.required(&mut top, "metadata")?;
        let name = self.metadata(meta, &path)?;
        let (spec, path) = self.required(&mut top, "spec")?;
        let pod = self.spec(spec, &path, name)?;
        self.finish(top, &[("status", Silent)])?;
        Ok(pod)
    }

    fn metadata(&mut self, node: &Node, path: &str) -> Res<String> {
        let mut o = self.obj(node, path)?;
        let name = match (self.field(&mut o, "name"), self.field(&mut o, "generateName")) {
            (Some((n, p)), _) => string(n, &p)?,
            (None, Some((g, p))) => format!("{}{}", string(g, &p)?, super::random_suffix(5)),
            (None, None) => return fail(o.mark, format!("{path}.name is required")),
        };
        const META: &[(&str, Ignore)] = &[
            ("namespace", Silent),
            ("labels", Silent),
            ("annotations", Silent),
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
        self.finish(o, META)?;
        Ok(name)
    }

    fn spec(&mut self, node: &Node, path: &str, name: String) -> Res<Pod> {
        let mut o = self.obj(node, path)?;

        let mut defaults = RunAs::default();
        if let Some((sc, p)) = self.field(&mut o, "securityContext") {
            let mut sc = self.obj(sc, &p)?;
            defaults = self.run_as(&mut sc)?;
            const POD_SC: &[(&str, Ignore)] = &[
                ("runAsNonRoot", SilentIf(&["false"], "not enforced")),
                ("fsGroup", Warn("berth does not change volume ownership")),
                ("fsGroupChangePolicy", Silent),
                ("supplementalGroups", Warn("not supported")),
                ("supplementalGroupsPolicy", Silent),
                ("sysctls", Warn("not supported")),
                ("seccompProfile", Warn("berth applies its default seccomp profile")),
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
            _ => Network::Private,
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
            ("serviceAccountName", Silent),
            ("serviceAccount", Silent),
            ("automountServiceAccountToken", Silent),
            ("enableServiceLinks", Silent),
            ("imagePullSecrets", Silent),
            ("resourceClaims", Warn("not supported")),
            ("resources", Warn("pod-level resources are not supported; set them per container")),
            ("ephemeralContainers", Warn("not supported")),
        ];
        self.finish(o, SPEC)?;

        let mut pod = Pod { name, init_containers, containers, main: 0, volumes, share_process_namespace, network, grace_seconds };
        // The runtime honours tty for the main container only; say so where
        // a file asks for more (a common Jenkins pod-template habit).
        for (init, list) in [(true, &mut pod.init_containers), (false, &mut pod.containers)] {
            for (i, c) in list.iter_mut().enumerate() {
                if c.tty && (init || i != 0) {
                    let p = format!("{path}.{}[{i}].tty", if init { "initContainers" } else { "containers" });
                    let mark = self.marks.get(&p).copied().unwrap_or_default();
                    self.warn(mark, &p, format!("ignoring {p}: only the main container gets a terminal"));
                }
            }
        }
        Ok(pod)
    }

    fn volume(&mut self, node: &Node, path: &str) -> Res<Volume> {
        let mut o = self.obj(node, path)?;
        let (n, p) = self.required(&mut o, "name")?;
        let name = string(n, &p)?;
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

    fn container(&mut self, node: &Node, path: &str, init: bool, defaults: &RunAs) -> Res<Container> {
        let mut o = self.obj(node, path)?;
        let (n, p) = self.required(&mut o, "name")?;
        let name = string(n, &p)?;
        let (i, p) = self.required(&mut o, "image")?;
        let image = string(i, &p)?;

        // Kubernetes treats an empty list like an absent one.
        let command = self.field(&mut o, "command").map(|(v, p)| self.string_list(v, &p)).transpose()?.filter(|v| !v.is_empty());
        let mut args = self.field(&mut o, "args").map(|(v, p)| self.string_list(v, &p)).transpose()?.filter(|v| !v.is_empty());
        // A command without args replaces the image's Cmd with nothing.
        if command.is_some() && args.is_none() {
            args = Some(Vec::new());
        }

        let mut env = Vec::new();
        if let Some((v, p)) = self.field(&mut o, "env") {
            let items = self.list(v, &p)?;
            for (j, item) in items.iter().enumerate() {
                let ip = format!("{p}[{j}]");
                let mut e = self.obj(item, &ip)?;
                let (k, kp) = self.required(&mut e, "name")?;
                let key = string(k, &kp)?;
                let value = self.field(&mut e, "value").map(|(v, vp)| string(v, &vp)).transpose()?.unwrap_or_default();
                self.finish(
                    e,
                    &[("valueFrom", Reject("valueFrom is not supported (berth has no ConfigMaps, Secrets or downward API); use value"))],
                )?;
                env.push((key, value));
            }
        }
        let (env, command, args) = expand_references(env, command, args);

        let working_dir = self.field(&mut o, "workingDir").map(|(v, p)| string(v, &p)).transpose()?.filter(|d| !d.is_empty());

        let mut volume_mounts = Vec::new();
        if let Some((v, p)) = self.field(&mut o, "volumeMounts") {
            let items = self.list(v, &p)?;
            for (j, item) in items.iter().enumerate() {
                let mp = format!("{p}[{j}]");
                let mut m = self.obj(item, &mp)?;
                let (n, np) = self.required(&mut m, "name")?;
                let (mpath, mpp) = self.required(&mut m, "mountPath")?;
                let read_only = self.field(&mut m, "readOnly").map(|(v, p)| boolean(v, &p)).transpose()?.unwrap_or(false);
                let mount = VolumeMount { name: string(n, &np)?, mount_path: string(mpath, &mpp)?, read_only };
                self.finish(
                    m,
                    &[
                        ("subPath", Reject("subPath is not supported; mount the volume and use the path inside it")),
                        ("subPathExpr", Reject("subPathExpr is not supported")),
                        ("mountPropagation", SilentIf(&["None"], "berth's mounts are private")),
                        ("recursiveReadOnly", Warn("not supported")),
                    ],
                )?;
                volume_mounts.push(mount);
            }
        }

        let mut ports = Vec::new();
        let mut port_names: Vec<(String, u16)> = Vec::new();
        if let Some((v, p)) = self.field(&mut o, "ports") {
            let items = self.list(v, &p)?;
            for (j, item) in items.iter().enumerate() {
                let pp = format!("{p}[{j}]");
                let mut po = self.obj(item, &pp)?;
                let (cp, cpp) = self.required(&mut po, "containerPort")?;
                let port = port_number(cp, &cpp)?;
                if let Some((n, np)) = self.field(&mut po, "name") {
                    let pname = string(n, &np)?;
                    if !is_port_name(&pname) {
                        return fail(
                            n.mark,
                            format!("invalid port name {}: at most 15 lowercase letters, digits and '-', with a letter", short(&pname)),
                        );
                    }
                    if port_names.iter().any(|(existing, _)| *existing == pname) {
                        return fail(n.mark, format!("port name {} is used twice", short(&pname)));
                    }
                    port_names.push((pname, port));
                }
                self.finish(
                    po,
                    &[
                        ("protocol", Silent),
                        ("hostPort", Warn("berth does not publish ports; use --network host")),
                        ("hostIP", Warn("berth does not publish ports; use --network host")),
                    ],
                )?;
                ports.push(port);
            }
        }

        let mut limits = Limits::default();
        if let Some((v, p)) = self.field(&mut o, "resources") {
            let mut r = self.obj(v, &p)?;
            if let Some((l, lp)) = self.field(&mut r, "limits") {
                let mut lo = self.obj(l, &lp)?;
                if let Some((m, mp)) = self.field(&mut lo, "memory") {
                    limits.memory_bytes = Some(quantity_of(m, &mp, quantity::bytes)?);
                }
                if let Some((c, cp)) = self.field(&mut lo, "cpu") {
                    limits.cpu_millis = Some(quantity_of(c, &cp, quantity::millis)?);
                }
                for ((key, _), used) in lo.entries.iter().zip(lo.used.iter_mut()) {
                    if !*used {
                        *used = true;
                        let kp = join(&lp, &key.text);
                        self.warnings.push((key.mark, kp.clone(), format!("ignoring {kp}: berth limits memory and cpu only")));
                    }
                }
                self.finish(lo, &[])?;
            }
            self.finish(r, &[("requests", Silent), ("claims", Warn("not supported"))])?;
        }

        let mut run_as = defaults.clone();
        if let Some((v, p)) = self.field(&mut o, "securityContext") {
            let mut sc = self.obj(v, &p)?;
            let own = self.run_as(&mut sc)?;
            run_as.user = own.user.or(run_as.user);
            run_as.group = own.group.or(run_as.group);
            const SC: &[(&str, Ignore)] = &[
                ("allowPrivilegeEscalation", SilentIf(&["false"], "berth always sets no_new_privileges")),
                ("privileged", SilentIf(&["false"], "berth never runs privileged containers")),
                ("readOnlyRootFilesystem", SilentIf(&["false"], "the root filesystem is writable")),
                ("runAsNonRoot", SilentIf(&["false"], "not enforced")),
                ("capabilities", Warn("berth grants Docker's default capability set")),
                ("seccompProfile", Warn("berth applies its default seccomp profile")),
                ("seLinuxOptions", Warn("not supported")),
                ("appArmorProfile", Warn("not supported")),
                ("procMount", SilentIf(&["Default"], "/proc is always masked")),
                ("windowsOptions", Silent),
            ];
            self.finish(sc, SC)?;
        }

        let readiness = match self.field(&mut o, "readinessProbe") {
            Some((v, p)) if init => return fail(v.mark, format!("{p}: init containers cannot have a readinessProbe")),
            Some((v, p)) => Some(self.probe(v, &p, &port_names)?),
            None => None,
        };
        let tty = self.field(&mut o, "tty").map(|(v, p)| boolean(v, &p)).transpose()?.unwrap_or(false);

        let restart: Ignore = if init {
            Reject("init containers with restartPolicy (Kubernetes sidecars) are not supported; list the container under spec.containers")
        } else {
            Warn("berth never restarts containers")
        };
        let known = [
            ("imagePullPolicy", Silent),
            ("stdin", Silent),
            ("stdinOnce", Silent),
            ("terminationMessagePath", Silent),
            ("terminationMessagePolicy", Silent),
            ("resizePolicy", Silent),
            ("restartPolicy", restart),
            ("livenessProbe", Warn("berth does not restart containers")),
            ("startupProbe", Warn("not supported; use readinessProbe")),
            ("lifecycle", Warn("lifecycle hooks are not supported")),
            ("envFrom", Reject("envFrom is not supported (berth has no ConfigMaps or Secrets); list the variables under env")),
            ("volumeDevices", Reject("volumeDevices are not supported")),
        ];
        self.finish(o, &known)?;

        Ok(Container {
            name,
            image,
            command,
            args,
            env,
            working_dir,
            volume_mounts,
            ports,
            limits,
            run_as_user: run_as.user,
            run_as_group: run_as.group,
            readiness,
            tty,
        })
    }

    fn run_as(&mut self, sc: &mut Obj<'_>) -> Res<RunAs> {
        let mut id = |key: &str| -> Res<Option<u32>> {
            match self.field(sc, key) {
                None => Ok(None),
                Some((v, p)) => {
                    let n = integer(v, &p)?;
                    // Kubernetes: 0 ..= 2147483647.
                    match u32::try_from(n) {
                        Ok(n) if n <= i32::MAX as u32 => Ok(Some(n)),
                        _ => fail(v.mark, format!("{p} must be between 0 and 2147483647, not {n}")),
                    }
                }
            }
        };
        Ok(RunAs { user: id("runAsUser")?, group: id("runAsGroup")? })
    }

    fn probe(&mut self, node: &Node, path: &str, port_names: &[(String, u16)]) -> Res<Probe> {
        let mut o = self.obj(node, path)?;
        let mut actions = Vec::new();
        if let Some((v, p)) = self.field(&mut o, "exec") {
            let mut e = self.obj(v, &p)?;
            let (c, cp) = self.required(&mut e, "command")?;
            let cmd = self.string_list(c, &cp)?;
            if cmd.is_empty() {
                return fail(c.mark, format!("{cp} must not be empty"));
            }
            self.finish(e, &[])?;
            actions.push((v.mark, ProbeAction::Exec(cmd)));
        }
        if let Some((v, p)) = self.field(&mut o, "tcpSocket") {
            let mut t = self.obj(v, &p)?;
            let (port, pp) = self.required(&mut t, "port")?;
            let number = match &port.value {
                Value::Scalar(s) if s.kind == ScalarKind::Str => match port_names.iter().find(|(n, _)| *n == s.text) {
                    Some((_, number)) => *number,
                    None => return fail(port.mark, format!("{pp}: no port named {} in this container's ports", short(&s.text))),
                },
                _ => port_number(port, &pp)?,
            };
            self.finish(t, &[("host", Warn("berth probes 127.0.0.1 in the pod"))])?;
            actions.push((v.mark, ProbeAction::TcpSocket(number)));
        }
        let seconds = |walk: &mut Walk, o: &mut Obj<'_>, key: &str, default: u64| -> Res<u64> {
            match walk.field(o, key) {
                None => Ok(default),
                Some((v, p)) => match integer(v, &p)? {
                    // 0 is Go's "unset": Kubernetes applies the default.
                    0 => Ok(default),
                    n if (1..=i64::from(i32::MAX)).contains(&n) => Ok(n.unsigned_abs()),
                    n => fail(v.mark, format!("{p} must not be negative, not {n}")),
                },
            }
        };
        let initial_delay = seconds(self, &mut o, "initialDelaySeconds", 0)?;
        let period = seconds(self, &mut o, "periodSeconds", 10)?;
        let timeout = seconds(self, &mut o, "timeoutSeconds", 1)?;
        let failure_threshold = seconds(self, &mut o, "failureThreshold", 3)?;
        self.finish(
            o,
            &[
                ("httpGet", Reject("httpGet probes are not supported; use tcpSocket or exec")),
                ("grpc", Reject("grpc probes are not supported; use tcpSocket or exec")),
                ("successThreshold", SilentIf(&["1"], "one success makes a container ready")),
                ("terminationGracePeriodSeconds", Warn("not supported")),
            ],
        )?;
        let action = match actions.len() {
            1 => actions.remove(0).1,
            0 => return fail(node.mark, format!("{path} needs exec or tcpSocket")),
            _ => return fail(actions[1].0, format!("{path} may have only one of exec and tcpSocket")),
        };
        Ok(Probe {
            action,
            initial_delay_ms: initial_delay * 1000,
            period_ms: period * 1000,
            timeout_ms: timeout * 1000,
            failure_threshold: u32::try_from(failure_threshold).unwrap_or(u32::MAX),
        })
    }
}

/// Identity to run as, from the pod's securityContext or the container's.
#[derive(Debug, Clone, Default)]
struct RunAs {
    user: Option<u32>,
    group: Option<u32>,
}

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

/// "metadata" for a path, "the file" for the root.
fn name_of(path: &str) -> &str {
    if path.is_empty() {
        "the file"
    } else {
        path
    }
}

fn scalar_text(node: &Node) -> String {
    match &node.value {
        Value::Scalar(s) => short(&s.text),
        _ => node.describe(),
    }
}

/// A scalar's value as the matching rule in [`Ignore::SilentIf`] sees it.
fn canonical(node: &Node) -> Option<String> {
    match &node.value {
        Value::Scalar(s) => Some(match s.kind {
            ScalarKind::Bool(b) => b.to_string(),
            _ => s.text.clone(),
        }),
        _ => None,
    }
}

fn string(node: &Node, path: &str) -> Res<String> {
    match &node.value {
        Value::Scalar(s) if s.kind == ScalarKind::Str => Ok(s.text.clone()),
        Value::Scalar(s) if s.kind != ScalarKind::Null => fail(
            node.mark,
            format!("{path} must be a string, not {}; quote it (Kubernetes rejects it too)", node.describe()),
        ),
        _ => fail(node.mark, format!("{path} must be a string, not {}", node.describe())),
    }
}

fn boolean(node: &Node, path: &str) -> Res<bool> {
    match &node.value {
        Value::Scalar(s) => match s.kind {
            ScalarKind::Bool(b) => Ok(b),
            _ => fail(node.mark, format!("{path} must be true or false, not {}", node.describe())),
        },
        _ => fail(node.mark, format!("{path} must be true or false, not {}", node.describe())),
    }
}

fn integer(node: &Node, path: &str) -> Res<i64> {
    let not_int = || fail(node.mark, format!("{path} must be an integer, not {}", node.describe()));
    let s = match &node.value {
        Value::Scalar(s) if s.kind == ScalarKind::Int => &s.text,
        _ => return not_int(),
    };
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s.as_str()),
    };
    let digits = digits.replace('_', "");
    let (radix, body) = if let Some(h) = digits.strip_prefix("0x") {
        (16, h)
    } else if let Some(o) = digits.strip_prefix("0o") {
        (8, o)
    } else if let Some(b) = digits.strip_prefix("0b") {
        (2, b)
    } else if digits.len() > 1 && digits.starts_with('0') {
        return fail(
            node.mark,
            format!("{path}: {} has a leading zero, which YAML 1.1 reads as octal; write it without", short(s)),
        );
    } else {
        (10, digits.as_str())
    };
    match i64::from_str_radix(body, radix) {
        Ok(n) if negative => Ok(-n),
        Ok(n) => Ok(n),
        Err(_) => fail(node.mark, format!("{path}: {} is out of range", short(s))),
    }
}

fn port_number(node: &Node, path: &str) -> Res<u16> {
    let n = integer(node, path)?;
    match u16::try_from(n) {
        Ok(p) if p > 0 => Ok(p),
        _ => fail(node.mark, format!("{path} must be a port number between 1 and 65535, not {n}")),
    }
}

fn quantity_of(node: &Node, path: &str, parse: fn(&str) -> Result<u64, quantity::QuantityError>) -> Res<u64> {
    match &node.value {
        Value::Scalar(s) if matches!(s.kind, ScalarKind::Str | ScalarKind::Int | ScalarKind::Float) => {
            parse(&s.text).map_err(|e| Located { mark: node.mark, message: format!("{path}: {e}") })
        }
        _ => fail(node.mark, format!("{path} must be a quantity such as 256Mi or 500m, not {}", node.describe())),
    }
}

/// Kubernetes' IANA_SVC_NAME: at most 15 of `a-z0-9-`, at least one
/// letter, no leading, trailing or double '-'.
fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

type Env = Vec<(String, String)>;
type Argv = Option<Vec<String>>;

/// Kubernetes' `$(VAR)` references: each env value may use the variables
/// defined before it; command and args may use them all. `$$` is a literal
/// `$`; a reference to an undefined variable is left as written.
fn expand_references(env: Env, command: Argv, args: Argv) -> (Env, Argv, Argv) {
    let mut defined: HashMap<String, String> = HashMap::new();
    let mut expanded = Vec::with_capacity(env.len());
    for (k, v) in env {
        let v = expand(&v, &defined);
        defined.insert(k.clone(), v.clone());
        expanded.push((k, v));
    }
    let all = |list: Option<Vec<String>>| list.map(|l| l.iter().map(|a| expand(a, &defined)).collect());
    let command = all(command);
    let args = all(args);
    (expanded, command, args)
}

/// Kubernetes' `third_party/forked/golang/expansion.Expand`, on chars.
fn expand(input: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let mut chars = after.chars();
        match chars.next() {
            // A lone trailing '$' is kept.
            None => {
                out.push('$');
                rest = after;
            }
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('(') => match after.find(')') {
                Some(close) => {
                    let name = &after[1..close];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[close + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            Some(c) => {
                out.push('$');
                out.push(c);
                rest = &after[c.len_utf8()..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn expansion_matches_kubernetes() {
        let v = vars(&[("A", "x"), ("EMPTY", "")]);
        let cases = [
            ("$(A)", "x"),
            ("a$(A)b$(A)", "axbx"),
            ("$$(A)", "$(A)"),
            ("$$$(A)", "$x"),
            ("$(B)", "$(B)"),
            ("$(EMPTY)-", "-"),
            ("$A", "$A"),
            ("$", "$"),
            ("$(A", "$(A"),
            ("$(", "$("),
            ("é$é$(A)", "é$éx"),
            ("no refs", "no refs"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, &v), want, "{input}");
        }
    }

    #[test]
    fn env_sees_only_earlier_variables() {
        let env = vec![("A".into(), "$(B)".into()), ("B".into(), "b".into()), ("C".into(), "$(B)$(A)".into())];
        let (env, command, args) = expand_references(env, Some(vec!["$(C)".into()]), None);
        assert_eq!(env[0].1, "$(B)");
        assert_eq!(env[2].1, "b$(B)");
        assert_eq!(command, Some(vec!["b$(B)".to_string()]));
        assert_eq!(args, None);
    }

    #[test]
    fn port_names() {
        for ok in ["http", "web-1", "a", "postgres"] {
            assert!(is_port_name(ok), "{ok}");
        }
        for bad in ["", "8080", "-a", "a-", "a--b", "HTTP", "abcdefghijklmnop"] {
            assert!(!is_port_name(bad), "{bad}");
        }
    }

    #[test]
    fn join_quotes_odd_keys() {
        assert_eq!(join("", "spec"), "spec");
        assert_eq!(join("spec", "hostPID"), "spec.hostPID");
        assert_eq!(join("spec", "a b\nc"), "spec[\"a b\\nc\"]");
    }

    #[test]
    fn end_mark_counts_chars() {
        assert_eq!(end_mark(""), Mark { line: 1, column: 1 });
        assert_eq!(end_mark("ab\né"), Mark { line: 2, column: 2 });
    }
}

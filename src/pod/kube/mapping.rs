//! The Pod API mapped onto [`Pod`]: which fields berth reads, with
//! Kubernetes' defaults, and which it ignores or rejects, and why.

use std::path::PathBuf;

use super::expand::expand_references;
use super::scalar::{boolean, integer, port_number, quantity_of, scalar_text, string};
use super::walk::Ignore::{self, Reject, Silent, SilentIf, Warn};
use super::walk::{fail, join, Obj, Res, Walk};
use super::yaml::{short, Node, ScalarKind, Value};
use crate::pod::{quantity, Container, Limits, Network, Pod, PortMapping, Probe, ProbeAction, Volume, VolumeMount, VolumeSource};

impl Walk {
    /// `pod.yaml` as a whole.
    pub(super) fn pod(&mut self, root: &Node) -> Res<Pod> {
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
            (None, Some((g, p))) => format!("{}{}", string(g, &p)?, crate::pod::random_suffix(5)),
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
        let mut host_ports = Vec::new();
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
                if let Some((h, hp)) = self.field(&mut po, "hostPort") {
                    let host_port = port_number(h, &hp)?;
                    let host_ip = match self.field(&mut po, "hostIP") {
                        Some((a, ap)) => {
                            let text = string(a, &ap)?;
                            let ip = text.parse().map_err(|_| ()).or_else(|()| fail(a.mark, format!("{ap}: {} is not an IP address", short(&text))))?;
                            Some(ip)
                        }
                        None => None,
                    };
                    host_ports.push(PortMapping { host_ip, host_port, container_port: port });
                }
                self.finish(
                    po,
                    &[
                        ("protocol", SilentIf(&["TCP"], "berth publishes TCP ports only")),
                        ("hostIP", Warn("ignored without hostPort")),
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
            host_ports,
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
            actions.push((v.mark, ProbeAction::Tcp(number)));
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
            initial_delay: std::time::Duration::from_secs(initial_delay),
            period: std::time::Duration::from_secs(period),
            timeout: std::time::Duration::from_secs(timeout),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_names() {
        for ok in ["http", "web-1", "a", "postgres"] {
            assert!(is_port_name(ok), "{ok}");
        }
        for bad in ["", "8080", "-a", "a-", "a--b", "HTTP", "abcdefghijklmnop"] {
            assert!(!is_port_name(bad), "{bad}");
        }
    }
}

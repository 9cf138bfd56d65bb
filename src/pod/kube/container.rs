//! A container of the Pod API mapped onto [`Container`]: its command,
//! environment (with the downward API), mounts, ports, limits, security
//! context, probes and pull policy; what berth ignores or rejects, and why.

use super::expand::expand_references;
use super::scalar::{boolean, integer, port_number, quantity_of, string};
use super::walk::Ignore::{self, Reject, Silent, SilentIf, Warn};
use super::walk::{fail, join, Obj, Res, Walk};
use super::yaml::{short, Node, ScalarKind, Value};
use crate::pod::{quantity, Container, Limits, PortMapping, Probe, ProbeAction, PullPolicy, VolumeMount};

impl Walk {
    pub(super) fn container(&mut self, node: &Node, path: &str, init: bool, defaults: &RunAs) -> Res<Container> {
        let mut o = self.obj(node, path)?;
        let (n, p) = self.required(&mut o, "name")?;
        let name = string(n, &p)?;
        // The Kubernetes plugin supplies the image of its `jnlp` container:
        // without one, it is the agent's, which `berth agent` provides.
        let (image, agent) = match self.field(&mut o, "image") {
            None if !init && name == "jnlp" => (String::new(), true),
            None => return fail(o.mark, format!("{} is required", join(&o.path, "image"))),
            Some((i, p)) => (string(i, &p)?, false),
        };
        let pull_policy = match self.field(&mut o, "imagePullPolicy") {
            None => PullPolicy::default(),
            Some((v, p)) => match string(v, &p)?.as_str() {
                "Always" => PullPolicy::Always,
                "IfNotPresent" => PullPolicy::IfNotPresent,
                "Never" => PullPolicy::Never,
                other => {
                    return fail(v.mark, format!("{p} must be Always, IfNotPresent or Never, not {}", short(other)));
                }
            },
        };
        // An init container that keeps running (Kubernetes' native sidecar).
        let sidecar = match self.field(&mut o, "restartPolicy") {
            Some((v, p)) if init => match string(v, &p)?.as_str() {
                "Always" => true,
                other => return fail(v.mark, format!("{p}: an init container's restartPolicy can only be Always, not {}", short(other))),
            },
            Some((v, p)) => {
                let mark = o.key_mark("restartPolicy").unwrap_or(v.mark);
                self.warn(mark, &p, format!("ignoring {p}: berth never restarts containers"));
                false
            }
            None => false,
        };

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
                let value = self.field(&mut e, "value").map(|(v, vp)| string(v, &vp)).transpose()?;
                let value = match (value, self.field(&mut e, "valueFrom")) {
                    (Some(_), Some((vf, _))) => return fail(vf.mark, format!("{ip} may have value or valueFrom, not both")),
                    (Some(v), None) => v,
                    (None, None) => String::new(),
                    (None, Some((vf, vfp))) => self.value_from(vf, &vfp)?,
                };
                self.finish(e, &[])?;
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
            self.seccomp_profile(&mut sc)?;
            run_as.user = own.user.or(run_as.user);
            run_as.group = own.group.or(run_as.group);
            const SC: &[(&str, Ignore)] = &[
                ("allowPrivilegeEscalation", SilentIf(&["false"], "berth always sets no_new_privileges")),
                (
                    "privileged",
                    SilentIf(
                        &["false"],
                        "privileged is not supported rootless: the container runs unprivileged; docker-in-docker will not work",
                    ),
                ),
                ("readOnlyRootFilesystem", SilentIf(&["false"], "the root filesystem is writable")),
                ("runAsNonRoot", SilentIf(&["false"], "not enforced")),
                ("capabilities", Warn("berth grants Docker's default capability set")),
                ("seLinuxOptions", Warn("not supported")),
                ("appArmorProfile", Warn("not supported")),
                ("procMount", SilentIf(&["Default"], "/proc is always masked")),
                ("windowsOptions", Silent),
            ];
            self.finish(sc, SC)?;
        }

        let readiness = match self.field(&mut o, "readinessProbe") {
            Some((v, p)) if init && !sidecar => return fail(v.mark, format!("{p}: init containers cannot have a readinessProbe")),
            Some((v, p)) => Some(self.probe(v, &p, &port_names)?),
            None => None,
        };
        // A native sidecar's startupProbe gates the next container, which
        // is what berth's readiness does; elsewhere berth has no use for it.
        let readiness = match self.field(&mut o, "startupProbe") {
            Some((v, p)) if sidecar => {
                if readiness.is_some() {
                    self.warn(v.mark, &p, format!("{p}: berth waits for the startupProbe; the readinessProbe is not used"));
                }
                Some(self.probe(v, &p, &port_names)?)
            }
            Some((v, p)) => {
                let mark = o.key_mark("startupProbe").unwrap_or(v.mark);
                self.warn(mark, &p, format!("ignoring {p}: not supported; use readinessProbe"));
                readiness
            }
            None => readiness,
        };
        let tty = self.field(&mut o, "tty").map(|(v, p)| boolean(v, &p)).transpose()?.unwrap_or(false);

        let known = [
            ("stdin", Silent),
            ("stdinOnce", Silent),
            ("terminationMessagePath", Silent),
            ("terminationMessagePolicy", Silent),
            ("resizePolicy", Silent),
            ("livenessProbe", Warn("berth does not restart containers")),
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
            agent,
            sidecar,
            pull_policy,
        })
    }

    /// `env[].valueFrom`: the downward API's `fieldRef` has a value under
    /// berth; Secrets and ConfigMaps do not exist here.
    fn value_from(&mut self, node: &Node, path: &str) -> Res<String> {
        let mut o = self.obj(node, path)?;
        let value = match self.field(&mut o, "fieldRef") {
            Some((f, fp)) => {
                let mut r = self.obj(f, &fp)?;
                let (v, vp) = self.required(&mut r, "fieldPath")?;
                let field_path = string(v, &vp)?;
                self.finish(r, &[("apiVersion", SilentIf(&["v1"], "the downward API is v1"))])?;
                match self.downward.value(&field_path) {
                    Ok(value) => Some(value),
                    Err(why) => return fail(v.mark, format!("{vp}: {why}")),
                }
            }
            None => None,
        };
        const NO_OBJECTS: &str = "berth has no Secrets or ConfigMaps; use value, or -e NAME=VALUE on the command line";
        self.finish(
            o,
            &[
                ("secretKeyRef", Reject(NO_OBJECTS)),
                ("configMapKeyRef", Reject(NO_OBJECTS)),
                ("fileKeyRef", Reject("fileKeyRef is not supported; use value")),
                ("resourceFieldRef", Reject("resourceFieldRef is not supported; use value")),
            ],
        )?;
        match value {
            Some(v) => Ok(v),
            None => fail(node.mark, format!("{path} needs fieldRef")),
        }
    }

    /// `seccompProfile`: `RuntimeDefault` is what berth applies, so it is
    /// silent; any other profile is not honoured.
    pub(super) fn seccomp_profile(&mut self, sc: &mut Obj<'_>) -> Res<()> {
        let Some((v, p)) = self.field(sc, "seccompProfile") else { return Ok(()) };
        let mut o = self.obj(v, &p)?;
        let kind = match self.field(&mut o, "type") {
            Some((t, tp)) => string(t, &tp)?,
            None => String::new(),
        };
        self.finish(o, &[("localhostProfile", Silent)])?;
        if kind != "RuntimeDefault" {
            let mark = sc.key_mark("seccompProfile").unwrap_or(v.mark);
            self.warn(mark, &p, format!("ignoring {p}: berth applies its default seccomp profile"));
        }
        Ok(())
    }

    pub(super) fn run_as(&mut self, sc: &mut Obj<'_>) -> Res<RunAs> {
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
pub(super) struct RunAs {
    user: Option<u32>,
    group: Option<u32>,
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

//! `berth run [OPTIONS] IMAGE [-- CMD ARGS...]` → [`Pod`].
//!
//! The main container runs IMAGE (named after the image, `…/busybox:1` →
//! `busybox`); each `--sidecar NAME=IMAGE` adds a container. Commands follow
//! `podman run`: what comes after `--` replaces the image's Cmd and keeps its
//! Entrypoint, and so does a sidecar's `--sidecar-cmd 'NAME=CMD ARGS...'`,
//! whose value is split like a shell would (quotes and backslashes), so
//! `--sidecar-cmd "db=sh -c 'init && exec postgres'"` works.

use std::ffi::OsString;

use thiserror::Error;

use super::{is_dns_label, Container, InvalidPod, Network, Pod};

/// The options that shape the pod, as given (no clap types: the CLI maps
/// its arguments onto this).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShorthandArgs {
    /// Image of the main container.
    pub image: String,
    /// `-- CMD ARGS...`: replaces the image's Cmd; empty keeps it.
    pub command: Vec<String>,
    /// `--name`: the pod's name; `berth-` and six random characters if unset.
    pub name: Option<String>,
    /// `--main NAME`: which container is the main one [default: IMAGE's].
    pub main: Option<String>,
    /// `--sidecar NAME=IMAGE`, in order.
    pub sidecars: Vec<String>,
    /// `--sidecar-cmd 'NAME=CMD ARGS...'` (shell-style quoting).
    pub sidecar_cmds: Vec<String>,
    /// `-e K=V`, or `-e K` to pass berth's own `K` (skipped when unset).
    pub env: Vec<String>,
    /// `-w DIR`: the main container's working directory.
    pub workdir: Option<String>,
    /// `-t`: a terminal for the main container.
    pub tty: bool,
    /// `--network`.
    pub network: Network,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ShorthandError {
    #[error("--sidecar {arg:?}: {reason}")]
    Sidecar { arg: String, reason: String },
    #[error("--sidecar-cmd {arg:?}: {reason}")]
    SidecarCmd { arg: String, reason: String },
    #[error("-e {arg:?}: {reason}")]
    Env { arg: String, reason: String },
    #[error(transparent)]
    Invalid(#[from] InvalidPod),
}

/// Builds and validates the pod, reading `-e K` values from berth's
/// environment.
pub fn from_args(a: &ShorthandArgs) -> Result<Pod, ShorthandError> {
    from_args_with_env(a, |k| std::env::var_os(k))
}

/// [`from_args`] with the environment given as a lookup.
pub fn from_args_with_env(a: &ShorthandArgs, lookup: impl Fn(&str) -> Option<OsString>) -> Result<Pod, ShorthandError> {
    let mut sidecars = Vec::with_capacity(a.sidecars.len());
    for arg in &a.sidecars {
        let bad = |reason: &str| ShorthandError::Sidecar { arg: arg.clone(), reason: reason.into() };
        let (name, image) = arg.split_once('=').ok_or_else(|| bad("expected NAME=IMAGE"))?;
        if name.is_empty() || image.is_empty() {
            return Err(bad("expected NAME=IMAGE"));
        }
        sidecars.push(Container { name: name.into(), image: image.into(), ..Container::default() });
    }

    let mut with_cmd: Vec<&str> = Vec::new();
    for arg in &a.sidecar_cmds {
        let bad = |reason: String| ShorthandError::SidecarCmd { arg: arg.clone(), reason };
        let (name, cmd) = arg.split_once('=').ok_or_else(|| bad("expected NAME=CMD [ARGS...]".into()))?;
        let words = shlex::split(cmd).ok_or_else(|| bad("unbalanced quotes or a trailing backslash".into()))?;
        if words.is_empty() {
            return Err(bad("the command is empty".into()));
        }
        let sidecar = sidecars
            .iter_mut()
            .find(|c| c.name == name)
            .ok_or_else(|| bad(format!("no --sidecar is named {name:?}")))?;
        if with_cmd.contains(&name) {
            return Err(bad(format!("sidecar {name:?} already has a command")));
        }
        with_cmd.push(name);
        sidecar.args = Some(words);
    }

    let mut env = Vec::with_capacity(a.env.len());
    for arg in &a.env {
        let bad = |reason: &str| ShorthandError::Env { arg: arg.clone(), reason: reason.into() };
        match arg.split_once('=') {
            Some(("", _)) => return Err(bad("expected K=V or K")),
            Some((k, v)) => env.push((k.to_string(), v.to_string())),
            None if arg.is_empty() => return Err(bad("expected K=V or K")),
            // Like podman: a variable berth does not have is left out.
            None => match lookup(arg) {
                None => {}
                Some(v) => {
                    let v = v.into_string().map_err(|_| bad("berth's value for it is not UTF-8"))?;
                    env.push((arg.clone(), v));
                }
            },
        }
    }

    let taken: Vec<&str> = sidecars.iter().map(|c| c.name.as_str()).collect();
    let image_container = Container {
        name: main_name(&a.image, &taken),
        image: a.image.clone(),
        args: (!a.command.is_empty()).then(|| a.command.clone()),
        ..Container::default()
    };
    let mut containers = Vec::with_capacity(1 + sidecars.len());
    containers.push(image_container);
    containers.extend(sidecars);
    let mut pod = Pod {
        name: a.name.clone().unwrap_or_else(generated_name),
        init_containers: Vec::new(),
        containers,
        main: 0,
        volumes: Vec::new(),
        share_process_namespace: false,
        network: a.network,
        grace_seconds: None,
        isolation: crate::pod::Isolation::Container,
    };
    if let Some(m) = &a.main {
        pod.select_main(m)?;
    }
    // -e, -w and -t are for the main container, whichever it is.
    if let Some(main) = pod.main_container_mut() {
        main.env.extend(env);
        if a.workdir.is_some() {
            main.working_dir = a.workdir.clone();
        }
        main.tty = a.tty;
    }
    pod.validate()?;
    Ok(pod)
}

/// `berth-` and six random characters.
pub fn generated_name() -> String {
    format!("berth-{}", super::random_suffix(6))
}

/// The image's base name as a DNS label (`localhost:5000/a/busybox:1.36` →
/// `busybox`), or `main`, or `main-N` if sidecars took those.
fn main_name(image: &str, taken: &[&str]) -> String {
    let base = base_name(image);
    let candidates = std::iter::once(base).chain(std::iter::once("main".to_string())).chain((2..).map(|n| format!("main-{n}")));
    candidates.filter(|c| !c.is_empty()).find(|c| !taken.contains(&c.as_str())).unwrap_or_else(|| "main".into())
}

fn base_name(image: &str) -> String {
    let image = image.strip_prefix("oci-archive:").or_else(|| image.strip_prefix("oci:")).unwrap_or(image);
    let image = image.split('@').next().unwrap_or(image);
    let last = image.rsplit('/').next().unwrap_or(image);
    let last = last.split(':').next().unwrap_or(last);
    let last = last.strip_suffix(".tar").unwrap_or(last);
    // Repository names allow '.', '_' and "__"; labels do not.
    let mut label = String::with_capacity(last.len());
    for c in last.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' };
        if !(c == '-' && (label.is_empty() || label.ends_with('-'))) {
            label.push(c);
        }
    }
    label.truncate(63);
    let label = label.trim_end_matches('-').to_string();
    if is_dns_label(&label) {
        label
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(image: &str) -> ShorthandArgs {
        ShorthandArgs { image: image.into(), name: Some("p".into()), ..ShorthandArgs::default() }
    }

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    fn names(p: &Pod) -> Vec<&str> {
        p.containers.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn base_names() {
        let cases = [
            ("busybox", "busybox"),
            ("localhost:5000/berth/busybox:latest", "busybox"),
            ("docker.io/library/eclipse-temurin:21-jre@sha256:abcd", "eclipse-temurin"),
            ("quay.io/org/my_app__x:1", "my-app-x"),
            ("oci:/tmp/layouts/alpine.oci:3.20", "alpine-oci"),
            ("oci-archive:/tmp/busybox.tar", "busybox"),
            ("registry:5000/UPPER", "upper"),
            ("___", ""),
        ];
        for (image, want) in cases {
            assert_eq!(base_name(image), want, "{image}");
        }
    }

    #[test]
    fn image_and_command() {
        let mut a = args("localhost:5000/berth/busybox:latest");
        a.command = vec!["sh".into(), "-c".into(), "exit 3".into()];
        let p = from_args_with_env(&a, no_env).unwrap();
        assert_eq!(p.name, "p");
        assert_eq!(names(&p), ["busybox"]);
        let c = &p.containers[0];
        assert_eq!(c.image, "localhost:5000/berth/busybox:latest");
        assert_eq!(c.command, None);
        assert_eq!(c.args.as_deref(), Some(&["sh".to_string(), "-c".into(), "exit 3".into()][..]));
        assert_eq!(p.network, Network::Outbound);

        let p = from_args_with_env(&args("busybox"), no_env).unwrap();
        assert_eq!(p.containers[0].args, None);
    }

    #[test]
    fn generated_pod_name() {
        let mut a = args("busybox");
        a.name = None;
        let p = from_args_with_env(&a, no_env).unwrap();
        assert!(p.name.starts_with("berth-") && p.name.len() == 12, "{}", p.name);
        assert!(is_dns_label(&p.name));
    }

    #[test]
    fn sidecars_with_quoted_commands() {
        let mut a = args("busybox");
        a.sidecars = vec!["web=busybox".into(), "db=postgres:16=x".into()];
        a.sidecar_cmds = vec!["web=httpd -f -p 8080 -h /workspace".into(), r#"db=sh -c 'echo "a b"; exec postgres'"#.into()];
        let p = from_args_with_env(&a, no_env).unwrap();
        assert_eq!(names(&p), ["busybox", "web", "db"]);
        assert_eq!(p.main, 0);
        assert_eq!(p.containers[1].args.as_ref().unwrap().len(), 6);
        assert_eq!(p.containers[2].image, "postgres:16=x");
        assert_eq!(p.containers[2].args.as_deref(), Some(&["sh".to_string(), "-c".into(), r#"echo "a b"; exec postgres"#.into()][..]));
    }

    #[test]
    fn main_name_avoids_sidecar_names() {
        let mut a = args("busybox");
        a.sidecars = vec!["busybox=busybox".into()];
        assert_eq!(names(&from_args_with_env(&a, no_env).unwrap()), ["main", "busybox"]);
        a.sidecars.push("main=busybox".into());
        assert_eq!(names(&from_args_with_env(&a, no_env).unwrap()), ["main-2", "busybox", "main"]);
        let a = args("___");
        assert_eq!(names(&from_args_with_env(&a, no_env).unwrap()), ["main"]);
    }

    #[test]
    fn env_forms() {
        let mut a = args("busybox");
        a.env = vec!["A=1".into(), "B=".into(), "C=x=y".into(), "HOME".into(), "MISSING".into()];
        let lookup = |k: &str| (k == "HOME").then(|| OsString::from("/home/me"));
        let p = from_args_with_env(&a, lookup).unwrap();
        let env: Vec<(&str, &str)> = p.containers[0].env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(env, [("A", "1"), ("B", ""), ("C", "x=y"), ("HOME", "/home/me")]);
    }

    #[test]
    fn options_for_main() {
        let mut a = args("busybox");
        a.workdir = Some("/workspace".into());
        a.tty = true;
        a.network = Network::Host;
        let p = from_args_with_env(&a, no_env).unwrap();
        assert_eq!(p.containers[0].working_dir.as_deref(), Some("/workspace"));
        assert!(p.containers[0].tty);
        assert_eq!(p.network, Network::Host);
    }

    #[test]
    fn main_override_moves_main_options() {
        let mut a = args("busybox");
        a.sidecars = vec!["web=busybox".into()];
        a.main = Some("web".into());
        a.env = vec!["A=1".into()];
        a.tty = true;
        let p = from_args_with_env(&a, no_env).unwrap();
        assert_eq!(p.main_container().map(|c| c.name.as_str()), Some("web"));
        assert!(p.containers[1].tty && !p.containers[0].tty);
        assert_eq!(p.containers[1].env, [("A".to_string(), "1".to_string())]);
        assert!(p.containers[0].env.is_empty());
    }

    type Case = (Box<dyn Fn(&mut ShorthandArgs)>, &'static str);

    #[test]
    fn errors() {
        let cases: Vec<Case> = vec![
            (Box::new(|a| a.sidecars = vec!["web".into()]), "--sidecar \"web\": expected NAME=IMAGE"),
            (Box::new(|a| a.sidecars = vec!["=busybox".into()]), "--sidecar \"=busybox\": expected NAME=IMAGE"),
            (Box::new(|a| a.sidecars = vec!["Web=busybox".into()]), "invalid container name \"Web\""),
            (Box::new(|a| a.sidecars = vec!["w=b".into(), "w=c".into()]), "container name \"w\" is used twice"),
            (Box::new(|a| a.sidecar_cmds = vec!["web=true".into()]), "no --sidecar is named \"web\""),
            (
                Box::new(|a| {
                    a.sidecars = vec!["web=busybox".into()];
                    a.sidecar_cmds = vec!["web=sh -c 'x".into()];
                }),
                "unbalanced quotes",
            ),
            (
                Box::new(|a| {
                    a.sidecars = vec!["web=busybox".into()];
                    a.sidecar_cmds = vec!["web=  ".into()];
                }),
                "the command is empty",
            ),
            (
                Box::new(|a| {
                    a.sidecars = vec!["web=busybox".into()];
                    a.sidecar_cmds = vec!["web=a".into(), "web=b".into()];
                }),
                "already has a command",
            ),
            (Box::new(|a| a.sidecar_cmds = vec!["nocmd".into()]), "expected NAME=CMD"),
            (Box::new(|a| a.env = vec!["=v".into()]), "-e \"=v\": expected K=V or K"),
            (Box::new(|a| a.env = vec!["A B=1".into()]), "invalid environment variable name \"A B\""),
            (Box::new(|a| a.workdir = Some("rel".into())), "must be an absolute path"),
            (Box::new(|a| a.name = Some("My_Pod".into())), "invalid pod name \"My_Pod\""),
            (Box::new(|a| a.image = String::new()), "needs an image"),
            (Box::new(|a| a.main = Some("nope".into())), "no container named \"nope\""),
            (Box::new(|a| a.command = vec!["a\0b".into()]), "NUL byte"),
        ];
        for (i, (change, want)) in cases.into_iter().enumerate() {
            let mut a = args("busybox");
            change(&mut a);
            let e = from_args_with_env(&a, no_env).expect_err(&format!("case {i}")).to_string();
            assert!(e.contains(want), "case {i}: {e:?} lacks {want:?}");
        }
    }
}

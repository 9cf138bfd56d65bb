//! `berth agent`: a Jenkins agent in a pod, from any build image.
//!
//! Jenkins' "launch agent via execution of command on the controller" runs
//! berth with no arguments of its own and talks remoting over its stdin and
//! stdout. berth makes the pod's main container the agent: the Java runtime
//! of an *agent image* is mounted read-only at [`JRE_DIR`] and started through
//! that image's own dynamic loader (so the build image needs neither Java nor
//! glibc), with the controller's agent.jar (fetched on the host, see [`jar`])
//! and a per-controller jar cache on the host. Build steps then run in the
//! build container with its own tools. Everything else (sidecars, workspace,
//! teardown, exit status) is the planner's, as for `berth run`.

pub mod jar;
pub mod java;

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::paths::Paths;
use crate::planner::{self, RunSettings};
use crate::pod::{Pod, Volume, VolumeMount, VolumeSource};

/// Where the agent's files appear in the main container.
pub const AGENT_DIR: &str = "/.berth/agent";
/// The agent image's tree (read-only).
pub const JRE_DIR: &str = "/.berth/agent/jre";
/// The controller's agent.jar (read-only).
pub const JAR_PATH: &str = "/.berth/agent/agent.jar";
/// The controller's jar cache (writable, shared by its agents).
pub const JAR_CACHE_DIR: &str = "/.berth/agent/jar-cache";

/// The default agent image: Eclipse Temurin's JRE.
pub const DEFAULT_AGENT_IMAGE: &str = "docker.io/library/eclipse-temurin:17-jre";

/// Volume names berth adds to the pod (a pod file may not use them).
const JRE_VOLUME: &str = "berth-agent-jre";
const JAR_VOLUME: &str = "berth-agent-jar";
const CACHE_VOLUME: &str = "berth-agent-jar-cache";

/// What `berth agent` adds to a pod run.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// The image whose Java runs the agent.
    pub agent_image: String,
    /// agent.jar: a path on the host or an http(s) URL (Jenkins gives
    /// `$AGENTJAR_URL`).
    pub agent_jar: String,
    /// The controller (`$JENKINS_URL`): keys the jar cache; `None`: the
    /// agent jar's URL, else one cache for local jars.
    pub jenkins_url: Option<String>,
    /// More arguments for agent.jar, after berth's own.
    pub agent_args: Vec<String>,
    /// Verify TLS certificates when fetching agent.jar.
    pub tls_verify: bool,
}

/// Runs `pod` with its main container as the Jenkins agent; the status is
/// the agent's (provisioning failures are `Err`, exit 125).
pub fn run(paths: &Paths, mut pod: Pod, a: &AgentSettings, s: &RunSettings) -> anyhow::Result<u8> {
    Paths::ensure_private_dir(&paths.root).with_context(|| format!("creating {}", paths.root.display()))?;
    let jar = jar::resolve(&paths.root, &a.agent_jar, a.tls_verify)?;
    let cache = jar_cache_dir(&paths.root, cache_key(a))?;
    // A Kubernetes-plugin template's `jnlp` container without an image is
    // the agent container: it runs the agent image, as the plugin does.
    if let Some(c) = pod.containers.iter_mut().find(|c| c.agent) {
        c.image = a.agent_image.clone();
        c.agent = false;
    }
    // A VM sees nothing of the host but the workspace: its jar cache lives
    // in the guest, for one run.
    let cache = (s.isolation_of(&pod) == crate::pod::Isolation::Container).then_some(cache);
    add_agent_volumes(&mut pod, &a.agent_image, &jar, cache.as_deref())?;
    pod.validate()?;
    let work_dir = s.workspace_path.clone();
    let agent_image = a.agent_image.clone();
    let agent_args = a.agent_args.clone();
    planner::run_pod_adjusted(paths, pod, s, move |pod, provisioned| {
        let image = provisioned.image(&agent_image)?;
        let env = image.config.config().as_ref().and_then(|c| c.env().clone()).unwrap_or_default();
        let java = java::find(&agent_image, &env, provisioned.layers(&agent_image)?, JRE_DIR)?;
        tracing::info!("agent: {} through {}", java.java, java.loader);
        let main = pod.main_container_mut().context("the pod has no main container")?;
        main.command = Some(agent_command(&java, &work_dir, &agent_args));
        main.args = Some(Vec::new());
        // Never a terminal: remoting needs a binary-clean pipe.
        main.tty = false;
        Ok(())
    })
}

/// `loader --library-path … java -Djdk.lang.Process.launchMechanism=VFORK
/// -jar agent.jar -workDir W -jar-cache C`. VFORK: the default mechanism
/// execs `jspawnhelper`, whose ELF interpreter the build image lacks.
pub fn agent_command(java: &java::JavaCommand, work_dir: &str, extra: &[String]) -> Vec<String> {
    let mut argv = java.argv();
    argv.extend(
        ["-Djdk.lang.Process.launchMechanism=VFORK", "-jar", JAR_PATH, "-workDir", work_dir, "-jar-cache", JAR_CACHE_DIR]
            .map(String::from),
    );
    argv.extend(extra.iter().cloned());
    argv
}

/// The image volume, agent.jar and the jar cache, mounted into the main container.
fn add_agent_volumes(pod: &mut Pod, agent_image: &str, jar: &Path, cache: Option<&Path>) -> anyhow::Result<()> {
    for name in [JRE_VOLUME, JAR_VOLUME, CACHE_VOLUME] {
        anyhow::ensure!(!pod.volumes.iter().any(|v| v.name == name), "the pod file uses the volume name {name:?}, which berth agent needs");
    }
    pod.volumes.push(Volume { name: JRE_VOLUME.into(), source: VolumeSource::Image { reference: agent_image.to_string() } });
    pod.volumes.push(Volume { name: JAR_VOLUME.into(), source: VolumeSource::HostPath(jar.to_path_buf()) });
    let cache = cache.map(|c| VolumeSource::HostPath(c.to_path_buf())).unwrap_or(VolumeSource::EmptyDir);
    pod.volumes.push(Volume { name: CACHE_VOLUME.into(), source: cache });
    let main = pod.main_container_mut().context("the pod has no main container")?;
    for (name, path, read_only) in [(JRE_VOLUME, JRE_DIR, true), (JAR_VOLUME, JAR_PATH, true), (CACHE_VOLUME, JAR_CACHE_DIR, false)] {
        main.volume_mounts.push(VolumeMount { name: name.into(), mount_path: path.into(), read_only });
    }
    Ok(())
}

/// Whose jar cache this agent uses.
fn cache_key(a: &AgentSettings) -> String {
    match &a.jenkins_url {
        Some(u) if !u.is_empty() => u.trim_end_matches('/').to_string(),
        _ if a.agent_jar.contains("://") => a.agent_jar.rsplit_once("/jnlpJars/").map_or(a.agent_jar.as_str(), |(base, _)| base).to_string(),
        _ => "local".into(),
    }
}

/// `<root>/agent/jar-cache/<key>`: one per controller, kept across builds.
/// remoting writes it through a temporary file and a rename and verifies
/// each jar's checksum on use, so agents of one controller share it safely.
fn jar_cache_dir(root: &Path, controller: String) -> anyhow::Result<PathBuf> {
    let dir = root.join("agent").join("jar-cache").join(jar::url_key(&controller));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating the jar cache {}", dir.display()))?;
    let note = dir.join(".controller");
    if !note.exists() {
        let _ = std::fs::write(&note, format!("{controller}\n"));
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(jar: &str, url: Option<&str>) -> AgentSettings {
        AgentSettings {
            agent_image: DEFAULT_AGENT_IMAGE.into(),
            agent_jar: jar.into(),
            jenkins_url: url.map(String::from),
            agent_args: Vec::new(),
            tls_verify: true,
        }
    }

    #[test]
    fn the_cache_is_per_controller() {
        assert_eq!(cache_key(&settings("http://ci:8080//jnlpJars/agent.jar", Some("http://ci:8080/"))), "http://ci:8080");
        assert_eq!(cache_key(&settings("http://ci:8080/jnlpJars/agent.jar", None)), "http://ci:8080");
        assert_eq!(cache_key(&settings("/opt/agent.jar", None)), "local");
    }

    #[test]
    fn the_agent_command_keeps_the_contract() {
        let j = java::JavaCommand { loader: "/l".into(), library_path: vec!["/a".into(), "/b".into()], java: "/j".into() };
        assert_eq!(
            agent_command(&j, "/workspace", &["-noReconnect".into()]),
            [
                "/l", "--library-path", "/a:/b", "/j", "-Djdk.lang.Process.launchMechanism=VFORK", "-jar", JAR_PATH, "-workDir",
                "/workspace", "-jar-cache", JAR_CACHE_DIR, "-noReconnect"
            ]
        );
    }
}

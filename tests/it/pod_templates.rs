//! Pod templates as users bring them: the corpus of real Kubernetes Pod
//! manifests and Jenkins kubernetes-plugin templates in `../shared/k8s-pods`
//! (read in place, never copied here) and berth's own in `tests/it/pods`,
//! all accepted but for the rightful refusals; `berth check` and
//! `--dry-run`; and templates run for real (native sidecars, fieldRefs,
//! `--volume-from`, `imagePullPolicy`).

use std::path::{Path, PathBuf};

use berth::planner::{self, PodOverrides, RunSettings};
use berth::pod::PullPolicy;
use berth::runtime::Role;

use crate::common::*;

/// `../shared` beside the clone, as in CI; `$BERTH_TEST_SHARED` names it
/// where a checkout has none beside it (a git worktree elsewhere).
fn corpus_dir() -> String {
    match std::env::var("BERTH_TEST_SHARED") {
        Ok(shared) => format!("{shared}/k8s-pods"),
        Err(_) => concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/k8s-pods").to_string(),
    }
}
const OWN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/pods");

/// The corpus files berth rightly refuses, with the message each gets (after
/// `FILE:`): a volume with nothing outside a cluster to fill it, and an
/// integer where Kubernetes wants a string.
const REFUSED: &[(&str, &str)] = &[
    (
        "05-jk-example-kaniko-projected.yaml",
        "18:5: spec.volumes[0].projected: a projected volume has no content outside a cluster; map it to a host file or directory with --volume-from jenkins-docker-cfg=PATH",
    ),
    (
        "07-jk-example-selenium.yaml",
        "27:14: spec.containers[3].env[1].value must be a string, not an integer (\"4444\"); quote it (Kubernetes rejects it too)",
    ),
    (
        "27-k8s-configmap-volume.yaml",
        "26:7: spec.volumes[0].configMap: a configMap volume has no content outside a cluster; map it to a host file or directory with --volume-from config-volume=PATH",
    ),
    (
        "35-kaniko-pod.yaml",
        "22:7: spec.volumes[0].secret: a secret volume has no content outside a cluster; map it to a host file or directory with --volume-from kaniko-secret=PATH",
    ),
    (
        "36-sumo-jenkinsfile.yaml",
        "35:5: spec.volumes[0].secret: a secret volume has no content outside a cluster; map it to a host file or directory with --volume-from settings-xml=PATH",
    ),
    (
        "40-kia-fortune-https.yaml",
        "39:5: spec.volumes[1].configMap: a configMap volume has no content outside a cluster; map it to a host file or directory with --volume-from config=PATH",
    ),
];

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e} (the corpus lives in ../shared beside the clone, or $BERTH_TEST_SHARED)"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn file_name(p: &Path) -> &str {
    p.file_name().and_then(|n| n.to_str()).unwrap()
}

/// Reads, validates and describes the plan of `file` as `berth check`
/// does; the description's containers as (name, role).
fn check(file: &Path, o: &PodOverrides) -> anyhow::Result<(berth::pod::Pod, Vec<(String, Role)>)> {
    let (pod, warnings) = planner::read_pod_file(file, o)?;
    let plan = planner::describe(&pod, &RunSettings::default(), warnings);
    assert_eq!(plan.containers.len(), pod.init_containers.len() + pod.containers.len());
    assert_eq!(plan.containers.iter().filter(|c| c.role == Role::Main).count(), 1, "{}", file.display());
    assert_eq!(plan.containers.last().map(|c| c.role), Some(Role::Main), "{}", file.display());
    let roles = plan.containers.iter().map(|c| (c.name.clone(), c.role)).collect();
    Ok((pod, roles))
}

#[test]
fn corpus_is_accepted_but_for_the_rightful_refusals() {
    let files = yaml_files(&corpus_dir());
    assert_eq!(files.len(), 40, "the corpus has forty templates");
    let mut accepted = 0;
    let mut wrong = Vec::new();
    for f in &files {
        let name = file_name(f);
        let expected = REFUSED.iter().find(|(n, _)| *n == name).map(|(_, m)| *m);
        match (check(f, &PodOverrides::default()), expected) {
            (Ok(_), None) => accepted += 1,
            (Ok(_), Some(m)) => wrong.push(format!("{name}: accepted, expected refusal {m:?}")),
            (Err(e), None) => wrong.push(format!("{name}: refused: {e:#}")),
            (Err(e), Some(m)) => {
                let got = e.to_string();
                let got = got.strip_prefix(&format!("{}:", f.display())).unwrap_or(&got);
                if got != m {
                    wrong.push(format!("{name}: refused with {got:?}, expected {m:?}"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(accepted, 34, "34 of 40 accepted (19 before pod templates were read as written)");
}

#[test]
fn corpus_refusals_for_volumes_lift_with_volume_from() {
    let o = |pairs: &[&str]| PodOverrides {
        volume_from: pairs.iter().map(|v| (v.to_string(), PathBuf::from("/etc/ci"))).collect(),
        ..PodOverrides::default()
    };
    for (file, volumes) in [
        ("05-jk-example-kaniko-projected.yaml", &["jenkins-docker-cfg"][..]),
        ("27-k8s-configmap-volume.yaml", &["config-volume"]),
    ] {
        let (pod, _) = check(&Path::new(&corpus_dir()).join(file), &o(volumes)).unwrap_or_else(|e| panic!("{file}: {e:#}"));
        assert!(pod.containers.iter().flat_map(|c| &c.volume_mounts).all(|m| m.read_only), "{file}: mapped secrets are read-only");
    }
}

#[test]
fn corpus_templates_mean_what_they_say() {
    let corpus = |f: &str| check(&Path::new(&corpus_dir()).join(f), &PodOverrides::default()).unwrap();
    // The plugin's agent container: main, no image; `berth run` refuses it.
    let (pod, roles) = corpus("37-petclinic-jenkins-k8s.yaml");
    assert!(pod.name.starts_with("37-petclinic-jenkins-k8s-"), "{}", pod.name);
    assert_eq!(roles.last(), Some(&("jnlp".to_string(), Role::Main)));
    assert!(planner::refuse_agent(&pod).unwrap_err().to_string().contains("berth agent"));
    // A native sidecar is started as a sidecar in init order.
    let (pod, roles) = corpus("21-k8s-startup-coordination.yaml");
    assert_eq!(roles, [("config-sidecar".to_string(), Role::Sidecar), ("main-app".to_string(), Role::Main)]);
    assert!(pod.init_containers[0].sidecar && pod.init_containers[0].readiness.is_some());
    // The downward API.
    let (pod, _) = corpus("18-k8s-dapi-envars-pod.yaml");
    let env: std::collections::HashMap<_, _> = pod.containers[0].env.iter().cloned().collect();
    assert_eq!(env["MY_POD_NAME"], "dapi-envars-fieldref");
    assert_eq!(env["MY_POD_NAMESPACE"], "default");
    assert_eq!(env["MY_POD_IP"], "127.0.0.1");
    assert_eq!(env["MY_POD_SERVICE_ACCOUNT"], "default");
    // imagePullPolicy.
    let (pod, _) = corpus("14-jk-test-windows-resources.yaml");
    assert_eq!(pod.containers[0].pull_policy, PullPolicy::IfNotPresent);
}

#[test]
fn own_templates_are_accepted() {
    let files = yaml_files(OWN);
    assert!(files.len() >= 3);
    for f in &files {
        let mapped = file_name(f) == "secret-mapped.yaml";
        let o = PodOverrides { volume_from: if mapped { vec![("token".into(), "/etc/ci".into())] } else { vec![] }, ..PodOverrides::default() };
        let (pod, warnings) = planner::read_pod_file(f, &o).unwrap_or_else(|e| panic!("{}: {e:#}", f.display()));
        assert!(warnings.is_empty(), "{}: {warnings:?}", f.display());
        pod.validate().unwrap();
    }
    let (pod, roles) = check(&Path::new(OWN).join("jenkins-maven-postgres.yaml"), &PodOverrides::default()).unwrap();
    let want = [("maven", Role::Sidecar), ("db", Role::Sidecar), ("jnlp", Role::Main)];
    assert_eq!(roles, want.map(|(n, r)| (n.to_string(), r)));
    let maven = &pod.containers[1];
    assert_eq!(maven.pull_policy, PullPolicy::Always);
    assert_eq!(maven.env[0], ("POD_NAME".to_string(), pod.name.clone()));
    assert_eq!(maven.env[2].1, "jdbc:postgresql://db:5432/test");
}

/// busybox with the applets the templates use, served and pulled.
fn served() -> Served {
    let image = Image::new(vec![Layer::new(&busybox_tar_with(&["wget", "httpd", "ps", "grep"]), Comp::Gzip, false)]);
    Served::start("berth/busybox", &image, true)
}

/// One of our templates, where the test user can read it.
fn own_template(s: &Served, name: &str) -> String {
    let dest = s.env.path().join(name);
    std::fs::copy(Path::new(OWN).join(name), &dest).unwrap();
    s.env.chown();
    dest.to_str().unwrap().to_string()
}

#[test]
fn native_sidecar_is_up_before_the_next_init_container() {
    let s = served();
    let pod = own_template(&s, "native-sidecar.yaml");
    let run = s.env.run_as_user(&["run", "--tls-verify=false", "--name", "tpl-run", "--pod", &pod]);
    assert_eq!(run.code, 3, "{run:?}");
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    // `fetch` (an init container after the sidecar) reached it; the main
    // container still does; fieldRefs have the pod's values under berth.
    assert_eq!(run.stdout, format!("served\ntpl-run 127.0.0.1 {host}\nserved\n"), "{run:?}");
    let pods = std::fs::read_dir(s.env.run_root.join("pods")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(pods, 0, "pod state left behind");
}

#[test]
fn cat_sidecar_with_tty_keeps_running() {
    let s = served();
    let pod = own_template(&s, "cat-sidecars.yaml");
    // Without an open stdin `cat` ends at once (on /dev/null).
    let run = s.env.run_as_user(&["run", "--tls-verify=false", "--pod", &pod]);
    assert_eq!((run.code, run.stdout.as_str()), (0, "cat waits\n"), "{run:?}");
    assert!(!run.stderr.contains("tty"), "no warning about the sidecar's tty: {}", run.stderr);
}

#[test]
fn secret_volume_runs_when_mapped() {
    let s = served();
    let pod = own_template(&s, "secret-mapped.yaml");
    let line = s.env.run_as_user(&["run", "--tls-verify=false", "--pod", &pod]).provision_failure();
    assert!(line.ends_with("map it to a host file or directory with --volume-from token=PATH"), "{line}");
    let dir = s.env.path().join("token");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("token"), "s3cret\n").unwrap();
    s.env.chown();
    let from = format!("token={}", dir.display());
    let run = s.env.run_as_user(&["run", "--tls-verify=false", "--volume-from", &from, "--pod", &pod]).ok();
    assert_eq!(run.stdout, "s3cret\n");
}

#[test]
fn pull_policies_are_honoured() {
    let mut s = served();
    let dir = s.env.path().to_path_buf();
    let write = |name: &str, image: &str, policy: &str| {
        let f = dir.join(name);
        std::fs::write(&f, format!("spec:\n  containers:\n  - name: m\n    image: {image}\n    imagePullPolicy: {policy}\n    command: [echo, ran]\n")).unwrap();
        f.to_str().unwrap().to_string()
    };
    let missing = s.image.replace("berth/busybox", "berth/not-pulled");
    let never_missing = write("never-missing.yaml", &missing, "Never");
    let never = write("never.yaml", &s.image, "Never");
    let if_not_present = write("ifnotpresent.yaml", &s.image, "IfNotPresent");
    let always = write("always.yaml", &s.image, "Always");
    s.env.chown();
    // Never: one line naming the policy, no registry contacted.
    let line = s.env.run_as_user(&["run", "--tls-verify=false", "--pod", &never_missing]).provision_failure();
    assert!(line.contains("is not in the store and its imagePullPolicy is Never"), "{line}");
    assert!(s.reg.requests("GET", "/v2/berth/not-pulled").is_empty(), "Never pulled: {}", s.reg.log());
    let manifests = || s.reg.requests("GET", "/v2/berth/busybox/manifests").len() + s.reg.requests("HEAD", "/v2/berth/busybox/manifests").len();
    let before = manifests();
    s.env.run_as_user(&["run", "--tls-verify=false", "--pod", &never]).ok();
    s.env.run_as_user(&["run", "--tls-verify=false", "--pod", &if_not_present]).ok();
    assert_eq!(manifests(), before, "a stored image is not pulled again");
    // Always: pulled though stored; with the registry gone that fails.
    s.env.run_as_user(&["run", "--tls-verify=false", "--pod", &always]).ok();
    assert!(manifests() > before, "Always asked the registry: {}", s.reg.log());
    s.reg.kill();
    // One line naming the cause, after the retries berth shows as it waits.
    let run = s.env.run_as_user(&["run", "--tls-verify=false", "--pod", &always]);
    assert_eq!((run.code, run.stdout.as_str()), (125, ""), "{run:?}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    let (line, waits) = lines.split_last().expect("a line on stderr");
    assert!(waits.iter().all(|l| l.contains("retrying in")), "{}", run.stderr);
    assert!(line.starts_with("berth: ") && line.contains("pull"), "{line}");
    let run = s.env.run_as_user(&["run", "--tls-verify=false", "--pod", &if_not_present]).ok();
    assert_eq!(run.stdout, "ran\n");
}

#[test]
fn check_prints_the_plan_without_pulling() {
    let env = Env::for_test_user();
    let file = env.path().join("KubernetesPod.yaml");
    std::fs::copy(Path::new(OWN).join("jenkins-maven-postgres.yaml"), &file).unwrap();
    let bad = env.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: v2\nkind: Deployment\nspec:\n  containers:\n  - {name: m, image: b}\n").unwrap();
    env.chown();
    let file = file.to_str().unwrap();
    let run = env.run_as_user(&["check", "--name", "ci-1", file]).ok();
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    let want = "\
pod ci-1: valid
isolation: container
network: outbound
workspace: /workspace (every container)
grace: 5s
container maven: sidecar
  image: maven:3.9-eclipse-temurin-17 (pull: Always)
  command: [\"sleep\"]
  args: [\"infinity\"]
  env: POD_NAME=\"ci-1\"
  env: DB_HOST=\"db\"
  env: DB_URL=\"jdbc:postgresql://db:5432/test\"
container db: sidecar
  image: postgres:16 (pull: IfNotPresent)
  env: POSTGRES_PASSWORD=\"test\"
  ready: tcp port 5432
container jnlp: main (the Jenkins agent: berth agent supplies image and command)
  env: JENKINS_AGENT_WORKDIR=\"/home/jenkins/agent\"
";
    assert_eq!(run.stdout, want);
    // The same through `run --dry-run`; nothing was pulled by either.
    let dry = env.run_as_user(&["run", "--dry-run", "--name", "ci-1", "--pod", file]).ok();
    assert_eq!(dry.stdout, want);
    assert!(!env.root.join("blobs").exists() || std::fs::read_dir(env.root.join("blobs")).unwrap().count() == 0);
    // Invalid: 125, one line, every wrong header field in it.
    let line = env.run_as_user(&["check", bad.to_str().unwrap()]).provision_failure();
    assert!(line.ends_with("bad.yaml:1:13: apiVersion must be v1 for a Pod, not \"v2\"; kind must be Pod (berth runs Pods), not \"Deployment\" (at 2:7)"), "{line}");
    // `berth run` refuses the agent's template, naming `berth agent`, in
    // one line even where the file has warnings (a privileged container).
    let line = env.run_as_user(&["run", "--pod", file]).provision_failure();
    assert!(line.contains("container jnlp is the Jenkins agent's (it has no image): run this pod file with `berth agent --pod FILE`"), "{line}");
    let petclinic = env.path().join("petclinic.yaml");
    std::fs::copy(Path::new(&corpus_dir()).join("37-petclinic-jenkins-k8s.yaml"), &petclinic).unwrap();
    env.chown();
    let line = env.run_as_user(&["run", "--pod", petclinic.to_str().unwrap()]).provision_failure();
    assert!(line.contains("berth agent --pod FILE"), "{line}");
}

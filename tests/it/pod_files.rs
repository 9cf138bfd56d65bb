//! Pod files: the examples in bundles/, errors with exact positions,
//! warnings by path, Kubernetes semantics, and hostile input.

use std::path::{Path, PathBuf};

use berth::pod::kube::{self, PodFileError, MAX_FILE_SIZE};
use berth::pod::shorthand::{self, ShorthandArgs};
use berth::pod::{Network, Pod, ProbeAction, VolumeSource, Warning};

fn bundles() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bundles")
}

fn parse(text: &str) -> (Pod, Vec<Warning>) {
    match kube::from_str(text, "pod.yaml") {
        Ok(r) => r,
        Err(e) => panic!("{e}\n--- in ---\n{text}"),
    }
}

/// (line, column, message) of the error `text` gives.
fn error(text: &str) -> (usize, usize, String) {
    match kube::from_str(text, "pod.yaml") {
        Err(PodFileError::Invalid { file, line, column, message }) => {
            assert_eq!(file, "pod.yaml");
            (line, column, message)
        }
        Err(e) => panic!("not an Invalid error: {e}"),
        Ok((pod, _)) => panic!("accepted: {pod:?}\n--- in ---\n{text}"),
    }
}

/// A minimal valid pod with `extra` lines inserted into its container
/// (indented by the caller as a container field, 4 spaces).
fn with_container_fields(extra: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: main\n    image: busybox\n{extra}")
}

const HEAD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n";

#[test]
fn every_bundle_parses_without_warnings() {
    let mut seen = 0;
    for entry in std::fs::read_dir(bundles()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let pod = kube::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
        pod.validate().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let (again, warnings) = kube::from_str(&text, &path.display().to_string()).unwrap();
        assert_eq!(again, pod);
        assert!(warnings.is_empty(), "{}: {warnings:?}", path.display());
        seen += 1;
    }
    assert!(seen >= 3, "only {seen} bundles");
}

#[test]
fn demo_bundle_is_the_readme_demo() {
    let pod = kube::from_file(&bundles().join("demo.yaml")).unwrap();
    assert_eq!(pod.name, "demo");
    assert_eq!(pod.init_containers.len(), 1);
    assert_eq!(pod.main_container().unwrap().name, "build");
    let web = &pod.containers[1];
    assert_eq!(web.name, "web");
    assert_eq!(web.args, Some(vec![]), "command without args drops the image's Cmd");
    // httpd alone, as PID 1 of its container, would ignore SIGTERM.
    let cmd = web.command.as_ref().unwrap();
    assert_eq!(cmd[..2], ["sh", "-c"]);
    assert!(cmd[2].starts_with("trap 'exit 0' TERM;") && cmd[2].contains("httpd -f -p 8080 -h /workspace"), "{cmd:?}");
    let probe = web.readiness.as_ref().unwrap();
    assert_eq!(probe.action, ProbeAction::Tcp(8080), "named port resolved");
    assert_eq!((probe.initial_delay.as_millis(), probe.period.as_millis(), probe.timeout.as_millis(), probe.failure_threshold), (0, 1000, 1000, 30));
    assert!(web.volume_mounts[0].read_only);
    assert_eq!(pod.volumes[0].source, VolumeSource::EmptyDir);
    for c in pod.init_containers.iter().chain(&pod.containers) {
        assert_eq!(c.image, "localhost:5000/berth/busybox:latest");
        assert_eq!(c.volume_mounts[0].mount_path, "/workspace");
    }
}

#[test]
fn jenkins_bundle_expands_references() {
    let pod = kube::from_file(&bundles().join("jenkins-agent.yaml")).unwrap();
    let fetch = &pod.init_containers[0];
    assert_eq!(fetch.command.as_ref().unwrap()[4], "http://jenkins.example.com:8080/jnlpJars/agent.jar");
    let agent = pod.main_container().unwrap();
    assert!(!agent.tty);
    assert_eq!(agent.limits.memory_bytes, Some(2 << 30));
    assert_eq!(agent.limits.cpu_millis, Some(2000));
    assert_eq!(pod.containers[1].limits.cpu_millis, Some(500));
    let maven = kube::from_file(&bundles().join("maven-postgres.yaml")).unwrap();
    let env = &maven.containers[0].env;
    assert!(env.contains(&("SPRING_DATASOURCE_URL".into(), "jdbc:postgresql://db:5432/app".into())));
    assert_eq!(maven.volumes[0].source, VolumeSource::HostPath("/var/cache/berth-m2".into()));
}

#[test]
fn invalid_files_point_at_the_node() {
    let c = with_container_fields;
    // (text, line, column, part of the message)
    let cases: Vec<(String, usize, usize, &str)> = vec![
        // Syntax.
        (format!("{HEAD}spec: [a\n"), 6, 1, "invalid YAML"),
        (format!("{HEAD}spec:\n\tcontainers: []\n"), 6, 2, "tabs disallowed"),
        (format!("{HEAD}  name: q\n"), 5, 3, "duplicate key \"name\""),
        (String::new(), 1, 1, "holds no Pod"),
        ("# nothing\n".into(), 1, 1, "holds no Pod"),
        (format!("{}---\n{HEAD}", c("")), 9, 1, "one Pod"),
        // Header.
        ("- a\n".into(), 1, 1, "the file must be a mapping, not a list"),
        ("apiVersion: apps/v1\nkind: Pod\n".into(), 1, 13, "apiVersion must be v1"),
        ("apiVersion: v1\nkind: Deployment\n".into(), 2, 7, "kind must be Pod"),
        ("apiVersion: v1\nkind: Pod\nmetadata: []\n".into(), 3, 11, "metadata must be a mapping"),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: A_b\nspec: {}\n".into(),
            1, 13,
            "apiVersion must be v1 for a Pod, not \"apps/v1\"; kind must be Pod (berth runs Pods), not \"Deployment\" (at 2:7); metadata.name: invalid pod name \"A_b\"",
        ),
        ("kind: Pod\n".into(), 1, 1, "spec is required"),
        (format!("{HEAD}spec:\n  volumes: []\n"), 6, 3, "spec.containers is required"),
        (format!("{HEAD}spec:\n  containers: []\n"), 6, 15, "at least one container"),
        // Types.
        (c("    command: [sleep, 3600]\n"), 9, 22, "spec.containers[0].command[1] must be a string, not an integer (\"3600\"); quote it"),
        (c("    ports:\n    - containerPort: \"8080\"\n"), 10, 22, "must be an integer, not a string"),
        (c("    ports:\n    - containerPort: 70000\n"), 10, 22, "between 1 and 65535"),
        (c("    ports:\n    - containerPort: 0808\n"), 10, 22, "leading zero"),
        (c("    tty: maybe\n"), 9, 10, "must be true or false"),
        (c("    env: {A: b}\n"), 9, 10, "spec.containers[0].env must be a list, not a mapping"),
        (c("    env:\n    - name: A\n      value: 1\n"), 11, 14, "env[0].value must be a string"),
        (c("    securityContext:\n      runAsUser: -1\n"), 10, 18, "between 0 and 2147483647"),
        // Semantics, found while reading.
        (c("    env:\n    - name: A\n      valueFrom: {secretKeyRef: {name: s, key: k}}\n"), 11, 19, "berth has no Secrets or ConfigMaps"),
        (c("    env:\n    - name: A\n      valueFrom: {fieldRef: {fieldPath: status.phase}}\n"), 11, 41, "has no value under berth"),
        (c("    env:\n    - name: A\n      value: a\n      valueFrom: {fieldRef: {fieldPath: metadata.name}}\n"), 12, 18, "value or valueFrom, not both"),
        (c("    imagePullPolicy: Sometimes\n"), 9, 22, "must be Always, IfNotPresent or Never"),
        (c("    envFrom: []\n"), 9, 5, "envFrom is not supported"),
        (c("    resources:\n      limits:\n        memory: 256MB\n"), 11, 17, "invalid quantity \"256MB\""),
        (c("    resources:\n      limits:\n        cpu: -1\n"), 11, 14, "must not be negative"),
        (c("    resources:\n      limits:\n        memory: [1]\n"), 11, 17, "must be a quantity"),
        (c("    readinessProbe:\n      tcpSocket:\n        port: http\n"), 11, 15, "no port named \"http\""),
        (c("    readinessProbe:\n      httpGet: {path: /, port: 80}\n"), 10, 7, "httpGet probes are not supported"),
        (c("    readinessProbe:\n      periodSeconds: 1\n"), 10, 7, "needs exec or tcpSocket"),
        (c("    readinessProbe:\n      exec: {command: [x]}\n      tcpSocket: {port: 1}\n"), 11, 18, "only one of exec and tcpSocket"),
        (c("    readinessProbe:\n      exec: {command: []}\n"), 10, 23, "must not be empty"),
        (c("    readinessProbe:\n      tcpSocket: {port: 80}\n      periodSeconds: -5\n"), 11, 22, "must not be negative"),
        (c("    volumeMounts:\n    - name: v\n      mountPath: /v\n      subPath: x\n"), 12, 7, "subPath is not supported"),
        (c("    ports:\n    - containerPort: 1\n      name: a\n    - containerPort: 2\n      name: a\n"), 13, 13, "used twice"),
        (
            format!("{HEAD}spec:\n  initContainers:\n  - name: i\n    image: busybox\n    readinessProbe:\n      exec: {{command: [x]}}\n  containers:\n  - name: m\n    image: b\n"),
            10, 7, "init containers cannot have a readinessProbe",
        ),
        (
            format!("{HEAD}spec:\n  initContainers:\n  - name: i\n    image: busybox\n    restartPolicy: OnFailure\n  containers:\n  - name: m\n    image: b\n"),
            9, 20, "an init container's restartPolicy can only be Always",
        ),
        (
            format!("{}  volumes:\n  - name: cfg\n    configMap: {{name: x}}\n", c("")),
            11, 5, "a configMap volume has no content outside a cluster; map it to a host file or directory with --volume-from cfg=PATH",
        ),
        (
            format!("{}  volumes:\n  - name: v\n    emptyDir: {{}}\n    hostPath: {{path: /x}}\n", c("")),
            12, 15, "one source",
        ),
        (format!("{}  volumes:\n  - name: v\n    hostPath: {{}}\n", c("")), 11, 15, "hostPath.path is required"),
        // Semantics, found by Pod::validate.
        ("apiVersion: v1\nkind: Pod\nmetadata:\n  name: My_Pod\nspec:\n  containers:\n  - {name: m, image: b}\n".to_string(), 4, 9, "metadata.name: invalid pod name \"My_Pod\""),
        (c("  - name: Web\n    image: b\n"), 9, 11, "spec.containers[1].name: invalid container name \"Web\""),
        (c("  - name: main\n    image: b\n"), 9, 11, "spec.containers[1].name: container name \"main\" is used twice"),
        (
            format!("{HEAD}spec:\n  initContainers:\n  - name: main\n    image: b\n  containers:\n  - name: main\n    image: b\n"),
            10, 11, "spec.containers[0].name: container name \"main\" is used twice",
        ),
        (c("  - name: web\n    image: \"\"\n"), 10, 12, "needs an image"),
        (c("  - name: web\n"), 9, 5, "spec.containers[1].image is required"),
        (c("    volumeMounts:\n    - name: nope\n      mountPath: /x\n"), 10, 13, "mounts volume \"nope\", which is not in spec.volumes"),
        (
            format!("{}    volumeMounts:\n    - name: v\n      mountPath: x\n  volumes:\n  - name: v\n", c("")),
            11, 18, "mountPath \"x\" must be an absolute path",
        ),
        (format!("{}  volumes:\n  - name: v\n  - name: v\n", c("")), 11, 11, "volume name \"v\" is used twice"),
        (format!("{}  volumes:\n  - name: v\n    hostPath: {{path: data}}\n", c("")), 11, 22, "must be an absolute path"),
        (c("    workingDir: src\n"), 9, 17, "workingDir \"src\" must be an absolute path"),
        (c("    env:\n    - name: \"A=B\"\n"), 10, 13, "invalid environment variable name"),
        (c("    resources:\n      limits:\n        memory: 0\n"), 11, 17, "must be more than 0"),
    ];
    let mut wrong = Vec::new();
    for (i, (text, line, column, part)) in cases.iter().enumerate() {
        let (l, col, message) = error(text);
        if !message.contains(part) || (l, col) != (*line, *column) {
            wrong.push(format!("case {i}: got {l}:{col} {message:?}, want {line}:{column} {part:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn errors_render_as_file_line_column() {
    let e = kube::from_str(&with_container_fields("    command: [sleep, 10]\n"), "ci/pod.yaml").unwrap_err();
    assert_eq!(
        e.to_string(),
        "ci/pod.yaml:9:22: spec.containers[0].command[1] must be a string, not an integer (\"10\"); quote it (Kubernetes rejects it too)"
    );
}

#[test]
fn unknown_and_ignored_fields_warn_by_path() {
    let text = format!(
        "{HEAD}  labels: {{app: x}}\n  colour: red\nspec:\n  restartPolicy: Always\n  nodeSelector: {{a: b}}\n  hostPID: false\n  containers:\n  - name: main\n    image: busybox\n    imagePullPolicy: Always\n    lifecycle: {{}}\n    livenessProbe: {{}}\n    frobnicate: 1\n    securityContext:\n      privileged: false\n      allowPrivilegeEscalation: true\n    resources:\n      requests: {{cpu: 1}}\n      limits: {{ephemeral-storage: 1Gi, memory: 1Gi}}\n    ports:\n    - containerPort: 80\n      protocol: TCP\n      hostIP: 127.0.0.1\n  volumes:\n  - name: v\n    emptyDir: {{medium: Memory, sizeLimit: 1Gi}}\nstatus: {{phase: Running}}\nextra: 1\n"
    );
    let (pod, warnings) = parse(&text);
    assert_eq!(pod.containers[0].limits.memory_bytes, Some(1 << 30));
    let got: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
    let want = [
        "pod.yaml:6:3: ignoring unknown field metadata.colour",
        "pod.yaml:8:3: ignoring spec.restartPolicy: berth never restarts containers",
        "pod.yaml:15:5: ignoring spec.containers[0].lifecycle: lifecycle hooks are not supported",
        "pod.yaml:16:5: ignoring spec.containers[0].livenessProbe: berth does not restart containers",
        "pod.yaml:17:5: ignoring unknown field spec.containers[0].frobnicate",
        "pod.yaml:20:7: ignoring spec.containers[0].securityContext.allowPrivilegeEscalation: berth always sets no_new_privileges",
        "pod.yaml:23:16: ignoring spec.containers[0].resources.limits.ephemeral-storage: berth limits memory and cpu only",
        "pod.yaml:27:7: ignoring spec.containers[0].ports[0].hostIP: ignored without hostPort",
        "pod.yaml:30:16: ignoring spec.volumes[0].emptyDir.medium: emptyDir is a directory on disk",
        "pod.yaml:30:32: ignoring spec.volumes[0].emptyDir.sizeLimit: not enforced",
        "pod.yaml:32:1: ignoring unknown field extra",
    ];
    let mut got_sorted = got.clone();
    got_sorted.sort_by_key(|w| {
        let mut parts = w.splitn(4, ':').skip(1).map(|n| n.parse::<usize>().unwrap_or(0));
        (parts.next(), parts.next())
    });
    assert_eq!(got_sorted, want, "{got:#?}");
    assert_eq!(warnings.iter().find(|w| w.line == 17).map(|w| w.path.as_str()), Some("spec.containers[0].frobnicate"));
}

#[test]
fn tty_outside_main_container_is_quiet() {
    // A sidecar's tty is a Jenkins habit (a `cat` kept waiting): the
    // sidecar gets an open stdin instead of a terminal, without a warning.
    let text = format!("{HEAD}spec:\n  containers:\n  - {{name: a, image: b, tty: true}}\n  - {{name: c, image: b, tty: true, stdin: true, command: [cat]}}\n");
    let (pod, warnings) = parse(&text);
    assert!(pod.containers[0].tty && pod.containers[1].tty);
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn quantities_in_limits() {
    let cases = [
        ("memory: 256Mi", Some(256 << 20), None),
        ("memory: \"1Gi\"", Some(1 << 30), None),
        ("memory: 1073741824", Some(1 << 30), None),
        ("memory: 1e9", Some(1_000_000_000), None),
        ("memory: 1.5G", Some(1_500_000_000), None),
        ("cpu: 500m", None, Some(500)),
        ("cpu: 2", None, Some(2000)),
        ("cpu: 0.5", None, Some(500)),
        ("cpu: \"0.25\"", None, Some(250)),
        ("cpu: 1u", None, Some(1)),
    ];
    for (line, memory, cpu) in cases {
        let (pod, w) = parse(&with_container_fields(&format!("    resources:\n      limits:\n        {line}\n")));
        assert!(w.is_empty());
        let l = &pod.containers[0].limits;
        assert_eq!((l.memory_bytes, l.cpu_millis), (memory, cpu), "{line}");
    }
}

#[test]
fn probes_have_kubernetes_defaults() {
    let (pod, _) = parse(&with_container_fields("    readinessProbe:\n      tcpSocket:\n        port: 5432\n"));
    let p = pod.containers[0].readiness.clone().unwrap();
    assert_eq!(p.action, ProbeAction::Tcp(5432));
    assert_eq!((p.initial_delay.as_millis(), p.period.as_millis(), p.timeout.as_millis(), p.failure_threshold), (0, 10_000, 1_000, 3));

    let (pod, _) = parse(&with_container_fields(
        "    readinessProbe:\n      exec:\n        command: [pg_isready, -U, \"5\"]\n      initialDelaySeconds: 2\n      periodSeconds: 0\n      timeoutSeconds: 4\n      failureThreshold: 9\n      successThreshold: 1\n",
    ));
    let p = pod.containers[0].readiness.clone().unwrap();
    assert_eq!(p.action, ProbeAction::Exec(vec!["pg_isready".into(), "-U".into(), "5".into()]));
    assert_eq!((p.initial_delay.as_millis(), p.period.as_millis(), p.timeout.as_millis(), p.failure_threshold), (2000, 10_000, 4000, 9));

    let (pod, _) = parse(&with_container_fields(
        "    ports:\n    - {name: pg, containerPort: 5432}\n    - {name: http, containerPort: 80}\n    readinessProbe: {tcpSocket: {port: http}}\n",
    ));
    assert_eq!(pod.containers[0].ports, [5432, 80]);
    assert_eq!(pod.containers[0].readiness.as_ref().unwrap().action, ProbeAction::Tcp(80));
}

#[test]
fn host_ports_are_published_on_the_outbound_network() {
    let (pod, w) = parse(&with_container_fields(
        "    ports:\n    - {containerPort: 80, hostPort: 8080}\n    - {containerPort: 443, hostPort: 8443, hostIP: 127.0.0.1}\n    - {containerPort: 53, protocol: UDP}\n",
    ));
    assert_eq!(pod.network, Network::Outbound, "the default network");
    let published: Vec<String> = pod.published_ports().map(|p| p.to_string()).collect();
    assert_eq!(published, ["8080:80", "127.0.0.1:8443:443"]);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].to_string().contains("protocol: berth publishes TCP ports only"), "{w:?}");
    let e = kube::from_str(&with_container_fields("    ports:\n    - {containerPort: 80, hostPort: 8080, hostIP: nowhere}\n"), "p.yaml")
        .unwrap_err();
    assert!(e.to_string().contains("hostIP: \"nowhere\" is not an IP address"), "{e}");
    let text = format!("{HEAD}spec:\n  hostNetwork: true\n  containers:\n  - name: a\n    image: b\n    ports:\n    - {{containerPort: 80, hostPort: 8080}}\n");
    let e = kube::from_str(&text, "p.yaml").unwrap_err();
    assert!(e.to_string().contains("publishes a host port"), "{e}");
}

#[test]
fn pod_level_fields() {
    let text = format!(
        "{HEAD}spec:\n  hostNetwork: true\n  shareProcessNamespace: true\n  securityContext: {{runAsUser: 1000, runAsGroup: 1000}}\n  containers:\n  - name: a\n    image: b\n    securityContext: {{runAsUser: 0}}\n  - name: c\n    image: b\n    command: [x]\n    args: []\n  - name: d\n    image: b\n    args: [\"$(GREETING) world\", \"$$(GREETING)\"]\n    env:\n    - {{name: WHO, value: you}}\n    - name: GREETING\n      value: hello $(WHO)\n    - {{name: EMPTY}}\n"
    );
    let (pod, w) = parse(&text);
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(pod.network, Network::Host);
    assert!(pod.share_process_namespace);
    assert_eq!((pod.containers[0].run_as_user, pod.containers[0].run_as_group), (Some(0), Some(1000)));
    assert_eq!((pod.containers[1].run_as_user, pod.containers[1].run_as_group), (Some(1000), Some(1000)));
    assert_eq!(pod.containers[1].command, Some(vec!["x".into()]));
    assert_eq!(pod.containers[1].args, Some(vec![]));
    let d = &pod.containers[2];
    assert_eq!(d.command, None);
    assert_eq!(d.args, Some(vec!["hello you world".into(), "$(GREETING)".into()]));
    assert_eq!(d.env[2], ("EMPTY".into(), String::new()));
}

#[test]
fn termination_grace_period() {
    let with = |g: &str| format!("{HEAD}spec:\n  terminationGracePeriodSeconds: {g}\n  containers:\n  - name: a\n    image: b\n");
    let (pod, w) = parse(&with("30"));
    assert!(w.is_empty(), "honoured, so no warning: {w:?}");
    assert_eq!(pod.grace_seconds, Some(30));
    // 0 means at once (SIGKILL), not unset.
    assert_eq!(parse(&with("0")).0.grace_seconds, Some(0));
    assert_eq!(parse(&with_container_fields("")).0.grace_seconds, None);
    for bad in ["-1", "1e3", "x", "4294967296"] {
        let (line, _, msg) = error(&with(bad));
        assert_eq!(line, 6, "{bad}: {msg}");
    }
}

#[test]
fn generate_name_and_yaml_features() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  generateName: ci-\nspec:\n  containers:\n  - &base {name: a, image: busybox, workingDir: /w}\n  - <<: *base\n    name: b\n";
    let (pod, w) = parse(text);
    assert!(w.is_empty(), "{w:?}");
    assert!(pod.name.starts_with("ci-") && pod.name.len() == 8, "{}", pod.name);
    assert_eq!(pod.containers[1].name, "b");
    assert_eq!(pod.containers[1].working_dir.as_deref(), Some("/w"));
    // A leading document marker, a BOM and a trailing empty document are fine.
    parse(&format!("\u{feff}---\n{}---\n", with_container_fields("")));
}

#[test]
fn main_override_for_pod_files() {
    let (mut pod, _) = parse(&format!("{HEAD}spec:\n  containers:\n  - {{name: a, image: b}}\n  - {{name: c, image: b}}\n"));
    assert_eq!(pod.main_container().unwrap().name, "a");
    pod.select_main("c").unwrap();
    assert_eq!(pod.main, 1);
    pod.validate().unwrap();
    assert!(pod.select_main("zz").is_err());
}

#[test]
fn file_limits_and_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.yaml");
    let mut text = with_container_fields("");
    text.push_str(&"# padding\n".repeat((MAX_FILE_SIZE / 10) as usize));
    std::fs::write(&big, &text).unwrap();
    assert!(matches!(kube::from_file(&big), Err(PodFileError::TooLarge { .. })));
    assert!(matches!(kube::from_str(&text, "big.yaml"), Err(PodFileError::TooLarge { .. })));

    let latin1 = dir.path().join("latin1.yaml");
    let mut bytes = with_container_fields("    env:\n    - name: A\n      value: caf").into_bytes();
    bytes.extend_from_slice(b"\xe9\n");
    std::fs::write(&latin1, bytes).unwrap();
    match kube::from_file(&latin1) {
        Err(PodFileError::Invalid { line, column, message, .. }) => {
            assert_eq!((line, column), (11, 17));
            assert!(message.contains("not UTF-8"));
        }
        other => panic!("{other:?}"),
    }

    let missing = dir.path().join("nope.yaml");
    let e = kube::from_file(&missing).unwrap_err();
    assert!(matches!(e, PodFileError::Read { .. }));
    assert!(e.to_string().contains("nope.yaml"));
}

#[test]
fn shorthand_builds_a_valid_pod() {
    let a = ShorthandArgs {
        image: "localhost:5000/berth/busybox:latest".into(),
        command: vec!["wget".into(), "-qO-".into(), "http://web:8080/".into()],
        sidecars: vec!["web=localhost:5000/berth/busybox:latest".into()],
        sidecar_cmds: vec!["web=httpd -f -p 8080 -h /workspace".into()],
        env: vec!["A=1".into()],
        workdir: Some("/workspace".into()),
        ..ShorthandArgs::default()
    };
    let pod = shorthand::from_args(&a).unwrap();
    pod.validate().unwrap();
    assert!(pod.name.starts_with("berth-"));
    assert_eq!(pod.main_container().unwrap().name, "busybox");
    assert_eq!(pod.containers[1].args.as_ref().unwrap()[0], "httpd");
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Cut a single char-safe index in `s`.
fn boundary(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn mutate(rng: &mut Rng, text: &str) -> String {
    const PIECES: &[&str] = &[
        ":", "- ", "[", "]", "{", "}", ",", "&a ", "*a", "!!str ", "!x ", "|", ">", "'", "\"", "%YAML 1.2\n", "@", "`", "\n", "\t", "#",
        "? ", "---\n", "...\n", "  ", "<<: ", "~", "-1", "0x", "99999999999999999999", "é", "\\", "\0", "$(", "Mi", "null",
    ];
    let mut t = text.to_string();
    for _ in 0..1 + rng.below(4) {
        let at = boundary(&t, rng.below(t.len() + 1));
        match rng.below(5) {
            0 => t.insert_str(at, PIECES[rng.below(PIECES.len())]),
            1 => {
                let end = boundary(&t, at + rng.below(40));
                t.replace_range(at..end, "");
            }
            2 => {
                let lines: Vec<&str> = t.lines().collect();
                let (a, b) = (rng.below(lines.len()), rng.below(lines.len()));
                let mut lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
                if !lines.is_empty() {
                    lines.swap(a, b);
                    let dup = lines[a].clone();
                    lines.insert(b, dup);
                }
                t = lines.join("\n");
            }
            3 => t.truncate(at),
            _ => {
                let c = char::from_u32(rng.next() as u32 % 0x250).unwrap_or('?');
                t.insert(at, c);
            }
        }
    }
    t
}

#[test]
fn mutated_and_random_input_never_panics() {
    let mut seeds: Vec<String> = std::fs::read_dir(bundles())
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    seeds.push(with_container_fields("    readinessProbe: {tcpSocket: {port: 80}}\n    resources: {limits: {cpu: 1, memory: 1Gi}}\n"));
    let mut rng = Rng(0x5eed_2026_1128_0240);
    let mut accepted = 0;
    for i in 0..4000 {
        let text = if i % 10 == 9 {
            (0..rng.below(300)).map(|_| char::from_u32(rng.next() as u32 % 0x80).unwrap_or(' ')).collect()
        } else {
            let seed = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, seed)
        };
        match kube::from_str(&text, "fuzz.yaml") {
            Ok((pod, warnings)) => {
                accepted += 1;
                pod.validate().expect("an accepted pod validates");
                for w in warnings {
                    assert!(w.line >= 1 && w.column >= 1 && !w.to_string().contains('\n'), "{w:?}");
                }
            }
            Err(PodFileError::Invalid { line, column, message, .. }) => {
                assert!(line >= 1 && column >= 1, "{line}:{column} {message}");
                assert!(!message.contains('\n'), "multi-line message {message:?} for {text:?}");
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    // The mutations must leave some files valid, or this tests only the parser.
    assert!(accepted > 100, "only {accepted} accepted");
}

#[test]
fn hostile_shapes_are_clean_errors() {
    let near_cap = (MAX_FILE_SIZE - 100) as usize;
    let inputs = [
        "- ".repeat(near_cap / 2),
        "[".repeat(near_cap),
        "{a: ".repeat(near_cap / 4),
        format!("{HEAD}spec: {}", "x".repeat(near_cap - 50)),
        format!("{HEAD}  name: \"{}\"\nspec: {{}}\n", "\\u0000".repeat(1000)),
        "a: &x 1\n".to_string() + &"b: *x\n".repeat(1000),
        "&a [*a]".into(),
        "*nope".into(),
        "!!binary aGVsbG8=".into(),
        "%YAML 9.9\n---\na: 1\n".into(),
        "? [a]\n: b\n".into(),
        "\u{feff}\u{feff}".into(),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: p, image: b, ports: [{containerPort: 99999999999999999999999}]}]}\n".into(),
    ];
    for text in inputs {
        match kube::from_str(&text, "x.yaml") {
            Err(PodFileError::Invalid { line, column, message, .. }) => {
                assert!(line >= 1 && column >= 1 && !message.contains('\n'), "{message:?}");
            }
            other => panic!("{:?}: {other:?}", &text[..text.len().min(60)]),
        }
    }
}

fn parse_with(text: &str, file: &str, opts: &kube::ReadOptions) -> (Pod, Vec<Warning>) {
    kube::from_str_with(text, file, opts).unwrap_or_else(|e| panic!("{e}\n--- in ---\n{text}"))
}

#[test]
fn plugin_templates_need_no_header() {
    // What the Kubernetes plugin fills in: apiVersion, kind, metadata.
    let text = "spec:\n  containers:\n  - {name: maven, image: maven:3}\n";
    let (pod, warnings) = parse_with(text, "ci/KubernetesPod.yaml", &kube::ReadOptions::default());
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(pod.name.starts_with("kubernetespod-") && pod.name.len() == "kubernetespod-".len() + 5, "{}", pod.name);
    let (other, _) = parse_with(text, "ci/KubernetesPod.yaml", &kube::ReadOptions::default());
    assert_ne!(pod.name, other.name, "two builds from one template get two names");
    // `--name` wins over the file's name, and even over an invalid one.
    let opts = kube::ReadOptions { name: Some("build-7".into()), ..Default::default() };
    let text = "metadata: {name: Not_Valid, labels: {app: ci}}\nspec:\n  containers:\n  - name: m\n    image: b\n    env:\n    - {name: NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}\n";
    let (pod, _) = parse_with(text, "x.yaml", &opts);
    assert_eq!(pod.name, "build-7");
    assert_eq!(pod.containers[0].env, [("NAME".to_string(), "build-7".to_string())], "fieldRef sees the final name");
}

#[test]
fn field_refs_have_the_values_of_a_pod_under_berth() {
    let text = format!(
        "{HEAD}  namespace: ci\n  labels: {{app: web, num: 1}}\n  annotations: {{who: me}}\nspec:\n  serviceAccountName: builder\n  containers:\n  - name: m\n    image: b\n    env:\n{}    - {{name: ECHO, value: \"$(POD)/$(NODE)\"}}\n    args: [\"$(IP)\"]\n",
        [
            ("POD", "metadata.name"),
            ("NS", "metadata.namespace"),
            ("UID", "metadata.uid"),
            ("APP", "metadata.labels['app']"),
            ("NUM", "metadata.labels['num']"),
            ("WHO", "metadata.annotations['who']"),
            ("NODE", "spec.nodeName"),
            ("SA", "spec.serviceAccountName"),
            ("IP", "status.podIP"),
            ("HOST_IP", "status.hostIP"),
        ]
        .iter()
        .map(|(k, f)| format!("    - name: {k}\n      valueFrom:\n        fieldRef: {{apiVersion: v1, fieldPath: \"{f}\"}}\n"))
        .collect::<String>()
    );
    let (pod, warnings) = parse(&text);
    assert!(warnings.is_empty(), "{warnings:?}");
    let env: std::collections::HashMap<_, _> = pod.containers[0].env.iter().cloned().collect();
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert_eq!(env["POD"], "p");
    assert_eq!(env["NS"], "ci");
    assert_eq!(env["UID"].len(), 36);
    assert_eq!(env["APP"], "web");
    assert_eq!(env["NUM"], "", "a label that is no string is left out");
    assert_eq!(env["WHO"], "me");
    assert_eq!(env["NODE"], host);
    assert_eq!(env["SA"], "builder");
    assert_eq!(env["IP"], "127.0.0.1");
    assert_eq!(env["HOST_IP"], "127.0.0.1");
    assert_eq!(env["ECHO"], format!("p/{host}"), "$(VAR) sees fieldRef values");
    assert_eq!(pod.containers[0].args, Some(vec!["127.0.0.1".to_string()]));
    // Without a namespace or service account, Kubernetes' defaults.
    let (pod, _) = parse(&with_container_fields(
        "    env:\n    - {name: NS, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}\n    - {name: SA, valueFrom: {fieldRef: {fieldPath: spec.serviceAccountName}}}\n",
    ));
    assert_eq!(pod.containers[0].env, [("NS".into(), "default".into()), ("SA".into(), "default".into())]);
}

#[test]
fn jnlp_without_image_is_the_agent_container() {
    let text = "spec:\n  containers:\n  - name: maven\n    image: maven:3\n    command: [sleep]\n    args: [infinity]\n  - name: jnlp\n    env: [{name: A, value: b}]\n";
    let (pod, warnings) = parse(text);
    assert!(warnings.is_empty(), "{warnings:?}");
    let agent = &pod.containers[1];
    assert!(agent.agent && agent.image.is_empty());
    assert_eq!(pod.main, 1, "the agent is the main container: its stdio is the channel");
    pod.validate().unwrap();
    let e = berth::planner::refuse_agent(&pod).unwrap_err().to_string();
    assert_eq!(e, "container jnlp is the Jenkins agent's (it has no image): run this pod file with `berth agent --pod FILE`");
    // With an image it is an ordinary container; elsewhere no image is an error.
    let (pod, _) = parse("spec:\n  containers:\n  - {name: jnlp, image: jenkins/inbound-agent}\n");
    assert!(!pod.containers[0].agent);
    berth::planner::refuse_agent(&pod).unwrap();
    let (line, column, message) = error("spec:\n  containers:\n  - {name: m, image: b}\n  initContainers:\n  - {name: jnlp}\n");
    assert_eq!((line, column, message.as_str()), (5, 5, "spec.initContainers[0].image is required"));
}

#[test]
fn native_sidecars_are_init_containers_that_keep_running() {
    let text = format!(
        "{HEAD}spec:\n  initContainers:\n  - {{name: first, image: b}}\n  - name: db\n    image: b\n    restartPolicy: Always\n    startupProbe: {{tcpSocket: {{port: 5432}}, periodSeconds: 1}}\n  - name: web\n    image: b\n    restartPolicy: Always\n    readinessProbe: {{tcpSocket: {{port: 80}}}}\n  - {{name: migrate, image: b}}\n  containers:\n  - {{name: m, image: b, startupProbe: {{tcpSocket: {{port: 1}}}}}}\n"
    );
    let (pod, warnings) = parse(&text);
    let flags: Vec<(&str, bool)> = pod.init_containers.iter().map(|c| (c.name.as_str(), c.sidecar)).collect();
    assert_eq!(flags, [("first", false), ("db", true), ("web", true), ("migrate", false)]);
    assert_eq!(pod.init_containers[1].readiness.as_ref().map(|p| &p.action), Some(&ProbeAction::Tcp(5432)), "startupProbe gates");
    assert_eq!(pod.init_containers[2].readiness.as_ref().map(|p| &p.action), Some(&ProbeAction::Tcp(80)));
    let got: Vec<&str> = warnings.iter().map(|w| w.message.as_str()).collect();
    assert_eq!(got, ["ignoring spec.containers[0].startupProbe: not supported; use readinessProbe"]);
    // The plan's order: each in its turn, the native sidecars as sidecars.
    let roles: Vec<(String, berth::runtime::Role)> =
        berth::planner::roles(&pod).into_iter().map(|(c, r)| (c.name.clone(), r)).collect();
    use berth::runtime::Role::*;
    let want = [("first", Init), ("db", Sidecar), ("web", Sidecar), ("migrate", Init), ("m", Main)];
    assert_eq!(roles, want.map(|(n, r)| (n.to_string(), r)));
}

#[test]
fn security_context_noise_and_privileged() {
    let text = format!(
        "{HEAD}spec:\n  securityContext:\n    seccompProfile: {{type: RuntimeDefault}}\n  containers:\n  - name: m\n    image: b\n    securityContext:\n      seccompProfile: {{type: RuntimeDefault}}\n  - name: dind\n    image: docker:dind\n    securityContext:\n      privileged: true\n      seccompProfile: {{type: Unconfined}}\n"
    );
    let (_, warnings) = parse(&text);
    let got: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        got,
        [
            "pod.yaml:17:7: ignoring spec.containers[1].securityContext.seccompProfile: berth applies its default seccomp profile",
            "pod.yaml:16:7: ignoring spec.containers[1].securityContext.privileged: privileged is not supported rootless: the container runs unprivileged; docker-in-docker will not work",
        ]
    );
}

#[test]
fn cluster_only_fields_are_silent() {
    let text = format!(
        "{HEAD}spec:\n  serviceAccountName: jenkins\n  serviceAccount: jenkins\n  nodeSelector: {{disk: ssd}}\n  tolerations: [{{key: k, operator: Exists}}]\n  affinity: {{nodeAffinity: {{}}}}\n  imagePullSecrets: [{{name: regcred}}]\n  priorityClassName: high\n  containers:\n  - {{name: m, image: b, imagePullPolicy: IfNotPresent}}\n"
    );
    let (_, warnings) = parse(&text);
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn image_pull_policies() {
    use berth::pod::PullPolicy::*;
    let text = format!(
        "{HEAD}spec:\n  containers:\n  - {{name: a, image: b, imagePullPolicy: Always}}\n  - {{name: c, image: b, imagePullPolicy: Never}}\n  - {{name: d, image: b, imagePullPolicy: IfNotPresent}}\n  - {{name: e, image: b:latest}}\n"
    );
    let (pod, _) = parse(&text);
    let got: Vec<_> = pod.containers.iter().map(|c| c.pull_policy).collect();
    assert_eq!(got, [Always, Never, IfNotPresent, IfNotPresent], "berth's default is podman's missing, even for :latest");
    assert_eq!(Never.merge(Always), Always);
    assert_eq!(Never.merge(IfNotPresent), IfNotPresent);
    assert_eq!(Never.merge(Never), Never);
}

#[test]
fn secret_and_config_map_volumes_map_to_host_paths() {
    let text = format!(
        "{}    volumeMounts:\n    - {{name: cfg, mountPath: /cfg}}\n    - {{name: cache, mountPath: /cache}}\n  volumes:\n  - name: cfg\n    secret: {{secretName: s, items: [{{key: k, path: p}}]}}\n  - name: cache\n    emptyDir: {{}}\n",
        with_container_fields("")
    );
    let (line, column, message) = error(&text);
    assert_eq!((line, column), (14, 5));
    assert!(message.ends_with("map it to a host file or directory with --volume-from cfg=PATH"), "{message}");
    let opts = kube::ReadOptions {
        volume_from: vec![("cfg".into(), "/etc/ci/secret".into()), ("cache".into(), "/var/cache/m2".into())],
        ..Default::default()
    };
    let (pod, warnings) = parse_with(&text, "pod.yaml", &opts);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(pod.volumes[0].source, VolumeSource::HostPath("/etc/ci/secret".into()));
    assert_eq!(pod.volumes[1].source, VolumeSource::HostPath("/var/cache/m2".into()));
    let ro: Vec<bool> = pod.containers[0].volume_mounts.iter().map(|m| m.read_only).collect();
    assert_eq!(ro, [true, false], "a secret stays read-only, as on a cluster");
    let opts = kube::ReadOptions { volume_from: vec![("cfg".into(), "/x".into()), ("nope".into(), "/x".into())], ..Default::default() };
    let e = kube::from_str_with(&text, "pod.yaml", &opts).unwrap_err().to_string();
    assert!(e.ends_with("--volume-from names \"nope\", which is no volume of this pod (volumes: cfg, cache)"), "{e}");
}

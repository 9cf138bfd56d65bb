//! `berth agent` end to end: a stand-in agent jar and a stand-in controller
//! (tests/it/agent/*.java, compiled here with the machine's `javac`, never
//! committed) keep the Jenkins remoting stdio contract byte for byte; the
//! agent runs on a Java runtime injected from a JRE image the harness builds
//! from the machine's own JDK (jlink'd, with the libraries `ldd` lists and
//! glibc's loader), into a busybox build image that has neither Java nor glibc.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use crate::common::*;

const JDK: &str = "/usr/lib/jvm/java-17-openjdk-amd64";
const SOURCES: &[(&str, &str)] = &[
    ("Agent.java", include_str!("agent/Agent.java")),
    ("Controller.java", include_str!("agent/Controller.java")),
    ("Frames.java", include_str!("agent/Frames.java")),
];

/// Builds `dir` once per machine (keyed by `key`) with `make`, which writes
/// into the temporary directory it is given; concurrent tests race to rename.
fn cached_dir(key: &str, make: impl FnOnce(&Path)) -> PathBuf {
    let top = std::env::temp_dir().join("berth-test-agent");
    let dir = top.join(key);
    if dir.is_dir() {
        return dir;
    }
    std::fs::create_dir_all(&top).unwrap();
    std::fs::set_permissions(&top, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let tmp = tempfile::Builder::new().prefix(".tmp").tempdir_in(&top).unwrap();
    make(tmp.path());
    run_ok(Command::new("chmod").args(["-R", "a+rX"]).arg(tmp.path()));
    let tmp = tmp.keep();
    if std::fs::rename(&tmp, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    dir
}

/// The stand-in classes and `agent.jar` made of them.
fn classes() -> PathBuf {
    let key = hex_of(&sha256(SOURCES.iter().map(|(_, s)| *s).collect::<String>().as_bytes()))[..16].to_string();
    cached_dir(&format!("classes-{key}"), |d| {
        let src = d.join("src");
        std::fs::create_dir_all(&src).unwrap();
        for (name, text) in SOURCES {
            std::fs::write(src.join(name), text).unwrap();
        }
        let mut javac = Command::new(format!("{JDK}/bin/javac"));
        javac.arg("--release").arg("17").arg("-d").arg(d);
        for (name, _) in SOURCES {
            javac.arg(src.join(name));
        }
        run_ok(&mut javac);
        run_ok(Command::new(format!("{JDK}/bin/jar")).arg("--create").arg("--file").arg(d.join("agent.jar")).args(["--main-class", "Agent", "-C"]).arg(d).args(["Agent.class", "-C"]).arg(d).arg("Frames.class"));
    })
}

fn agent_jar() -> PathBuf {
    classes().join("agent.jar")
}

/// A java.base-only runtime of the machine's JDK.
fn jlinked() -> PathBuf {
    cached_dir("jre-17", |d| {
        run_ok(Command::new(format!("{JDK}/bin/jlink")).args(["--add-modules", "java.base", "--strip-debug", "--no-header-files", "--no-man-pages", "--output"]).arg(d.join("jre")));
    })
    .join("jre")
}

/// Adds `host_dir` (recursively) to `t` under `prefix`.
fn add_tree(mut t: TarBuilder, host_dir: &Path, prefix: &str) -> TarBuilder {
    use std::os::unix::fs::PermissionsExt;
    t = t.dir(prefix, 0o755);
    let mut entries: Vec<_> = std::fs::read_dir(host_dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = format!("{prefix}/{}", e.file_name().to_string_lossy());
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        if m.is_dir() {
            t = add_tree(t, &e.path(), &name);
        } else if m.file_type().is_symlink() {
            t = t.symlink(&name, std::fs::read_link(e.path()).unwrap().to_str().unwrap());
        } else {
            t = t.file(&name, m.permissions().mode() & 0o7777, &std::fs::read(e.path()).unwrap());
        }
    }
    t
}

/// The shared libraries `ldd` lists for `files` (real files), and the loader.
fn ldd_libs(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut libs = Vec::new();
    for f in files {
        let out = Command::new("ldd").arg(f).output().unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next().unwrap_or(""),
                None => line.split_whitespace().next().unwrap_or(""),
            };
            if path.starts_with('/') && !path.contains("/jre/") && !libs.contains(&PathBuf::from(path)) {
                libs.push(PathBuf::from(path));
            }
        }
    }
    libs
}

/// Debian's layout: /lib → usr/lib, the loader's /lib64 link, each library
/// under its own name (the real file's bytes).
fn with_libs(mut t: TarBuilder, libs: &[PathBuf]) -> TarBuilder {
    t = t.dir("usr", 0o755).dir("usr/lib", 0o755).dir("usr/lib/x86_64-linux-gnu", 0o755).symlink("lib", "usr/lib").dir("lib64", 0o755);
    for l in libs {
        let name = l.file_name().unwrap().to_str().unwrap();
        let bytes = std::fs::read(std::fs::canonicalize(l).unwrap()).unwrap();
        if name.starts_with("ld-linux") {
            t = t.file(&format!("usr/lib/x86_64-linux-gnu/{name}"), 0o755, &bytes).symlink(&format!("lib64/{name}"), &format!("/lib/x86_64-linux-gnu/{name}"));
        } else {
            t = t.file(&format!("usr/lib/x86_64-linux-gnu/{name}"), 0o644, &bytes);
        }
    }
    t
}

fn with_env(mut image: Image, env: &[&str]) -> Image {
    let mut config: serde_json::Value = serde_json::from_slice(&image.config).unwrap();
    config["config"]["Env"] = serde_json::json!(env);
    image.config = serde_json::to_vec(&config).unwrap();
    image.manifest = image.manifest_with(OCI_CONFIG);
    image
}

/// The agent image: the JRE at /opt/java/openjdk (JAVA_HOME), glibc and
/// the libraries java needs; no shell.
fn jre_image() -> Image {
    let jre = jlinked();
    let mut objects = vec![jre.join("bin/java"), jre.join("lib/server/libjvm.so")];
    objects.extend(std::fs::read_dir(jre.join("lib")).unwrap().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "so")));
    let t = with_libs(TarBuilder::new().dir("opt", 0o755).dir("opt/java", 0o755), &ldd_libs(&objects));
    let t = add_tree(t, &jre, "opt/java/openjdk");
    with_env(Image::new(vec![Layer::new(&t.finish(), Comp::None, false)]), &["JAVA_HOME=/opt/java/openjdk", "PATH=/opt/java/openjdk/bin:/usr/bin:/bin"])
}

/// busybox-static only: no Java, no glibc.
fn busybox_image() -> Image {
    Image::new(vec![Layer::new(&busybox_tar_with(&["readlink", "wget", "httpd", "seq", "stat", "ps", "grep"]), Comp::Gzip, false)])
}

/// A glibc build image from the host's own files: /bin/sh (dash) and its libraries.
fn debian_image() -> Image {
    let sh = std::fs::canonicalize("/bin/sh").unwrap();
    let t = with_libs(TarBuilder::new().dir("bin", 0o755).dir("etc", 0o755).dir("tmp", 0o1777), &ldd_libs(std::slice::from_ref(&sh)))
        .file("bin/sh", 0o755, &std::fs::read(&sh).unwrap())
        .file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
        .file("etc/group", 0o644, b"root:x:0:\n")
        .file("etc/debian_version", 0o644, b"12\n");
    Image::new(vec![Layer::new(&t.finish(), Comp::Gzip, false)])
}

/// A registry with the build image (busybox) and the JRE image.
struct Bed {
    s: Served,
    jre: String,
}

fn bed() -> Bed {
    let s = Served::start("berth/build", &busybox_image(), false);
    s.reg.push_image("berth/jre", "latest", &jre_image());
    let jre = format!("{}/berth/jre:latest", s.reg.host());
    Bed { s, jre }
}

/// One controller run's outcome: its result lines, and the stderr of berth
/// (the node's launch log).
#[derive(Debug)]
struct Session {
    lines: Vec<String>,
    log: String,
}

impl Session {
    fn line(&self, prefix: &str) -> &str {
        self.lines.iter().find_map(|l| l.strip_prefix(prefix)).unwrap_or_else(|| panic!("no {prefix:?} line in {self:#?}"))
    }

    fn all(&self, prefix: &str) -> Vec<&str> {
        self.lines.iter().filter_map(|l| l.strip_prefix(prefix)).collect()
    }

    /// Exit status of berth and milliseconds it took after the last action.
    fn exit(&self) -> (i32, u64) {
        let e = self.line("exit ");
        let mut w = e.split_whitespace();
        let code = w.next().unwrap().parse().unwrap();
        let ms = w.nth(1).map_or(0, |m| m.parse().unwrap());
        (code, ms)
    }
}

impl Bed {
    /// `berth agent` with the JRE image and the stand-in jar, as the test user.
    fn agent_cmd(&self, args: &[&str]) -> Command {
        let jar = agent_jar();
        let mut all = vec!["agent", "--tls-verify=false", "--agent-image", &self.jre, "--agent-jar", jar.to_str().unwrap()];
        all.extend_from_slice(args);
        self.s.env.berth_as_user(&all)
    }

    /// Drives `berth agent ARGS` with the stand-in controller.
    fn session(&self, actions: &[&str], args: &[&str]) -> Session {
        session(actions, &self.agent_cmd(args))
    }
}

fn session(actions: &[&str], agent: &Command) -> Session {
    let mut c = controller_cmd(actions, agent);
    let out = c.output().unwrap();
    let lines = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
    Session { lines, log: String::from_utf8_lossy(&out.stderr).into_owned() }
}

fn controller_cmd(actions: &[&str], agent: &Command) -> Command {
    let mut c = Command::new(format!("{JDK}/bin/java"));
    c.arg("-cp").arg(classes()).arg("Controller").args(actions).arg("--").arg(agent.get_program()).args(agent.get_args());
    c.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    c
}

/// Processes whose environment holds `marker` (the pod's, by `-e`).
fn processes_marked(marker: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) {
            if env.split(|&b| b == 0).any(|v| v == marker.as_bytes()) {
                pids.push(pid);
            }
        }
    }
    pids
}

fn marker(name: &str) -> String {
    format!("STANDIN_MARK={name}-{}", std::process::id())
}

fn assert_pod_gone(bed: &Bed, marker: &str) {
    assert!(wait_until(std::time::Duration::from_secs(2), || processes_marked(marker).is_empty()), "pod processes left: {:?}", processes_marked(marker));
    let pods = std::fs::read_dir(bed.s.env.run_root.join("pods")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(pods, 0, "pod state left behind");
}

#[test]
fn channel_comes_up_on_injected_java_and_steps_use_the_build_images_sh() {
    let b = bed();
    let image = b.s.image.clone();
    // The store starts empty: the controller's preamble sits in the pipe
    // through the pulls and the unpacking, before any container exists.
    let s = b.session(&["version", "exec:readlink /proc/$$/exe; test -e /lib64/ld-linux-x86-64.so.2 || echo no glibc; pwd", "close"], &[&image]);
    assert!(s.log.contains("pulling"), "{s:#?}");
    assert_eq!(s.line("header "), "", "nothing before the preamble: {s:#?}");
    assert!(s.line("version ").starts_with("17."), "{s:#?}");
    assert!(s.line("version ").ends_with(" /.berth/agent/jre/opt/java/openjdk"), "{s:#?}");
    assert_eq!(s.line("exec "), "0", "{s:#?}");
    assert_eq!(s.all("| "), ["/bin/busybox", "no glibc", "/workspace"], "{s:#?}");
    assert_eq!(s.exit().0, 0, "{s:#?}");
}

#[test]
fn a_step_writes_into_the_hosts_workspace() {
    let b = bed();
    let ws = b.s.env.home.join("ws");
    std::fs::create_dir(&ws).unwrap();
    b.s.env.chown();
    let s = b.session(&["exec:mkdir -p job && echo built > job/out.txt && id -u", "close"], &["--workspace", ws.to_str().unwrap(), &b.s.image]);
    assert_eq!(s.line("exec "), "0", "{s:#?}");
    let out = ws.join("job/out.txt");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "built\n");
    assert_eq!(std::fs::metadata(&out).unwrap().uid(), test_user_ids().0, "the file belongs to the invoking user");
    assert_eq!(s.exit().0, 0);
}

#[test]
fn the_agent_reaches_a_sidecar_by_name() {
    let b = bed();
    let image = b.s.image.clone();
    let side = format!("db={image}");
    let step = "for i in $(seq 1 50); do wget -qO- http://db:8080/group 2>/dev/null && exit 0; sleep 0.1; done; exit 1";
    let s = b.session(&[&format!("exec:{step}"), "close"], &["--sidecar", &side, "--sidecar-cmd", "db=httpd -f -p 8080 -h /etc", &image]);
    assert_eq!(s.line("exec "), "0", "{s:#?}");
    assert_eq!(s.all("| ")[0], "root:x:0:", "{s:#?}");
    assert_eq!(s.exit().0, 0);
}

#[test]
fn sixty_four_mib_both_ways_intact() {
    let b = bed();
    let s = b.session(&["echo:64", "close"], &[&b.s.image]);
    let e = s.line("echo ");
    let fields: Vec<&str> = e.split_whitespace().collect();
    assert_eq!(fields[0], (64 << 20).to_string(), "{s:#?}");
    let sha = |k: &str| fields.iter().find_map(|f| f.strip_prefix(k)).unwrap();
    assert_eq!(sha("sent="), sha("agent="), "what the agent received");
    assert_eq!(sha("sent="), sha("back="), "what came back");
    eprintln!("64 MiB each way through berth agent: {} ms", sha("ms="));
    assert_eq!(s.exit().0, 0);
}

#[test]
fn junk_before_the_preamble_is_tolerated() {
    let b = bed();
    let s = b.session(&["version", "echo:1", "close"], &["-e", "STANDIN_JUNK=Picked up JAVA_TOOL_OPTIONS\nmore junk\n", &b.s.image]);
    use base64::Engine as _;
    let header = base64::engine::general_purpose::STANDARD.decode(s.line("header ")).unwrap();
    assert_eq!(header, b"Picked up JAVA_TOOL_OPTIONS\nmore junk\n", "{s:#?}");
    let e: Vec<&str> = s.line("echo ").split_whitespace().collect();
    assert_eq!(e[1].strip_prefix("sent="), e[3].strip_prefix("back="), "{s:#?}");
    assert_eq!(s.exit().0, 0);
}

/// The folded SHA-256 name remoting's FileSystemJarCache gives a jar.
fn jar_cache_name(data: &[u8]) -> String {
    let d = <sha2::Sha256 as sha2::Digest>::digest(data);
    let l = |i: usize| u64::from_be_bytes(d[i * 8..i * 8 + 8].try_into().unwrap());
    let (sum1, sum2) = (l(0) ^ l(2), l(1) ^ l(3));
    format!("{:02X}/{:014X}{:016X}.jar", sum1 >> 56, sum1 & 0x00FF_FFFF_FFFF_FFFF, sum2)
}

#[test]
fn the_jar_cache_is_shared_by_a_controllers_agents() {
    let b = bed();
    let url = ["--jenkins-url", "http://ci.example:8080/"];
    let first = b.session(&["jar:plugin-one", "jars:20:64", "close"], &[url[0], url[1], &b.s.image]);
    assert!(first.line("jar ").starts_with("miss /.berth/agent/jar-cache/"), "{first:#?}");
    assert!(first.line("jars ").starts_with(&format!("20 hits=0 bytes={} ", 20 * 64 * 1024)), "{first:#?}");
    let second = b.session(&["jar:plugin-one", "jars:20:64", "close"], &[url[0], url[1], &b.s.image]);
    assert!(second.line("jar ").starts_with("hit "), "the next agent finds it: {second:#?}");
    assert!(second.line("jars ").starts_with("20 hits=20 bytes=0 "), "no jar sent again: {second:#?}");
    eprintln!("jars, first build: {}; second: {}", first.line("jars "), second.line("jars "));
    let other = b.session(&["jar:plugin-one", "close"], &["--jenkins-url", "http://other:8080/", &b.s.image]);
    assert!(other.line("jar ").starts_with("miss "), "another controller, another cache: {other:#?}");

    // Two agents at once writing the same twenty jars.
    let actions: Vec<String> = (0..20).map(|i| format!("jar:jar-{i}")).chain(["close".to_string()]).collect();
    let actions: Vec<&str> = actions.iter().map(String::as_str).collect();
    let children: Vec<_> =
        (0..2).map(|_| controller_cmd(&actions, &b.agent_cmd(&[url[0], url[1], &b.s.image])).stdout(std::process::Stdio::piped()).spawn().unwrap()).collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.lines().filter(|l| l.starts_with("jar ")).count(), 20, "{text}");
        assert!(text.contains("exit 0"), "{text}");
    }
    let caches: Vec<PathBuf> = std::fs::read_dir(b.s.env.root.join("agent/jar-cache")).unwrap().flatten().map(|e| e.path()).collect();
    let cache = caches.iter().find(|c| std::fs::read_to_string(c.join(".controller")).unwrap() == "http://ci.example:8080\n").unwrap();
    for i in 0..20 {
        let data = format!("jar-{i}");
        assert_eq!(std::fs::read(cache.join(jar_cache_name(data.as_bytes()))).unwrap(), data.as_bytes(), "jar-{i}");
    }
    let leftovers = Command::new("find").arg(cache).args(["-name", "tmp*"]).output().unwrap();
    assert!(leftovers.stdout.is_empty(), "temporary files left: {}", String::from_utf8_lossy(&leftovers.stdout));
}

#[test]
fn channel_close_ends_berth_with_0_and_no_pod_left() {
    let b = bed();
    let m = marker("close");
    let s = b.session(&["version", "close"], &["-e", &m, &b.s.image]);
    assert_eq!(s.exit().0, 0, "{s:#?}");
    assert_pod_gone(&b, &m);
}

#[test]
fn stdin_eof_ends_berth_with_0_and_no_pod_left() {
    let b = bed();
    let m = marker("eof");
    let s = b.session(&["version", "eof"], &["-e", &m, &b.s.image]);
    assert_eq!(s.exit().0, 0, "{s:#?}");
    assert!(s.log.contains("channel stopped: EOF"), "{s:#?}");
    assert_pod_gone(&b, &m);
}

#[test]
fn sigterm_ends_the_pod_well_within_jenkins_5_seconds() {
    let b = bed();
    let m = marker("term");
    let image = b.s.image.clone();
    let side = format!("db={image}");
    // A sidecar that ignores SIGTERM: the agent's grace (3 s) still ends it.
    let s = b.session(&["version", "term"], &["-e", &m, "--sidecar", &side, "--sidecar-cmd", "db=sh -c 'trap \"\" TERM; while true; do sleep 1; done'", &image]);
    let (_, ms) = s.exit();
    assert!(ms < 5000, "berth took {ms} ms after SIGTERM: {s:#?}");
    eprintln!("SIGTERM to exit: {ms} ms");
    assert_pod_gone(&b, &m);
}

#[test]
fn provisioning_failures_are_125_with_the_cause_and_nothing_on_stdout() {
    let b = bed();
    // Images in the store already: their pull progress is no part of the failure.
    b.s.env.run_as_user(&["pull", "-q", "--tls-verify=false", &b.s.image]).ok();
    b.s.env.run_as_user(&["pull", "-q", "--tls-verify=false", &b.jre]).ok();
    let missing = format!("{}/berth/nothing:latest", b.s.reg.host());
    let run = Run::of(b.agent_cmd(&[&missing]));
    assert!(run.provision_failure().contains("berth/nothing"), "{run:?}");

    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/jnlpJars/agent.jar");
    let run = Run::of(b.s.env.berth_as_user(&["agent", "--tls-verify=false", "--agent-image", &b.jre, "--agent-jar", &url, &b.s.image]));
    assert!(run.provision_failure().contains(&format!("cannot fetch the agent jar from {url}")), "{run:?}");

    let run = Run::of(b.s.env.berth_as_user(&["agent", "--tls-verify=false", &b.s.image]));
    assert!(run.provision_failure().contains("AGENTJAR_URL"), "{run:?}");

    // The build image as the agent image: no Java in it.
    let jar = agent_jar();
    let run = Run::of(b.s.env.berth_as_user(&["agent", "--tls-verify=false", "--agent-image", &b.s.image, "--agent-jar", jar.to_str().unwrap(), &b.s.image]));
    assert!(run.provision_failure().contains("has no Java"), "{run:?}");
}

#[test]
fn a_debian_glibc_build_image_works_too() {
    let b = bed();
    b.s.reg.push_image("berth/debian", "latest", &debian_image());
    let debian = format!("{}/berth/debian:latest", b.s.reg.host());
    let ws = b.s.env.home.join("ws");
    std::fs::create_dir(&ws).unwrap();
    b.s.env.chown();
    let s = b.session(&["version", "exec:echo from dash > dash.txt; read v < /etc/debian_version; echo $v", "close"], &["--workspace", ws.to_str().unwrap(), &debian]);
    assert!(s.line("version ").starts_with("17."), "{s:#?}");
    assert_eq!(s.line("exec "), "0", "{s:#?}");
    assert_eq!(s.all("| "), ["12"]);
    assert_eq!(std::fs::read_to_string(ws.join("dash.txt")).unwrap(), "from dash\n");
    assert_eq!(s.exit().0, 0);
}

/// A tiny HTTP server for agent.jar with ETag validation; it records each
/// request's status.
struct JarServer {
    url: String,
    body: Arc<Mutex<Vec<u8>>>,
    log: Arc<Mutex<Vec<u16>>>,
}

impl JarServer {
    fn start(body: Vec<u8>) -> JarServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}//jnlpJars/agent.jar", l.local_addr().unwrap());
        let (body, log) = (Arc::new(Mutex::new(body)), Arc::new(Mutex::new(Vec::new())));
        let (b, lg) = (body.clone(), log.clone());
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut inm = None;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("if-none-match:") {
                        inm = Some(v.trim().to_string());
                    }
                }
                let body = b.lock().unwrap().clone();
                let etag = format!("\"{}\"", &hex_of(&sha256(&body))[..16]);
                let mut w = conn;
                if inm.as_deref() == Some(&etag) {
                    lg.lock().unwrap().push(304);
                    let _ = write!(w, "HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nConnection: close\r\n\r\n");
                } else {
                    lg.lock().unwrap().push(200);
                    let _ = write!(w, "HTTP/1.1 200 OK\r\nETag: {etag}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                    let _ = w.write_all(&body);
                }
                let _ = r.read(&mut [0u8; 1]);
            }
        });
        JarServer { url, body, log }
    }
}

#[test]
fn agent_jar_from_agentjar_url_is_cached_and_revalidated() {
    let b = bed();
    let jar = std::fs::read(agent_jar()).unwrap();
    let server = JarServer::start(jar.clone());
    // As Jenkins sets them (note the double slash of AGENTJAR_URL).
    let env_cmd = || {
        let c = b.s.env.berth_as_user(&["agent", "--tls-verify=false", "--agent-image", &b.jre, &b.s.image]);
        let mut args: Vec<std::ffi::OsString> = c.get_args().map(|a| a.to_os_string()).collect();
        let at = args.iter().position(|a| a.to_str().is_some_and(|s| s.ends_with("/berth"))).unwrap();
        args.insert(at, format!("AGENTJAR_URL={}", server.url).into());
        args.insert(at, "JENKINS_URL=http://ci.example:8080/".into());
        let mut cmd = Command::new(c.get_program());
        cmd.args(args).env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        cmd
    };
    let s = session(&["version", "close"], &env_cmd());
    assert_eq!(s.exit().0, 0, "{s:#?}");
    let s = session(&["version", "close"], &env_cmd());
    assert_eq!(s.exit().0, 0, "{s:#?}");
    assert_eq!(*server.log.lock().unwrap(), [200, 304], "the second start revalidates");
    // The controller is upgraded: the next agent runs the new jar.
    let extra = b.s.env.path().join("extra");
    std::fs::create_dir(&extra).unwrap();
    std::fs::write(extra.join("release.txt"), "controller 2\n").unwrap();
    let up = b.s.env.path().join("upgraded.jar");
    run_ok(Command::new(format!("{JDK}/bin/jar")).arg("--create").arg("--file").arg(&up).args(["--main-class", "Agent", "-C"]).arg(classes()).args(["Agent.class", "-C"]).arg(classes()).args(["Frames.class", "-C"]).arg(&extra).arg("release.txt"));
    let upgraded = std::fs::read(&up).unwrap();
    assert_ne!(upgraded, jar);
    *server.body.lock().unwrap() = upgraded.clone();
    let s = session(&["version", "close"], &env_cmd());
    assert_eq!(s.exit().0, 0, "{s:#?}");
    assert_eq!(*server.log.lock().unwrap(), [200, 304, 200]);
    let cached = b.s.env.root.join("agent/jars").join(format!("{}.jar", hex_of(&sha256(&upgraded))));
    assert!(cached.is_file(), "the new jar is cached by digest");
}

/// `berth agent --isolation vm`: the same channel through the VM's control
/// port (TCG here), a step that writes into the host's workspace, and the
/// whole stream binary-clean.
#[test]
fn the_channel_comes_up_through_a_vm() {
    let Some((vmlinuz, modules)) = crate::common::vm::test_kernel() else { return };
    let b = bed();
    let ws = b.s.env.home.join("ws");
    std::fs::create_dir(&ws).unwrap();
    b.s.env.chown();
    let args = [
        "--isolation", "vm", "--accel", "tcg",
        "--kernel", vmlinuz.to_str().unwrap(), "--modules", modules.to_str().unwrap(),
        "--workspace", ws.to_str().unwrap(), &b.s.image,
    ];
    let s = b.session(&["version", "exec:uname -r; echo built > out.txt", "echo:4", "close"], &args);
    assert!(s.line("version ").starts_with("17."), "{s:#?}");
    assert_eq!(s.line("exec "), "0", "{s:#?}");
    // The guest's kernel, not the host's.
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let guest_kernel = s.all("| ")[0].to_string();
    assert_ne!(guest_kernel, host_kernel.trim(), "{s:#?}");
    assert!(modules.ends_with(&guest_kernel), "{guest_kernel} is not the test kernel: {s:#?}");
    let e = s.line("echo ");
    let fields: Vec<&str> = e.split_whitespace().collect();
    let sha = |k: &str| fields.iter().find_map(|f| f.strip_prefix(k)).unwrap();
    assert_eq!(sha("sent="), sha("back="), "{s:#?}");
    let out = ws.join("out.txt");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "built\n");
    assert_eq!(std::fs::metadata(&out).unwrap().uid(), test_user_ids().0);
    assert_eq!(s.exit().0, 0, "{s:#?}");
    assert_eq!(std::fs::read_dir(b.s.env.run_root.join("pods")).map(|d| d.count()).unwrap_or(0), 0, "pod state left behind");
}

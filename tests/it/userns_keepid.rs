//! `--userns keep-id` and the provided passwd entry, end to end as the
//! unprivileged test user: an image whose User is 1000 (as Jenkins' agent
//! images) writes the workspace and the files are the user's on the host;
//! a uid with no passwd entry gets one, with a writable home; without
//! keep-id nothing changes.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

/// busybox with a `jenkins` user 1000:1000 whose home (owned by 1000) is
/// in the image; the config's User is `user`.
fn image_with_user(user: &str) -> Image {
    let users = owned_tar(&[
        ("etc/passwd", 0o644, 0, b"root:x:0:0:root:/root:/bin/sh\njenkins:x:1000:1000:Jenkins:/home/jenkins:/bin/sh\n"),
        ("etc/group", 0o644, 0, b"root:x:0:\njenkins:x:1000:\n"),
        ("home/jenkins/", 0o755, 1000, b""),
    ]);
    let mut image = Image::new(vec![Layer::new(&busybox_tar(), Comp::Gzip, false), Layer::new(&users, Comp::Gzip, false)]);
    let mut config: serde_json::Value = serde_json::from_slice(&image.config).unwrap();
    config["config"]["User"] = user.into();
    image.config = serde_json::to_vec(&config).unwrap();
    image.manifest = image.manifest_with(OCI_CONFIG);
    image
}

/// A workspace directory owned by the test user.
fn workspace(env: &Env) -> PathBuf {
    let w = env.path().join("ws");
    std::fs::create_dir(&w).unwrap();
    chown_to_test_user(&w);
    w
}

fn owner(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).uid()
}

/// Removes `paths` as the test user, as Jenkins cleans a workspace (it
/// makes what it owns writable first: only an owner may).
fn remove_as_user(paths: &[&Path]) -> std::process::Output {
    let list: Vec<String> = paths.iter().map(|p| format!("'{}'", p.display())).collect();
    let list = list.join(" ");
    Command::new("su").args([TEST_USER, "-s", "/bin/sh", "-c", &format!("chmod -R u+w {list} 2>/dev/null; rm -rf {list}")]).output().unwrap()
}

/// The first subordinate uid of the test user.
fn first_subuid() -> u32 {
    let text = std::fs::read_to_string("/etc/subuid").unwrap();
    let line = text.lines().find(|l| l.starts_with(&format!("{TEST_USER}:"))).expect("a subuid range for the test user");
    line.split(':').nth(1).unwrap().parse().unwrap()
}

#[test]
fn keep_id_user_1000_writes_the_workspace_as_the_invoking_user() {
    let s = Served::start("berth/jenkins", &image_with_user("1000"), true);
    let ws = workspace(&s.env);
    let (uid, _) = test_user_ids();
    let ws_arg = ws.to_str().unwrap();
    let script = "id -u; id -g; busybox whoami; echo $HOME; busybox stat -c %u /home/jenkins; \
                  echo hi > /workspace/f && mkdir /workspace/d && echo x > /workspace/d/g && \
                  busybox chmod 500 /workspace/d && touch_ok=1; echo ${touch_ok:-0}";
    let run = s.env.run_as_user(&["run", "--userns", "keep-id", "--workspace", ws_arg, &s.image, "--", "sh", "-c", script]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "1000\n1000\njenkins\n/home/jenkins\n1000\n1\n", "{run:?}");
    for p in [ws.join("f"), ws.join("d"), ws.join("d/g")] {
        assert_eq!(owner(&p), uid, "{} belongs to the invoking user", p.display());
    }
    let out = remove_as_user(&[&ws.join("f"), &ws.join("d")]);
    assert!(out.status.success() && !ws.join("d").exists() && !ws.join("f").exists(), "{out:?}");
    // The layers were unpacked once more, for this mapping (and the files
    // the image gives uid 1000 are 1000 inside, as the run showed).
    let keys = std::fs::read_dir(s.env.root.join("layers")).unwrap().count();
    assert_eq!(keys, 2, "one layer cache per mapping");

    // A second run reuses the keep-id cache.
    let run = s.env.run_as_user(&["run", "--userns", "keep-id", "--workspace", ws_arg, &s.image, "--", "id", "-u"]);
    assert_eq!((run.code, run.stdout.as_str()), (0, "1000\n"), "{run:?}");
    // The pod's state (files of the keep-id ids) went with it.
    let left = std::fs::read_dir(s.env.run_root.join("pods")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "pod state left behind");
}

#[test]
fn without_keep_id_the_old_behaviour_is_unchanged() {
    let s = Served::start("berth/jenkins", &image_with_user("1000"), true);
    let ws = workspace(&s.env);
    let run = s.env.run_as_user(&[
        "run", "--workspace", ws.to_str().unwrap(), &s.image, "--", "sh", "-c", "id -u; busybox whoami; echo x > /workspace/f",
    ]);
    assert_ne!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "1000\njenkins\n", "{run:?}");
    assert!(run.stderr.contains("Permission denied"), "{run:?}");
    assert!(!ws.join("f").exists());
    // Root is the invoking user, as before.
    let run = s.env.run_as_user(&["run", "--user", "0", "--workspace", ws.to_str().unwrap(), &s.image, "--", "sh", "-c", "echo x > /workspace/r"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(owner(&ws.join("r")), test_user_ids().0);
    assert_eq!(std::fs::read_dir(s.env.root.join("layers")).unwrap().count(), 1, "one mapping, one cache");
}

#[test]
fn a_uid_without_passwd_entry_gets_one_with_a_writable_home() {
    let s = Served::start("berth/jenkins", &image_with_user("1000"), true);
    let ws = workspace(&s.env);
    let script = "id -u; busybox whoami; echo $HOME; echo ok > $HOME/t && cat $HOME/t; \
                  grep -c . /etc/passwd; echo w > /workspace/w";
    for userns in ["keep-id", "default"] {
        let run = s.env.run_as_user(&[
            "run", "--userns", userns, "--user", "4242", "--workspace", ws.to_str().unwrap(), &s.image, "--", "sh", "-c", script,
        ]);
        let home = format!("/home/{TEST_USER}");
        let want = format!("4242\n{TEST_USER}\n{home}\nok\n3\n");
        if userns == "keep-id" {
            assert_eq!((run.code, run.stdout.as_str()), (0, want.as_str()), "{run:?}");
            assert_eq!(owner(&ws.join("w")), test_user_ids().0);
        } else {
            // The entry and home are there; the workspace is not writable.
            assert_eq!(run.stdout, want, "{run:?}");
            assert!(run.stderr.contains("Permission denied"), "{run:?}");
        }
    }
    // An image's own entry is kept.
    let run = s.env.run_as_user(&["run", "--user", "1000", &s.image, "--", "sh", "-c", "busybox whoami; echo $HOME; grep -c . /etc/passwd"]);
    assert_eq!((run.code, run.stdout.as_str()), (0, "jenkins\n/home/jenkins\n2\n"), "{run:?}");
}

/// A sidecar in the keep-id pod: its uid 1000 is the user too; a root
/// sidecar's files belong to the first subordinate uid, and the user can
/// still delete them from the workspace (it owns the directory).
#[test]
fn keep_id_pod_with_sidecars() {
    let s = Served::start("berth/jenkins", &image_with_user("1000"), true);
    let ws = workspace(&s.env);
    let pod = s.env.path().join("pod.yaml");
    let image = &s.image;
    std::fs::write(
        &pod,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: keepid}}\nspec:\n  containers:\n  - name: build\n    image: {image}\n    \
             command: [sh, -c, 'while [ ! -e /workspace/side ] || [ ! -e /workspace/root ]; do sleep 0.1; done; id -u; cat /workspace/side']\n  \
             - name: side\n    image: {image}\n    command: [sh, -c, 'id -u > /workspace/side.tmp && mv /workspace/side.tmp /workspace/side; sleep 100']\n  \
             - name: rooted\n    image: {image}\n    securityContext: {{runAsUser: 0}}\n    command: [sh, -c, 'echo r > /workspace/root; sleep 100']\n"
        ),
    )
    .unwrap();
    chown_to_test_user(&pod);
    let run = s.env.run_as_user(&["run", "--userns", "keep-id", "--workspace", ws.to_str().unwrap(), "--pod", pod.to_str().unwrap()]);
    assert_eq!((run.code, run.stdout.as_str()), (0, "1000\n1000\n"), "{run:?}");
    assert_eq!(owner(&ws.join("side")), test_user_ids().0);
    assert_eq!(owner(&ws.join("root")), first_subuid(), "container root is the first subordinate uid under keep-id");
    let out = remove_as_user(&[&ws.join("side"), &ws.join("root")]);
    assert!(out.status.success() && std::fs::read_dir(&ws).unwrap().count() == 0, "{out:?}");
}

#[test]
fn keep_id_refuses_bundles_and_bad_users_with_125() {
    let s = Served::start("berth/jenkins", &image_with_user("1000"), true);
    for args in [
        vec!["run", "--userns", "keep-id", "--user", "x", &s.image, "--", "true"],
        vec!["run", "--user", "1:y", &s.image, "--", "true"],
        vec!["run", "--userns", "keep-id", "--bundle", "/nonexistent"],
    ] {
        let run = s.env.run_as_user(&args);
        assert_eq!(run.code, 125, "{args:?}: {run:?}");
        assert!(run.stdout.is_empty() && run.stderr.lines().count() == 1, "{run:?}");
    }
}

/// Without a subordinate range (root has none on the test machines) keep-id
/// of a non-root uid cannot work (berth runs as uid 0 of the namespace):
/// one clear line and 125; keep-id of root is the default mapping and runs.
#[test]
fn keep_id_without_subordinate_ids_is_a_clear_125() {
    let s = Served::start("berth/jenkins", &image_with_user("1000"), false);
    if !is_root() || std::fs::read_to_string("/etc/subuid").unwrap_or_default().lines().any(|l| l.starts_with("root:") || l.starts_with("0:")) {
        return; // needs a user without a range
    }
    let env = Env::new();
    env.registries_conf(&format!("[[registry]]\nlocation = \"{}\"\ninsecure = true\n", s.reg.host()));
    let run = env.run(&["run", "--userns", "keep-id", "--tls-verify=false", &s.image, "--", "id", "-u"]);
    assert_eq!(run.code, 125, "{run:?}");
    // Progress and the usual warning come first; one line says why.
    let last = run.stderr.lines().last().unwrap_or("");
    assert!(run.stdout.is_empty() && last.starts_with("berth: --userns keep-id for uid 1000") && last.contains("subordinate"), "{run:?}");
    assert_eq!(run.stderr.matches("berth:").count(), 1, "{run:?}");
    let run = env.run(&["run", "--userns", "keep-id", "--user", "0", "--tls-verify=false", &s.image, "--", "id", "-u"]);
    assert_eq!((run.code, run.stdout.as_str()), (0, "0\n"), "{run:?}");
}

/// Jenkins' shutdown: SIGTERM to berth reaches the keep-id pod's main
/// process (a host uid other than berth's) and the pod is gone quickly.
#[test]
fn sigterm_reaches_a_keep_id_pod() {
    use std::io::BufRead;
    let s = Served::start("berth/jenkins", &image_with_user("1000"), true);
    let script = "trap 'exit 7' TERM; echo ready; sleep 1004 & wait";
    let mut child = s
        .env
        .berth_as_user(&["run", "--userns", "keep-id", &s.image, "--", "sh", "-c", script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let started = std::time::Instant::now();
    assert_eq!(unsafe { libc::kill(berth_pid(&child), libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(7), "the main process's own status");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "took {:?}", started.elapsed());
}

/// A keep-id pod is listed while it runs; when berth is SIGKILLed the pod
/// dies with it, and the next command removes its state (files of the
/// keep-id ids: the user's, and the first subordinate uid's).
#[test]
fn a_killed_keep_id_pod_leaves_nothing_behind() {
    use std::io::BufRead;
    let s = Served::start("berth/jenkins", &image_with_user("1000"), true);
    let script = "echo x > /tmp/mine; echo ready; sleep 1023";
    let mut child = s
        .env
        .berth_as_user(&["run", "--userns", "keep-id", "--name", "doomed", &s.image, "--", "sh", "-c", script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    if line != "ready\n" {
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        panic!("the pod did not start: {err}");
    }
    let ps = s.env.run_as_user(&["ps"]).ok();
    assert!(ps.stdout.lines().any(|l| l.starts_with("doomed\t")), "{ps:?}");
    let state = s.env.run_root.join("pods/doomed");
    assert!(state.is_dir());
    assert_eq!(unsafe { libc::kill(berth_pid(&child), libc::SIGKILL) }, 0);
    let _ = child.wait();
    let gone = wait_until(std::time::Duration::from_secs(5), || processes_with("sleep 1023").is_empty());
    let ps = String::from_utf8_lossy(&Command::new("ps").args(["-eo", "pid,ppid,user,stat,args"]).output().unwrap().stdout).into_owned();
    assert!(gone, "the pod died with berth: {ps}");
    s.env.run_as_user(&["images"]).ok();
    assert!(!state.exists(), "state of the killed keep-id pod left behind");
}

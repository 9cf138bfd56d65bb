//! The pod network, end to end as the unprivileged test user: the default
//! outbound network (pasta) reaches a server on the host's loopback as
//! `host.containers.internal` and a DNS server there, `-p` publishes a port,
//! two pods use the same port, `--network none` reaches nothing, proxy
//! variables pass through, and no helper outlives its pod (normal end,
//! SIGTERM, berth SIGKILLed). Only loopback targets: CI has no internet.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;

fn setup() -> Served {
    let image = Image::new(vec![Layer::new(&busybox_tar_with(&["wget", "httpd", "nslookup", "grep"]), Comp::Gzip, false)]);
    Served::start("berth/busynet", &image, true)
}

/// An HTTP server on the host's 127.0.0.1 answering every request with
/// `body`; returns its port.
fn host_http_server(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(s, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    port
}

/// The network helper of pod `name`: the process whose stderr is its log in
/// the pod's state directory (pasta.log, slirp4netns.log). Its command line
/// names the namespace and pid file by descriptor, so it is found this way.
fn helper_of(env: &Env, name: &str) -> Vec<String> {
    let dir = env.run_root.join("pods").join(name);
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()))
        .filter(|e| std::fs::read_link(e.path().join("fd/2")).is_ok_and(|l| l.starts_with(&dir) && l.to_string_lossy().ends_with(".log")))
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .collect()
}

#[test]
fn a_server_on_the_hosts_loopback_is_reached_as_host_containers_internal() {
    let s = setup();
    let port = host_http_server("from the host\n");
    let url = format!("http://host.containers.internal:{port}/file");
    let run = s.env.run_as_user(&["run", "--name", "fetch", &s.image, "--", "wget", "-q", "-O-", &url]).ok();
    assert_eq!(run.stdout, "from the host\n", "{run:?}");
    assert!(helper_of(&s.env, "fetch").is_empty(), "pasta left after the pod ended");
    // Turned off, the name is gone and the gateway leads nowhere.
    let run = s.env.run_as_user(&["run", "--host-loopback=false", &s.image, "--", "sh", "-c", &format!("cat /etc/hosts; wget -q -T 2 -O- {url}")]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(!run.stdout.contains("host.containers.internal"), "{run:?}");
}

/// A DNS server on the host's 127.0.0.1:53 answering every A query with
/// 10.1.2.3 (and AAAA queries with nothing).
fn host_dns_server() -> Option<UdpSocket> {
    let sock = UdpSocket::bind("127.0.0.1:53").ok()?;
    let server = sock.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = server.recv_from(&mut buf) {
            if n < 12 {
                continue;
            }
            // The question ends after the name's zero label and 4 bytes.
            let mut i = 12;
            while i < n && buf[i] != 0 {
                i += 1 + buf[i] as usize;
            }
            let end = (i + 5).min(n);
            let qtype = u16::from_be_bytes([buf[i + 1], buf[i + 2]]);
            let mut r = buf[..end].to_vec();
            r[2] = 0x81;
            r[3] = 0x80;
            r[6] = 0;
            r[7] = u8::from(qtype == 1);
            r[8..12].fill(0);
            if qtype == 1 {
                r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 1, 2, 3]);
            }
            let _ = server.send_to(&r, from);
        }
    });
    Some(sock)
}

#[test]
fn a_name_resolves_through_a_dns_server_on_the_hosts_loopback() {
    let s = setup();
    let Some(_dns) = host_dns_server() else {
        eprintln!("skipped: 127.0.0.1:53 is taken or needs root");
        return;
    };
    let run = s.env.run_as_user(&["run", &s.image, "--", "nslookup", "build-cache.test", "host.containers.internal"]).ok();
    assert!(run.stdout.contains("10.1.2.3"), "{run:?}");
    // The pod's resolv.conf has servers it can reach.
    let run = s.env.run_as_user(&["run", &s.image, "--", "cat", "/etc/resolv.conf"]).ok();
    assert!(run.stdout.lines().any(|l| l.starts_with("nameserver ") && !l.contains(" 127.")), "{run:?}");
}

#[test]
fn a_published_port_reaches_httpd_in_the_pod_and_sigterm_leaves_no_helper() {
    let s = setup();
    let port = free_port();
    let (mut child, _out) = start_until_ready(
        &s.env,
        &[
            "run", "--name", "web", "-p", &format!("127.0.0.1:{port}:8080"), &s.image, "--",
            "sh", "-c", "mkdir /w && echo served from the pod > /w/index.html && echo ready && exec httpd -f -p 8080 -h /w",
        ],
    );
    assert_eq!(helper_of(&s.env, "web").len(), 1, "one pasta for the pod");
    let mut body = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else { return false };
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = c.write_all(b"GET /index.html HTTP/1.0\r\n\r\n");
            body.clear();
            let _ = c.read_to_string(&mut body);
            body.contains("served from the pod")
        }),
        "no answer through the published port: {body:?}"
    );
    assert_eq!(unsafe { libc::kill(berth_pid(&child), libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(helper_of(&s.env, "web").is_empty(), "pasta left after SIGTERM");
}

#[test]
fn berth_sigkilled_leaves_no_helper() {
    let s = setup();
    let (mut child, _out) = start_until_ready(&s.env, &["run", "--name", "killed", &s.image, "--", "sh", "-c", "echo ready; sleep 1002"]);
    assert_eq!(helper_of(&s.env, "killed").len(), 1, "one pasta for the pod");
    assert_eq!(unsafe { libc::kill(berth_pid(&child), libc::SIGKILL) }, 0);
    let _ = child.wait();
    assert!(wait_until(Duration::from_secs(5), || helper_of(&s.env, "killed").is_empty()), "pasta outlived berth: {:?}", helper_of(&s.env, "killed"));
}

#[test]
fn two_pods_with_sidecars_on_the_same_port_do_not_collide() {
    let s = setup();
    // Each main container fetches its own sidecar's /etc/hostname (the pod name).
    let script = "for i in $(seq 50); do wget -q -O- http://127.0.0.1:8080/hostname && exit 0; sleep 0.1; done; exit 1";
    let start = |name: &str| {
        s.env
            .berth_as_user(&[
                "run", "--name", name, "--sidecar", &format!("web={}", s.image), "--sidecar-cmd", "web=httpd -f -p 8080 -h /etc",
                &s.image, "--", "sh", "-c", script,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (start("pod-a"), start("pod-b"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success(), "{a:?}\n{b:?}");
    assert_eq!(String::from_utf8_lossy(&a.stdout), "pod-a\n");
    assert_eq!(String::from_utf8_lossy(&b.stdout), "pod-b\n");
}

#[test]
fn network_none_cannot_reach_the_host() {
    let s = setup();
    let port = host_http_server("unreachable\n");
    // The address the outbound network reaches the host at.
    let hosts = s.env.run_as_user(&["run", &s.image, "--", "cat", "/etc/hosts"]).ok().stdout;
    let gw = hosts.lines().find(|l| l.ends_with("host.containers.internal")).and_then(|l| l.split_whitespace().next()).unwrap().to_string();
    for network in ["none", "private"] {
        let run = s.env.run_as_user(&[
            "run", "--network", network, &s.image, "--", "sh", "-c",
            &format!("cat /etc/hosts; wget -q -T 2 -O- http://{gw}:{port}/ || wget -q -T 2 -O- http://host.containers.internal:{port}/"),
        ]);
        assert_ne!(run.code, 0, "{run:?}");
        assert!(!run.stdout.contains("unreachable") && !run.stdout.contains("host.containers.internal"), "{run:?}");
    }
}

#[test]
fn proxy_variables_pass_through_unless_turned_off() {
    let mut s = setup();
    s.env.vars.push(("HTTP_PROXY".into(), "http://127.0.0.1:3128".into()));
    s.env.vars.push(("no_proxy".into(), "localhost,.internal".into()));
    let run = s.env.run_as_user(&["run", &s.image, "--", "env"]).ok();
    assert!(run.stdout.contains("HTTP_PROXY=http://host.containers.internal:3128\n"), "{run:?}");
    assert!(run.stdout.contains("no_proxy=localhost,.internal\n"), "{run:?}");
    let run = s.env.run_as_user(&["run", "-e", "HTTP_PROXY=mine", &s.image, "--", "env"]).ok();
    assert!(run.stdout.contains("HTTP_PROXY=mine\n"), "{run:?}");
    let run = s.env.run_as_user(&["run", "--http-proxy=false", &s.image, "--", "env"]).ok();
    assert!(!run.stdout.to_lowercase().contains("proxy"), "{run:?}");
}

#[test]
fn without_pasta_or_slirp4netns_berth_names_the_package() {
    let mut s = setup();
    // Only what berth itself needs on PATH.
    let bin = s.env.root.join("bare-path");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["newuidmap", "newgidmap"] {
        std::os::unix::fs::symlink(format!("/usr/bin/{tool}"), bin.join(tool)).unwrap();
    }
    s.env.vars.push(("PATH".into(), bin.display().to_string()));
    let line = s.env.run_as_user(&["run", &s.image, "--", "true"]).provision_failure();
    assert!(line.contains("passt") && line.contains("--network none"), "{line}");
    s.env.run_as_user(&["run", "--network", "none", &s.image, "--", "true"]).ok();
}

#[test]
fn slirp4netns_serves_where_pasta_is_missing() {
    let mut s = setup();
    let bin = s.env.root.join("slirp-path");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["newuidmap", "newgidmap", "slirp4netns"] {
        std::os::unix::fs::symlink(format!("/usr/bin/{tool}"), bin.join(tool)).unwrap();
    }
    s.env.vars.push(("PATH".into(), bin.display().to_string()));
    let port = host_http_server("through slirp4netns\n");
    let url = format!("http://host.containers.internal:{port}/");
    let run = s.env.run_as_user(&["run", "--name", "slirp", &s.image, "--", "sh", "-c", &format!("wget -q -O- {url} && cat /etc/resolv.conf")]).ok();
    assert!(run.stdout.starts_with("through slirp4netns\n"), "{run:?}");
    assert!(run.stdout.contains("nameserver 10.0.2.3\n"), "{run:?}");
    assert!(helper_of(&s.env, "slirp").is_empty(), "slirp4netns left after the pod ended");
    // Port forwarding is pasta's only.
    let line = s.env.run_as_user(&["run", "-p", "8080:80", &s.image, "--", "true"]).provision_failure();
    assert!(line.contains("passt"), "{line}");
}

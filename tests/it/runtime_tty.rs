//! `berth run -t` and `berth exec -t`, as the unprivileged test user: berth
//! runs on the slave of a real pseudo-terminal opened here (its controlling
//! terminal, as in an interactive shell), and the test plays the user at the
//! master: it reads what appears on the screen, types, and resizes.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

fn setup() -> Served {
    let image = Image::new(vec![Layer::new(&busybox_tar_with(&["tty", "stty"]), Comp::Gzip, false)]);
    Served::start("berth/tty", &image, true)
}

/// The user's side of a terminal that berth runs on.
struct Terminal {
    master: OwnedFd,
    screen: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Terminal {
    /// Starts `cmd` on a new terminal of `rows` x `cols` as its stdin,
    /// stdout and controlling terminal (stderr stays a pipe: berth's logs).
    fn spawn(mut cmd: Command, rows: u16, cols: u16) -> (Terminal, Child) {
        let ws = nix::pty::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        let pty = nix::pty::openpty(Some(&ws), None).unwrap();
        cmd.stdin(Stdio::from(pty.slave.try_clone().unwrap()))
            .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
            .stderr(Stdio::piped());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()?;
                if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop(pty.slave);
        let screen = Arc::new(Mutex::new(Vec::new()));
        let mut file = std::fs::File::from(pty.master.try_clone().unwrap());
        let s = screen.clone();
        // Reads until every slave fd is closed (EIO).
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = file.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        (Terminal { master: pty.master, screen, reader: Some(reader) }, child)
    }

    /// What appeared so far, with the terminal's carriage returns removed.
    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().unwrap()).replace('\r', "")
    }

    fn wait_for(&self, text: &str) {
        assert!(self.appears(text), "{text:?} never appeared; the screen:\n{}", self.screen());
    }

    /// Waits up to 30 s for `text` on the screen.
    fn appears(&self, text: &str) -> bool {
        wait_until(Duration::from_secs(30), || self.screen().contains(text))
    }

    fn type_text(&self, text: &str) {
        nix::unistd::write(&self.master, text.as_bytes()).unwrap();
    }

    fn resize(&self, rows: u16, cols: u16) {
        let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads a winsize; on the master it resizes the
        // pair and signals the slave's foreground process group.
        assert_eq!(unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) }, 0);
    }

    /// Waits for berth and for the terminal to go quiet; returns the exit
    /// code, the screen and berth's stderr.
    fn finish(mut self, mut child: Child) -> (i32, String, String) {
        let mut stderr = String::new();
        child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        let code = child.wait().unwrap().code().unwrap_or(-1);
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        (code, self.screen(), stderr)
    }

    /// The terminal's current modes, as berth left them.
    fn modes(&self) -> nix::sys::termios::Termios {
        nix::sys::termios::tcgetattr(&self.master).unwrap()
    }
}

#[test]
fn run_t_gives_the_main_container_a_terminal_of_berths_size() {
    let s = setup();
    let (term, child) = Terminal::spawn(
        s.env.berth_as_user(&["run", "-t", &s.image, "--", "sh", "-c", "tty; stty size; echo TERM=$TERM; exit 7"]),
        33,
        97,
    );
    let (code, screen, stderr) = term.finish(child);
    assert_eq!(code, 7, "the exit code passes through: {screen}\n{stderr}");
    let lines: Vec<&str> = screen.lines().collect();
    assert!(lines[0].starts_with("/dev/pts/"), "{screen}");
    assert_eq!(&lines[1..], ["33 97", "TERM=xterm"], "{screen}");
}

#[test]
fn run_t_input_resize_and_terminal_restored() {
    let s = setup();
    let script = "echo ready; read a; echo got:$a; stty size; read b; stty size; exit 3";
    let (term, child) = Terminal::spawn(s.env.berth_as_user(&["run", "-t", &s.image, "--", "sh", "-c", script]), 24, 80);
    let cooked = term.modes();
    term.wait_for("ready");
    // berth's terminal is raw while the container runs: no echo, no signals
    // from ^C here (they are the container's terminal's business).
    let raw = term.modes();
    assert!(!raw.local_flags.contains(nix::sys::termios::LocalFlags::ECHO), "berth's terminal is raw");
    assert!(!raw.local_flags.contains(nix::sys::termios::LocalFlags::ISIG));
    term.type_text("hello\r");
    term.wait_for("got:hello\n24 80\n");
    term.resize(40, 120);
    // The resize travels as SIGWINCH to berth and its pod process.
    std::thread::sleep(Duration::from_millis(500));
    term.type_text("x\r");
    term.wait_for("40 120\n");
    let master = term.master.try_clone().unwrap();
    let (code, screen, stderr) = term.finish(child);
    assert_eq!(code, 3, "{screen}\n{stderr}");
    let after = nix::sys::termios::tcgetattr(&master).unwrap();
    assert_eq!(after.local_flags, cooked.local_flags, "berth restored its terminal");
    assert_eq!(after.input_flags, cooked.input_flags);
}

#[test]
fn run_t_with_piped_stdin_ends_with_its_eof() {
    let s = setup();
    // Not a terminal on berth's side: no raw mode, but the container still
    // gets one; the end of berth's input is ^D on it, which ends `cat`.
    let mut cmd = s.env.berth_as_user(&["run", "-t", &s.image, "--", "sh", "-c", "tty; cat; echo done"]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"line one\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // The input is echoed by the container's terminal when it arrives
    // (maybe before `tty` ran), then written by cat, which ends at the ^D.
    assert!(stdout.lines().any(|l| l.starts_with("/dev/pts/")), "{stdout}");
    assert_eq!(stdout.matches("line one\n").count(), 2, "{stdout}");
    assert!(stdout.ends_with("line one\ndone\n"), "{stdout}");
}

#[test]
fn never_a_terminal_unless_asked() {
    let s = setup();
    // Jenkins' case: pipes, no -t.
    let run = s.env.run_as_user(&["run", &s.image, "--", "sh", "-c", "tty; exit 0"]);
    assert_eq!(run.stdout, "not a tty\n", "{run:?}");
    // A pod file's tty: true is honoured for the main container only.
    let pod = s.env.path().join("tty.yaml");
    std::fs::write(
        &pod,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: ttypod\nspec:\n  containers:\n  - name: main\n    image: {img}\n    tty: true\n    command: [sh, -c, 'sleep 0.5; tty; stty size']\n  - name: side\n    image: {img}\n    tty: true\n    command: [sh, -c, 'tty; sleep 30']\n",
            img = s.image
        ),
    )
    .unwrap();
    s.env.chown();
    let (term, child) = Terminal::spawn(s.env.berth_as_user(&["run", "--grace", "0", "--tls-verify=false", "--pod", pod.to_str().unwrap()]), 10, 20);
    let (code, screen, stderr) = term.finish(child);
    assert_eq!(code, 0, "{screen}\n{stderr}");
    let lines: Vec<&str> = screen.lines().collect();
    assert!(lines[0].starts_with("/dev/pts/") && lines[1] == "10 20", "{screen}");
    assert!(stderr.contains("[side] not a tty"), "the sidecar has no terminal: {stderr}");
}

#[test]
fn exec_t_into_a_running_pod() {
    let s = setup();
    let mut main = s
        .env
        .berth_as_user(&["run", "--name", "tp", "--grace", "0", &s.image, "--", "sh", "-c", "echo up; sleep 60"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut up = [0u8; 3];
    main.stdout.take().unwrap().read_exact(&mut up).unwrap();

    let (term, child) = Terminal::spawn(
        s.env.berth_as_user(&["exec", "-t", "tp", "tty", "--", "sh", "-c", "tty; stty size; read a; echo got:$a; exit 4"]),
        21,
        61,
    );
    if !term.appears("21 61\n") {
        let mut child = child;
        let _ = child.kill();
        let (_, screen, stderr) = term.finish(child);
        panic!("exec -t showed no size; screen:\n{screen}\nstderr:\n{stderr}");
    }
    term.type_text("typed\r");
    let (code, screen, stderr) = term.finish(child);
    assert_eq!(code, 4, "{screen}\n{stderr}");
    assert!(screen.starts_with("/dev/pts/"), "{screen}");
    assert!(screen.contains("got:typed\n"), "{screen}");

    // Without -t, an exec has berth's stdio: here pipes, no terminal.
    // (The main container is named after its image: `tty`.)
    let out = s.env.berth_as_user(&["exec", "tp", "tty", "--", "tty"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "not a tty\n");
    assert_eq!(out.status.code(), Some(1));

    s.env.run_as_user(&["stop", "tp"]);
    let _ = main.wait();
}

#[test]
fn ctrl_c_goes_to_the_containers_terminal() {
    let s = setup();
    // ^C typed into berth's raw terminal is a byte for the container's
    // terminal, whose line discipline echoes it and interrupts its
    // foreground group: `sleep` dies of SIGINT and the shell ends with 130.
    // Through berth's own (cooked) terminal it would instead be SIGINT to
    // berth, forwarded to sh, PID 1 of its container, which ignores it.
    let script = "echo ready; sleep 30; echo after";
    let (term, child) = Terminal::spawn(s.env.berth_as_user(&["run", "-t", &s.image, "--", "sh", "-c", script]), 24, 80);
    term.wait_for("ready\n");
    let t = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    term.type_text("\x03");
    let (code, screen, stderr) = term.finish(child);
    assert!(t.elapsed() < Duration::from_secs(15), "^C did not interrupt sleep: {screen}");
    assert_eq!(code, 130, "{screen}\n{stderr}");
    assert!(screen.contains("ready\n^C"), "echoed by the container's terminal: {screen}");
    assert!(!screen.contains("after"), "{screen}");
}

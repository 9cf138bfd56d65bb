//! Reaping: the pod process is PID 1 of its PID namespace, so every child
//! that ends (containers, probe commands, orphans) is waited for here, on
//! SIGCHLD, with its status and peak RSS recorded.

use nix::unistd::Pid;

use super::Pod;

impl Pod {
    /// Reaps every exited child, recording statuses and peak RSS.
    pub(super) fn reap(&mut self) {
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: rusage is plain data filled by the kernel.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: valid pointers; WNOHANG never blocks.
            let r = unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, &mut ru) };
            if r <= 0 {
                return;
            }
            let pid = Pid::from_raw(r);
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status) as u8
            } else if libc::WIFSIGNALED(status) {
                128u8.wrapping_add(libc::WTERMSIG(status) as u8)
            } else {
                continue;
            };
            if let Some(m) = self.members.iter_mut().find(|m| m.pid == Some(pid)) {
                tracing::debug!("{} exited with {code}", m.name);
                m.exit = Some(code);
                m.max_rss_kib = ru.ru_maxrss.max(0) as u64;
            } else {
                self.others.insert(pid, code);
            }
        }
    }
}

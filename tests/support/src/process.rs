//! Child processes of the plane and the tests: each in a process group of its own, killed
//! with its parent.
//!
//! Every child is forked from one thread that lives as long as the test process: a child's
//! parent-death signal (SIGKILL) follows the thread that forked it, not the process, and the
//! threads of a tokio runtime come and go (`block_in_place` hands a worker thread to the
//! blocking pool, which ends it once idle), which used to kill children of unrelated tests.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

/// A command to fork, and where the forked child (or the error) goes.
type Fork = (Command, mpsc::Sender<std::io::Result<Child>>);

/// The forking thread's inbox; the thread is started on first use and never ends.
fn forker() -> &'static Mutex<mpsc::Sender<Fork>> {
    static FORKER: OnceLock<Mutex<mpsc::Sender<Fork>>> = OnceLock::new();
    FORKER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Fork>();
        std::thread::Builder::new()
            .name("child-forker".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| eprintln!("cannot start the forking thread: {e}"));
        Mutex::new(tx)
    })
}

/// Forks `cmd` from the long-lived forking thread.
fn fork(cmd: Command) -> Result<Child> {
    let (reply, answer) = mpsc::channel();
    forker()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .send((cmd, reply))
        .map_err(|_| anyhow!("the forking thread has stopped"))?;
    Ok(answer.recv().map_err(|_| anyhow!("the forking thread has stopped"))??)
}

/// A running component. Stopped by PID: never by name, never a whole group we did not make.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    /// Starts `bin args` with stdout and stderr to `<log_dir>/<name>.log`, in its own
    /// process group (so a terminal's Ctrl-C reaches only the harness, which stops it), and
    /// with SIGKILL as its parent-death signal (forked from the long-lived forking thread).
    pub fn spawn(name: &str, bin: &Path, args: &[String], log_dir: &Path) -> Result<Proc> {
        Self::spawn_with_env(name, bin, args, log_dir, &[])
    }

    /// [`Proc::spawn`] with extra environment variables.
    pub fn spawn_with_env(
        name: &str,
        bin: &Path,
        args: &[String],
        log_dir: &Path,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<Proc> {
        let log = File::create(log_dir.join(format!("{name}.log")))?;
        let mut cmd = Command::new(bin);
        cmd.args(args).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).process_group(0);
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() == 1 {
                    return Err(std::io::Error::other("parent already exited"));
                }
                Ok(())
            });
        }
        let child = fork(cmd).with_context(|| format!("starting {}", bin.display()))?;
        Ok(Proc { name: name.to_string(), child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited (with its status).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends a signal (SIGTERM, SIGKILL, ...) to the process.
    pub fn signal(&self, sig: libc::c_int) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: signals our own child by PID.
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; waits until it is gone.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        let pid = libc::pid_t::try_from(self.child.id()).unwrap_or(0);
        if pid > 0 {
            // SAFETY: signals our own child by PID.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

//! Starting plane components again from a thread that lives as long as the plane: a
//! process's parent-death signal follows the thread that spawned it, and a test's runtime
//! thread may end long before the plane.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::process::Proc;

type Respawn = (String, PathBuf, Vec<String>, PathBuf, std::sync::mpsc::Sender<Result<Proc>>);

/// A thread that spawns processes on request.
pub struct Respawner {
    tx: Option<std::sync::mpsc::Sender<Respawn>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Respawner {
    pub fn start() -> Respawner {
        let (tx, rx) = std::sync::mpsc::channel::<Respawn>();
        let thread = std::thread::spawn(move || {
            for (log_name, bin, args, dir, reply) in rx {
                let _ = reply.send(Proc::spawn(&log_name, &bin, &args, &dir));
            }
        });
        Respawner { tx: Some(tx), thread: Some(thread) }
    }

    pub fn spawn(&self, log_name: &str, bin: PathBuf, args: Vec<String>, dir: PathBuf) -> Result<Proc> {
        let (reply, answer) = std::sync::mpsc::channel();
        let tx = self.tx.as_ref().context("the respawner has stopped")?;
        tx.send((log_name.to_string(), bin, args, dir, reply)).context("the respawner has stopped")?;
        answer.recv().context("the respawner has stopped")?
    }

    /// Ends the thread (after the processes it started are stopped).
    pub fn stop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

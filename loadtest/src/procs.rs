//! Child processes that cannot outlive the harness: each is killed (SIGTERM, then SIGKILL) and
//! reaped when its guard drops, also on panic.

use std::io;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// A running child; dropped → terminated and reaped.
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
}

impl ChildGuard {
    /// Spawns `cmd`, naming it `name` in messages.
    pub fn spawn(name: &str, cmd: &mut Command) -> io::Result<Self> {
        let child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("starting {name}: {e}")))?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
        })
    }

    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child itself (to take its stdout, say).
    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// Exited already? (`Some(status)` if so.)
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => c.try_wait(),
            None => Ok(None),
        }
    }

    /// Waits up to `limit` for the child to exit by itself; kills it after that.
    pub fn wait_bounded(&mut self, limit: Duration) -> io::Result<ExitStatus> {
        let Some(child) = self.child.as_mut() else {
            return Err(io::Error::other(format!(
                "{} was already reaped",
                self.name
            )));
        };
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait()? {
                self.child = None;
                return Ok(st);
            }
            if start.elapsed() >= limit {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop();
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{} did not finish within {limit:?}; killed", self.name),
        ))
    }

    /// SIGTERM, up to 2 s grace, then SIGKILL; reaps the child.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) on the pid of a child we have not reaped yet, so the pid cannot have
            // been reused by another process.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

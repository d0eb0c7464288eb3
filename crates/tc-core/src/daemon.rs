//! Running in the background (`-d`) and the pid file (`-P`), for both binaries.
//!
//! Order in a binary: [`detach`] first (the process goes on in a child that is already in a
//! new session, while the parent waits), then every start-up step that can fail (sockets,
//! captures, intercepts, [`PidFile::create`]: the pid written is the daemon's), then
//! [`Detached::ready`]. Only then does the parent exit, with status 0; a start-up step that
//! fails makes the child print its error on the still attached terminal and exit non-zero,
//! and the parent exits with the child's status. Keep the [`PidFile`] alive until exit:
//! dropping it removes the file.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The daemon side of [`detach`]: tells the waiting parent that start-up succeeded.
#[derive(Debug)]
pub struct Detached {
    /// Write end of the pipe the parent reads.
    notify: OwnedFd,
}

/// Forks. The parent waits until the child calls [`Detached::ready`] (then exits 0) or ends
/// (then exits with the child's status: a failed start gives a non-zero exit). The child,
/// which returns, starts a new session; its stdin, stdout and stderr stay as they are until
/// [`Detached::ready`], so start-up errors reach the terminal. Signal dispositions are left
/// alone (SIGHUP is the binaries' business). Call while the process has a single thread.
pub fn detach() -> io::Result<Detached> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into our array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(os_error("pipe"));
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: single-threaded at this point (documented contract); the parent only reads the
    // pipe, waits for the child and calls _exit; the child goes on with its own descriptors.
    let pid = unsafe { libc::fork() };
    if pid == -1 {
        return Err(os_error("fork"));
    }
    if pid > 0 {
        drop(write);
        let mut byte = [0u8; 1];
        let n = loop {
            // SAFETY: reads at most one byte into our buffer from a descriptor we own.
            let n = unsafe { libc::read(read.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
            if n == -1 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break n;
        };
        if n == 1 {
            // SAFETY: ends the parent without running anything of the child's state.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        let code = if waited == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) != 0 {
            libc::WEXITSTATUS(status)
        } else {
            1
        };
        // SAFETY: as above.
        unsafe { libc::_exit(code) };
    }
    drop(read);
    // SAFETY: plain syscall on our own process.
    if unsafe { libc::setsid() } == -1 {
        return Err(os_error("setsid"));
    }
    Ok(Detached { notify: write })
}

impl Detached {
    /// Start-up is complete: puts stdin, stdout and stderr on /dev/null and lets the parent
    /// exit 0.
    pub fn ready(self) -> io::Result<()> {
        // SAFETY: plain syscalls on descriptors of our own process.
        unsafe {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            if null < 0 {
                return Err(os_error("cannot open /dev/null"));
            }
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
            if libc::write(self.notify.as_raw_fd(), [1u8].as_ptr().cast(), 1) != 1 {
                return Err(os_error("cannot notify the parent"));
            }
        }
        Ok(())
    }
}

fn os_error(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("pid file {} names process {pid}, which is running (another instance?)", path.display())]
    Running { path: PathBuf, pid: i32 },
    #[error("cannot write pid file {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// A pid file holding this process's id and a newline; removed when dropped.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Creates `path` exclusively (`O_EXCL`) with our pid. An existing file naming a running
    /// process is refused; one naming no running process (stale, or not a pid at all) is
    /// replaced.
    pub fn create(path: &Path) -> Result<PidFile, PidFileError> {
        let io_err = |source| PidFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        // A few rounds: another process may remove or create the file between our steps.
        for _ in 0..3 {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(path)
            {
                Ok(mut f) => {
                    let written = writeln!(f, "{}", std::process::id()).and_then(|_| f.sync_all());
                    if let Err(e) = written {
                        let _ = std::fs::remove_file(path);
                        return Err(io_err(e));
                    }
                    return Ok(PidFile {
                        path: path.to_path_buf(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let text = match std::fs::read_to_string(path) {
                        Ok(t) => t,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(io_err(e)),
                    };
                    if let Some(pid) = running_pid(&text) {
                        return Err(PidFileError::Running {
                            path: path.to_path_buf(),
                            pid,
                        });
                    }
                    log::warn!(
                        "pid file {} is stale ({:?}): replaced",
                        path.display(),
                        text.trim()
                    );
                    match std::fs::remove_file(path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io_err(e)),
                    }
                }
                Err(e) => return Err(io_err(e)),
            }
        }
        Err(io_err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the file keeps being recreated by another process",
        )))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The pid in a pid file's text when it names a running process.
fn running_pid(text: &str) -> Option<i32> {
    let pid: i32 = text.trim().parse().ok()?;
    if pid <= 0 {
        return None;
    }
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let alive = unsafe { libc::kill(pid, 0) } == 0
        || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    alive.then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("tc-core-pid-{}-{name}", std::process::id()))
    }

    #[test]
    fn created_exclusively_and_removed_on_drop() {
        let path = temp_path("fresh");
        let _ = std::fs::remove_file(&path);
        let pid = PidFile::create(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        // Our own pid is a running process: a second instance is refused.
        match PidFile::create(&path) {
            Err(PidFileError::Running { pid: p, .. }) => assert_eq!(p, std::process::id() as i32),
            other => panic!("{other:?}"),
        }
        drop(pid);
        assert!(!path.exists());
    }

    #[test]
    fn live_pid_refused_with_a_clear_error() {
        let path = temp_path("live");
        // pid 1 always runs.
        std::fs::write(&path, "1\n").unwrap();
        let e = PidFile::create(&path).unwrap_err();
        assert!(e.to_string().contains("process 1"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn stale_or_garbage_replaced() {
        for (name, old) in [
            ("stale", "2147483646\n"),
            ("garbage", "not a pid"),
            ("empty", ""),
        ] {
            let path = temp_path(name);
            std::fs::write(&path, old).unwrap();
            let pid = PidFile::create(&path).unwrap();
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                format!("{}\n", std::process::id()),
                "{name}"
            );
            drop(pid);
            assert!(!path.exists());
        }
    }

    #[test]
    fn unwritable_place_is_an_io_error() {
        let e = PidFile::create(Path::new("/nonexistent-dir/x.pid")).unwrap_err();
        assert!(matches!(e, PidFileError::Io { .. }), "{e:?}");
    }
}

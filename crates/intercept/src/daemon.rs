//! `-d`: detach from the terminal (once the listener and captures are open), and `-P`.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};

/// Forks; the parent exits 0 at once, the child starts a new session with stdin, stdout and
/// stderr on /dev/null. SIGHUP is ignored. Call before creating threads or the event loop.
pub fn daemonize() -> anyhow::Result<()> {
    // SAFETY: single-threaded at this point; the child only continues with plain Rust code.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        match libc::fork() {
            -1 => bail!("fork failed: {}", std::io::Error::last_os_error()),
            0 => {}
            _ => libc::_exit(0),
        }
        if libc::setsid() == -1 {
            bail!("setsid failed: {}", std::io::Error::last_os_error());
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null < 0 {
            bail!("cannot open /dev/null: {}", std::io::Error::last_os_error());
        }
        for fd in 0..3 {
            libc::dup2(null, fd);
        }
        if null > 2 {
            libc::close(null);
        }
    }
    Ok(())
}

/// Writes our pid (and a newline) to `path`.
pub fn write_pid_file(path: &Path) -> anyhow::Result<()> {
    let mut f = std::fs::File::create(path)
        .with_context(|| format!("cannot create pid file {}", path.display()))?;
    writeln!(f, "{}", std::process::id())
        .with_context(|| format!("cannot write pid file {}", path.display()))?;
    Ok(())
}

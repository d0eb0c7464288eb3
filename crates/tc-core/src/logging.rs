//! Log lines like the original's: `YYYY/MM/DD HH:MM:SS +mmm [level] message`, local time,
//! level filter from `RUST_LOG` (default `info`), to stderr or an appended file. Shared by
//! both binaries; only the name of the info level differs (tcpcopy says `notice`).
//!
//! Log rotation: after [`reopen_on_sighup`], a SIGHUP makes the next line reopen the log file
//! by its path (logrotate moves the file, then signals; nothing is lost or written to the
//! moved file after the signal).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LogInitError {
    #[error("Open log file:{} error: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("logger already installed")]
    AlreadyInstalled,
}

/// `2024/11/24 15:05:43 +123` for the current local time.
pub fn timestamp() -> String {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: plain libc calls on stack values; localtime_r writes into our zeroed tm.
    let (ok, tm) = unsafe {
        libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts);
        let mut tm: libc::tm = std::mem::zeroed();
        let ok = !libc::localtime_r(&ts.tv_sec, &mut tm).is_null();
        (ok, tm)
    };
    if !ok {
        return format!("{}", ts.tv_sec);
    }
    format!(
        "{:04}/{:02}/{:02} {:02}:{:02}:{:02} +{:03}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        ts.tv_nsec / 1_000_000
    )
}

/// Installs the logger; `info_name` is how the info level is written (`info`, `notice`).
/// A log file that cannot be opened is an error (the caller exits).
pub fn init(file: Option<&Path>, info_name: &'static str) -> Result<(), LogInitError> {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    builder.format(move |buf, record| {
        let level = match record.level() {
            log::Level::Error => "error",
            log::Level::Warn => "warn",
            log::Level::Info => info_name,
            log::Level::Debug => "debug",
            log::Level::Trace => "trace",
        };
        writeln!(buf, "{} [{level}] {}", timestamp(), record.args())
    });
    if let Some(path) = file {
        let f = open_log(path).map_err(|source| LogInitError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        builder.target(env_logger::Target::Pipe(Box::new(LogFile {
            path: path.to_path_buf(),
            file: f,
            reopen: reopen_flag().clone(),
        })));
    } else {
        builder.target(env_logger::Target::Stderr);
    }
    builder
        .try_init()
        .map_err(|_| LogInitError::AlreadyInstalled)
}

fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(path)
}

/// Set by SIGHUP (after [`reopen_on_sighup`]): the log file is reopened before the next line.
fn reopen_flag() -> &'static Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// From now on SIGHUP reopens the log file (`-l`) before the next line is written, instead of
/// ending the process; without a log file it does nothing. Other handlers of SIGHUP (an
/// event loop's) still see the signal.
pub fn reopen_on_sighup() -> io::Result<()> {
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reopen_flag().clone()).map(|_| ())
}

/// The log file: reopened by its path once SIGHUP has set `reopen`. If reopening fails the
/// old file is kept (and retried at the next SIGHUP).
struct LogFile {
    path: PathBuf,
    file: File,
    reopen: Arc<AtomicBool>,
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.reopen.swap(false, Ordering::Relaxed) {
            if let Ok(f) = open_log(&self.path) {
                self.file = f;
            }
        }
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Rate limit for a log line that may repeat for every packet or event: at most `burst` lines
/// in a window of `period` (a window opens with the first line after the previous one ended);
/// the lines beyond are suppressed and counted, and the next line allowed says how many.
///
/// Time is a [`Duration`] since any fixed origin the caller keeps (a start `Instant`, or a
/// virtual clock in tests).
#[derive(Debug, Clone)]
pub struct RateLimit {
    period: Duration,
    burst: u32,
    window_start: Option<Duration>,
    used: u32,
    suppressed: u64,
}

impl RateLimit {
    /// `burst` lines (at least 1) per `period`.
    pub fn new(period: Duration, burst: u32) -> RateLimit {
        RateLimit {
            period,
            burst: burst.max(1),
            window_start: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// `Some(lines suppressed since the last allowed one)` when a line may be written at
    /// `now`; `None` when it must be left out (it is counted).
    pub fn allow(&mut self, now: Duration) -> Option<u64> {
        let in_window = self
            .window_start
            .is_some_and(|start| now.saturating_sub(start) < self.period);
        if !in_window {
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used < self.burst {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RateLimit;
    use std::time::Duration;

    #[test]
    fn rate_limit_one_per_period() {
        let mut l = RateLimit::new(Duration::from_secs(1), 1);
        let t0 = Duration::from_secs(5);
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0), None);
        assert_eq!(l.allow(t0 + Duration::from_millis(10)), None);
        assert_eq!(l.allow(t0 + Duration::from_secs(2)), Some(2));
        assert_eq!(l.allow(t0 + Duration::from_millis(2500)), None);
    }

    #[test]
    fn rate_limit_burst() {
        let mut l = RateLimit::new(Duration::from_secs(1), 3);
        let t0 = Duration::ZERO;
        for _ in 0..3 {
            assert_eq!(l.allow(t0), Some(0));
        }
        assert_eq!(l.allow(t0 + Duration::from_millis(999)), None);
        assert_eq!(l.allow(t0 + Duration::from_millis(999)), None);
        assert_eq!(l.allow(t0 + Duration::from_secs(1)), Some(2));
        assert_eq!(l.allow(t0 + Duration::from_secs(1)), Some(0));
    }
    #[test]
    fn timestamp_shape() {
        let t = super::timestamp();
        // YYYY/MM/DD HH:MM:SS +mmm
        assert_eq!(t.len(), 24, "{t}");
        let b = t.as_bytes();
        assert_eq!(
            (b[4], b[7], b[10], b[13], b[16], b[19], b[20]),
            (b'/', b'/', b' ', b':', b':', b' ', b'+')
        );
    }
}

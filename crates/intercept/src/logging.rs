//! Log lines like the original's: `YYYY/MM/DD HH:MM:SS +mmm [level] message`, local time,
//! level filter from `RUST_LOG` (default `info`), to stderr or an appended file.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;

/// `2024/11/24 15:05:43 +123` for the current local time.
pub fn timestamp() -> String {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: plain libc calls on stack values.
    let tm = unsafe {
        libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts);
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&ts.tv_sec, &mut tm);
        tm
    };
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

fn level_name(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "error",
        log::Level::Warn => "warn",
        log::Level::Info => "info",
        log::Level::Debug => "debug",
        log::Level::Trace => "trace",
    }
}

/// Installs the logger. A log file that cannot be opened is an error (the caller exits).
pub fn init(file: Option<&Path>) -> anyhow::Result<()> {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    builder.format(|buf, record| {
        writeln!(
            buf,
            "{} [{}] {}",
            timestamp(),
            level_name(record.level()),
            record.args()
        )
    });
    if let Some(path) = file {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o644)
            .open(path)
            .with_context(|| format!("Open log file:{} error", path.display()))?;
        builder.target(env_logger::Target::Pipe(Box::new(f)));
    } else {
        builder.target(env_logger::Target::Stderr);
    }
    builder.try_init().context("logger already installed")?;
    Ok(())
}

#[cfg(test)]
mod tests {
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

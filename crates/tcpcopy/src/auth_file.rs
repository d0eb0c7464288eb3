//! `--auth-file`: the `user:password` file of database logins (see `tc_core::auth`). It is
//! read once at start-up and only if it is private to its owner: a regular file owned by the
//! user tcpcopy runs as, with no permission for group or others (mode 0600 or 0400). Errors
//! never show the file's contents.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use tc_core::auth::Credentials;

/// Larger files are refused (a list of logins, not a dump).
const MAX_LEN: u64 = 1 << 20;

pub fn load(path: &Path) -> Result<Credentials, String> {
    let shown = path.display();
    let mut f = File::open(path).map_err(|e| format!("--auth-file {shown}: {e}"))?;
    // Checked on the open file, so what is read is what was checked.
    let meta = f
        .metadata()
        .map_err(|e| format!("--auth-file {shown}: {e}"))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    check(meta.is_file(), meta.uid(), meta.mode(), euid, meta.len())
        .map_err(|why| format!("--auth-file {shown}: {why}"))?;
    let mut text = String::new();
    f.read_to_string(&mut text)
        .map_err(|e| format!("--auth-file {shown}: {e}"))?;
    Credentials::parse(&text).map_err(|e| format!("--auth-file {shown}: {e}"))
}

/// Whether a file with these properties may hold passwords.
fn check(regular: bool, uid: u32, mode: u32, euid: u32, len: u64) -> Result<(), String> {
    if !regular {
        return Err("not a regular file".into());
    }
    if uid != euid {
        return Err(format!(
            "owned by uid {uid}, not by the user tcpcopy runs as (uid {euid}); the file holds passwords"
        ));
    }
    if mode & 0o077 != 0 {
        return Err(format!(
            "mode {:04o} lets group or others read or change it; it holds passwords: chmod 600 it",
            mode & 0o7777
        ));
    }
    if len > MAX_LEN {
        return Err(format!("larger than {MAX_LEN} bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_private_files() {
        assert!(check(true, 0, 0o100600, 0, 10).is_ok());
        assert!(check(true, 1000, 0o100400, 1000, 10).is_ok());
        assert!(check(true, 1000, 0o100644, 1000, 10)
            .unwrap_err()
            .contains("0644"));
        assert!(check(true, 1000, 0o100620, 1000, 10).is_err());
        assert!(check(true, 0, 0o100600, 1000, 10)
            .unwrap_err()
            .contains("owned by uid 0"));
        assert!(check(false, 0, 0o040700, 0, 10).is_err());
        assert!(check(true, 0, 0o100600, 0, MAX_LEN + 1).is_err());
    }

    #[test]
    fn load_refuses_a_readable_file_and_never_shows_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tcpcopy-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("auth");
        std::fs::write(&p, "bench:hunter2\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load(&p).unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = load(&p).unwrap();
        assert_eq!(c.password("bench"), Some(&b"hunter2"[..]));
        std::fs::write(&p, "bench hunter2\n").unwrap();
        let e = load(&p).unwrap_err();
        assert!(!e.contains("hunter2") && e.contains("line 1"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

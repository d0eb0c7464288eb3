//! The documentation a system tool ships, generated from a binary's clap command so it never
//! drifts from `-h`: a man page (section 8) and bash, zsh and fish completions. Both binaries
//! call [`generate`] for their hidden `--generate-docs <dir>`; scripts/package.sh installs the
//! files it writes.

use std::io;
use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// What a man page adds to the clap command.
pub struct ManExtras<'a> {
    /// The implementation and its version, for the footer (e.g. "tcpcopy-rs 0.1.0").
    pub package: &'a str,
    /// Pages for SEE ALSO, e.g. `["intercept(8)"]`.
    pub see_also: &'a [&'a str],
}

/// Writes `<name>.8`, `<name>.bash`, `_<name>` (zsh) and `<name>.fish` for `cmd` into `dir`
/// (created if missing) and returns their paths. The command's `after_help` (examples, laid out
/// by hand for `-h`) becomes an EXAMPLES section kept verbatim. The man page is dated by
/// `SOURCE_DATE_EPOCH` when set (reproducible builds), else today.
pub fn generate(
    mut cmd: clap::Command,
    extras: &ManExtras,
    dir: &Path,
) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let name = cmd.get_name().to_string();
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    let examples = cmd.get_after_help().map(|h| h.to_string());
    let man = clap_mangen::Man::new(cmd.clone().after_help(None::<&str>))
        .title(name.to_uppercase())
        .section("8")
        .date(iso_date(epoch))
        .source(extras.package)
        .manual("System Administration");
    let mut page = Vec::new();
    man.render(&mut page)?;
    let mut more = roff::Roff::new();
    if let Some(text) = examples {
        more.control("SH", ["EXAMPLES"]).control("nf", []);
        for line in text.lines() {
            more.text([roff::roman(line)]);
        }
        more.control("fi", []);
    }
    if !extras.see_also.is_empty() {
        more.control("SH", ["SEE ALSO"])
            .text([roff::roman(extras.see_also.join(", "))]);
    }
    more.to_writer(&mut page)?;
    let man_path = dir.join(man.get_filename());
    std::fs::write(&man_path, page)?;
    let mut written = vec![man_path];
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        written.push(clap_complete::generate_to(shell, &mut cmd, &name, dir)?);
    }
    Ok(written)
}

/// `YYYY-MM-DD` (UTC) of a Unix time (the proleptic Gregorian calendar, days to civil date).
fn iso_date(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64 + 719_468; // days since 0000-03-01
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153; // month counted from March
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(iso_date(0), "1970-01-01");
        assert_eq!(iso_date(951_782_400), "2000-02-29");
        assert_eq!(iso_date(951_868_799), "2000-02-29");
        assert_eq!(iso_date(951_868_800), "2000-03-01");
        assert_eq!(iso_date(1_704_067_199), "2023-12-31");
        assert_eq!(iso_date(4_107_542_400), "2100-03-01");
    }

    #[test]
    fn writes_a_man_page_and_three_completions() {
        let dir = std::env::temp_dir().join(format!("tc-docs-{}", std::process::id()));
        let cmd = clap::Command::new("demo")
            .about("does demo things")
            .arg(clap::Arg::new("port").short('p').help("the port to use"))
            .after_help("Example:\n  demo -p 'x'\n      does x");
        let extras = ManExtras {
            package: "tcpcopy-rs 0.0.0",
            see_also: &["other(8)"],
        };
        let files = generate(cmd, &extras, &dir).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        let man = std::fs::read_to_string(dir.join("demo.8")).unwrap();
        let bash = std::fs::read_to_string(dir.join("demo.bash")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(names, ["demo.8", "demo.bash", "_demo", "demo.fish"]);
        assert!(man.starts_with(".ie"), "{man}");
        // Every field of the title line present (an empty date would shift the others).
        let title = man.lines().find(|l| l.starts_with(".TH ")).unwrap();
        let rest = title.strip_prefix(".TH DEMO 8 ").expect(title);
        let (date, footer) = rest.split_once(' ').expect(title);
        assert!(
            date.len() == 10 && date.chars().filter(|c| *c == '-').count() == 2,
            "{title}"
        );
        assert_eq!(footer, "\"tcpcopy-rs 0.0.0\" \"System Administration\"");
        assert!(man.contains("the port to use"), "{man}");
        // The examples verbatim (no filling), apostrophes kept as apostrophes.
        assert!(
            man.contains(
                ".SH EXAMPLES\n.nf\nExample:\n  demo \\-p \\*(Aqx\\*(Aq\n      does x\n.fi\n"
            ),
            "{man}"
        );
        assert!(man.contains(".SH \"SEE ALSO\"\nother(8)\n"), "{man}");
        assert!(bash.contains("-p"), "{bash}");
    }
}

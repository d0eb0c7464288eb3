//! The Prometheus text exposition format 0.0.4, written by hand: for every family a `# HELP`
//! and a `# TYPE` line, then its samples, `name{label="value",...} value`.
//!
//! Values are read by the caller at scrape time and handed in; nothing is registered or kept
//! between scrapes. Names are checked (metric names `[a-zA-Z_:][a-zA-Z0-9_:]*`, label names
//! `[a-zA-Z_][a-zA-Z0-9_]*` and not `__`-prefixed); a counter's name must end in `_total`
//! (the convention `promtool check metrics` enforces). A family or sample that breaks a rule,
//! repeats a name or label set, or gives a counter a negative or NaN value is left out and
//! the reason kept in [`Exposition::problems`]: a scrape never fails as a whole.

use std::collections::HashSet;
use std::fmt::Write as _;

/// The kind of a family, as written on its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets at a restart); name ends in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A sample value: integers are written exactly, floats as Go's parser reads them (`NaN`,
/// `+Inf`, `-Inf`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(i128),
    Float(f64),
}

macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Value {
                Value::Int(i128::from(v))
            }
        }
    )*};
}
int_value!(u8, u16, u32, u64, i8, i16, i32, i64);

impl From<usize> for Value {
    fn from(v: usize) -> Value {
        Value::Int(v as i128)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}

impl Value {
    fn is_valid_for(self, kind: Kind) -> bool {
        match (kind, self) {
            (Kind::Gauge, _) => true,
            (Kind::Counter, Value::Int(v)) => v >= 0,
            (Kind::Counter, Value::Float(v)) => v >= 0.0,
        }
    }

    fn write(self, out: &mut String) {
        match self {
            Value::Int(v) => {
                let _ = write!(out, "{v}");
            }
            Value::Float(v) if v.is_nan() => out.push_str("NaN"),
            Value::Float(v) if v == f64::INFINITY => out.push_str("+Inf"),
            Value::Float(v) if v == f64::NEG_INFINITY => out.push_str("-Inf"),
            Value::Float(v) => {
                let _ = write!(out, "{v}");
            }
        }
    }
}

/// Builds one scrape's text. Families are written in the order they are added.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
    names: HashSet<String>,
    problems: Vec<String>,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// A counter family with one unlabelled sample.
    pub fn counter(&mut self, name: &str, help: &str, value: impl Into<Value>) -> &mut Self {
        self.family(name, help, Kind::Counter).sample(&[], value);
        self
    }

    /// A gauge family with one unlabelled sample.
    pub fn gauge(&mut self, name: &str, help: &str, value: impl Into<Value>) -> &mut Self {
        self.family(name, help, Kind::Gauge).sample(&[], value);
        self
    }

    /// Starts a family; add its samples (labelled or not) on the returned value. A family
    /// with an invalid or repeated name is left out whole, samples included.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) -> Family<'_> {
        let refused = if !is_metric_name(name) {
            Some("is not a valid metric name")
        } else if kind == Kind::Counter && !name.ends_with("_total") {
            Some("is a counter whose name does not end in _total")
        } else if !self.names.insert(name.to_string()) {
            Some("is repeated")
        } else {
            None
        };
        if let Some(why) = refused {
            self.problems
                .push(format!("family {name:?} {why}: left out"));
        } else {
            self.out.push_str("# HELP ");
            self.out.push_str(name);
            self.out.push(' ');
            escape_into(&mut self.out, help, false);
            self.out.push_str("\n# TYPE ");
            self.out.push_str(name);
            self.out.push(' ');
            self.out.push_str(kind.as_str());
            self.out.push('\n');
        }
        Family {
            exp: self,
            name: name.to_string(),
            kind,
            ok: refused.is_none(),
            label_sets: HashSet::new(),
        }
    }

    /// Why families or samples were left out so far (empty when all went in).
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// The text, ready to serve as `text/plain; version=0.0.4`.
    pub fn finish(self) -> String {
        self.out
    }
}

/// One family being written; samples follow its HELP and TYPE lines.
pub struct Family<'a> {
    exp: &'a mut Exposition,
    name: String,
    kind: Kind,
    ok: bool,
    label_sets: HashSet<String>,
}

impl Family<'_> {
    /// Adds a sample with these labels (`&[]` for none). Left out, with the reason in
    /// [`Exposition::problems`], if a label name is invalid or repeated, the label set was
    /// already used in this family, or the value does not suit the kind.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<Value>) -> &mut Self {
        if !self.ok {
            return self;
        }
        let value = value.into();
        let mut text = String::new();
        let mut problem = None;
        if !labels.is_empty() {
            text.push('{');
            for (i, (lname, lvalue)) in labels.iter().enumerate() {
                if !is_label_name(lname) {
                    problem = Some(format!("label name {lname:?} is not valid"));
                } else if labels[..i].iter().any(|(other, _)| other == lname) {
                    problem = Some(format!("label {lname:?} is repeated"));
                }
                if i > 0 {
                    text.push(',');
                }
                text.push_str(lname);
                text.push_str("=\"");
                escape_into(&mut text, lvalue, true);
                text.push('"');
            }
            text.push('}');
        }
        if problem.is_none() && !value.is_valid_for(self.kind) {
            problem = Some(format!("value {value:?} is not valid for a counter"));
        }
        if problem.is_none() && !self.label_sets.insert(text.clone()) {
            problem = Some(format!("label set {text} is repeated"));
        }
        match problem {
            Some(why) => self
                .exp
                .problems
                .push(format!("sample of {}: {why}: left out", self.name)),
            None => {
                let out = &mut self.exp.out;
                out.push_str(&self.name);
                out.push_str(&text);
                out.push(' ');
                value.write(out);
                out.push('\n');
            }
        }
        self
    }
}

/// Help text escapes `\` and newline; label values also `"`.
fn escape_into(out: &mut String, s: &str, quote: bool) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    !s.starts_with("__")
        && matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_counters_gauges_and_labels() {
        let mut e = Exposition::new();
        e.counter(
            "tcpcopy_packets_sent_total",
            "Packets sent to the target.",
            42u64,
        )
        .gauge(
            "tcpcopy_sessions_active",
            "Sessions being replayed.",
            3usize,
        );
        e.family(
            "intercept_records_total",
            "Response records sent, by peer.",
            Kind::Counter,
        )
        .sample(&[("peer", "10.0.0.1:5000")], 7u64)
        .sample(&[("peer", "10.0.0.2:5000"), ("variant", "payload")], 0u64);
        e.gauge("tcpcopy_replay_lag_seconds", "Replay lag.", 0.25);
        assert!(e.problems().is_empty(), "{:?}", e.problems());
        assert_eq!(
            e.finish(),
            "# HELP tcpcopy_packets_sent_total Packets sent to the target.\n\
             # TYPE tcpcopy_packets_sent_total counter\n\
             tcpcopy_packets_sent_total 42\n\
             # HELP tcpcopy_sessions_active Sessions being replayed.\n\
             # TYPE tcpcopy_sessions_active gauge\n\
             tcpcopy_sessions_active 3\n\
             # HELP intercept_records_total Response records sent, by peer.\n\
             # TYPE intercept_records_total counter\n\
             intercept_records_total{peer=\"10.0.0.1:5000\"} 7\n\
             intercept_records_total{peer=\"10.0.0.2:5000\",variant=\"payload\"} 0\n\
             # HELP tcpcopy_replay_lag_seconds Replay lag.\n\
             # TYPE tcpcopy_replay_lag_seconds gauge\n\
             tcpcopy_replay_lag_seconds 0.25\n"
        );
    }

    #[test]
    fn escapes_help_and_label_values() {
        let mut e = Exposition::new();
        e.family("x_total", "a \\ b\nc \"q\"", Kind::Counter)
            .sample(&[("l", "a\\b\n\"c\"")], 1u64);
        assert_eq!(
            e.finish(),
            "# HELP x_total a \\\\ b\\nc \"q\"\n\
             # TYPE x_total counter\n\
             x_total{l=\"a\\\\b\\n\\\"c\\\"\"} 1\n"
        );
    }

    #[test]
    fn float_values_as_go_reads_them() {
        let mut e = Exposition::new();
        for (name, v) in [
            ("a", f64::NAN),
            ("b", f64::INFINITY),
            ("c", f64::NEG_INFINITY),
            ("d", -1.5),
            ("e", 1e21),
            ("f", 0.0),
        ] {
            e.gauge(name, "h", v);
        }
        e.gauge("g", "h", i64::MIN).gauge("h", "h", u64::MAX);
        let text = e.finish();
        let values: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(' ').nth(1).unwrap())
            .collect();
        assert_eq!(
            values,
            [
                "NaN",
                "+Inf",
                "-Inf",
                "-1.5",
                "1000000000000000000000",
                "0",
                "-9223372036854775808",
                "18446744073709551615"
            ]
        );
    }

    #[test]
    fn invalid_families_and_samples_are_left_out() {
        let mut e = Exposition::new();
        e.counter("1bad_total", "h", 1u64)
            .counter("bad-name_total", "h", 1u64)
            .counter("tcpcopy_sent", "no _total", 1u64)
            .counter("neg_total", "h", -1i64)
            .counter("nan_total", "h", f64::NAN)
            .gauge("ok", "h", 1u64)
            .gauge("ok", "repeated", 2u64)
            .gauge("", "empty", 2u64);
        e.family("l", "h", Kind::Gauge)
            .sample(&[("__reserved", "v")], 1u64)
            .sample(&[("1x", "v")], 1u64)
            .sample(&[("a", "1"), ("a", "2")], 1u64)
            .sample(&[("a", "1")], 1u64)
            .sample(&[("a", "1")], 2u64);
        assert_eq!(e.problems().len(), 11, "{:#?}", e.problems());
        assert_eq!(
            e.finish(),
            "# HELP neg_total h\n# TYPE neg_total counter\n\
             # HELP nan_total h\n# TYPE nan_total counter\n\
             # HELP ok h\n# TYPE ok gauge\nok 1\n\
             # HELP l h\n# TYPE l gauge\nl{a=\"1\"} 1\n"
        );
    }

    #[test]
    fn names() {
        for ok in ["a", "_a", ":a", "a:b_c9", "tcpcopy_x_total"] {
            assert!(is_metric_name(ok), "{ok}");
        }
        for bad in ["", "9a", "a-b", "a b", "é", "a{"] {
            assert!(!is_metric_name(bad), "{bad}");
        }
        for ok in ["a", "_a", "a9_b"] {
            assert!(is_label_name(ok), "{ok}");
        }
        for bad in ["", "__a", "a:b", "9a", "a-b"] {
            assert!(!is_label_name(bad), "{bad}");
        }
    }
}

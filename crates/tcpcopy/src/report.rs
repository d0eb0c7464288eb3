//! The outcome of a run for people and for monitoring: the fidelity summary logged at exit,
//! `--report FILE` (one JSON document at exit) and `--stats-json FILE` (the statistics as one
//! JSON object per line, every statistics period and at exit).

use std::io::Write;
use std::path::Path;

use serde_json::{json, Map, Value};
use tc_core::metrics::{Exposition, Kind};
use tc_core::session::{Fidelity, Outcome, ReplayStats};

/// Everything a report is made of, read from the loop at one moment.
pub struct Snapshot<'a> {
    pub stats: ReplayStats,
    pub fidelity: &'a Fidelity,
    /// Drops by reason (name, count).
    pub drops: Vec<(&'static str, u64)>,
    pub sent_packets: u64,
    pub send_errors: u64,
    pub refused_not_target: u64,
    pub uptime_s: f64,
}

fn stats_value(s: &ReplayStats) -> Value {
    json!({
        "active": s.active, "released": s.released, "obsolete_deleted": s.obsolete_deleted,
        "lingering": s.lingering, "conns": s.conns, "resp": s.resp,
        "resp_content": s.resp_content, "resp_fin": s.resp_fin, "resp_rst": s.resp_rst,
        "send": s.send, "send_content": s.send_content, "send_syn": s.send_syn,
        "send_fin": s.send_fin, "send_rst": s.send_rst, "reconnect": s.reconnect,
        "for_no_syn": s.for_no_syn, "retransmit": s.retransmit,
        "recv_after_retransmit": s.recv_after_retransmit, "syn_cnt": s.syn_cnt,
        "all_clt": s.all_clt, "clt_cont": s.clt_cont, "clt_retransmit": s.clt_retransmit,
        "frag": s.frag, "captured": s.captured, "bad_checksum_fixed": s.bad_checksum_fixed, "deferred": s.deferred,
        "ip_options_stripped": s.ip_options_stripped,
    })
}

fn drops_value(drops: &[(&'static str, u64)]) -> Value {
    Value::Object(
        drops
            .iter()
            .map(|(name, n)| (name.replace(' ', "_"), json!(n)))
            .collect::<Map<String, Value>>(),
    )
}

/// One `--stats-json` line.
pub fn stats_line(s: &Snapshot) -> Value {
    json!({
        "uptime_s": s.uptime_s,
        "stats": stats_value(&s.stats),
        "drops": drops_value(&s.drops),
        "sent_packets": s.sent_packets,
        "send_errors": s.send_errors,
        "refused_not_target": s.refused_not_target,
    })
}

/// The `--report` document (issue 16): sessions by outcome, requests and bytes captured vs
/// sent, responses, replay lag, and the statistics it was computed with.
pub fn fidelity_report(s: &Snapshot) -> Value {
    let f = s.fidelity;
    let mut sessions: Map<String, Value> = Outcome::ALL
        .iter()
        .map(|o| (o.name().to_string(), json!(f.sessions(*o))))
        .collect();
    sessions.insert("total".into(), json!(f.sessions_total()));
    sessions.insert("sampled_out".into(), json!(f.sessions_sampled_out));
    json!({
        "sessions": sessions,
        "requests": {
            "captured": f.requests_captured,
            "sent": f.requests_sent,
            "answered": f.requests_answered,
        },
        "bytes": { "captured": f.bytes_captured, "sent": f.bytes_sent },
        "responses": { "records": s.stats.resp, "with_data": s.stats.resp_content },
        "replay_lag_us": {
            "samples": f.lag.count(),
            "p50": f.lag.percentile_us(50.0),
            "p99": f.lag.percentile_us(99.0),
            "max": f.lag.max_us(),
        },
        "dropped_packets": drops_value(&s.drops),
        "statistics": stats_line(s),
    })
}

/// The summary logged at exit.
pub fn summary_lines(s: &Snapshot) -> [String; 3] {
    let f = s.fidelity;
    let outcomes: Vec<String> = Outcome::ALL
        .iter()
        .map(|o| format!("{}:{}", o.name().replace('_', " "), f.sessions(*o)))
        .collect();
    [
        format!(
            "fidelity: sessions {} ({}), sampled out:{}",
            f.sessions_total(),
            outcomes.join(","),
            f.sessions_sampled_out
        ),
        format!(
            "fidelity: requests captured:{},sent:{},answered:{}, bytes captured:{},sent:{}",
            f.requests_captured,
            f.requests_sent,
            f.requests_answered,
            f.bytes_captured,
            f.bytes_sent
        ),
        format!(
            "fidelity: replay lag (capture to send) p50:{}us,p99:{}us,max:{}us over {} segments",
            f.lag.percentile_us(50.0),
            f.lag.percentile_us(99.0),
            f.lag.max_us(),
            f.lag.count()
        ),
    ]
}

/// The `--metrics` text: the statistics lines' counters and the fidelity figures, in the
/// Prometheus text format.
pub fn metrics(s: &Snapshot, tunnels: &crate::tunnels::Tunnels) -> String {
    let st = &s.stats;
    let f = s.fidelity;
    let t = &tunnels.stats;
    let mut e = Exposition::new();
    e.counter(
        "tcpcopy_captured_packets_total",
        "Packets captured (total captured packets).",
        st.captured,
    )
    .counter(
        "tcpcopy_client_packets_total",
        "Client packets handled (all clt).",
        st.all_clt,
    )
    .counter(
        "tcpcopy_syn_total",
        "Client SYNs captured (syn cnt).",
        st.syn_cnt,
    )
    .counter(
        "tcpcopy_sent_total",
        "Segments sent to the target (send).",
        st.send,
    )
    .counter(
        "tcpcopy_sent_content_total",
        "Segments with payload sent (send content).",
        st.send_content,
    )
    .counter(
        "tcpcopy_retransmits_total",
        "Segments retransmitted (retransmit).",
        st.retransmit,
    )
    .counter(
        "tcpcopy_handshakes_total",
        "Handshakes completed with the target (conns).",
        st.conns,
    )
    .counter(
        "tcpcopy_responses_total",
        "Response records from intercept (resp).",
        st.resp,
    )
    .counter(
        "tcpcopy_responses_content_total",
        "Response records with payload (c-resp).",
        st.resp_content,
    )
    .counter(
        "tcpcopy_target_resets_total",
        "Resets from the target (resp rst).",
        st.resp_rst,
    )
    .counter(
        "tcpcopy_reconnects_total",
        "Reconnections to the target (reconnect).",
        st.reconnect,
    )
    .counter(
        "tcpcopy_sessions_released_total",
        "Sessions removed (rel).",
        st.released,
    )
    .counter(
        "tcpcopy_bad_checksum_fixed_total",
        "Captured segments whose checksums were recomputed.",
        st.bad_checksum_fixed,
    )
    .counter(
        "tcpcopy_packets_sent_total",
        "Datagrams the send backend took.",
        s.sent_packets,
    )
    .counter(
        "tcpcopy_send_errors_total",
        "Datagrams the send backend refused.",
        s.send_errors,
    )
    .counter(
        "tcpcopy_refused_not_target_total",
        "Datagrams refused: not addressed to a -x target.",
        s.refused_not_target,
    )
    .counter(
        "tcpcopy_requests_captured_total",
        "Requests captured.",
        f.requests_captured,
    )
    .counter(
        "tcpcopy_requests_sent_total",
        "Requests sent to the target.",
        f.requests_sent,
    )
    .counter(
        "tcpcopy_requests_answered_total",
        "Requests the target answered.",
        f.requests_answered,
    )
    .counter(
        "tcpcopy_client_add_total",
        "CLIENT_ADDs sent to intercepts.",
        t.client_add_sent,
    )
    .counter(
        "tcpcopy_tunnel_disconnects_total",
        "Control tunnels lost.",
        t.disconnects,
    )
    .gauge(
        "tcpcopy_sessions_active",
        "Sessions in the table (active).",
        st.active,
    )
    .gauge(
        "tcpcopy_intercepts_active",
        "Intercepts with an open tunnel.",
        tunnels.active_intercepts(),
    )
    .gauge(
        "tcpcopy_replay_lag_p99_seconds",
        "Replay lag (capture to send), 99th percentile.",
        f.lag.percentile_us(99.0) as f64 / 1e6,
    );
    let mut drops = e.family(
        "tcpcopy_dropped_packets_total",
        "Packets not replayed, by reason (session drops).",
        Kind::Counter,
    );
    for (name, n) in &s.drops {
        let reason = name.replace(' ', "_");
        drops.sample(&[("reason", reason.as_str())], *n);
    }
    drop(drops);
    let mut sessions = e.family(
        "tcpcopy_sessions_ended_total",
        "Sessions by outcome.",
        Kind::Counter,
    );
    for o in Outcome::ALL {
        sessions.sample(&[("outcome", o.name())], f.sessions(o));
    }
    drop(sessions);
    e.finish()
}

/// Appends `value` as one line to `path`.
pub fn append_line(path: &Path, value: &Value) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut line = serde_json::to_vec(value)?;
    line.push(b'\n');
    f.write_all(&line)
}

/// Writes `value` to `path` (replacing it) through a temporary file, so a reader never sees
/// half a report.
pub fn write_file(path: &Path, value: &Value) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut text = serde_json::to_vec_pretty(value)?;
    text.push(b'\n');
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_totals_match_the_inputs() {
        let mut f = Fidelity::default();
        f.count(Outcome::Completed);
        f.count(Outcome::Completed);
        f.count(Outcome::TargetReset);
        f.requests_captured = 10;
        f.requests_sent = 9;
        f.lag.record(std::time::Duration::from_micros(250));
        let stats = ReplayStats {
            resp: 40,
            conns: 3,
            ..ReplayStats::default()
        };
        let snap = Snapshot {
            stats,
            fidelity: &f,
            drops: vec![("pure ack", 5)],
            sent_packets: 30,
            send_errors: 0,
            refused_not_target: 0,
            uptime_s: 1.5,
        };
        let v = fidelity_report(&snap);
        let text = serde_json::to_string(&v).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["sessions"]["completed"], 2);
        assert_eq!(back["sessions"]["target_reset"], 1);
        assert_eq!(back["sessions"]["total"], 3);
        assert_eq!(back["requests"]["sent"], 9);
        assert_eq!(back["responses"]["records"], 40);
        assert_eq!(back["dropped_packets"]["pure_ack"], 5);
        assert_eq!(back["statistics"]["stats"]["conns"], 3);
        assert!(back["replay_lag_us"]["p50"].as_u64().unwrap() >= 250);
        let lines = summary_lines(&snap);
        assert!(lines[0].contains("completed:2"), "{}", lines[0]);
    }
}

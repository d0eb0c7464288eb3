//! `tcpcopy --check`: probe the path once and say which hop is broken, then exit 0 (the path
//! works) or 1. Nothing is captured; one SYN per target is sent (and reset if answered).

use std::io::Write;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use mio::{Events, Poll};
use tc_core::diagnose::Finding;

use crate::cli::Options;
use crate::diagnosis::{self, Diagnosis, ProbePlan};
use crate::output::ReplayOutput;
use crate::tunnels::{connect_blocking, Tunnels};

/// How long connecting to one intercept may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The whole check never takes longer than this (the probe itself needs about 3.5 s).
const CHECK_LIMIT: Duration = Duration::from_secs(8);

/// Prints one finding on stdout and in the log.
fn report(out: &mut impl Write, f: &Finding) {
    let _ = writeln!(out, "{f}");
    if f.ok {
        log::info!("check: {f}");
    } else {
        log::warn!("check: {f}");
    }
}

/// Runs the check; the exit status.
pub fn run(
    options: &Options,
    sender: Box<dyn tc_core::send::Sender>,
    poll: Poll,
) -> anyhow::Result<i32> {
    let mut out = std::io::stdout();
    // Each intercept first on its own, so one that is down is named.
    let mut reachable = Vec::new();
    for &addr in &options.intercepts {
        match connect_blocking(addr, CONNECT_TIMEOUT) {
            Ok(_) => reachable.push(addr),
            Err(e) => report(
                &mut out,
                &Finding {
                    ok: false,
                    hop: format!("intercept {addr}"),
                    seen: format!("cannot connect to its control port: {e}"),
                    fix: Some(format!(
                        "on {}: start intercept (it listens on loopback unless given --bind and --allow with tcpcopy's address)",
                        addr.ip()
                    )),
                },
            ),
        }
    }
    if reachable.len() < options.intercepts.len() {
        return Ok(1);
    }
    let tunnels = Tunnels::connect_all(
        &options.intercepts,
        1,
        options.wire,
        poll.registry(),
        CONNECT_TIMEOUT,
    )?;
    let mut output = ReplayOutput::new(sender, &options.replay.transfers, tunnels, false);
    let plan = ProbePlan::of(options);
    let client = plan
        .client
        .ok_or_else(|| anyhow::anyhow!("--check needs -c or --probe-client"))?;
    let start = Instant::now();
    let setups = plan.setups(client, diagnosis::seed());
    let targets: Vec<SocketAddrV4> = setups.iter().map(|s| s.target).collect();
    let mut diagnosis = Diagnosis::start(setups, start, &mut output);
    let mut poll = poll;
    let mut events = Events::with_capacity(64);
    let mut records = Vec::new();
    let record_len = options.wire.record_len();
    while diagnosis.verdicts().is_none() && start.elapsed() < CHECK_LIMIT {
        let now = Instant::now();
        let wait = diagnosis
            .next_deadline()
            .map_or(Duration::from_millis(100), |d| {
                d.saturating_duration_since(now)
            })
            .min(Duration::from_millis(100));
        if let Err(e) = poll.poll(&mut events, Some(wait)) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e.into());
            }
        }
        for ev in events.iter() {
            let tok = ev.token();
            let intercept = output.tunnels.intercept_of(tok);
            records.clear();
            output
                .tunnels
                .on_event(tok, ev.is_readable(), ev.is_writable(), &mut records);
            let now = Instant::now();
            for r in records.chunks_exact(record_len) {
                diagnosis.on_record(intercept, r, now);
            }
        }
        diagnosis.on_timer(Instant::now());
        diagnosis.pump(&mut output);
    }
    let Some(verdicts) = diagnosis.verdicts() else {
        let _ = writeln!(
            out,
            "[FAIL] check: no verdict within {} s",
            CHECK_LIMIT.as_secs()
        );
        return Ok(1);
    };
    let mut ok = true;
    for (target, v) in verdicts {
        if targets.len() > 1 {
            let _ = writeln!(out, "target {target}:");
        }
        for f in &v.findings {
            report(&mut out, f);
        }
        ok &= v.ok;
    }
    let _ = writeln!(
        out,
        "{} ({} ms)",
        if ok {
            "check passed: the path works"
        } else {
            "check failed"
        },
        start.elapsed().as_millis()
    );
    Ok(if ok { 0 } else { 1 })
}

//! The gate's, the backend's and the process's numbers, read at scrape
//! time. The gate counts with its own atomics on the request path (striped
//! where every request touches them); this collector only reads them when
//! Prometheus asks, so exporting costs the request path nothing.

use std::fmt::Error;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

use crate::backend::Backend;
use crate::players::MsgGate;

/// Reads a gate (and its backend) on each scrape.
#[derive(Debug)]
pub struct GateCollector {
    /// The gate.
    pub gate: MsgGate,
    /// Its backend, if services are on.
    pub backend: Option<Backend>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabel {
    cause: &'static str,
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), Error> {
    let c = ConstCounter::new(value);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> Result<(), Error> {
    let g = ConstGauge::new(value);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn as_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Collector for GateCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), Error> {
        let m = self.gate.metrics();
        let stats = self.gate.session_stats();
        let (online, away) = (stats.online, stats.away);
        {
            let g = ConstGauge::new(0i64);
            let mut family = e.encode_descriptor(
                "gate_connections_open",
                "Client connections open now, by listener",
                None,
                g.metric_type(),
            )?;
            // The TCP listener's, then the WebSocket listener's.
            ConstGauge::new(as_i64(
                m.connections.saturating_sub(m.websocket_connections),
            ))
            .encode(family.encode_family(&ListenerLabel { listener: "gate" })?)?;
            ConstGauge::new(as_i64(m.websocket_connections)).encode(family.encode_family(
                &ListenerLabel {
                    listener: "gate_websocket",
                },
            )?)?;
        }
        {
            let causes = [
                ("origin", m.websocket_origin_refused),
                ("upgrade", m.websocket_upgrades_failed),
                ("protocol", m.websocket_protocol_closes),
            ];
            let first = ConstCounter::new(0u64);
            let mut family = e.encode_descriptor(
                "gate_websocket_refused",
                "WebSocket connections refused or closed by the gate: page origin not allowed, failed upgrade, protocol or mapping broken",
                None,
                first.metric_type(),
            )?;
            for (cause, value) in causes {
                ConstCounter::new(value).encode(family.encode_family(&CauseLabel { cause })?)?;
            }
        }
        gauge(
            &mut e,
            "gate_connections_resting",
            "Client connections resting now (open, without a task: gate.rest_after); part of gate_connections_open",
            as_i64(m.resting_connections),
        )?;
        counter(
            &mut e,
            "gate_rest_wakes",
            "Resting connections woken, by their client or by the gate",
            m.rest_wakes,
        )?;
        gauge(
            &mut e,
            "gate_sessions_online",
            "Sessions bound to a connection",
            as_i64(online),
        )?;
        gauge(
            &mut e,
            "gate_sessions_away",
            "Sessions waiting for a reconnect (or never connected yet)",
            as_i64(away),
        )?;
        let queued = ConstGauge::new(as_i64(stats.queued_bytes));
        queued.encode(e.encode_descriptor(
            "gate_send_queue",
            "Bytes queued for clients and not yet taken by their connections",
            Some(&Unit::Bytes),
            queued.metric_type(),
        )?)?;
        {
            let ok = ConstCounter::new(m.handshakes_ok);
            let mut family = e.encode_descriptor(
                "gate_handshakes",
                "Gate handshakes, by status (timeout: no complete handshake in time)",
                None,
                ok.metric_type(),
            )?;
            ok.encode(family.encode_family(&StatusLabel { status: "200" })?)?;
            for (status, value) in crate::players::RefusedStatus::ALL.iter().zip(m.refused_by) {
                ConstCounter::new(value).encode(family.encode_family(&StatusLabel {
                    status: status.name(),
                })?)?;
            }
            ConstCounter::new(m.handshake_timeouts)
                .encode(family.encode_family(&StatusLabel { status: "timeout" })?)?;
        }
        counter(
            &mut e,
            "gate_requests",
            "Requests run by the agent",
            m.requests,
        )?;
        counter(
            &mut e,
            "gate_responses",
            "Responses made (ok byte 1)",
            m.responses,
        )?;
        counter(
            &mut e,
            "gate_error_responses",
            "Error responses made (ok byte 0)",
            m.error_responses,
        )?;
        counter(
            &mut e,
            "gate_resends_answered",
            "Re-sent requests answered from the response cache",
            m.resends,
        )?;
        counter(
            &mut e,
            "gate_resends_lost",
            "Re-sent requests whose answer had left the cache (answered with an error)",
            m.lost,
        )?;
        counter(
            &mut e,
            "gate_pushes",
            "Pushes accepted (one per session reached)",
            m.pushes,
        )?;
        counter(
            &mut e,
            "gate_pushes_refused",
            "Pushes refused (no such session, too large)",
            m.pushes_refused,
        )?;
        counter(
            &mut e,
            "gate_pushes_replayed",
            "Pushes sent again to reconnecting clients that had not seen them",
            m.pushes_replayed,
        )?;
        counter(
            &mut e,
            "gate_push_gaps",
            "Push-gap notices sent to reconnecting clients",
            m.push_gaps,
        )?;
        counter(
            &mut e,
            "gate_sealed_handshakes",
            "Handshakes accepted that asked for the sealed channel",
            m.sealed_handshakes,
        )?;
        counter(
            &mut e,
            "gate_sessions_ended",
            "Sessions ended",
            m.sessions_ended,
        )?;
        {
            let causes = [
                ("slow_reader", m.slow_readers_cut),
                ("idle", m.idle_timeouts),
                ("inflight_limit", m.inflight_cut),
                ("conflict", m.conflicts),
                ("maxclient", m.refused_at_accept),
                ("per_source", m.refused_per_source),
                ("bad_seal", m.bad_seals),
            ];
            let first = ConstCounter::new(0u64);
            let mut family = e.encode_descriptor(
                "gate_connections_cut",
                "Connections closed by the gate, by cause",
                None,
                first.metric_type(),
            )?;
            for (cause, value) in causes {
                ConstCounter::new(value).encode(family.encode_family(&CauseLabel { cause })?)?;
            }
        }
        if let Some(backend) = &self.backend {
            let b = backend.metrics();
            gauge(
                &mut e,
                "gate_backend_links",
                "Service links registered now",
                as_i64(b.links),
            )?;
            counter(
                &mut e,
                "gate_backend_requests",
                "Requests sent to services",
                b.requests,
            )?;
            let latency = backend.latency();
            latency.encode(e.encode_descriptor(
                "gate_backend_request_duration",
                "Time from sending a request to a service to its answer",
                Some(&Unit::Seconds),
                latency.metric_type(),
            )?)?;
            counter(
                &mut e,
                "gate_backend_deadlines_missed",
                "Requests answered with an error because their service missed the deadline",
                b.timed_out,
            )?;
            counter(
                &mut e,
                "gate_backend_unroutable",
                "Requests no service could take",
                b.unroutable,
            )?;
            refused_links(
                &mut e,
                "gate_backend_refused_links",
                "Service links refused or closed before proving the link secret, and authenticated links beyond max_links, by cause",
                &backend.refused_links(),
            )?;
        }
        process(&mut e)
    }
}

/// One counter family of link refusals by cause (a fixed set of labels).
pub(crate) fn refused_links(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    causes: &[(&'static str, u64)],
) -> Result<(), Error> {
    let family = e.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    let mut family = family;
    for &(cause, value) in causes {
        ConstCounter::new(value).encode(family.encode_family(&CauseLabel { cause })?)?;
    }
    Ok(())
}

/// CPU seconds, resident memory and open descriptors of this process,
/// from `/proc/self` (Linux; nothing elsewhere).
fn process(e: &mut DescriptorEncoder) -> Result<(), Error> {
    #[cfg(target_os = "linux")]
    {
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command (which may hold spaces) start at `)`.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 (1-based) of the line:
            // 12 and 13 after the state field here.
            let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
            if let (Some(user), Some(system)) = (ticks(11), ticks(12)) {
                // Linux reports clock ticks of 1/100 s (USER_HZ) to user space.
                let seconds = (user + system) as f64 / 100.0;
                let c = ConstCounter::new(seconds);
                c.encode(e.encode_descriptor(
                    "process_cpu",
                    "CPU time used by the process",
                    Some(&Unit::Seconds),
                    c.metric_type(),
                )?)?;
            }
        }
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            let rss_kb = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok());
            if let Some(kb) = rss_kb {
                let g = ConstGauge::new(kb * 1024);
                g.encode(e.encode_descriptor(
                    "process_resident_memory",
                    "Resident memory of the process",
                    Some(&Unit::Bytes),
                    g.metric_type(),
                )?)?;
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            gauge(
                e,
                "process_open_fds",
                "File descriptors the process holds",
                as_i64(dir.count()),
            )?;
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = e;
    Ok(())
}

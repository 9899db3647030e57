//! The final report: one JSON line for scripts and a human table.
//!
//! All derived figures (lost, rates, per-connection memory, deliveries per
//! CPU-second) are computed here from raw counters, in one place, so the
//! arithmetic is unit-tested and the JSON and table always agree.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::cli::{Scenario, Transport};
use crate::tally::{Counts, LatencySummary};

/// Raw measurements gathered by the run.
#[derive(Debug, Clone, Default)]
pub struct Raw {
    pub connections_target: u64,
    pub connected: u64,
    pub connect_errors: u64,
    pub connect_error_kinds: BTreeMap<String, u64>,
    pub connect_retries: u64,
    pub connect_secs: f64,
    pub dropped: u64,
    pub channels: u64,
    pub messages_per_channel: u64,
    pub published: u64,
    pub publish_errors: u64,
    pub publish_error_kinds: BTreeMap<String, u64>,
    pub publish_secs: f64,
    pub expected: u64,
    pub counts: Counts,
    /// From the first publish to the last first-time delivery.
    pub delivery_secs: f64,
    pub latency: LatencySummary,
    pub server_procs: usize,
    pub rss_before_kib: u64,
    pub rss_connected_kib: u64,
    pub rss_end_kib: u64,
    pub cpu_secs: f64,
    pub measured_secs: f64,
    pub hard_stopped: bool,
}

/// Everything the run reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub label: String,
    pub scenario: Scenario,
    pub transport: Transport,
    pub procs: u32,
    pub connections_target: u64,
    pub connections_open: u64,
    pub connect_errors: u64,
    pub connect_error_kinds: BTreeMap<String, u64>,
    /// Failed attempts that were retried (`--connect-retries`).
    pub connect_retries: u64,
    pub connect_secs: f64,
    /// Successful connects per second over the connect phase.
    pub connect_rate: f64,
    /// Connections that ended before the run stopped them.
    pub dropped: u64,
    pub channels: u64,
    pub messages_per_channel: u64,
    pub published: u64,
    pub publish_errors: u64,
    pub publish_error_kinds: BTreeMap<String, u64>,
    pub publish_rate: f64,
    pub expected: u64,
    pub received: u64,
    pub unique: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub unexpected: u64,
    pub delivery_secs: f64,
    pub deliveries_per_sec: f64,
    pub latency: LatencySummary,
    pub server_procs: usize,
    pub server_rss_before_kib: u64,
    pub server_rss_connected_kib: u64,
    pub server_rss_end_kib: u64,
    /// (RSS with connections - RSS before) / open connections.
    pub server_rss_per_conn_bytes: Option<f64>,
    /// Server CPU seconds during the measured phase.
    pub server_cpu_secs: Option<f64>,
    pub deliveries_per_server_cpu_sec: Option<f64>,
    pub measured_secs: f64,
    pub hard_stopped: bool,
}

fn ratio(num: f64, den: f64) -> f64 {
    if den > 0.0 {
        num / den
    } else {
        0.0
    }
}

impl Report {
    pub fn build(
        label: String,
        scenario: Scenario,
        transport: Transport,
        procs: u32,
        raw: Raw,
    ) -> Self {
        let has_server = raw.server_procs > 0;
        let rss_per_conn = (has_server && raw.connected > 0).then(|| {
            (raw.rss_connected_kib as f64 - raw.rss_before_kib as f64) * 1024.0
                / raw.connected as f64
        });
        let deliveries = raw.counts.unique;
        Self {
            label,
            scenario,
            transport,
            procs,
            connections_target: raw.connections_target,
            connections_open: raw.connected,
            connect_errors: raw.connect_errors,
            connect_error_kinds: raw.connect_error_kinds,
            connect_retries: raw.connect_retries,
            connect_secs: raw.connect_secs,
            connect_rate: ratio(raw.connected as f64, raw.connect_secs),
            dropped: raw.dropped,
            channels: raw.channels,
            messages_per_channel: raw.messages_per_channel,
            published: raw.published,
            publish_errors: raw.publish_errors,
            publish_error_kinds: raw.publish_error_kinds,
            publish_rate: ratio(raw.published as f64, raw.publish_secs),
            expected: raw.expected,
            received: raw.counts.received,
            unique: deliveries,
            lost: raw.counts.lost(raw.expected),
            duplicated: raw.counts.duplicated,
            out_of_order: raw.counts.out_of_order,
            unexpected: raw.counts.unexpected,
            delivery_secs: raw.delivery_secs,
            deliveries_per_sec: ratio(deliveries as f64, raw.delivery_secs),
            latency: raw.latency,
            server_procs: raw.server_procs,
            server_rss_before_kib: raw.rss_before_kib,
            server_rss_connected_kib: raw.rss_connected_kib,
            server_rss_end_kib: raw.rss_end_kib,
            server_rss_per_conn_bytes: rss_per_conn,
            server_cpu_secs: has_server.then_some(raw.cpu_secs),
            deliveries_per_server_cpu_sec: (has_server && deliveries > 0)
                .then(|| ratio(deliveries as f64, raw.cpu_secs)),
            measured_secs: raw.measured_secs,
            hard_stopped: raw.hard_stopped,
        }
    }

    /// A two-column human table.
    pub fn table(&self) -> String {
        let mut rows: Vec<(&str, String)> = vec![
            (
                "server",
                if self.label.is_empty() {
                    "-".into()
                } else {
                    self.label.clone()
                },
            ),
            (
                "scenario / transport",
                format!(
                    "{} / {}",
                    value_name(self.scenario),
                    value_name(self.transport)
                ),
            ),
            (
                "connections open / target",
                format!("{} / {}", self.connections_open, self.connections_target),
            ),
            (
                "connect errors (retried)",
                format!(
                    "{} ({})",
                    kinds(self.connect_errors, &self.connect_error_kinds),
                    self.connect_retries
                ),
            ),
            (
                "connect rate",
                format!("{:.0}/s over {:.2}s", self.connect_rate, self.connect_secs),
            ),
            ("dropped while held", self.dropped.to_string()),
        ];
        if self.scenario != Scenario::Idle {
            rows.extend([
                (
                    "channels x messages",
                    format!("{} x {}", self.channels, self.messages_per_channel),
                ),
                (
                    "published (errors)",
                    format!(
                        "{} ({})",
                        self.published,
                        kinds(self.publish_errors, &self.publish_error_kinds)
                    ),
                ),
                ("publish rate", format!("{:.0}/s", self.publish_rate)),
                ("deliveries expected", self.expected.to_string()),
                (
                    "received / unique",
                    format!("{} / {}", self.received, self.unique),
                ),
                (
                    "lost / dup / out-of-order",
                    format!(
                        "{} / {} / {}",
                        self.lost, self.duplicated, self.out_of_order
                    ),
                ),
                (
                    "delivered per second",
                    format!(
                        "{:.0}/s over {:.2}s",
                        self.deliveries_per_sec, self.delivery_secs
                    ),
                ),
                (
                    "latency p50/p99/p99.9/max",
                    format!(
                        "{} / {} / {} / {}",
                        us(self.latency.p50_us),
                        us(self.latency.p99_us),
                        us(self.latency.p999_us),
                        us(self.latency.max_us)
                    ),
                ),
            ]);
        }
        if self.server_procs > 0 {
            rows.push((
                "server RSS before/connected/end",
                format!(
                    "{:.1} / {:.1} / {:.1} MiB ({} procs)",
                    self.server_rss_before_kib as f64 / 1024.0,
                    self.server_rss_connected_kib as f64 / 1024.0,
                    self.server_rss_end_kib as f64 / 1024.0,
                    self.server_procs
                ),
            ));
            if let Some(b) = self.server_rss_per_conn_bytes {
                rows.push(("server RSS per connection", format!("{:.0} B", b)));
            }
            if let Some(c) = self.server_cpu_secs {
                rows.push((
                    "server CPU (measured phase)",
                    format!("{c:.2} s over {:.2} s", self.measured_secs),
                ));
            }
            if let Some(d) = self.deliveries_per_server_cpu_sec {
                rows.push(("deliveries per server CPU-s", format!("{d:.0}")));
            }
        }
        if self.hard_stopped {
            rows.push(("HARD STOP", "the --timeout cut the run short".into()));
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            let _ = writeln!(out, "  {k:<width$}  {v}");
        }
        out
    }
}

/// The command-line spelling of an enum value.
fn value_name(v: impl clap::ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

fn kinds(total: u64, kinds: &BTreeMap<String, u64>) -> String {
    if kinds.is_empty() {
        return total.to_string();
    }
    let list: Vec<String> = kinds.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("{total} [{}]", list.join(", "))
}

/// Formats microseconds for people.
pub fn us(v: u64) -> String {
    if v >= 1_000_000 {
        format!("{:.2}s", v as f64 / 1e6)
    } else if v >= 1_000 {
        format!("{:.2}ms", v as f64 / 1e3)
    } else {
        format!("{v}us")
    }
}

/// Expected deliveries: accepted publishes on each channel times the
/// subscribers that connected to it.
pub fn expected_deliveries(
    published_per_channel: &[u64],
    subscribers: u64,
    failed_channels: &[u64],
) -> u64 {
    let channels = published_per_channel.len() as u64;
    if channels == 0 {
        return 0;
    }
    let mut failed: BTreeMap<u64, u64> = BTreeMap::new();
    for &c in failed_channels {
        *failed.entry(c).or_insert(0) += 1;
    }
    published_per_channel
        .iter()
        .enumerate()
        .map(|(c, &n)| {
            let c = c as u64;
            let subs = subscribers / channels + u64::from(c < subscribers % channels);
            let live = subs.saturating_sub(failed.get(&c).copied().unwrap_or(0));
            n * live
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> Raw {
        Raw {
            connections_target: 100,
            connected: 98,
            connect_errors: 2,
            connect_secs: 0.5,
            channels: 1,
            messages_per_channel: 10,
            published: 10,
            publish_secs: 2.0,
            expected: 980,
            counts: Counts {
                received: 975,
                unique: 970,
                duplicated: 5,
                out_of_order: 3,
                unexpected: 0,
            },
            delivery_secs: 2.5,
            server_procs: 1,
            rss_before_kib: 10_000,
            rss_connected_kib: 10_980,
            rss_end_kib: 11_000,
            cpu_secs: 0.5,
            ..Raw::default()
        }
    }

    #[test]
    fn derived_figures() {
        let r = Report::build("herald".into(), Scenario::Fanout, Transport::Ws, 1, raw());
        assert_eq!(r.lost, 10);
        assert_eq!(r.connect_rate, 196.0);
        assert_eq!(r.publish_rate, 5.0);
        assert_eq!(r.deliveries_per_sec, 388.0);
        assert_eq!(r.server_rss_per_conn_bytes, Some(980.0 * 1024.0 / 98.0));
        assert_eq!(r.deliveries_per_server_cpu_sec, Some(1940.0));
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["scenario"], "fanout");
        assert_eq!(json["transport"], "ws");
        assert_eq!(json["lost"], 10);
        let table = r.table();
        assert!(table.contains("lost / dup / out-of-order"));
        assert!(table.contains("10 / 5 / 3"));
    }

    #[test]
    fn no_server_no_server_figures_and_no_division_by_zero() {
        let mut raw = raw();
        raw.server_procs = 0;
        raw.connect_secs = 0.0;
        raw.delivery_secs = 0.0;
        let r = Report::build(String::new(), Scenario::Idle, Transport::Sse, 2, raw);
        assert_eq!(r.server_rss_per_conn_bytes, None);
        assert_eq!(r.server_cpu_secs, None);
        assert_eq!(r.connect_rate, 0.0);
        assert_eq!(r.deliveries_per_sec, 0.0);
        assert!(!r.table().contains("latency"));
    }

    #[test]
    fn expected_counts_connected_subscribers_per_channel() {
        // 10 subscribers over 3 channels: 4, 3, 3.
        assert_eq!(expected_deliveries(&[5, 5, 5], 10, &[]), 50);
        // One subscriber of channel 0 and one of channel 2 failed.
        assert_eq!(expected_deliveries(&[5, 5, 5], 10, &[0, 2]), 40);
        // Partial publishing.
        assert_eq!(expected_deliveries(&[1, 0, 2], 10, &[]), 4 + 6);
        assert_eq!(expected_deliveries(&[], 10, &[]), 0);
        // Fan-out: one channel.
        assert_eq!(expected_deliveries(&[100], 2000, &[0, 0, 0]), 199_700);
    }

    #[test]
    fn formats_micros() {
        assert_eq!(us(850), "850us");
        assert_eq!(us(1_500), "1.50ms");
        assert_eq!(us(2_500_000), "2.50s");
    }
}

//! `GET /metrics`: the hub's counters in the Prometheus text exposition
//! format, version 0.0.4.
//!
//! Nothing here runs per message: the loop bumps plain integers
//! (`stats.rs`), and this module turns a snapshot into text when a scraper
//! asks. Names and units follow Prometheus' conventions: a `wshub_` prefix,
//! `_total` on counters, `_bytes` and `_seconds` in base units.

use std::fmt::Write as _;

use crate::process::ProcessMetrics;
use crate::reason::Exit;
use crate::redis::{LinkLoss, RedisStats, Role, Unshared};
use crate::stats::{REJECTION_STATUSES, Stats};

/// The `Content-Type` of the exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a scrape shows besides the hub's own counters.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// `--max-buffered-bytes`, the bound `held_bytes` is held under.
    pub buffered_bytes_limit: u64,
    /// Log lines the non-blocking logger had to drop.
    pub dropped_log_lines: u64,
    /// `/proc/self` figures, when the platform has them.
    pub process: Option<ProcessMetrics>,
}

/// The exposition text for `stats` and `extras`.
pub fn render(stats: &Stats, extras: &Extras) -> String {
    let mut out = Text(String::with_capacity(6 * 1024));
    out.family("wshub_connections", "gauge", "Connections now, by state.");
    for (state, value) in [("open", stats.open), ("pending", stats.pending), ("closing", stats.closing)] {
        out.sample("wshub_connections", &[("state", state)], value);
    }
    out.counter("wshub_connections_accepted_total", "TCP connections accepted.", stats.accepted);
    out.counter("wshub_upgrades_total", "WebSocket upgrades completed.", stats.upgrades);

    out.family("wshub_http_rejections_total", "counter", "Requests refused, by HTTP status.");
    for (i, status) in REJECTION_STATUSES.iter().enumerate() {
        out.sample("wshub_http_rejections_total", &[("status", status_label(*status))], stats.rejected[i]);
    }

    out.family(
        "wshub_disconnects_total",
        "counter",
        "Connections ended, by reason; code is the close code the hub sent, where it sent one.",
    );
    for exit in Exit::ALL {
        let value = stats.exited(exit);
        match close_code(exit) {
            Some(code) => out.sample("wshub_disconnects_total", &[("reason", exit.label()), ("code", code)], value),
            None => out.sample("wshub_disconnects_total", &[("reason", exit.label())], value),
        }
    }

    out.counter("wshub_messages_received_total", "Data messages received from WebSocket clients.", stats.messages_in);
    out.counter(
        "wshub_messages_published_total",
        "Messages published by the application (HTTP publish and Publisher).",
        stats.published,
    );
    out.counter("wshub_http_publishes_total", "HTTP publish requests delivered.", stats.http_publishes);
    out.counter("wshub_deliveries_total", "Frames queued to receivers.", stats.deliveries);
    out.counter("wshub_received_bytes_total", "Bytes read from connections.", stats.bytes_in);
    out.counter("wshub_sent_bytes_total", "Bytes written to connections.", stats.bytes_out);
    out.gauge("wshub_queued_bytes", "Bytes waiting in send queues.", stats.queued_bytes);
    out.gauge(
        "wshub_held_bytes",
        "Bytes held for clients as --max-buffered-bytes counts them (shared frames once, unfinished input).",
        stats.held_bytes,
    );
    out.gauge("wshub_held_bytes_limit", "The --max-buffered-bytes bound.", extras.buffered_bytes_limit);
    out.gauge("wshub_topics", "Topics with at least one subscriber.", stats.topics);
    out.gauge(
        "wshub_compression_clients",
        "Open clients that negotiated permessage-deflate.",
        stats.compression_clients,
    );
    out.counter(
        "wshub_compressed_messages_total",
        "Messages compressed, once each however many receivers got them compressed.",
        stats.compressed_messages,
    );
    out.counter(
        "wshub_compressed_deliveries_total",
        "Deliveries of a compressed frame (also counted in wshub_deliveries_total).",
        stats.compressed_deliveries,
    );
    out.counter(
        "wshub_inflated_messages_total",
        "Compressed messages received from clients and inflated.",
        stats.inflated_messages,
    );
    out.gauge(
        "wshub_compression_memory_bytes",
        "Heap bytes of the hub's one compressor and one inflater (made on first use).",
        stats.compression_memory_bytes,
    );
    out.gauge("wshub_sse_clients", "Open Server-Sent Events clients (also in wshub_connections).", stats.sse_clients);
    out.counter(
        "wshub_sse_binary_skipped_total",
        "Binary messages not sent to Server-Sent Events clients (one per client).",
        stats.sse_binary_skipped,
    );
    out.gauge("wshub_history_messages", "Messages kept for replay, once per topic.", stats.history_messages);
    out.gauge("wshub_history_bytes", "Bytes of the messages kept for replay.", stats.history_bytes);
    out.family("wshub_history_evictions_total", "counter", "Messages evicted from the history, by cause.");
    for cause in crate::history::Eviction::ALL {
        let value = stats.history_evictions[cause as usize];
        out.sample("wshub_history_evictions_total", &[("cause", cause.label())], value);
    }
    out.family("wshub_resumes_total", "counter", "Resumes (Last-Event-ID, ?since=), by result.");
    out.sample("wshub_resumes_total", &[("result", "complete")], stats.resumes_complete);
    out.sample("wshub_resumes_total", &[("result", "gap")], stats.resumes_gap);
    out.counter("wshub_replays_total", "Replays started (resumes and ?last=).", stats.replays);
    out.counter("wshub_replayed_messages_total", "Messages sent by replays.", stats.replayed_messages);
    out.counter(
        "wshub_log_lines_dropped_total",
        "Log lines dropped because stderr was not writable.",
        extras.dropped_log_lines,
    );
    out.family("wshub_build_info", "gauge", "The wshub version, as a label.");
    out.sample("wshub_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);

    if let Some(redis) = &stats.redis {
        render_redis(&mut out, redis);
    }
    if let Some(p) = &extras.process {
        out.gauge("process_resident_memory_bytes", "Resident memory size in bytes.", p.resident_bytes);
        out.gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", p.virtual_bytes);
        out.family("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.");
        out.centis("process_cpu_seconds_total", p.cpu_centiseconds);
        out.gauge("process_open_fds", "Number of open file descriptors.", p.open_fds);
        out.gauge("process_max_fds", "Maximum number of open file descriptors.", p.max_fds);
        out.family("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.");
        out.centis("process_start_time_seconds", p.start_time_centiseconds);
    }
    out.0
}

/// With `--redis`: the bridge's links and messages.
fn render_redis(out: &mut Text, redis: &RedisStats) {
    for (name, kind, help, values) in [
        ("wshub_redis_up", "gauge", "Whether the Redis link is up, by link.", redis.up.map(u64::from)),
        (
            "wshub_redis_connects_total",
            "counter",
            "Redis connections established (handshake done), by link.",
            redis.connects,
        ),
        (
            "wshub_redis_failures_total",
            "counter",
            "Redis connections that failed or were lost, by link.",
            redis.failures,
        ),
    ] {
        out.family(name, kind, help);
        for role in Role::BOTH {
            out.sample(name, &[("link", role.label())], values[role as usize]);
        }
    }
    out.family(
        "wshub_redis_lost_total",
        "counter",
        "Redis links that were up and went down, by link and cause (closed: by Redis, e.g. its client-output-buffer-limit; timeout; error).",
    );
    for role in Role::BOTH {
        for cause in LinkLoss::ALL {
            let value = redis.lost[role as usize][cause as usize];
            out.sample("wshub_redis_lost_total", &[("link", role.label()), ("cause", cause.label())], value);
        }
    }
    out.counter("wshub_redis_publishes_total", "PUBLISH commands Redis confirmed (one per topic).", redis.published);
    out.family(
        "wshub_redis_unshared_total",
        "counter",
        "PUBLISH commands that did not reach Redis (the message was delivered on this hub only), by reason.",
    );
    for why in Unshared::ALL {
        out.sample("wshub_redis_unshared_total", &[("reason", why.label())], redis.unshared[why as usize]);
    }
    out.counter("wshub_redis_received_total", "Messages from Redis delivered here.", redis.received);
    out.counter("wshub_redis_invalid_total", "Messages from Redis dropped as malformed.", redis.invalid);
    out.counter(
        "wshub_redis_oversize_total",
        "Messages from Redis dropped for being over --max-message-size (the link stays up).",
        redis.oversize,
    );
    out.gauge("wshub_redis_channels", "Redis channels this hub needs (topics with local subscribers).", redis.channels);
    out.gauge("wshub_redis_buffered_bytes", "Bytes held by the Redis links.", redis.buffered_bytes);
}

/// The close code the hub sends for an exit, where it sends one.
fn close_code(exit: Exit) -> Option<&'static str> {
    match exit {
        Exit::ProtocolError => Some("1002"),
        Exit::InvalidUtf8 => Some("1007"),
        Exit::Policy => Some("1008"),
        Exit::MessageTooBig => Some("1009"),
        Exit::SlowConsumer | Exit::OverBudget => Some("1013"),
        Exit::ShuttingDown => Some("1001"),
        _ => None,
    }
}

/// The label of a rejection status (the last slot counts all others).
fn status_label(status: u16) -> &'static str {
    match status {
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        411 => "411",
        413 => "413",
        426 => "426",
        431 => "431",
        500 => "500",
        503 => "503",
        _ => "other",
    }
}

struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = write!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.0.push_str(name);
        for (i, (key, val)) in labels.iter().enumerate() {
            // Label values here are fixed words and digits: nothing to escape.
            let _ = write!(self.0, "{}{key}=\"{val}\"", if i == 0 { '{' } else { ',' });
        }
        if !labels.is_empty() {
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help);
        self.sample(name, &[], value);
    }

    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }

    /// A value in hundredths, written as a decimal (`12.34`).
    fn centis(&mut self, name: &str, value: u64) {
        let _ = writeln!(self.0, "{name} {}.{:02}", value / 100, value % 100);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_help_and_type_and_samples_follow() {
        let mut stats = Stats { open: 3, accepted: 7, redis: Some(RedisStats::default()), ..Stats::default() };
        stats.count_rejection(401);
        stats.count_exit(Exit::SlowConsumer);
        let process = ProcessMetrics {
            cpu_centiseconds: 150,
            start_time_centiseconds: 180_000_000_012,
            ..ProcessMetrics::default()
        };
        let text = render(&stats, &Extras { process: Some(process), ..Extras::default() });
        assert!(text.contains("wshub_connections{state=\"open\"} 3\n"));
        assert!(text.contains("wshub_connections_accepted_total 7\n"));
        assert!(text.contains("wshub_http_rejections_total{status=\"401\"} 1\n"));
        assert!(text.contains("wshub_http_rejections_total{status=\"other\"} 0\n"));
        assert!(text.contains("wshub_disconnects_total{reason=\"slow_consumer\",code=\"1013\"} 1\n"));
        assert!(text.contains("wshub_disconnects_total{reason=\"idle_timeout\"} 0\n"));
        assert!(text.contains("process_cpu_seconds_total 1.50\n"));
        assert!(text.contains("process_start_time_seconds 1800000000.12\n"));
        assert!(text.contains("wshub_redis_up{link=\"publisher\"} 0\n"));
        assert!(text.contains("wshub_redis_unshared_total{reason=\"buffer_full\"} 0\n"));
        assert!(!render(&Stats::default(), &Extras::default()).contains("redis"), "only with --redis");
        let mut typed = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed = rest.split(' ').next();
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(Some(name), typed, "sample without its family header: {line}");
            }
        }
        assert!(text.ends_with('\n'));
        for status in REJECTION_STATUSES {
            assert!(status == 0 || status_label(status) == status.to_string(), "{status}");
        }
    }
}

//! Prometheus metrics (docs/metrics.md): one registry per process, rendered by the
//! admin listener. Per-revision handles are resolved once and cached on the revision, so
//! the request path does atomic adds, not label lookups.

use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub in_flight: IntGaugeVec,
    pub held: IntGaugeVec,
    pub hold_duration: HistogramVec,
    pub hold_outcomes: IntCounterVec,
    pub pokes: IntCounterVec,
    pub config_generation: IntGauge,
    pub config_updates: IntCounterVec,
    pub xds_connected: IntGauge,
    pub autoscaler_reports: IntCounterVec,
    pub overload_rejections: IntCounterVec,
    /// When the overload line was last logged (rate limit).
    pub overload_logged: std::sync::Mutex<Option<std::time::Instant>>,
    pub connections_open: IntGauge,
    pub connections_max: IntGauge,
    pub connection_limit_waits: IntGauge,
    pub held_memory_bytes: IntGauge,
    pub access_log_dropped: IntCounter,
    pub access_log_written: IntCounter,
    pub fast_path_requests: IntCounter,
    /// The listeners' connection limit and the held-request budget, read when rendering.
    pub edge: std::sync::OnceLock<EdgeGauges>,
}

/// What the connection and held-memory gauges read from.
pub struct EdgeGauges {
    pub connections: std::sync::Arc<pingora::listeners::ConnectionLimit>,
    pub held_memory: std::sync::Arc<crate::revision::HeldMemory>,
}

/// Logs `line` at warn level at most once every 10 s (`last` holds when it was logged).
pub fn log_limited(last: &std::sync::Mutex<Option<std::time::Instant>>, line: &str) {
    let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
    if last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(10)) {
        *last = Some(std::time::Instant::now());
        log::warn!("{line} (logged at most every 10 s; see weir_overload_rejections_total)");
    }
}

fn latency_buckets() -> Vec<f64> {
    // 0.5 ms .. ~65 s
    exponential_buckets(0.0005, 2.0, 18).expect("valid buckets")
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let rev = &["namespace", "revision"];
        let m = Metrics {
            requests: IntCounterVec::new(
                Opts::new("weir_requests_total", "Requests answered, by revision and status code."),
                &["namespace", "revision", "code"],
            )
            .expect("metric"),
            request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "weir_request_duration_seconds",
                    "Time from request start to the end of the response, by revision.",
                )
                .buckets(latency_buckets()),
                rev,
            )
            .expect("metric"),
            in_flight: IntGaugeVec::new(
                Opts::new("weir_revision_in_flight", "Requests being proxied to a revision."),
                rev,
            )
            .expect("metric"),
            held: IntGaugeVec::new(
                Opts::new("weir_revision_held", "Requests waiting for capacity of a revision."),
                rev,
            )
            .expect("metric"),
            hold_duration: HistogramVec::new(
                HistogramOpts::new(
                    "weir_hold_duration_seconds",
                    "Time requests spent held before being sent or failed.",
                )
                .buckets(latency_buckets()),
                rev,
            )
            .expect("metric"),
            hold_outcomes: IntCounterVec::new(
                Opts::new(
                    "weir_hold_requests_total",
                    "Held requests by outcome: released, timed_out, rejected (queue full), cancelled.",
                ),
                &["namespace", "revision", "outcome"],
            )
            .expect("metric"),
            pokes: IntCounterVec::new(
                Opts::new(
                    "weir_autoscaler_pokes_total",
                    "Immediate scale-from-zero signals, one per revision per reporting interval.",
                ),
                rev,
            )
            .expect("metric"),
            config_generation: IntGauge::new(
                "weir_config_generation",
                "Generation of the config in force.",
            )
            .expect("metric"),
            config_updates: IntCounterVec::new(
                Opts::new(
                    "weir_config_updates_total",
                    "Config updates by source (file, sighup, api, endpoints, xds) and result.",
                ),
                &["source", "result"],
            )
            .expect("metric"),
            xds_connected: IntGauge::new(
                "weir_xds_connected",
                "1 while an xDS stream is established.",
            )
            .expect("metric"),
            autoscaler_reports: IntCounterVec::new(
                Opts::new(
                    "weir_autoscaler_reports_total",
                    "Concurrency reports to the autoscaler by result.",
                ),
                &["result"],
            )
            .expect("metric"),
            overload_rejections: IntCounterVec::new(
                Opts::new(
                    "weir_overload_rejections_total",
                    "Requests answered 503 with Retry-After instead of waiting, by reason: \
                     connections (near max_connections) or held_memory (limits.held_memory).",
                ),
                &["reason"],
            )
            .expect("metric"),
            overload_logged: std::sync::Mutex::new(None),
            connections_open: IntGauge::new(
                "weir_connections",
                "Client connections open (slots of max_connections taken).",
            )
            .expect("metric"),
            connections_max: IntGauge::new(
                "weir_connections_max",
                "max_connections: beyond it Weir stops accepting.",
            )
            .expect("metric"),
            connection_limit_waits: IntGauge::new(
                "weir_connection_limit_waits",
                "Times a listener found max_connections reached and stopped accepting until \
                 a connection closed (a count since start).",
            )
            .expect("metric"),
            held_memory_bytes: IntGauge::new(
                "weir_held_memory_bytes",
                "Memory counted against limits.held_memory by held requests.",
            )
            .expect("metric"),
            access_log_dropped: IntCounter::new(
                "weir_access_log_dropped_total",
                "Access log lines dropped: the buffer was full (the writer could not keep up) \
                 or the write failed.",
            )
            .expect("metric"),
            access_log_written: IntCounter::new(
                "weir_access_log_written_total",
                "Access log lines written.",
            )
            .expect("metric"),
            fast_path_requests: IntCounter::new(
                "weir_fast_path_requests_total",
                "Requests served by Weir's own HTTP/1 loop (the fast path) rather than pingora's \
                 proxy state machine.",
            )
            .expect("metric"),
            edge: std::sync::OnceLock::new(),
            registry,
        };
        let r = &m.registry;
        for c in [
            Box::new(m.requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.request_duration.clone()),
            Box::new(m.in_flight.clone()),
            Box::new(m.held.clone()),
            Box::new(m.hold_duration.clone()),
            Box::new(m.hold_outcomes.clone()),
            Box::new(m.pokes.clone()),
            Box::new(m.config_generation.clone()),
            Box::new(m.config_updates.clone()),
            Box::new(m.xds_connected.clone()),
            Box::new(m.autoscaler_reports.clone()),
            Box::new(m.overload_rejections.clone()),
            Box::new(m.connections_open.clone()),
            Box::new(m.connections_max.clone()),
            Box::new(m.connection_limit_waits.clone()),
            Box::new(m.held_memory_bytes.clone()),
            Box::new(m.access_log_dropped.clone()),
            Box::new(m.access_log_written.clone()),
            Box::new(m.fast_path_requests.clone()),
        ] {
            r.register(c).expect("metric names are unique");
        }
        // Every known label value from the start at 0, so that rate() and alerts see a series
        // before the first event rather than nothing.
        for result in ["sent", "dropped"] {
            m.autoscaler_reports.with_label_values(&[result]);
        }
        for reason in ["connections", "held_memory"] {
            m.overload_rejections.with_label_values(&[reason]);
        }
        m
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        if let Some(e) = self.edge.get() {
            self.connections_open.set(e.connections.in_use() as i64);
            self.connections_max.set(e.connections.max() as i64);
            self.connection_limit_waits
                .set(e.connections.waited() as i64);
            self.held_memory_bytes.set(e.held_memory.used() as i64);
        }
        let mut out = Vec::with_capacity(16 * 1024);
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            log::error!("encoding metrics: {e}");
        }
        out
    }

    /// Counter of requests for (namespace, revision, code); `""` labels for unrouted ones.
    pub fn request_counter(&self, ns: &str, rev: &str, code: u16) -> IntCounter {
        let mut buf = [0u8; 3];
        self.requests
            .with_label_values(&[ns, rev, code_str(code, &mut buf)])
    }

    pub fn config_update(&self, source: &str, ok: bool) {
        self.config_updates
            .with_label_values(&[source, if ok { "ok" } else { "rejected" }])
            .inc();
    }

    /// Drops the series of a revision that left the config.
    pub fn forget_revision(&self, ns: &str, rev: &str) {
        let labels = [ns, rev];
        let _ = self.request_duration.remove_label_values(&labels);
        let _ = self.in_flight.remove_label_values(&labels);
        let _ = self.held.remove_label_values(&labels);
        let _ = self.hold_duration.remove_label_values(&labels);
        let _ = self.pokes.remove_label_values(&labels);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn code_str(code: u16, buf: &mut [u8; 3]) -> &str {
    let c = code.min(999);
    buf[0] = b'0' + (c / 100) as u8;
    buf[1] = b'0' + (c / 10 % 10) as u8;
    buf[2] = b'0' + (c % 10) as u8;
    std::str::from_utf8(buf).unwrap_or("000")
}

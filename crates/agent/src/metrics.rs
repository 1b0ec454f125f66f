//! istio-agent's Wasm metrics (`pkg/wasm/monitoring.go`) on a prometheus-client registry,
//! and a small HTTP endpoint serving them.
//!
//! The series are Istio's exactly, so dashboards and alerts carry over: pilot-agent registers
//! them under the prefix `istio_agent_` and its OpenTelemetry exporter drops the counter
//! `_total` suffix (`otelprom.WithoutCounterSuffixes()`), e.g.
//! `istio_agent_wasm_remote_fetch_count{result="download_failure"}`, served in the Prometheus
//! text format.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// Prefix pilot-agent gives its own metrics (`prometheus.WrapRegistererWithPrefix`).
pub const PREFIX: &str = "istio_agent";

/// Istio's `wasm_config_conversion_duration` buckets (milliseconds).
pub const CONVERSION_DURATION_BUCKETS: [f64; 15] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
    16384.0,
];

/// A counter exposed as Istio's exporter does: `# TYPE <name> counter` and samples without
/// the OpenMetrics `_total` suffix (prometheus-client's counter encoder always appends it).
#[derive(Debug, Clone, Default)]
pub struct IstioCounter(Counter);

impl IstioCounter {
    fn inc(&self) {
        self.0.inc();
    }

    fn get(&self) -> u64 {
        self.0.get()
    }
}

impl TypedMetric for IstioCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for IstioCounter {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        // A gauge sample is `<name>{labels} <value>`: the counter's line without `_total`.
        encoder.encode_gauge(&self.0.get())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// A registry for the agent's metrics, with Istio's `istio_agent_` prefix.
pub fn registry() -> Registry {
    Registry::with_prefix(PREFIX)
}

/// Result label of `wasm_remote_fetch_count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchResult {
    Success,
    DownloadFailure,
    ManifestFailure,
    ChecksumMismatched,
    FetchFailure,
}

impl FetchResult {
    fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::DownloadFailure => "download_failure",
            Self::ManifestFailure => "manifest_failure",
            Self::ChecksumMismatched => "checksum_mismatched",
            Self::FetchFailure => "fetch_failure",
        }
    }
}

/// Result label of `wasm_config_conversion_count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversionResult {
    Success,
    NoRemoteLoad,
    MarshalFailure,
    UnmarshalFailure,
    FetchFailure,
    MissRemoteFetchHint,
}

impl ConversionResult {
    fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::NoRemoteLoad => "no_remote_load",
            Self::MarshalFailure => "marshal_failure",
            Self::UnmarshalFailure => "unmarshal_failure",
            Self::FetchFailure => "fetch_failure",
            Self::MissRemoteFetchHint => "miss_remote_fetch_hint",
        }
    }
}

/// The agent's metric families.
#[derive(Debug)]
pub struct Metrics {
    cache_entries: Gauge,
    cache_lookup: Family<Labels, IstioCounter>,
    remote_fetch: Family<Labels, IstioCounter>,
    conversion: Family<Labels, IstioCounter>,
    conversion_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            cache_entries: Gauge::default(),
            cache_lookup: Family::default(),
            remote_fetch: Family::default(),
            conversion: Family::default(),
            conversion_duration: Histogram::new(CONVERSION_DURATION_BUCKETS),
        }
    }
}

impl Metrics {
    /// Creates the families and registers them in `registry` (made by [`registry`] for
    /// Istio's names).
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let m = Self::default();
        // prometheus-client ends each help text with a period, as Istio's do.
        registry.register(
            "wasm_cache_entries",
            "number of Wasm remote fetch cache entries",
            m.cache_entries.clone(),
        );
        registry.register(
            "wasm_cache_lookup_count",
            "number of Wasm remote fetch cache lookups",
            m.cache_lookup.clone(),
        );
        registry.register(
            "wasm_remote_fetch_count",
            "number of Wasm remote fetches and results, including success, download failure, and checksum mismatch",
            m.remote_fetch.clone(),
        );
        registry.register(
            "wasm_config_conversion_count",
            "number of Wasm config conversions and results, including success, no remote load, marshal failure, remote fetch failure, miss remote fetch hint",
            m.conversion.clone(),
        );
        registry.register(
            "wasm_config_conversion_duration",
            "Total time in milliseconds istio-agent spends on converting remote load in Wasm config",
            m.conversion_duration.clone(),
        );
        Arc::new(m)
    }

    pub(crate) fn set_cache_entries(&self, n: usize) {
        self.cache_entries.set(n as i64);
    }

    pub(crate) fn cache_lookup(&self, hit: bool) {
        self.cache_lookup
            .get_or_create(&vec![("hit", if hit { "true" } else { "false" })])
            .inc();
    }

    pub(crate) fn remote_fetch(&self, r: FetchResult) {
        self.remote_fetch
            .get_or_create(&vec![("result", r.label())])
            .inc();
    }

    pub(crate) fn conversion(&self, r: ConversionResult) {
        self.conversion
            .get_or_create(&vec![("result", r.label())])
            .inc();
    }

    /// One ECDS response converted in `millis` (Istio records whole milliseconds).
    pub(crate) fn conversion_duration(&self, millis: u128) {
        self.conversion_duration.observe(millis as f64);
    }

    /// Current value of `wasm_remote_fetch_count{result}` (for tests and diagnostics).
    pub fn remote_fetch_count(&self, r: FetchResult) -> u64 {
        self.remote_fetch
            .get_or_create(&vec![("result", r.label())])
            .get()
    }

    /// Current value of `wasm_cache_lookup_count{hit}`.
    pub fn cache_lookup_count(&self, hit: bool) -> u64 {
        self.cache_lookup
            .get_or_create(&vec![("hit", if hit { "true" } else { "false" })])
            .get()
    }

    /// Current value of `wasm_config_conversion_count{result}`.
    pub fn conversion_count(&self, r: ConversionResult) -> u64 {
        self.conversion
            .get_or_create(&vec![("result", r.label())])
            .get()
    }

    /// Current value of `wasm_cache_entries`.
    pub fn cache_entries(&self) -> i64 {
        self.cache_entries.get()
    }
}

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The Prometheus text exposition (format 0.0.4) of `registry`: what pilot-agent serves.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut body = String::new();
    // Without the OpenMetrics `# EOF` trailer.
    prometheus_client::encoding::text::encode_registry(&mut body, registry)?;
    Ok(body)
}

/// Serves `registry` as Prometheus text on `/metrics` and `/stats/prometheus`. Returns the
/// bound address (useful with port 0) and the server task.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), MetricsError> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::service::service_fn;

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let registry = registry.clone();
                    async move {
                        let path = req.uri().path();
                        if path == "/metrics" || path == "/stats/prometheus" {
                            match encode(&registry) {
                                Ok(body) => hyper::Response::builder()
                                    .header(
                                        "content-type",
                                        "text/plain; version=0.0.4; charset=utf-8",
                                    )
                                    .body(Full::new(Bytes::from(body))),
                                Err(_) => hyper::Response::builder()
                                    .status(500)
                                    .body(Full::new(Bytes::new())),
                            }
                        } else {
                            hyper::Response::builder()
                                .status(404)
                                .body(Full::new(Bytes::from_static(b"not found\n")))
                        }
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    Ok((local, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_istio_agents_in_prometheus_text() {
        let mut registry = registry();
        let m = Metrics::register(&mut registry);
        m.remote_fetch(FetchResult::DownloadFailure);
        m.remote_fetch(FetchResult::Success);
        m.remote_fetch(FetchResult::Success);
        m.cache_lookup(false);
        m.conversion(ConversionResult::Success);
        m.conversion_duration(3);
        m.set_cache_entries(1);
        let text = encode(&registry).unwrap();
        for want in [
            "# TYPE istio_agent_wasm_remote_fetch_count counter\n",
            "istio_agent_wasm_remote_fetch_count{result=\"download_failure\"} 1\n",
            "istio_agent_wasm_remote_fetch_count{result=\"success\"} 2\n",
            "# TYPE istio_agent_wasm_cache_lookup_count counter\n",
            "istio_agent_wasm_cache_lookup_count{hit=\"false\"} 1\n",
            "# TYPE istio_agent_wasm_config_conversion_count counter\n",
            "istio_agent_wasm_config_conversion_count{result=\"success\"} 1\n",
            "# TYPE istio_agent_wasm_cache_entries gauge\n",
            "istio_agent_wasm_cache_entries 1\n",
            "# TYPE istio_agent_wasm_config_conversion_duration histogram\n",
            "istio_agent_wasm_config_conversion_duration_bucket{le=\"2.0\"} 0\n",
            "istio_agent_wasm_config_conversion_duration_bucket{le=\"4.0\"} 1\n",
            "istio_agent_wasm_config_conversion_duration_bucket{le=\"16384.0\"} 1\n",
            "istio_agent_wasm_config_conversion_duration_bucket{le=\"+Inf\"} 1\n",
            "istio_agent_wasm_config_conversion_duration_sum 3.0\n",
            "istio_agent_wasm_config_conversion_duration_count 1\n",
            "# HELP istio_agent_wasm_remote_fetch_count number of Wasm remote fetches and results, including success, download failure, and checksum mismatch.\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        assert!(!text.contains("_total"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        assert_eq!(
            text.matches("istio_agent_wasm_config_conversion_duration_bucket")
                .count(),
            CONVERSION_DURATION_BUCKETS.len() + 1
        );
    }
}

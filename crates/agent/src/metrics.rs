//! istio-agent's Wasm metrics (`pkg/wasm/monitoring.go`) on a prometheus-client registry,
//! and a small HTTP endpoint serving them.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

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
    cache_lookup: Family<Labels, Counter>,
    remote_fetch: Family<Labels, Counter>,
    conversion: Family<Labels, Counter>,
    conversion_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            cache_entries: Gauge::default(),
            cache_lookup: Family::default(),
            remote_fetch: Family::default(),
            conversion: Family::default(),
            // Istio: milliseconds, 1 .. 16384.
            conversion_duration: Histogram::new(exponential_buckets(1.0, 2.0, 15)),
        }
    }
}

impl Metrics {
    /// Creates the families and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let m = Self::default();
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
            "number of Wasm remote fetches and results",
            m.remote_fetch.clone(),
        );
        registry.register(
            "wasm_config_conversion_count",
            "number of Wasm config conversions and results",
            m.conversion.clone(),
        );
        registry.register(
            "wasm_config_conversion_duration",
            "total time in milliseconds the agent spends converting a remote load Wasm config",
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

    pub(crate) fn conversion(&self, r: ConversionResult, millis: f64) {
        self.conversion
            .get_or_create(&vec![("result", r.label())])
            .inc();
        self.conversion_duration.observe(millis);
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
                            let mut body = String::new();
                            match prometheus_client::encoding::text::encode(&mut body, &registry) {
                                Ok(()) => hyper::Response::builder()
                                    .header("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
                                    .body(Full::new(Bytes::from(body))),
                                Err(_) => hyper::Response::builder().status(500).body(Full::new(Bytes::new())),
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

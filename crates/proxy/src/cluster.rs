//! Upstream clusters: endpoints (STATIC, STRICT_DNS), load balancing (round robin, least
//! request), upstream protocol and TLS, and passive host health (a host that refuses a
//! connection is skipped for a while, with Envoy's panic threshold: when fewer than half the
//! hosts are healthy, all are used).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prost::Message;
use rustls::pki_types::ServerName;

use crate::config::{ConfigError, duration, socket_address};
use crate::pb::{cluster as pbc, core, tls as pbtls, upstream_http};
use crate::stats::{ClusterStats, Store};

const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// How long a host that failed to connect is skipped.
const FAILED_HOST_BACKOFF: Duration = Duration::from_secs(5);

/// HTTP version spoken to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (Envoy's default).
    Http1,
    /// HTTP/2 (prior knowledge, or ALPN `h2` over TLS).
    Http2,
}

/// Load balancing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    /// `ROUND_ROBIN`.
    RoundRobin,
    /// `LEAST_REQUEST` (power of two choices).
    LeastRequest,
}

/// How endpoints are found.
#[derive(Debug, Clone)]
pub enum Discovery {
    /// `STATIC`: IP addresses.
    Static(Vec<SocketAddr>),
    /// `STRICT_DNS`: names resolved at start and every `refresh`; every address is a host.
    /// `LOGICAL_DNS` (`logical`): one name, whose first address is the one host.
    StrictDns {
        /// (hostname, port) pairs.
        names: Vec<(String, u16)>,
        /// `dns_refresh_rate` (default 5 s).
        refresh: Duration,
        /// `LOGICAL_DNS`.
        logical: bool,
    },
}

/// Upstream TLS.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// rustls client config (ALPN included).
    pub config: Arc<rustls::ClientConfig>,
    /// `sni`, if set.
    pub sni: Option<ServerName<'static>>,
}

/// One upstream host.
#[derive(Debug)]
pub struct Host {
    /// Its address.
    pub addr: SocketAddr,
    /// Requests in flight (for least request and `/clusters`).
    pub active_rq: AtomicU64,
    /// Requests sent.
    pub rq_total: AtomicU64,
    /// Connection failures.
    pub cx_connect_fail: AtomicU64,
    /// Connections opened, and open now.
    pub cx_total: AtomicU64,
    pub cx_active: std::sync::atomic::AtomicI64,
    /// Responses below 500, and failed requests (5xx, resets, connect failures).
    pub rq_success: AtomicU64,
    pub rq_error: AtomicU64,
    /// Requests that timed out.
    pub rq_timeout: AtomicU64,
    failed_at: std::sync::Mutex<Option<Instant>>,
}

impl Host {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            active_rq: AtomicU64::new(0),
            rq_total: AtomicU64::new(0),
            cx_connect_fail: AtomicU64::new(0),
            cx_total: AtomicU64::new(0),
            cx_active: std::sync::atomic::AtomicI64::new(0),
            rq_success: AtomicU64::new(0),
            rq_error: AtomicU64::new(0),
            rq_timeout: AtomicU64::new(0),
            failed_at: std::sync::Mutex::new(None),
        }
    }

    /// Whether the host is considered healthy (no recent connect failure).
    pub fn healthy(&self) -> bool {
        match self.failed_at.lock() {
            Ok(g) => g.is_none_or(|t| t.elapsed() >= FAILED_HOST_BACKOFF),
            Err(_) => true,
        }
    }

    /// Records a connect failure.
    pub fn connect_failed(&self) {
        self.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut g) = self.failed_at.lock() {
            *g = Some(Instant::now());
        }
    }

    /// Records a successful connection.
    pub fn connected(&self) {
        if let Ok(mut g) = self.failed_at.lock()
            && g.is_some()
        {
            *g = None;
        }
    }
}

/// A built cluster with its live host set.
#[derive(Debug)]
pub struct Cluster {
    /// `name`.
    pub name: String,
    /// Endpoint discovery.
    pub discovery: Discovery,
    /// `connect_timeout` (default 5 s).
    pub connect_timeout: Duration,
    /// `lb_policy`.
    pub lb: LbPolicy,
    /// Upstream HTTP version.
    pub protocol: UpstreamProtocol,
    /// Upstream TLS, if any.
    pub tls: Option<UpstreamTls>,
    /// `metadata` (`xds.cluster_metadata`), if set.
    pub metadata: Option<Arc<crate::route::MetadataProp>>,
    /// `cluster.<name>.*` counters.
    pub stats: ClusterStats,
    hosts: ArcSwap<Vec<Arc<Host>>>,
    rr: AtomicUsize,
}

impl Cluster {
    /// The current hosts.
    pub fn hosts(&self) -> Arc<Vec<Arc<Host>>> {
        self.hosts.load_full()
    }

    /// Replaces the hosts (DNS refresh), keeping the state of hosts that stay.
    pub fn set_addresses(&self, addrs: &[SocketAddr]) {
        let old = self.hosts.load();
        let new: Vec<Arc<Host>> = addrs
            .iter()
            .map(|a| {
                old.iter()
                    .find(|h| h.addr == *a)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Host::new(*a)))
            })
            .collect();
        self.stats
            .membership_total
            .set(i64::try_from(new.len()).unwrap_or(i64::MAX));
        self.stats
            .membership_healthy
            .set(i64::try_from(new.len()).unwrap_or(i64::MAX));
        self.hosts.store(Arc::new(new));
    }

    /// Whether the cluster has any host (healthy or not).
    pub fn has_hosts(&self) -> bool {
        !self.hosts.load().is_empty()
    }

    /// Picks a host, or `None` if the cluster has none.
    pub fn pick(&self, rand: u32) -> Option<Arc<Host>> {
        let hosts = self.hosts.load();
        if hosts.is_empty() {
            return None;
        }
        let healthy: Vec<&Arc<Host>> = hosts.iter().filter(|h| h.healthy()).collect();
        // Envoy's default panic threshold is 50%: below it, balance over every host.
        let pool: Vec<&Arc<Host>> = if healthy.len() * 2 < hosts.len() || healthy.is_empty() {
            hosts.iter().collect()
        } else {
            healthy
        };
        let n = pool.len();
        let host = match self.lb {
            LbPolicy::RoundRobin => pool.get(self.rr.fetch_add(1, Ordering::Relaxed) % n),
            LbPolicy::LeastRequest => {
                let a = pool.get(rand as usize % n);
                let b = pool.get((rand >> 16) as usize % n);
                match (a, b) {
                    (Some(a), Some(b)) => {
                        if b.active_rq.load(Ordering::Relaxed) < a.active_rq.load(Ordering::Relaxed)
                        {
                            Some(b)
                        } else {
                            Some(a)
                        }
                    }
                    (a, b) => a.or(b),
                }
            }
        };
        host.map(|h| Arc::clone(h))
    }

    /// Builds a cluster from `c` at `path`.
    pub fn build(c: &pbc::Cluster, path: &str, store: &Store) -> Result<Self, ConfigError> {
        use pbc::cluster::ClusterDiscoveryType as CDT;
        use pbc::cluster::DiscoveryType as DT;
        if c.name.is_empty() {
            return Err(ConfigError::invalid(format!("{path}.name"), "required"));
        }
        let kind = match &c.cluster_discovery_type {
            None => DT::Static,
            Some(CDT::Type(t)) => DT::try_from(*t).unwrap_or(DT::Eds),
            Some(CDT::ClusterType(_)) => {
                return Err(ConfigError::unsupported(
                    format!("{path}.cluster_type"),
                    "custom cluster types",
                ));
            }
        };
        let mut endpoints = Vec::new();
        if let Some(la) = &c.load_assignment {
            for (li, l) in la.endpoints.iter().enumerate() {
                for (ei, e) in l.lb_endpoints.iter().enumerate() {
                    let epath = format!(
                        "{path}.load_assignment.endpoints[{li}].lb_endpoints[{ei}].endpoint"
                    );
                    let ep = match &e.host_identifier {
                        Some(crate::pb::endpoint::lb_endpoint::HostIdentifier::Endpoint(ep)) => ep,
                        _ => return Err(ConfigError::invalid(&epath, "endpoint is required")),
                    };
                    if let Some(core::address::Address::Pipe(pipe)) =
                        ep.address.as_ref().and_then(|a| a.address.as_ref())
                    {
                        // (istio-agent's `sds-grpc`: a Unix socket this proxy never dials)
                        tracing::warn!(
                            cluster = %c.name,
                            pipe = %pipe.path,
                            "Unix socket endpoints are not dialled (only ADS runs over one); the endpoint is left out"
                        );
                        continue;
                    }
                    let (host, port) =
                        socket_address(ep.address.as_ref(), &format!("{epath}.address"))?;
                    endpoints.push((host, port, epath));
                }
            }
        }
        let discovery = match kind {
            DT::Static => {
                let mut addrs = Vec::new();
                for (host, port, epath) in &endpoints {
                    let ip: std::net::IpAddr = host.parse().map_err(|_| {
                        ConfigError::invalid(
                            format!("{epath}.address.socket_address.address"),
                            format!("{host:?} is not an IP address (STATIC clusters need IPs; use STRICT_DNS)"),
                        )
                    })?;
                    addrs.push(SocketAddr::new(ip, *port));
                }
                Discovery::Static(addrs)
            }
            DT::StrictDns | DT::LogicalDns => {
                let logical = kind == DT::LogicalDns;
                if logical && endpoints.len() != 1 {
                    return Err(ConfigError::invalid(
                        format!("{path}.load_assignment"),
                        "LOGICAL_DNS clusters must have a single locality_lb_endpoint and a single lb_endpoint",
                    ));
                }
                #[allow(
                    deprecated,
                    reason = "dns_refresh_rate is still the common way to set it"
                )]
                let refresh = c
                    .dns_refresh_rate
                    .as_ref()
                    .map(duration)
                    .unwrap_or(Duration::from_secs(5));
                Discovery::StrictDns {
                    names: endpoints.iter().map(|(h, p, _)| (h.clone(), *p)).collect(),
                    refresh,
                    logical,
                }
            }
            other => {
                return Err(ConfigError::unsupported(
                    format!("{path}.type"),
                    format!("cluster type {other:?} (STATIC, STRICT_DNS and LOGICAL_DNS are)"),
                ));
            }
        };
        let lb = match pbc::cluster::LbPolicy::try_from(c.lb_policy) {
            Ok(pbc::cluster::LbPolicy::RoundRobin) => LbPolicy::RoundRobin,
            Ok(pbc::cluster::LbPolicy::LeastRequest) => LbPolicy::LeastRequest,
            _ => {
                return Err(ConfigError::unsupported(
                    format!("{path}.lb_policy"),
                    "only ROUND_ROBIN and LEAST_REQUEST",
                ));
            }
        };
        #[allow(
            deprecated,
            reason = "http2_protocol_options on the cluster is still common in configs"
        )]
        let mut protocol = if c.http2_protocol_options.is_some() {
            UpstreamProtocol::Http2
        } else {
            UpstreamProtocol::Http1
        };
        for (key, any) in &c.typed_extension_protocol_options {
            let opath = format!("{path}.typed_extension_protocol_options[{key:?}]");
            if !any.type_url.ends_with(HTTP_PROTOCOL_OPTIONS) {
                return Err(ConfigError::unsupported(
                    &opath,
                    format!("protocol options type {:?}", any.type_url),
                ));
            }
            crate::config::check::check_any(any, &opath)?;
            let opts = upstream_http::HttpProtocolOptions::decode(any.value.as_slice())
                .map_err(|e| ConfigError::invalid(&opath, e))?;
            use upstream_http::http_protocol_options::UpstreamProtocolOptions as U;
            use upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig as P;
            protocol = match opts.upstream_protocol_options {
                Some(U::ExplicitHttpConfig(e)) => match e.protocol_config {
                    Some(P::Http2ProtocolOptions(_)) => UpstreamProtocol::Http2,
                    Some(P::HttpProtocolOptions(_)) | None => UpstreamProtocol::Http1,
                    Some(P::Http3ProtocolOptions(_)) => {
                        return Err(ConfigError::unsupported(opath, "HTTP/3 upstreams"));
                    }
                },
                Some(U::UseDownstreamProtocolConfig(_)) => {
                    // (istiod's sidecar clusters: the upstream speaks what the client spoke)
                    if crate::passthrough::first_time("use_downstream_protocol_config") {
                        tracing::warn!(
                            cluster = %c.name,
                            "use_downstream_protocol_config: upstream requests use HTTP/1.1 (this cluster and any other)"
                        );
                    }
                    UpstreamProtocol::Http1
                }
                _ => {
                    return Err(ConfigError::unsupported(
                        opath,
                        "only explicit_http_config and use_downstream_protocol_config",
                    ));
                }
            };
        }
        let tls = match (&c.transport_socket, socket_for_any_endpoint(c, path)?) {
            (_, Some((ts, tpath))) => Some(upstream_tls(ts, &tpath)?),
            (None, None) => None,
            (Some(ts), None) => Some(upstream_tls(ts, &format!("{path}.transport_socket"))?),
        };
        check_circuit_breakers(c, path)?;
        #[allow(deprecated)]
        if c.max_requests_per_connection.is_some() && !endpoints.is_empty() {
            tracing::warn!(cluster = %c.name, "max_requests_per_connection is not enforced");
        }
        for (i, f) in c.filters.iter().enumerate() {
            let fpath = format!("{path}.filters[{i}].typed_config");
            let any = f
                .typed_config
                .as_ref()
                .ok_or_else(|| ConfigError::invalid(&fpath, "required"))?;
            let any = wasmesh_xds::descriptors::unwrap_typed_struct(any)
                .map_err(|e| ConfigError::invalid(&fpath, e))?
                .unwrap_or_else(|| any.clone());
            if !crate::passthrough::network(&f.name, &any, &fpath)? {
                return Err(ConfigError::unsupported(
                    fpath,
                    format!("upstream network filter {:?}", any.type_url),
                ));
            }
        }
        let stats = ClusterStats::new(store, &c.name);
        let cluster = Cluster {
            name: c.name.clone(),
            discovery: discovery.clone(),
            connect_timeout: c
                .connect_timeout
                .as_ref()
                .map(duration)
                .unwrap_or(Duration::from_secs(5)),
            lb,
            protocol,
            tls,
            metadata: c
                .metadata
                .as_ref()
                .map(|m| Arc::new(crate::route::MetadataProp::build(m))),
            stats,
            hosts: ArcSwap::from_pointee(Vec::new()),
            rr: AtomicUsize::new(0),
        };
        if let Discovery::Static(addrs) = &discovery {
            cluster.set_addresses(addrs);
        }
        Ok(cluster)
    }

    /// Resolves STRICT_DNS names once and installs the result (no-op for STATIC). Keeps the old
    /// hosts if resolution fails.
    pub async fn resolve(&self) {
        let Discovery::StrictDns { names, logical, .. } = &self.discovery else {
            return;
        };
        let mut addrs = Vec::new();
        for (host, port) in names {
            match tokio::net::lookup_host((host.as_str(), *port)).await {
                Ok(it) => {
                    // Envoy's default (AUTO/V4_PREFERRED in practice for localhost): prefer IPv4.
                    let all: Vec<SocketAddr> = it.collect();
                    let v4: Vec<SocketAddr> =
                        all.iter().copied().filter(SocketAddr::is_ipv4).collect();
                    let found = if v4.is_empty() { all } else { v4 };
                    // LOGICAL_DNS connects to the first address only.
                    let keep = if *logical { 1 } else { found.len() };
                    addrs.extend(found.into_iter().take(keep));
                }
                Err(e) => {
                    tracing::warn!(cluster = %self.name, host = %host, error = %e, "DNS resolution failed")
                }
            }
        }
        addrs.dedup();
        if !addrs.is_empty() || self.hosts.load().is_empty() {
            self.set_addresses(&addrs);
        }
    }
}

/// `transport_socket_matches` (istiod's auto-mTLS: `tlsMode-istio` for endpoints labelled
/// `tlsMode: istio`, `tlsMode-disabled` with an empty match for the rest): the socket of the
/// first entry with an empty `match`, which every endpoint without transport-socket metadata
/// gets; `None` for a raw socket or no matches. Entries that match on endpoint metadata are
/// not applied (Istio mTLS needs SDS certificates, which wasmesh does not fetch): their
/// endpoints get the catch-all socket, which a PERMISSIVE Istio peer accepts.
fn socket_for_any_endpoint<'a>(
    c: &'a pbc::Cluster,
    path: &str,
) -> Result<Option<(&'a core::TransportSocket, String)>, ConfigError> {
    let mut chosen = None;
    for (i, m) in c.transport_socket_matches.iter().enumerate() {
        let mpath = format!("{path}.transport_socket_matches[{i}]");
        let catch_all = m.r#match.as_ref().is_none_or(|s| s.fields.is_empty());
        if !catch_all {
            if crate::passthrough::first_time("transport_socket_matches") {
                tracing::warn!(
                    cluster = %c.name,
                    name = %m.name,
                    "transport socket matches on endpoint metadata (Istio auto-mTLS) are not applied: their endpoints use the catch-all socket (this cluster and any other)"
                );
            }
            continue;
        }
        if chosen.is_some() {
            continue;
        }
        let Some(ts) = &m.transport_socket else {
            return Err(ConfigError::invalid(
                format!("{mpath}.transport_socket"),
                "required",
            ));
        };
        let raw = matches!(
            &ts.config_type,
            Some(core::transport_socket::ConfigType::TypedConfig(a)) if a.type_url == RAW_BUFFER_TYPE_URL
        );
        chosen = Some(if raw {
            None
        } else {
            Some((ts, format!("{mpath}.transport_socket")))
        });
    }
    Ok(chosen.flatten())
}

const RAW_BUFFER_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

/// `circuit_breakers`: wasmesh enforces no connection or request limits, as with Envoy's
/// defaults (1024 connections, pending and active requests, 3 retries), so it takes thresholds
/// only at or above those (istiod's are 2^32-1) and refuses lower ones it would not enforce.
fn check_circuit_breakers(c: &pbc::Cluster, path: &str) -> Result<(), ConfigError> {
    let Some(cb) = &c.circuit_breakers else {
        return Ok(());
    };
    for (i, t) in cb.thresholds.iter().enumerate() {
        let tpath = format!("{path}.circuit_breakers.thresholds[{i}]");
        for (name, value, default) in [
            ("max_connections", &t.max_connections, 1024),
            ("max_pending_requests", &t.max_pending_requests, 1024),
            ("max_requests", &t.max_requests, 1024),
            ("max_retries", &t.max_retries, 3),
        ] {
            if let Some(v) = value
                && v.value < default
            {
                return Err(ConfigError::unsupported(
                    format!("{tpath}.{name}"),
                    format!(
                        "a limit below Envoy's default {default} (wasmesh does not enforce circuit breakers)"
                    ),
                ));
            }
        }
    }
    if !cb.per_host_thresholds.is_empty() {
        return Err(ConfigError::unsupported(
            format!("{path}.circuit_breakers.per_host_thresholds"),
            "per-host circuit breakers",
        ));
    }
    Ok(())
}

fn upstream_tls(ts: &core::TransportSocket, path: &str) -> Result<UpstreamTls, ConfigError> {
    use core::transport_socket::ConfigType;
    let Some(ConfigType::TypedConfig(any)) = &ts.config_type else {
        return Err(ConfigError::invalid(
            format!("{path}.typed_config"),
            "required",
        ));
    };
    let tpath = format!("{path}.typed_config");
    if any.type_url != crate::tls::UPSTREAM_TLS_TYPE_URL {
        return Err(ConfigError::unsupported(
            &tpath,
            format!("transport socket {:?}", any.type_url),
        ));
    }
    crate::config::check::check_any(any, &tpath)?;
    let ctx = pbtls::UpstreamTlsContext::decode(any.value.as_slice())
        .map_err(|e| ConfigError::invalid(&tpath, e))?;
    let (config, sni) = crate::tls::client_config(&ctx, &tpath)?;
    Ok(UpstreamTls { config, sni })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(kind: &str, hosts: &[&str]) -> pbc::Cluster {
        let eps: Vec<serde_json::Value> = hosts
            .iter()
            .map(|h| {
                serde_json::json!({"endpoint": {"address": {"socket_address":
                    {"address": h, "port_value": 8080}}}})
            })
            .collect();
        let json = serde_json::json!({"name": "c", "type": kind, "load_assignment":
            {"cluster_name": "c", "endpoints": [{"lb_endpoints": eps}]}});
        let bytes =
            wasmesh_xds::descriptors::from_json("envoy.config.cluster.v3.Cluster", &json).unwrap();
        <pbc::Cluster as prost::Message>::decode(bytes.as_slice()).unwrap()
    }

    /// LOGICAL_DNS: one endpoint, whose first address is the cluster's one host; STRICT_DNS
    /// keeps every address of every name.
    #[tokio::test]
    async fn logical_dns_keeps_the_first_address() {
        let store = Store::new();
        let logical = Cluster::build(&cluster("logical_dns", &["localhost"]), "c", &store).unwrap();
        logical.resolve().await;
        assert_eq!(logical.hosts().len(), 1);
        assert_eq!(logical.hosts()[0].addr.port(), 8080);
        let strict = Cluster::build(
            &cluster("STRICT_DNS", &["localhost", "127.0.0.2"]),
            "c",
            &store,
        )
        .unwrap();
        strict.resolve().await;
        assert_eq!(strict.hosts().len(), 2);
        let e = Cluster::build(
            &cluster("LOGICAL_DNS", &["localhost", "127.0.0.2"]),
            "c",
            &store,
        )
        .unwrap_err();
        assert!(e.to_string().contains("single lb_endpoint"), "{e}");
    }
}

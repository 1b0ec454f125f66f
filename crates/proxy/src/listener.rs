//! Listener configuration: address and filter chains (each with its match, TLS, network filters
//! and terminal filter: the HTTP connection manager or `tcp_proxy`), built from the `Listener`
//! proto by a pure function. A connection gets the chain Envoy would pick: criteria in Envoy's
//! order (destination port, destination IP, server name, transport protocol, application
//! protocols), at each step the most specific match, else the chains that leave it unset, else
//! `default_filter_chain`.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;
use prost::Message;

use crate::access_log::AccessLog;
use crate::config::{BuildEnv, ConfigError, check, socket_address};
use crate::filter::{BuildContext, HttpFilterConfig, ROUTER_TYPE_URL};
use crate::network_filter::NetworkFilterConfig;
use crate::pb::{core, hcm, listener as pbl, tcp_proxy, tls as pbtls};
use crate::route::{ClusterChoice, RouteTable};
use crate::stats::{Counter, HcmStats};

const HCM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const TLS_INSPECTOR_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";

/// A built listener.
pub struct ListenerConfig {
    /// `name`.
    pub name: Arc<str>,
    /// Where it listens.
    pub address: SocketAddr,
    /// `filter_chains`, in config order.
    pub chains: Vec<Arc<FilterChain>>,
    /// `default_filter_chain`: used when no chain matches.
    pub default_chain: Option<Arc<FilterChain>>,
    /// `listener.<addr>.*` (`downstream_cx_total`, `_active`, `_destroy`...).
    pub stats: crate::stats::ListenerStats,
    /// `traffic_direction` (0 unspecified, 1 inbound, 2 outbound): `xds.listener_direction`.
    pub direction: i64,
    /// `metadata` (`xds.listener_metadata`), if set.
    pub metadata: Option<Arc<crate::route::MetadataProp>>,
    /// `listener_filters` has the TLS inspector: only then does a stream know the SNI
    /// (`%REQUESTED_SERVER_NAME%`, `connection.requested_server_name`), as in Envoy.
    pub tls_inspector: bool,
}

/// One filter chain of a listener.
pub struct FilterChain {
    /// Position: the index in `filter_chains`, or [`DEFAULT_CHAIN`].
    pub index: usize,
    /// `name`.
    pub name: String,
    /// `filter_chain_match`.
    pub matcher: ChainMatch,
    /// TLS server config, if the chain has a TLS transport socket.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Its certificate as plugins see it (`connection.*_local_certificate`).
    pub local_cert: Option<Arc<crate::xfcc::CertFacts>>,
    /// Network filters in front of the terminal filter.
    pub network_filters: Vec<NamedNetworkFilter>,
    /// The terminal filter.
    pub terminal: Terminal,
}

/// [`FilterChain::index`] of `default_filter_chain`.
pub const DEFAULT_CHAIN: usize = usize::MAX;

/// `filter_chain_match`: the supported criteria (unset = any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainMatch {
    /// `destination_port`.
    pub destination_port: Option<u16>,
    /// `prefix_ranges` (destination IP), as (network, prefix length).
    pub prefix_ranges: Vec<(std::net::IpAddr, u8)>,
    /// `server_names` (SNI; `*.example.com` wildcards), lower-cased.
    pub server_names: Vec<String>,
    /// `transport_protocol`: `tls` or `raw_buffer`.
    pub transport_protocol: Option<String>,
    /// `application_protocols` (ALPN offered by the client).
    pub application_protocols: Vec<String>,
}

/// What a connection shows before a chain is chosen.
#[derive(Debug, Clone, Default)]
pub struct ConnFacts {
    /// Local (destination) address.
    pub local: Option<SocketAddr>,
    /// SNI, for TLS.
    pub server_name: Option<String>,
    /// `tls` or `raw_buffer`.
    pub transport: &'static str,
    /// ALPN protocols the client offered.
    pub alpn: Vec<String>,
}

impl ListenerConfig {
    /// Every chain, `default_filter_chain` last.
    pub fn all_chains(&self) -> impl Iterator<Item = &Arc<FilterChain>> {
        self.chains.iter().chain(self.default_chain.iter())
    }

    /// The chain at `index` ([`FilterChain::index`]).
    pub fn chain(&self, index: usize) -> Option<&Arc<FilterChain>> {
        if index == DEFAULT_CHAIN {
            self.default_chain.as_ref()
        } else {
            self.chains.get(index)
        }
    }

    /// Whether choosing a chain needs the TLS ClientHello (SNI, ALPN, TLS or not).
    pub fn inspects_tls(&self) -> bool {
        self.chains.iter().any(|c| {
            !c.matcher.server_names.is_empty()
                || c.matcher.transport_protocol.is_some()
                || !c.matcher.application_protocols.is_empty()
        })
    }

    /// The chain Envoy would choose for a connection with `facts`.
    pub fn select(&self, facts: &ConnFacts) -> Option<&Arc<FilterChain>> {
        let mut c: Vec<&Arc<FilterChain>> = self.chains.iter().collect();
        let port = facts.local.map(|a| a.port());
        narrow(&mut c, |m| {
            m.destination_port.map(|p| (Some(p) == port).then_some(0))
        });
        let ip = facts.local.map(|a| a.ip());
        narrow(&mut c, |m| {
            (!m.prefix_ranges.is_empty()).then(|| {
                m.prefix_ranges
                    .iter()
                    .filter(|(net, len)| ip.is_some_and(|ip| in_prefix(ip, *net, *len)))
                    .map(|(_, len)| 255 - u32::from(*len))
                    .min()
            })
        });
        let sni = facts.server_name.as_deref().unwrap_or("");
        narrow(&mut c, |m| {
            (!m.server_names.is_empty()).then(|| {
                m.server_names
                    .iter()
                    .filter_map(|n| server_name_rank(n, sni))
                    .min()
            })
        });
        narrow(&mut c, |m| {
            m.transport_protocol
                .as_ref()
                .map(|t| (t == facts.transport).then_some(0))
        });
        narrow(&mut c, |m| {
            (!m.application_protocols.is_empty()).then(|| {
                m.application_protocols
                    .iter()
                    .any(|p| facts.alpn.contains(p))
                    .then_some(0)
            })
        });
        c.first().copied().or(self.default_chain.as_ref())
    }
}

/// Keeps the chains that match a criterion best (lowest rank), else those that leave it unset.
/// `rank` is `None` for unset, `Some(None)` for set but not matching, `Some(Some(r))` for a match.
fn narrow(c: &mut Vec<&Arc<FilterChain>>, rank: impl Fn(&ChainMatch) -> Option<Option<u32>>) {
    let best = c.iter().filter_map(|f| rank(&f.matcher).flatten()).min();
    match best {
        Some(b) => c.retain(|f| rank(&f.matcher) == Some(Some(b))),
        None => c.retain(|f| rank(&f.matcher).is_none()),
    }
}

/// An exact server name ranks first, then wildcards by longest suffix.
fn server_name_rank(pattern: &str, sni: &str) -> Option<u32> {
    if pattern == sni {
        return Some(0);
    }
    let suffix = pattern.strip_prefix('*')?;
    (sni.len() > suffix.len() && sni.ends_with(suffix)).then(|| 1000 - suffix.len().min(999) as u32)
}

fn in_prefix(ip: std::net::IpAddr, net: std::net::IpAddr, len: u8) -> bool {
    use std::net::IpAddr;
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len.min(32)))
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len.min(128)))
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

impl std::fmt::Debug for ListenerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerConfig")
            .field("name", &self.name)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// A network filter with its name.
pub struct NamedNetworkFilter {
    /// `name`.
    pub name: String,
    /// Its config.
    pub config: Arc<dyn NetworkFilterConfig>,
}

/// An HTTP filter with its name.
pub struct NamedHttpFilter {
    /// `name`.
    pub name: String,
    /// Its config.
    pub config: Arc<dyn HttpFilterConfig>,
}

/// What ends the listener's filter chain.
pub enum Terminal {
    /// `envoy.filters.network.http_connection_manager`.
    Http(Arc<HcmConfig>),
    /// `envoy.filters.network.tcp_proxy`.
    Tcp(Arc<TcpProxyConfig>),
}

/// Downstream codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// HTTP/1.1 or h2 prior knowledge (and ALPN under TLS).
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// h2 only.
    Http2,
}

/// A built HTTP connection manager.
pub struct HcmConfig {
    /// `stat_prefix`.
    pub stat_prefix: String,
    /// `codec_type`.
    pub codec: Codec,
    /// The inline `route_config`.
    pub routes: Arc<RouteTable>,
    /// HTTP filters before the router.
    pub filters: Vec<NamedHttpFilter>,
    /// Whether any filter hooks bodies (else bodies stream without the filter machinery).
    pub filters_use_bodies: bool,
    /// `access_log`.
    pub access_logs: Vec<AccessLog>,
    /// Whether an access log format prints arbitrary headers (they are then kept for it).
    pub log_needs_headers: bool,
    /// `generate_request_id` (default true).
    pub generate_request_id: bool,
    /// `preserve_external_request_id`.
    pub preserve_external_request_id: bool,
    /// `always_set_request_id_in_response`.
    pub always_set_request_id_in_response: bool,
    /// `server_name` (default `envoy`).
    pub server_name: HeaderValue,
    /// `use_remote_address`.
    pub use_remote_address: bool,
    /// `normalize_path`: the path is made canonical before routing and the filters.
    pub normalize_path: bool,
    /// `forward_client_cert_details` is `ALWAYS_FORWARD_ONLY`: a client's
    /// `x-forwarded-client-cert` is always kept; otherwise (the default `SANITIZE`, and every
    /// mode on a connection without a client certificate) it is removed, but see
    /// `keep_xfcc_on_mtls`.
    pub keep_xfcc: bool,
    /// `FORWARD_ONLY`: kept on a connection whose client presented a certificate.
    pub keep_xfcc_on_mtls: bool,
    /// `APPEND_FORWARD` / `SANITIZE_SET` on a chain that asks for client certificates: what
    /// this proxy adds about the client's certificate.
    pub xfcc_set: Option<crate::xfcc::SetCurrent>,
    /// Filter buffer limit (the listener's `per_connection_buffer_limit_bytes`, default 1 MiB).
    pub buffer_limit: usize,
    /// `http.<stat_prefix>.*`.
    pub stats: HcmStats,
}

/// A built `tcp_proxy`.
#[derive(Debug)]
pub struct TcpProxyConfig {
    /// `stat_prefix`.
    pub stat_prefix: String,
    /// `access_log`: one line per connection when it closes.
    pub access_logs: Vec<AccessLog>,
    /// The cluster.
    pub cluster: ClusterChoice,
    /// `tcp.<stat_prefix>.downstream_cx_total`
    pub cx_total: Counter,
    /// `tcp.<stat_prefix>.downstream_cx_rx_bytes_total`
    pub rx_bytes: Counter,
    /// `tcp.<stat_prefix>.downstream_cx_tx_bytes_total`
    pub tx_bytes: Counter,
    /// `tcp.<stat_prefix>.downstream_cx_no_route`
    pub no_route: Counter,
}

fn typed_config<'a>(
    ct: &'a Option<pbl::filter::ConfigType>,
    path: &str,
) -> Result<std::borrow::Cow<'a, crate::pb::Any>, ConfigError> {
    match ct {
        Some(pbl::filter::ConfigType::TypedConfig(any)) => {
            unwrap_typed_struct(any, &format!("{path}.typed_config"))
        }
        _ => Err(ConfigError::invalid(
            format!("{path}.typed_config"),
            "required",
        )),
    }
}

/// A typed config, or the one a `TypedStruct` in its place describes (Envoy unwraps them).
fn unwrap_typed_struct<'a>(
    any: &'a crate::pb::Any,
    path: &str,
) -> Result<std::borrow::Cow<'a, crate::pb::Any>, ConfigError> {
    match wasmesh_xds::descriptors::unwrap_typed_struct(any) {
        Ok(Some(inner)) => Ok(std::borrow::Cow::Owned(inner)),
        Ok(None) => Ok(std::borrow::Cow::Borrowed(any)),
        Err(e) => Err(ConfigError::invalid(path, e)),
    }
}

/// Builds a listener from `l` at `path`.
pub(crate) fn build(
    l: &pbl::Listener,
    path: &str,
    env: &BuildEnv<'_>,
) -> Result<ListenerConfig, ConfigError> {
    let name: Arc<str> = if l.name.is_empty() {
        Arc::from(path)
    } else {
        Arc::from(l.name.as_str())
    };
    let (host, port) = socket_address(
        match &l.address {
            Some(a) => Some(a),
            None => return Err(ConfigError::invalid(format!("{path}.address"), "required")),
        },
        &format!("{path}.address"),
    )?;
    let ip: std::net::IpAddr = host
        .parse()
        .map_err(|e| ConfigError::invalid(format!("{path}.address.socket_address.address"), e))?;
    let address = SocketAddr::new(ip, port);
    for (i, lf) in l.listener_filters.iter().enumerate() {
        let lpath = format!("{path}.listener_filters[{i}]");
        let tu = match &lf.config_type {
            Some(pbl::listener_filter::ConfigType::TypedConfig(a)) => a.type_url.as_str(),
            _ => "",
        };
        if tu != TLS_INSPECTOR_TYPE_URL {
            return Err(ConfigError::unsupported(
                lpath,
                format!("listener filter {:?} (tls_inspector is)", lf.name),
            ));
        }
    }
    let stat_addr = crate::stats::listener_stat_address(address);
    let buffer_limit = l
        .per_connection_buffer_limit_bytes
        .as_ref()
        .map_or(1024 * 1024, |v| v.value as usize);
    if l.filter_chains.is_empty() && l.default_filter_chain.is_none() {
        return Err(ConfigError::invalid(
            format!("{path}.filter_chains"),
            "one filter chain is required",
        ));
    }
    let mut chains: Vec<Arc<FilterChain>> = Vec::with_capacity(l.filter_chains.len());
    for (i, chain) in l.filter_chains.iter().enumerate() {
        let cpath = format!("{path}.filter_chains[{i}]");
        let built = build_chain(chain, i, &cpath, (&name, &stat_addr), buffer_limit, env)?;
        if let Some(other) = chains.iter().find(|c| c.matcher == built.matcher) {
            // Envoy's message for the same mistake.
            return Err(ConfigError::invalid(
                cpath,
                format!(
                    "filter chain '{}' has the same matching rules defined as '{}' (filter_chains[{}])",
                    chain.name, other.name, other.index
                ),
            ));
        }
        chains.push(Arc::new(built));
    }
    let default_chain = match &l.default_filter_chain {
        Some(chain) => Some(Arc::new(build_chain(
            chain,
            DEFAULT_CHAIN,
            &format!("{path}.default_filter_chain"),
            (&name, &stat_addr),
            buffer_limit,
            env,
        )?)),
        None => None,
    };
    let stats = crate::stats::ListenerStats::new(
        env.store,
        crate::stats::ListenerScope::Address(&stat_addr),
    );
    Ok(ListenerConfig {
        name,
        address,
        chains,
        default_chain,
        stats,
        direction: i64::from(l.traffic_direction),
        metadata: l
            .metadata
            .as_ref()
            .map(|m| Arc::new(crate::route::MetadataProp::build(m))),
        tls_inspector: !l.listener_filters.is_empty(),
    })
}

/// Builds filter chain `chain` (at `cpath`) of listener `name`.
fn build_chain(
    chain: &pbl::FilterChain,
    index: usize,
    cpath: &str,
    (name, stat_addr): (&Arc<str>, &str),
    buffer_limit: usize,
    env: &BuildEnv<'_>,
) -> Result<FilterChain, ConfigError> {
    let matcher = chain_match(chain.filter_chain_match.as_ref(), cpath)?;
    let (tls, client_certs, local_cert) = match &chain.transport_socket {
        None => (None, None, None),
        Some(ts) => {
            let (cfg, client_certs, local) =
                downstream_tls(ts, &format!("{cpath}.transport_socket"))?;
            (Some(cfg), client_certs, local)
        }
    };
    if tls.is_none() && matcher.transport_protocol.as_deref() == Some("tls") {
        return Err(ConfigError::unsupported(
            format!("{cpath}.filter_chain_match.transport_protocol"),
            "TLS passthrough (a `tls` chain without a TLS transport socket)",
        ));
    }
    let name = Arc::clone(name);
    let mut network_filters = Vec::new();
    let mut terminal = None;
    for (i, f) in chain.filters.iter().enumerate() {
        let fpath = format!("{cpath}.filters[{i}]");
        if terminal.is_some() {
            return Err(ConfigError::invalid(
                fpath,
                "no filter may follow the terminal filter",
            ));
        }
        let any = typed_config(&f.config_type, &fpath)?;
        let any = any.as_ref();
        let tpath = format!("{fpath}.typed_config");
        match any.type_url.as_str() {
            HCM_TYPE_URL => {
                check::check_any(any, &tpath)?;
                let cfg = hcm::HttpConnectionManager::decode(any.value.as_slice())
                    .map_err(|e| ConfigError::invalid(&tpath, e))?;
                terminal = Some(Terminal::Http(Arc::new(build_hcm(
                    &cfg,
                    &tpath,
                    (&name, stat_addr),
                    buffer_limit,
                    client_certs.clone(),
                    env,
                )?)));
            }
            TCP_PROXY_TYPE_URL => {
                check::check_any(any, &tpath)?;
                let cfg = tcp_proxy::TcpProxy::decode(any.value.as_slice())
                    .map_err(|e| ConfigError::invalid(&tpath, e))?;
                terminal = Some(Terminal::Tcp(Arc::new(build_tcp_proxy(&cfg, &tpath, env)?)));
            }
            _ if crate::passthrough::network(&f.name, any, &tpath)? => {}
            tu => {
                let builder =
                    env.registry
                        .network(tu)
                        .ok_or_else(|| ConfigError::UnknownFilter {
                            path: tpath.clone(),
                            type_url: tu.to_string(),
                            known: known(
                                env.registry.network_type_urls(),
                                &[HCM_TYPE_URL, TCP_PROXY_TYPE_URL],
                            ),
                        })?;
                let ctx = env.context(&f.name, &name, "", &fpath);
                let config = builder(any, &ctx)?;
                network_filters.push(NamedNetworkFilter {
                    name: f.name.clone(),
                    config,
                });
            }
        }
    }
    let terminal = terminal.ok_or_else(|| {
        ConfigError::invalid(
            format!("{cpath}.filters"),
            "the last filter must be http_connection_manager or tcp_proxy",
        )
    })?;
    Ok(FilterChain {
        index,
        name: chain.name.clone(),
        matcher,
        tls,
        local_cert,
        network_filters,
        terminal,
    })
}

/// `filter_chain_match` → [`ChainMatch`].
fn chain_match(m: Option<&pbl::FilterChainMatch>, cpath: &str) -> Result<ChainMatch, ConfigError> {
    let Some(m) = m else {
        return Ok(ChainMatch::default());
    };
    let mpath = format!("{cpath}.filter_chain_match");
    let destination_port = match &m.destination_port {
        None => None,
        Some(p) => Some(u16::try_from(p.value).map_err(|_| {
            ConfigError::invalid(format!("{mpath}.destination_port"), "must be 1..65535")
        })?),
    };
    let mut prefix_ranges = Vec::new();
    for (i, r) in m.prefix_ranges.iter().enumerate() {
        let ip: std::net::IpAddr = r.address_prefix.parse().map_err(|e| {
            ConfigError::invalid(format!("{mpath}.prefix_ranges[{i}].address_prefix"), e)
        })?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = r.prefix_len.as_ref().map_or(max, |v| v.value);
        if len > max {
            return Err(ConfigError::invalid(
                format!("{mpath}.prefix_ranges[{i}].prefix_len"),
                format!("at most {max}"),
            ));
        }
        prefix_ranges.push((ip, len as u8));
    }
    let transport_protocol = match m.transport_protocol.as_str() {
        "" => None,
        t @ ("tls" | "raw_buffer") => Some(t.to_string()),
        other => {
            return Err(ConfigError::unsupported(
                format!("{mpath}.transport_protocol"),
                format!("{other:?} (tls and raw_buffer are)"),
            ));
        }
    };
    Ok(ChainMatch {
        destination_port,
        prefix_ranges,
        server_names: m
            .server_names
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect(),
        transport_protocol,
        application_protocols: m.application_protocols.clone(),
    })
}

fn known<'a>(mut registered: Vec<&'a str>, builtin: &[&'a str]) -> String {
    registered.extend_from_slice(builtin);
    registered.sort_unstable();
    registered.join(", ")
}

/// The chain's TLS server config and, when it may ask clients for a certificate (it has a
/// validation context), its own certificate's URI SANs.
/// A chain's TLS server config, its certificate's URI SANs when it verifies client
/// certificates (for `x-forwarded-client-cert`), and its certificate's facts.
type DownstreamTls = (
    Arc<rustls::ServerConfig>,
    Option<Vec<String>>,
    Option<Arc<crate::xfcc::CertFacts>>,
);

fn downstream_tls(ts: &core::TransportSocket, path: &str) -> Result<DownstreamTls, ConfigError> {
    use core::transport_socket::ConfigType;
    let Some(ConfigType::TypedConfig(any)) = &ts.config_type else {
        return Err(ConfigError::invalid(
            format!("{path}.typed_config"),
            "required",
        ));
    };
    let tpath = format!("{path}.typed_config");
    if any.type_url != crate::tls::DOWNSTREAM_TLS_TYPE_URL {
        return Err(ConfigError::unsupported(
            &tpath,
            format!("transport socket {:?}", any.type_url),
        ));
    }
    check::check_any(any, &tpath)?;
    let ctx = pbtls::DownstreamTlsContext::decode(any.value.as_slice())
        .map_err(|e| ConfigError::invalid(&tpath, e))?;
    let client_certs = ctx
        .common_tls_context
        .as_ref()
        .is_some_and(|c| c.validation_context_type.is_some());
    let by = if client_certs {
        Some(crate::tls::local_uri_sans(&ctx, &tpath)?)
    } else {
        None
    };
    let local = crate::tls::local_cert(&ctx, &tpath)?
        .and_then(|der| crate::xfcc::CertFacts::from_der(&der))
        .map(Arc::new);
    Ok((crate::tls::server_config(&ctx, &tpath)?, by, local))
}

fn build_hcm(
    cfg: &hcm::HttpConnectionManager,
    path: &str,
    (listener, stat_addr): (&str, &str),
    buffer_limit: usize,
    client_certs: Option<Vec<String>>,
    env: &BuildEnv<'_>,
) -> Result<HcmConfig, ConfigError> {
    let (keep_xfcc, keep_xfcc_on_mtls, xfcc_set) = forward_client_cert(cfg, client_certs)?;
    use hcm::http_connection_manager::{CodecType, RouteSpecifier};
    let codec = match CodecType::try_from(cfg.codec_type) {
        Ok(CodecType::Auto) => Codec::Auto,
        Ok(CodecType::Http1) => Codec::Http1,
        Ok(CodecType::Http2) => Codec::Http2,
        _ => {
            return Err(ConfigError::unsupported(
                format!("{path}.codec_type"),
                "only AUTO, HTTP1, HTTP2",
            ));
        }
    };
    if cfg.stat_prefix.is_empty() {
        return Err(ConfigError::invalid(
            format!("{path}.stat_prefix"),
            "required",
        ));
    }
    let routes = match &cfg.route_specifier {
        Some(RouteSpecifier::RouteConfig(rc)) => {
            RouteTable::build(rc, &format!("{path}.route_config"), env.cluster_names)?
        }
        _ => {
            return Err(ConfigError::unsupported(
                path,
                "routes must be given inline as route_config (rds is not supported yet)",
            ));
        }
    };
    let mut filters = Vec::new();
    let mut saw_router = false;
    for (i, f) in cfg.http_filters.iter().enumerate() {
        let fpath = format!("{path}.http_filters[{i}]");
        if saw_router {
            return Err(ConfigError::invalid(
                fpath,
                "the router must be the last HTTP filter",
            ));
        }
        let any = match &f.config_type {
            Some(hcm::http_filter::ConfigType::TypedConfig(a)) => {
                unwrap_typed_struct(a, &format!("{fpath}.typed_config"))?
            }
            _ => {
                return Err(ConfigError::invalid(
                    format!("{fpath}.typed_config"),
                    "required",
                ));
            }
        };
        let any = any.as_ref();
        if crate::passthrough::http(&f.name, any, &format!("{fpath}.typed_config"))? {
            continue;
        }
        if any.type_url == ROUTER_TYPE_URL {
            check::check_any(any, &format!("{fpath}.typed_config"))?;
            saw_router = true;
            continue;
        }
        let builder =
            env.registry
                .http(&any.type_url)
                .ok_or_else(|| ConfigError::UnknownFilter {
                    path: format!("{fpath}.typed_config"),
                    type_url: any.type_url.clone(),
                    known: known(env.registry.http_type_urls(), &[ROUTER_TYPE_URL]),
                })?;
        let ctx = env.context(&f.name, listener, &cfg.stat_prefix, &fpath);
        filters.push(NamedHttpFilter {
            name: f.name.clone(),
            config: builder(any, &ctx)?,
        });
    }
    if !saw_router {
        return Err(ConfigError::invalid(
            format!("{path}.http_filters"),
            "the last HTTP filter must be envoy.filters.http.router",
        ));
    }
    // (IMPLEMENTATION_SPECIFIC_DEFAULT and KEEP_UNCHANGED: escaped slashes stay as sent)
    if cfg.path_with_escaped_slashes_action > 1 {
        return Err(ConfigError::unsupported(
            format!("{path}.path_with_escaped_slashes_action"),
            "only KEEP_UNCHANGED",
        ));
    }
    if let Some((i, u)) =
        cfg.upgrade_configs.iter().enumerate().find(|(_, u)| {
            !u.upgrade_type.eq_ignore_ascii_case("websocket") || !u.filters.is_empty()
        })
    {
        return Err(ConfigError::unsupported(
            format!("{path}.upgrade_configs[{i}]"),
            format!(
                "upgrade type {:?} (only websocket, without filters, is accepted)",
                u.upgrade_type
            ),
        ));
    }
    if !cfg.upgrade_configs.is_empty() && crate::passthrough::first_time("upgrade_configs") {
        tracing::warn!(
            stat_prefix = %cfg.stat_prefix,
            "upgrade_configs: websocket upgrades are still refused with 403 (not proxied yet)"
        );
    }
    let access_logs = access_logs(&cfg.access_log, path, env, listener, &cfg.stat_prefix)?;
    let server_name = if cfg.server_name.is_empty() {
        HeaderValue::from_static("envoy")
    } else {
        HeaderValue::from_str(&cfg.server_name)
            .map_err(|e| ConfigError::invalid(format!("{path}.server_name"), e))?
    };
    let filters_use_bodies = filters.iter().any(|f| f.config.uses_bodies());
    Ok(HcmConfig {
        stats: HcmStats::for_listener(
            env.store,
            &cfg.stat_prefix,
            crate::stats::ListenerScope::Address(stat_addr),
        ),
        stat_prefix: cfg.stat_prefix.clone(),
        codec,
        routes: Arc::new(routes),
        filters,
        filters_use_bodies,
        log_needs_headers: access_logs.iter().any(AccessLog::needs_headers),
        access_logs,
        generate_request_id: cfg.generate_request_id.as_ref().is_none_or(|b| b.value),
        preserve_external_request_id: cfg.preserve_external_request_id,
        always_set_request_id_in_response: cfg.always_set_request_id_in_response,
        server_name,
        use_remote_address: cfg.use_remote_address.as_ref().is_some_and(|b| b.value),
        normalize_path: cfg.normalize_path.as_ref().is_some_and(|b| b.value),
        keep_xfcc,
        keep_xfcc_on_mtls,
        xfcc_set,
        buffer_limit,
    })
}

/// `forward_client_cert_details`: whether a client's `x-forwarded-client-cert` is kept (always,
/// and on a connection whose client presented a certificate), and what this proxy sets there
/// on such a connection. On a connection without a client certificate Envoy removes the header
/// in every mode but `ALWAYS_FORWARD_ONLY` (4); `FORWARD_ONLY` (1) keeps it on mTLS
/// connections; `APPEND_FORWARD` (2) and `SANITIZE_SET` (3) add or set this proxy's view of the
/// client's certificate (`set_current_client_cert_details`), which needs a chain that asks for
/// one (`client_certs`: our certificate's URI SANs, for `By=`). Checked against Envoy 1.40.
fn forward_client_cert(
    cfg: &hcm::HttpConnectionManager,
    client_certs: Option<Vec<String>>,
) -> Result<(bool, bool, Option<crate::xfcc::SetCurrent>), ConfigError> {
    let details = cfg
        .set_current_client_cert_details
        .as_ref()
        .map(crate::xfcc::Detail::from_config)
        .unwrap_or_default();
    Ok(match (cfg.forward_client_cert_details, client_certs) {
        (1, _) => (false, true, None),
        (4, _) => (true, true, None),
        // APPEND_FORWARD keeps the client's header on an mTLS connection and appends to it.
        (mode @ (2 | 3), Some(by)) => (
            false,
            mode == 2,
            Some(crate::xfcc::SetCurrent {
                append: mode == 2,
                by,
                details,
            }),
        ),
        _ => (false, false, None),
    })
}

/// The `access_log` entries of an HTTP connection manager or TCP proxy at `path`.
fn access_logs(
    logs: &[envoy_types::pb::envoy::config::accesslog::v3::AccessLog],
    path: &str,
    env: &BuildEnv<'_>,
    listener: &str,
    stat_prefix: &str,
) -> Result<Vec<AccessLog>, ConfigError> {
    use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType;
    logs.iter()
        .enumerate()
        .map(|(i, a)| {
            let apath = format!("{path}.access_log[{i}]");
            match &a.config_type {
                Some(ConfigType::TypedConfig(any))
                    if any.type_url == crate::wasm_filter::WASM_ACCESS_LOG_TYPE_URL =>
                {
                    let tpath = format!("{apath}.typed_config");
                    let cx = env.context(&a.name, listener, stat_prefix, &tpath);
                    Ok(AccessLog {
                        sink: crate::access_log::Sink::Plugin(
                            crate::wasm_filter::build_access_log(any, &cx)?,
                        ),
                        format: crate::access_log::LogFormat::Default,
                    })
                }
                Some(ConfigType::TypedConfig(any)) => {
                    AccessLog::build(any, &format!("{apath}.typed_config"))
                }
                _ => Err(ConfigError::invalid(
                    format!("{apath}.typed_config"),
                    "required",
                )),
            }
        })
        .collect()
}

fn build_tcp_proxy(
    cfg: &tcp_proxy::TcpProxy,
    path: &str,
    env: &BuildEnv<'_>,
) -> Result<TcpProxyConfig, ConfigError> {
    use tcp_proxy::tcp_proxy::ClusterSpecifier;
    if cfg.stat_prefix.is_empty() {
        return Err(ConfigError::invalid(
            format!("{path}.stat_prefix"),
            "required",
        ));
    }
    let cluster = match &cfg.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) => {
            if !env.cluster_names.iter().any(|n| n == c) {
                return Err(ConfigError::invalid(
                    format!("{path}.cluster"),
                    format!("unknown cluster {c:?}"),
                ));
            }
            ClusterChoice::Single(Arc::from(c.as_str()))
        }
        _ => {
            return Err(ConfigError::invalid(
                format!("{path}.cluster"),
                "required (weighted_clusters is not supported)",
            ));
        }
    };
    let p = &cfg.stat_prefix;
    let tag = [("envoy_tcp_prefix", p.as_str())];
    let c = |n: &str| {
        env.store
            .counter(&format!("tcp.{p}.{n}"), &format!("envoy_tcp_{n}"), &tag)
    };
    // The rest of Envoy's tcp_proxy stats, which nothing here changes (no idle timeout, no
    // flushing after close, no on-demand routing): listed at 0 as Envoy lists them.
    for n in [
        "downstream_cx_drain_close",
        "downstream_cx_overload_close",
        "downstream_flow_control_paused_reading_total",
        "downstream_flow_control_resumed_reading_total",
        "early_data_received_count_total",
        "idle_timeout",
        "max_downstream_connection_duration",
        "route_delayed_total",
        "upstream_flush_total",
    ] {
        let _ = c(n);
    }
    for n in [
        "downstream_cx_rx_bytes_buffered",
        "downstream_cx_tx_bytes_buffered",
        "upstream_flush_active",
    ] {
        let _ = env
            .store
            .gauge(&format!("tcp.{p}.{n}"), &format!("envoy_tcp_{n}"), &tag);
    }
    Ok(TcpProxyConfig {
        access_logs: access_logs(&cfg.access_log, path, env, "", &cfg.stat_prefix)?,
        stat_prefix: p.clone(),
        cluster,
        cx_total: c("downstream_cx_total"),
        rx_bytes: c("downstream_cx_rx_bytes_total"),
        tx_bytes: c("downstream_cx_tx_bytes_total"),
        no_route: c("downstream_cx_no_route"),
    })
}

impl BuildEnv<'_> {
    fn context(
        &self,
        filter_name: &str,
        listener: &str,
        stat_prefix: &str,
        path: &str,
    ) -> BuildContext {
        BuildContext {
            node: Arc::clone(self.node),
            filter_name: filter_name.to_string(),
            listener_name: listener.to_string(),
            stat_prefix: stat_prefix.to_string(),
            field_path: path.to_string(),
            cluster_names: Arc::from(self.cluster_names),
            cluster_endpoints: Arc::clone(self.cluster_endpoints),
            stats: self.store.clone(),
            concurrency: self.concurrency,
        }
    }
}

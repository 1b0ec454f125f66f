//! Listener configuration: address, TLS, network filters and the terminal filter (the HTTP
//! connection manager or `tcp_proxy`), built from the `Listener` proto by a pure function.

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
use crate::stats::{Counter, Gauge, HcmStats};

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
    /// TLS server config, if the filter chain has a TLS transport socket.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Network filters in front of the terminal filter.
    pub network_filters: Vec<NamedNetworkFilter>,
    /// The terminal filter.
    pub terminal: Terminal,
    /// `listener.<addr>.downstream_cx_total`
    pub cx_total: Counter,
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
    /// The cluster.
    pub cluster: ClusterChoice,
    /// `tcp.<stat_prefix>.downstream_cx_total`
    pub cx_total: Counter,
    /// `tcp.<stat_prefix>.upstream_flush_active`-style active gauge (`downstream_cx_active`... Envoy has none; we expose `tcp.<p>.downstream_cx_active` for parity with HTTP).
    pub cx_active: Gauge,
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
) -> Result<&'a crate::pb::Any, ConfigError> {
    match ct {
        Some(pbl::filter::ConfigType::TypedConfig(any)) => Ok(any),
        _ => Err(ConfigError::invalid(
            format!("{path}.typed_config"),
            "required",
        )),
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
    let chain = match l.filter_chains.as_slice() {
        [c] => c,
        [] => {
            return Err(ConfigError::invalid(
                format!("{path}.filter_chains"),
                "one filter chain is required",
            ));
        }
        _ => {
            return Err(ConfigError::unsupported(
                format!("{path}.filter_chains"),
                "more than one filter chain",
            ));
        }
    };
    let cpath = format!("{path}.filter_chains[0]");
    let tls = match &chain.transport_socket {
        None => None,
        Some(ts) => Some(downstream_tls(ts, &format!("{cpath}.transport_socket"))?),
    };
    let buffer_limit = l
        .per_connection_buffer_limit_bytes
        .as_ref()
        .map_or(1024 * 1024, |v| v.value as usize);
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
        let tpath = format!("{fpath}.typed_config");
        match any.type_url.as_str() {
            HCM_TYPE_URL => {
                check::check_any(any, &tpath)?;
                let cfg = hcm::HttpConnectionManager::decode(any.value.as_slice())
                    .map_err(|e| ConfigError::invalid(&tpath, e))?;
                terminal = Some(Terminal::Http(Arc::new(build_hcm(
                    &cfg,
                    &tpath,
                    &name,
                    buffer_limit,
                    env,
                )?)));
            }
            TCP_PROXY_TYPE_URL => {
                check::check_any(any, &tpath)?;
                let cfg = tcp_proxy::TcpProxy::decode(any.value.as_slice())
                    .map_err(|e| ConfigError::invalid(&tpath, e))?;
                terminal = Some(Terminal::Tcp(Arc::new(build_tcp_proxy(&cfg, &tpath, env)?)));
            }
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
    let stat_addr = address.to_string().replace(':', "_");
    let cx_total = env.store.counter(
        &format!("listener.{stat_addr}.downstream_cx_total"),
        "envoy_listener_downstream_cx_total",
        &[("envoy_listener_address", &stat_addr)],
    );
    Ok(ListenerConfig {
        name,
        address,
        tls,
        network_filters,
        terminal,
        cx_total,
    })
}

fn known<'a>(mut registered: Vec<&'a str>, builtin: &[&'a str]) -> String {
    registered.extend_from_slice(builtin);
    registered.sort_unstable();
    registered.join(", ")
}

fn downstream_tls(
    ts: &core::TransportSocket,
    path: &str,
) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
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
    crate::tls::server_config(&ctx, &tpath)
}

fn build_hcm(
    cfg: &hcm::HttpConnectionManager,
    path: &str,
    listener: &str,
    buffer_limit: usize,
    env: &BuildEnv<'_>,
) -> Result<HcmConfig, ConfigError> {
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
            Some(hcm::http_filter::ConfigType::TypedConfig(a)) => a,
            _ => {
                return Err(ConfigError::invalid(
                    format!("{fpath}.typed_config"),
                    "required",
                ));
            }
        };
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
    let mut access_logs = Vec::new();
    for (i, a) in cfg.access_log.iter().enumerate() {
        let apath = format!("{path}.access_log[{i}]");
        let any = match &a.config_type {
            Some(
                envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType::TypedConfig(
                    any,
                ),
            ) => any,
            _ => {
                return Err(ConfigError::invalid(
                    format!("{apath}.typed_config"),
                    "required",
                ));
            }
        };
        access_logs.push(AccessLog::build(any, &format!("{apath}.typed_config"))?);
    }
    let server_name = if cfg.server_name.is_empty() {
        HeaderValue::from_static("envoy")
    } else {
        HeaderValue::from_str(&cfg.server_name)
            .map_err(|e| ConfigError::invalid(format!("{path}.server_name"), e))?
    };
    let filters_use_bodies = filters.iter().any(|f| f.config.uses_bodies());
    Ok(HcmConfig {
        stats: HcmStats::new(env.store, &cfg.stat_prefix),
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
        buffer_limit,
    })
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
            ClusterChoice::Single(c.clone())
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
    Ok(TcpProxyConfig {
        stat_prefix: p.clone(),
        cluster,
        cx_total: c("downstream_cx_total"),
        cx_active: env.store.gauge(
            &format!("tcp.{p}.downstream_cx_active"),
            "envoy_tcp_downstream_cx_active",
            &tag,
        ),
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
            stats: self.store.clone(),
            concurrency: self.concurrency,
        }
    }
}

//! Proxy configuration: the Envoy v3 bootstrap (YAML/JSON) parsed through Envoy's descriptors,
//! checked against the subset we implement, and built by pure functions into immutable internal
//! types ([`ProxyConfig`]) that the workers read through an `ArcSwap`.

use std::fmt;

/// A configuration error: what is wrong and where (the field path in the bootstrap).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The YAML/JSON does not parse, or does not map onto the Envoy protos (unknown field,
    /// wrong type).
    #[error("invalid bootstrap: {0}")]
    Parse(String),
    /// A field is set that wasmesh does not implement (never silently ignored).
    #[error("unsupported field {path}: {detail} (see the README for the supported subset)")]
    Unsupported {
        /// Field path, e.g. `static_resources.clusters[0].lb_policy`.
        path: String,
        /// What is unsupported.
        detail: String,
    },
    /// A field has a value that cannot work.
    #[error("invalid {path}: {reason}")]
    Invalid {
        /// Field path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A filter's `typed_config` type is not registered.
    #[error("{path}: unknown filter type {type_url:?}; supported: {known}")]
    UnknownFilter {
        /// Field path of the filter.
        path: String,
        /// Its `typed_config` type URL.
        type_url: String,
        /// The registered type URLs.
        known: String,
    },
    /// A filter builder rejected its config.
    #[error("{path}: filter {name:?}: {reason}")]
    Filter {
        /// Field path of the filter.
        path: String,
        /// Filter name.
        name: String,
        /// Why it was rejected.
        reason: String,
    },
}

impl ConfigError {
    /// An unsupported-field error.
    pub fn unsupported(path: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Unsupported {
            path: path.into(),
            detail: detail.into(),
        }
    }

    /// An invalid-value error.
    pub fn invalid(path: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self::Invalid {
            path: path.into(),
            reason: reason.to_string(),
        }
    }

    /// A filter builder's error, for filters outside this module (e.g. the Wasm filter):
    /// `ConfigError::filter(ctx, "vm_config.code: file not found")`.
    pub fn filter(ctx: &crate::filter::BuildContext, reason: impl fmt::Display) -> Self {
        Self::Filter {
            path: ctx.field_path.clone(),
            name: ctx.filter_name.clone(),
            reason: reason.to_string(),
        }
    }
}

pub mod bootstrap;
pub mod check;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::access_log::AccessLog;
use crate::cluster::Cluster;
use crate::filter::{NodeInfo, Registry};
use crate::listener::ListenerConfig;
use crate::pb::{self, bootstrap::Bootstrap};
use crate::stats::Store;

/// What building a config needs besides the bootstrap.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Filter builders by type URL.
    pub registry: Registry,
    /// The proxy's metric store (shared across config versions, so counters survive swaps).
    pub store: Store,
    /// Number of workers.
    pub concurrency: usize,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            registry: Registry::with_builtin_filters(),
            store: Store::new(),
            concurrency: 1,
        }
    }
}

/// What listener/filter builders see.
pub(crate) struct BuildEnv<'a> {
    pub(crate) registry: &'a Registry,
    pub(crate) store: &'a Store,
    pub(crate) node: &'a Arc<NodeInfo>,
    pub(crate) cluster_names: &'a [String],
    pub(crate) cluster_endpoints: &'a Arc<HashMap<String, SocketAddr>>,
    pub(crate) concurrency: usize,
}

/// The immutable, validated proxy config.
#[derive(Debug)]
pub struct ProxyConfig {
    /// The node.
    pub node: Arc<NodeInfo>,
    /// `admin.address`.
    pub admin: Option<SocketAddr>,
    /// `admin.access_log` (and `admin.access_log_path`).
    pub admin_logs: Vec<AccessLog>,
    /// Listeners, in bootstrap order.
    pub listeners: Vec<Arc<ListenerConfig>>,
    /// Clusters by name.
    pub clusters: HashMap<String, Arc<Cluster>>,
    /// Cluster names in bootstrap order.
    pub cluster_order: Vec<String>,
    /// The bootstrap it was built from (for `/config_dump`).
    pub bootstrap: Bootstrap,
    /// `bootstrap_extensions` Wasm services and whether each is a singleton (main thread
    /// only) or runs on every worker.
    pub services: Vec<Service>,
    /// Set when the config came over xDS: what `/config_dump` shows instead of `bootstrap`.
    pub dynamic: Option<Arc<crate::xds::DynamicDump>>,
    /// When it was built (`last_updated` of its static resources in `/config_dump`).
    pub loaded_at: std::time::SystemTime,
}

/// A `bootstrap_extensions` Wasm service.
pub struct Service {
    /// The plugin (started by `warm`).
    pub config: Arc<dyn crate::filter::HttpFilterConfig>,
    /// `singleton`: on the main thread only, else on every worker.
    pub singleton: bool,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("singleton", &self.singleton)
            .finish_non_exhaustive()
    }
}

/// The bootstrap extension that enables internal listeners.
const INTERNAL_LISTENER: &str = "/envoy.extensions.bootstrap.internal_listener.v3.InternalListener";

/// Builds the proxy config from a bootstrap: a pure function of its inputs (besides opening
/// access log files and reading certificate files).
pub fn build(bootstrap: &Bootstrap, opts: &BuildOptions) -> Result<ProxyConfig, ConfigError> {
    check::check_message(bootstrap, "envoy.config.bootstrap.v3.Bootstrap", "")?;
    let node = node_info(bootstrap);
    if let Some(sc) = &bootstrap.stats_config {
        let specs = crate::stats::build_tag_specs(&sc.stats_tags)?;
        opts.store.tag_specs().set(
            specs,
            sc.use_all_default_tags.as_ref().is_none_or(|b| b.value),
        );
        let matcher = match &sc.stats_matcher {
            Some(m) => crate::stats::Matcher::build(m)?,
            None => crate::stats::Matcher::All,
        };
        opts.store.matcher().set(matcher);
    }
    if let Some(d) = &bootstrap.stats_flush_interval {
        // Envoy's bounds: at least 1 ms, under 300 s.
        let ms = d.seconds.saturating_mul(1000) + i64::from(d.nanos / 1_000_000);
        if !(1..300_000).contains(&ms) {
            return Err(ConfigError::invalid(
                "stats_flush_interval",
                "must be at least 1ms and under 300s",
            ));
        }
        opts.store
            .set_flush_interval(std::time::Duration::from_millis(ms.unsigned_abs()));
    }
    let admin = admin_address(bootstrap)?;
    let admin_logs = admin_access_logs(bootstrap)?;
    let default_sr = pb::bootstrap::bootstrap::StaticResources::default();
    let sr = bootstrap.static_resources.as_ref().unwrap_or(&default_sr);
    let mut clusters = HashMap::new();
    let mut cluster_order = Vec::new();
    for (i, c) in sr.clusters.iter().enumerate() {
        let path = format!("static_resources.clusters[{i}]");
        let built = Cluster::build(c, &path, &opts.store)?;
        if clusters.insert(c.name.clone(), Arc::new(built)).is_some() {
            return Err(ConfigError::invalid(
                format!("{path}.name"),
                format!("duplicate cluster name {:?}", c.name),
            ));
        }
        cluster_order.push(c.name.clone());
    }
    let cluster_endpoints: Arc<HashMap<String, SocketAddr>> = Arc::new(
        clusters
            .iter()
            .filter_map(|(n, c)| Some((n.clone(), c.hosts().first()?.addr)))
            .collect(),
    );
    let env = BuildEnv {
        registry: &opts.registry,
        store: &opts.store,
        node: &node,
        cluster_names: &cluster_order,
        cluster_endpoints: &cluster_endpoints,
        concurrency: opts.concurrency,
    };
    let mut listeners: Vec<Arc<ListenerConfig>> = Vec::new();
    for (i, l) in sr.listeners.iter().enumerate() {
        let path = format!("static_resources.listeners[{i}]");
        let built = crate::listener::build(l, &path, &env)?;
        if listeners.iter().any(|o| o.name == built.name) {
            return Err(ConfigError::invalid(
                format!("{path}.name"),
                format!("duplicate listener name {:?}", l.name),
            ));
        }
        listeners.push(Arc::new(built));
    }
    let mut services = Vec::new();
    for (i, ext) in bootstrap.bootstrap_extensions.iter().enumerate() {
        let path = format!("bootstrap_extensions[{i}]");
        let Some(any) = ext.typed_config.as_ref() else {
            return Err(ConfigError::invalid(
                format!("{path}.typed_config"),
                "required",
            ));
        };
        if any.type_url.ends_with(INTERNAL_LISTENER) {
            // Only enables listeners on `envoy_internal_address`es, which are refused where
            // used; Istio's bootstrap always lists it.
            continue;
        }
        if !any
            .type_url
            .ends_with("/envoy.extensions.wasm.v3.WasmService")
        {
            return Err(ConfigError::unsupported(
                format!("{path}.typed_config"),
                format!(
                    "bootstrap extension {} (envoy.extensions.wasm.v3.WasmService is supported)",
                    any.type_url
                ),
            ));
        }
        let cx = crate::filter::BuildContext {
            node: Arc::clone(&node),
            filter_name: ext.name.clone(),
            listener_name: String::new(),
            stat_prefix: String::new(),
            field_path: path,
            cluster_names: Arc::from(cluster_order.as_slice()),
            cluster_endpoints: Arc::clone(&cluster_endpoints),
            stats: opts.store.clone(),
            concurrency: opts.concurrency,
        };
        let (config, singleton) = crate::wasm_filter::build_service(any, &cx)?;
        services.push(Service { config, singleton });
    }
    Ok(ProxyConfig {
        node,
        admin,
        admin_logs,
        listeners,
        clusters,
        cluster_order,
        bootstrap: bootstrap.clone(),
        services,
        dynamic: None,
        loaded_at: std::time::SystemTime::now(),
    })
}

fn node_info(bootstrap: &Bootstrap) -> Arc<NodeInfo> {
    Arc::new(match &bootstrap.node {
        Some(n) => NodeInfo {
            id: n.id.clone(),
            cluster: n.cluster.clone(),
            metadata: n.metadata.clone(),
        },
        None => NodeInfo::default(),
    })
}

/// `admin.address`, if any.
pub fn admin_address(bootstrap: &Bootstrap) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(addr) = bootstrap.admin.as_ref().and_then(|a| a.address.as_ref()) else {
        return Ok(None);
    };
    let (host, port) = socket_address(Some(addr), "admin.address")?;
    let ip: std::net::IpAddr = host
        .parse()
        .map_err(|e| ConfigError::invalid("admin.address.socket_address.address", e))?;
    Ok(Some(SocketAddr::new(ip, port)))
}

/// The admin server's access logs: `admin.access_log`, and the deprecated
/// `admin.access_log_path` (a file in Envoy's default format).
fn admin_access_logs(bootstrap: &Bootstrap) -> Result<Vec<AccessLog>, ConfigError> {
    use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType;
    use prost::Message as _;
    let Some(admin) = &bootstrap.admin else {
        return Ok(Vec::new());
    };
    let mut logs = Vec::new();
    #[allow(
        deprecated,
        reason = "access_log_path is still written by older bootstraps"
    )]
    if !admin.access_log_path.is_empty() {
        let file = envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog {
            path: admin.access_log_path.clone(),
            ..Default::default()
        };
        let any = pb::Any {
            type_url: "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
                .into(),
            value: file.encode_to_vec(),
        };
        logs.push(AccessLog::build(&any, "admin.access_log_path")?);
    }
    for (i, a) in admin.access_log.iter().enumerate() {
        let path = format!("admin.access_log[{i}].typed_config");
        match &a.config_type {
            Some(ConfigType::TypedConfig(any)) => logs.push(AccessLog::build(any, &path)?),
            _ => return Err(ConfigError::invalid(path, "required")),
        }
    }
    Ok(logs)
}

impl ProxyConfig {
    /// The config served before the first xDS update: the bootstrap's node and admin only (the
    /// admin server answers `/ready` and `/stats` while the proxy waits for its config).
    pub fn pre_init(bootstrap: &Bootstrap) -> Result<Self, ConfigError> {
        Ok(ProxyConfig {
            node: node_info(bootstrap),
            admin: admin_address(bootstrap)?,
            admin_logs: admin_access_logs(bootstrap)?,
            listeners: Vec::new(),
            clusters: HashMap::new(),
            cluster_order: Vec::new(),
            bootstrap: bootstrap.clone(),
            services: Vec::new(),
            dynamic: None,
            loaded_at: std::time::SystemTime::now(),
        })
    }
}

/// A proto `Duration` as a std one (negative → zero).
pub fn duration(d: &pb::Duration) -> Duration {
    let secs = u64::try_from(d.seconds).unwrap_or(0);
    let nanos = u32::try_from(d.nanos).unwrap_or(0);
    Duration::new(secs, nanos)
}

/// The content of a `DataSource` (file, inline string or bytes) as a string.
pub fn data_source(ds: &pb::core::DataSource, path: &str) -> Result<String, ConfigError> {
    use pb::core::data_source::Specifier;
    match &ds.specifier {
        Some(Specifier::InlineString(s)) => Ok(s.clone()),
        Some(Specifier::InlineBytes(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
        Some(Specifier::Filename(f)) => std::fs::read_to_string(f)
            .map_err(|e| ConfigError::invalid(format!("{path}.filename"), format!("{f}: {e}"))),
        _ => Err(ConfigError::unsupported(
            path,
            "data source kind (filename, inline_string, inline_bytes are)",
        )),
    }
}

/// `(address, port)` of a TCP `SocketAddress`.
pub fn socket_address(
    a: Option<&pb::core::Address>,
    path: &str,
) -> Result<(String, u16), ConfigError> {
    use pb::core::address::Address as A;
    use pb::core::socket_address::PortSpecifier;
    let Some(A::SocketAddress(sa)) = a.and_then(|a| a.address.as_ref()) else {
        return Err(ConfigError::invalid(
            format!("{path}.socket_address"),
            "required (pipes and internal addresses are not supported)",
        ));
    };
    if sa.protocol != 0 {
        return Err(ConfigError::unsupported(
            format!("{path}.socket_address.protocol"),
            "only TCP",
        ));
    }
    let port = match sa.port_specifier {
        Some(PortSpecifier::PortValue(p)) => u16::try_from(p).map_err(|_| {
            ConfigError::invalid(format!("{path}.socket_address.port_value"), "out of range")
        })?,
        _ => {
            return Err(ConfigError::invalid(
                format!("{path}.socket_address.port_value"),
                "required",
            ));
        }
    };
    Ok((sa.address.clone(), port))
}

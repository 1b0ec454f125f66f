//! Shared test helpers: bounded polling, agent start-up, an ADS client standing in for a
//! proxy, an upstream that answers 200, and istiod-shaped ECDS and LDS resources.

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, AsyncDataSource, ConfigSource,
    ExtensionConfigSource, HttpUri, Node, RemoteDataSource, SocketAddress, TypedExtensionConfig,
    address, async_data_source, config_source, http_uri, socket_address,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::wasm::v3::{
    EnvironmentVariables, FailurePolicy, PluginConfig, VmConfig, plugin_config,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use wasmesh_agent::convert::{ECDS_TYPE_URL, HTTP_RBAC_TYPE_URL, HTTP_WASM_TYPE_URL};
use wasmesh_agent::xds_proxy::Backoff;
use wasmesh_agent::{Agent, AgentConfig, ListenAddr};

/// Polls `$cond` (an async block returning bool) every 50 ms until it holds or `$secs` pass.
macro_rules! eventually {
    ($secs:expr, $what:expr, $cond:expr) => {{
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs($secs);
        loop {
            if $cond.await {
                break;
            }
            if std::time::Instant::now() > deadline {
                panic!("not within {}s: {}", $secs, $what);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }};
}
pub(crate) use eventually;

pub(crate) fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "wasmesh_agent=info".into()),
        )
        .with_test_writer()
        .try_init();
}

pub(crate) async fn start_agent(
    listen: ListenAddr,
    upstream: SocketAddr,
    cache_dir: &std::path::Path,
    insecure: &str,
) -> anyhow::Result<Agent> {
    let mut cfg = AgentConfig::new(listen, upstream.to_string(), cache_dir);
    cfg.cache.fetch.insecure_registries = wasmesh_agent::fetch::InsecureRegistries::parse(insecure);
    cfg.cache.fetch.http_initial_backoff = Duration::from_millis(20);
    cfg.cache.fetch.http_max_attempts = 2;
    cfg.reconnect = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
    };
    cfg.fetch_retry = Backoff {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(1),
    };
    cfg.metrics_addr = Some("127.0.0.1:0".parse()?);
    Ok(Agent::start(cfg).await?)
}

/// A proxy stand-in: one SotW ADS stream to the agent.
pub(crate) struct AdsClient {
    pub(crate) tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
}

pub(crate) fn node() -> Node {
    Node {
        id: "sidecar~127.0.0.1~app.default~default.svc.cluster.local".into(),
        cluster: "app".into(),
        ..Default::default()
    }
}

impl AdsClient {
    pub(crate) async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let mut client =
            AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")).await?;
        let (tx, rx) = mpsc::channel(16);
        let resp = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await?;
        Ok(Self {
            tx,
            rx: resp.into_inner(),
        })
    }

    pub(crate) async fn send(&self, req: DiscoveryRequest) {
        self.tx.send(req).await.expect("agent stream open");
    }

    pub(crate) async fn subscribe(&self, type_url: &str, names: &[&str], with_node: bool) {
        self.send(DiscoveryRequest {
            node: with_node.then(node),
            type_url: type_url.into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await;
    }

    /// Next response (within 20 s).
    pub(crate) async fn recv(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(20), self.rx.message())
            .await
            .expect("a response within 20s")
            .expect("stream healthy")
            .expect("stream open")
    }

    pub(crate) async fn ack(&self, resp: &DiscoveryResponse, names: &[&str]) {
        self.send(DiscoveryRequest {
            version_info: resp.version_info.clone(),
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await;
    }
}

pub(crate) fn pack<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: type_url.into(),
        value: m.encode_to_vec(),
    }
}

/// What a converted ECDS resource became.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    LocalFile(String),
    Remote,
    Rbac { deny: bool },
    Other(String),
}

pub(crate) fn inspect(any: &Any) -> (String, Seen) {
    let ec = TypedExtensionConfig::decode(any.value.as_slice()).expect("TypedExtensionConfig");
    let t = ec.typed_config.expect("typed_config");
    let seen = match t.type_url.as_str() {
        HTTP_WASM_TYPE_URL => {
            let w = Wasm::decode(t.value.as_slice()).expect("Wasm");
            let Some(plugin_config::Vm::VmConfig(vm)) = w.config.and_then(|c| c.vm) else {
                panic!("no vm")
            };
            match vm.code.and_then(|c| c.specifier) {
                Some(async_data_source::Specifier::Local(d)) => match d.specifier {
                    Some(
                        envoy_types::pb::envoy::config::core::v3::data_source::Specifier::Filename(
                            f,
                        ),
                    ) => Seen::LocalFile(f),
                    other => Seen::Other(format!("{other:?}")),
                },
                _ => Seen::Remote,
            }
        }
        HTTP_RBAC_TYPE_URL => {
            let r = envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac::decode(
                t.value.as_slice(),
            )
            .expect("RBAC");
            Seen::Rbac {
                deny: r.rules.is_some(),
            }
        }
        other => Seen::Other(other.into()),
    };
    (ec.name, seen)
}

/// ECDS resource name istiod gives WasmPlugin `default/<name>`.
pub(crate) fn ecds_name(name: &str) -> String {
    format!("extensions.istio.io/wasmplugin/default.{name}")
}

/// An ECDS resource as istiod builds it for a WasmPlugin with a remote url.
pub(crate) fn wasm_plugin(
    name: &str,
    url: &str,
    sha256: &str,
    config_json: &str,
    fail: FailurePolicy,
    env: &[(&str, &str)],
) -> (String, Any) {
    let mut kv: std::collections::HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    kv.entry("ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION".into())
        .or_insert_with(|| "1".into());
    let pc = PluginConfig {
        name: format!("default.{name}"),
        configuration: Some(pack(
            "type.googleapis.com/google.protobuf.StringValue",
            &config_json.to_string(),
        )),
        failure_policy: fail as i32,
        vm: Some(plugin_config::Vm::VmConfig(VmConfig {
            runtime: "envoy.wasm.runtime.v8".into(),
            code: Some(AsyncDataSource {
                specifier: Some(async_data_source::Specifier::Remote(RemoteDataSource {
                    http_uri: Some(HttpUri {
                        uri: url.into(),
                        timeout: Some(PbDuration {
                            seconds: 30,
                            nanos: 0,
                        }),
                        http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster("_".into())),
                    }),
                    sha256: sha256.into(),
                    retry_policy: None,
                })),
            }),
            environment_variables: Some(EnvironmentVariables {
                host_env_keys: vec![],
                key_values: kv,
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    let ec = TypedExtensionConfig {
        name: ecds_name(name),
        typed_config: Some(pack(HTTP_WASM_TYPE_URL, &Wasm { config: Some(pc) })),
    };
    (ecds_name(name), pack(ECDS_TYPE_URL, &ec))
}

/// A listener on `port` whose HCM has the ECDS filter `filter_name` (as istiod's LDS) then the
/// router to `cluster`.
pub(crate) fn listener(name: &str, port: u16, filter_name: &str, cluster: &str) -> (String, Any) {
    let ecds_filter = HttpFilter {
        name: filter_name.into(),
        config_type: Some(http_filter::ConfigType::ConfigDiscovery(
            ExtensionConfigSource {
                config_source: Some(ConfigSource {
                    resource_api_version: ApiVersion::V3 as i32,
                    initial_fetch_timeout: Some(PbDuration {
                        seconds: 0,
                        nanos: 0,
                    }),
                    config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                        AggregatedConfigSource {},
                    )),
                    ..Default::default()
                }),
                type_urls: vec![HTTP_WASM_TYPE_URL.into(), HTTP_RBAC_TYPE_URL.into()],
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let router = HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack(
            "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
            &Router::default(),
        ))),
        ..Default::default()
    };
    let routes = RouteConfiguration {
        name: format!("{name}-routes"),
        virtual_hosts: vec![VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                        cluster.into(),
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let hcm = HttpConnectionManager {
        stat_prefix: name.into(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(routes)),
        http_filters: vec![ecds_filter, router],
        ..Default::default()
    };
    let l = Listener {
        name: name.into(),
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "127.0.0.1".into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(port.into())),
                ..Default::default()
            })),
        }),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(pack(
                    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    &hcm,
                ))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    (
        name.into(),
        pack("type.googleapis.com/envoy.config.listener.v3.Listener", &l),
    )
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// An upstream that answers 200 "upstream ok" to everything.
pub(crate) async fn upstream() -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |_req: hyper::Request<hyper::body::Incoming>| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"upstream ok"),
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok((addr, task))
}

//! Apply, change and delete a WasmPlugin while clients send requests through the gateway; restart
//! the control plane and the agent under load. Asserts zero failed requests and that responses
//! switch to the new behaviour.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// `N` distinct free ports (held together while chosen, so none comes back twice).
pub(crate) fn distinct_ports<const N: usize>() -> [u16; N] {
    let ports = test_support::proxy_peers::free_ports(N).expect("ports");
    std::array::from_fn(|i| ports[i])
}

pub(crate) fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}

pub(crate) fn routing(gw: u16, upstream: u16) -> String {
    routing_ports(&[gw], upstream)
}

/// The routing resources with one gateway server per port in `gws`.
fn routing_ports(gws: &[u16], upstream: u16) -> String {
    let servers: Vec<String> = gws
        .iter()
        .map(|p| format!("{{port: {{number: {p}, name: http-{p}, protocol: HTTP}}, hosts: ['*']}}"))
        .collect();
    let servers = servers.join(", ");
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: demo}}
spec:
  hosts: [echo.local]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {upstream}}}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: demo}}
spec:
  selector: {{istio: ingressgateway}}
  servers: [{servers}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs, namespace: demo}}
spec:
  hosts: ['*']
  gateways: [gw]
  http:
  - route: [{{destination: {{host: echo.local}}}}]
"#
    )
}

pub(crate) fn plugin(value: &str) -> String {
    format!(
        r#"apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: version-header, namespace: demo}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  url: file://{}
  pluginConfig:
    response_add: {{x-version: "{value}"}}
"#,
        test_plugins::path(test_plugins::HEADERS).display()
    )
}

fn bootstrap(agent_port: u16) -> wasmesh_proxy::pb::bootstrap::Bootstrap {
    bootstrap_to(&format!(
        "{{socket_address: {{address: 127.0.0.1, port_value: {agent_port}}}}}"
    ))
}

/// A gateway bootstrap whose ADS cluster endpoint address is `address` (YAML flow map).
fn bootstrap_to(address: &str) -> wasmesh_proxy::pb::bootstrap::Bootstrap {
    let yaml = format!(
        r#"
node:
  id: router~127.0.0.1~gw.demo~demo.svc.cluster.local
  cluster: gw.demo
  metadata: {{NAMESPACE: demo, LABELS: {{istio: ingressgateway}}}}
dynamic_resources:
  ads_config:
    api_type: GRPC
    grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]
  cds_config: {{ads: {{}}}}
  lds_config: {{ads: {{}}}}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {address}}}}}]}}]
"#
    );
    wasmesh_proxy::config::bootstrap::parse(&yaml).expect("bootstrap")
}

/// What the clients saw.
#[derive(Default)]
struct Seen {
    ok: AtomicU64,
    failed: AtomicU64,
    failures: Mutex<Vec<String>>,
    last_version: Mutex<Option<String>>,
}

/// Clients sending requests in a loop until `stop`.
fn load(
    addr: SocketAddr,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
    clients: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|_| {
            let (seen, stop) = (seen.clone(), stop.clone());
            tokio::spawn(async move {
                let client: Client<_, Empty<Bytes>> =
                    Client::builder(TokioExecutor::new()).build_http();
                while !stop.load(Ordering::Relaxed) {
                    let uri: hyper::Uri = format!("http://{addr}/load").parse().expect("uri");
                    match tokio::time::timeout(Duration::from_secs(5), client.get(uri)).await {
                        Ok(Ok(resp)) if resp.status() == 200 => {
                            let v = version_header(resp).await;
                            *seen.last_version.lock().expect("lock") = v;
                            seen.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            seen.failed.fetch_add(1, Ordering::Relaxed);
                            let what = match other {
                                Ok(Ok(r)) => format!("status {}", r.status()),
                                Ok(Err(e)) => format!("error {e}"),
                                Err(_) => "timeout".to_string(),
                            };
                            seen.failures.lock().expect("lock").push(what);
                        }
                    }
                }
            })
        })
        .collect()
}

async fn until(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One request on a new connection to the gateway port: the `x-version` header, or why not.
pub(crate) async fn version_at(port: u16) -> Result<Option<String>, String> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http();
    let uri: hyper::Uri = format!("http://127.0.0.1:{port}/once")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.get(uri))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| format!("{e}"))?;
    Ok(version_header(resp).await)
}

/// The `x-version` header of a response (the body is read to the end).
async fn version_header(resp: hyper::Response<hyper::body::Incoming>) -> Option<String> {
    let v = resp
        .headers()
        .get("x-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let _ = resp.into_body().collect().await;
    v
}

/// Polls until `version_at(port)` satisfies `ok`.
async fn until_at(what: &str, port: u16, ok: impl Fn(&Result<Option<String>, String>) -> bool) {
    let start = Instant::now();
    loop {
        let got = version_at(port).await;
        if ok(&got) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}: last {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn version(seen: &Seen) -> Option<String> {
    seen.last_version.lock().expect("lock").clone()
}

/// A control plane in its own runtime on its own thread: stopping it drops the runtime, so every
/// connection dies with it, as in a process restart.
pub(crate) struct CpProcess {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CpProcess {
    pub(crate) fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(crate) async fn start_cp(dir: &Path, port: u16) -> CpProcess {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let dir = dir.to_path_buf();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async move {
            let start = Instant::now();
            let cp = loop {
                match wasmesh_control_plane::ControlPlane::start(
                    wasmesh_control_plane::Settings::new(&dir, addr),
                )
                .await
                {
                    Ok(cp) => break cp,
                    Err(e) => {
                        assert!(
                            start.elapsed() < Duration::from_secs(10),
                            "control plane: {e}"
                        );
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            };
            let _ = ready_tx.send(());
            let _ = stop_rx.await;
            drop(cp);
        });
        rt.shutdown_timeout(Duration::from_millis(100));
    });
    let _ = ready_rx.await;
    CpProcess {
        stop: Some(stop_tx),
        thread: Some(thread),
    }
}

async fn start_agent(cache: &Path, port: u16, xds_port: u16) -> wasmesh_agent::Agent {
    let cfg = wasmesh_agent::AgentConfig::new(
        wasmesh_agent::ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], port))),
        format!("127.0.0.1:{xds_port}"),
        cache,
    );
    let start = Instant::now();
    loop {
        match wasmesh_agent::Agent::start(cfg.clone()).await {
            Ok(a) => return a,
            Err(e) if start.elapsed() < Duration::from_secs(10) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("agent: {e}"),
        }
    }
}

/// The gateway under test: our proxy (xDS client on its own thread) or real Envoy.
enum Gateway {
    Ours {
        stop: tokio::sync::oneshot::Sender<()>,
        thread: std::thread::JoinHandle<Result<(), wasmesh_proxy::xds::XdsError>>,
    },
    Envoy(test_support::proxy_peers::Envoy),
}

async fn start_ours(agent_port: u16) -> Gateway {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<wasmesh_proxy::xds::Started>();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let boot = bootstrap(agent_port);
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let opts = wasmesh_proxy::ProxyOptions {
            concurrency: 2,
            drain_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        rt.block_on(wasmesh_proxy::xds::run(boot, opts, started_tx, async {
            let _ = stop_rx.await;
        }))
    });
    let started = tokio::time::timeout(Duration::from_secs(60), started_rx).await;
    assert!(matches!(started, Ok(Ok(Ok(_)))), "gateway did not start");
    Gateway::Ours { stop, thread }
}

async fn start_real_envoy(agent_port: u16) -> Gateway {
    let admin = free_port();
    // The same bootstrap as our proxy's, as JSON (Envoy reads JSON as YAML), plus an admin port.
    let mut v = wasmesh_proxy::config::bootstrap::to_json(&bootstrap(agent_port));
    v["admin"] = serde_json::json!({"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}});
    let yaml = v.to_string();
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], admin));
    let envoy = tokio::task::spawn_blocking(move || {
        test_support::proxy_peers::start_envoy(&yaml, admin_addr)
    })
    .await
    .expect("join")
    .expect("envoy");
    Gateway::Envoy(envoy)
}

impl Gateway {
    async fn stop(self) {
        match self {
            Gateway::Ours { stop, thread } => {
                let _ = stop.send(());
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
            Gateway::Envoy(e) => drop(e),
        }
    }
}

/// Apply, change, restart the control plane, restart the agent, change, delete: all under load.
async fn scenario(envoy: bool) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let config_dir = tmp.path().join("config");
    std::fs::create_dir_all(&config_dir).expect("dir");
    let upstream = test_support::echo::start("echo").await.expect("echo");
    let [gw, xds, agent_port] = distinct_ports::<3>();
    write(
        &config_dir,
        "routing.yaml",
        &routing(gw, upstream.addr.port()),
    );
    write(&config_dir, "plugin.yaml", &plugin("1"));

    let cp = start_cp(&config_dir, xds).await;
    let agent = start_agent(&tmp.path().join("cache"), agent_port, xds).await;
    let gateway = if envoy {
        start_real_envoy(agent_port).await
    } else {
        start_ours(agent_port).await
    };
    let gw_addr = SocketAddr::from(([127, 0, 0, 1], gw));
    // Envoy is ready before its listener warms: wait until the gateway answers.
    let start = Instant::now();
    loop {
        let c: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let uri: hyper::Uri = format!("http://{gw_addr}/").parse().expect("uri");
        let last = match tokio::time::timeout(Duration::from_secs(2), c.get(uri)).await {
            Ok(Ok(r)) if r.status() == 200 => break,
            Ok(Ok(r)) => format!("status {}", r.status()),
            Ok(Err(e)) => format!("error {e:?}"),
            Err(_) => "timeout".to_string(),
        };
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "gateway {gw_addr} (envoy: {envoy}) never answered 200; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(gw_addr, seen.clone(), stop.clone(), 4);
    until("first plugin version", Duration::from_secs(20), || {
        version(&seen).as_deref() == Some("1")
    })
    .await;

    // change
    write(&config_dir, "plugin.yaml", &plugin("2"));
    until("the changed plugin", Duration::from_secs(10), || {
        version(&seen).as_deref() == Some("2")
    })
    .await;

    // control plane restart: the gateway keeps its config, requests keep succeeding
    tokio::task::spawn_blocking(move || cp.stop())
        .await
        .expect("stop");
    let before = seen.ok.load(Ordering::Relaxed);
    until(
        "requests while the control plane is down",
        Duration::from_secs(10),
        || seen.ok.load(Ordering::Relaxed) > before + 50,
    )
    .await;
    let cp = start_cp(&config_dir, xds).await;
    write(&config_dir, "plugin.yaml", &plugin("3"));
    until(
        "a change after the control plane restart",
        Duration::from_secs(20),
        || version(&seen).as_deref() == Some("3"),
    )
    .await;

    // agent restart
    agent.shutdown().await;
    let before = seen.ok.load(Ordering::Relaxed);
    until(
        "requests while the agent is down",
        Duration::from_secs(10),
        || seen.ok.load(Ordering::Relaxed) > before + 50,
    )
    .await;
    let agent = start_agent(&tmp.path().join("cache"), agent_port, xds).await;
    write(&config_dir, "plugin.yaml", &plugin("4"));
    until(
        "a change after the agent restart",
        Duration::from_secs(30),
        || version(&seen).as_deref() == Some("4"),
    )
    .await;

    // delete
    std::fs::remove_file(config_dir.join("plugin.yaml")).expect("delete");
    until("the plugin removed", Duration::from_secs(10), || {
        version(&seen).is_none()
    })
    .await;
    let before = seen.ok.load(Ordering::Relaxed);
    until("requests after removal", Duration::from_secs(10), || {
        seen.ok.load(Ordering::Relaxed) > before + 20
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let failures = seen.failures.lock().expect("lock").clone();
    assert_eq!(
        seen.failed.load(Ordering::Relaxed),
        0,
        "failed requests: {failures:?}"
    );
    assert!(seen.ok.load(Ordering::Relaxed) > 200, "the load ran");
    gateway.stop().await;
    agent.shutdown().await;
    tokio::task::spawn_blocking(move || cp.stop())
        .await
        .expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_plugin_changes_and_restarts_under_load_fail_no_request() {
    scenario(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_with_real_envoy_in_place_of_our_proxy() {
    scenario(true).await;
}

/// Istio's layout: the agent listens on a Unix socket and the proxy's bootstrap points at it
/// with a `pipe` address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_proxy_reaches_the_agent_over_a_unix_socket() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let config_dir = tmp.path().join("config");
    std::fs::create_dir_all(&config_dir).expect("dir");
    let upstream = test_support::echo::start("echo").await.expect("echo");
    let [gw, xds] = distinct_ports::<2>();
    write(
        &config_dir,
        "routing.yaml",
        &routing(gw, upstream.addr.port()),
    );
    write(&config_dir, "plugin.yaml", &plugin("uds"));
    let cp = start_cp(&config_dir, xds).await;
    let sock = tmp.path().join("XDS");
    let cfg = wasmesh_agent::AgentConfig::new(
        wasmesh_agent::ListenAddr::Unix(sock.clone()),
        format!("127.0.0.1:{xds}"),
        tmp.path().join("cache"),
    );
    let agent = wasmesh_agent::Agent::start(cfg).await.expect("agent");
    let boot = bootstrap_to(&format!("{{pipe: {{path: \"{}\"}}}}", sock.display()));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<wasmesh_proxy::xds::Started>();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let opts = wasmesh_proxy::ProxyOptions {
            concurrency: 1,
            drain_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        rt.block_on(wasmesh_proxy::xds::run(boot, opts, started_tx, async {
            let _ = stop_rx.await;
        }))
    });
    let started = tokio::time::timeout(Duration::from_secs(60), started_rx).await;
    assert!(
        matches!(started, Ok(Ok(Ok(_)))),
        "gateway did not start over the Unix socket"
    );
    let seen = Arc::new(Seen::default());
    let done = Arc::new(AtomicBool::new(false));
    let clients = load(
        SocketAddr::from(([127, 0, 0, 1], gw)),
        seen.clone(),
        done.clone(),
        1,
    );
    until(
        "the plugin over the Unix socket",
        Duration::from_secs(20),
        || version(&seen).as_deref() == Some("uds"),
    )
    .await;
    done.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    assert_eq!(seen.failed.load(Ordering::Relaxed), 0);
    // Gateway ports follow the config live (LDS adds and removes listeners; no restart).
    let gw2 = free_port();
    write(
        &config_dir,
        "routing.yaml",
        &routing_ports(&[gw, gw2], upstream.addr.port()),
    );
    until_at(
        "a listener for the added port",
        gw2,
        |r| matches!(r, Ok(Some(v)) if v == "uds"),
    )
    .await;
    assert_eq!(version_at(gw).await, Ok(Some("uds".into())));
    write(
        &config_dir,
        "routing.yaml",
        &routing(gw2, upstream.addr.port()),
    );
    until_at("the removed port to close", gw, Result::is_err).await;
    assert_eq!(version_at(gw2).await, Ok(Some("uds".into())));
    Gateway::Ours { stop, thread }.stop().await;
    agent.shutdown().await;
    tokio::task::spawn_blocking(move || cp.stop())
        .await
        .expect("stop");
}

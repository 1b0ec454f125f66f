//! `wasmesh up`: the whole system on one machine, on loopback — control plane watching a
//! directory of Istio YAML, the agent, a gateway proxy configured over ADS through the agent, a
//! demo upstream and a local module source serving the example plugins over HTTP.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

const ROUTING: &str = include_str!("../../../examples/up/routing.yaml");
const PLUGINS: &str = include_str!("../../../examples/up/plugins.yaml");

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Working directory: `config/` (the YAML the control plane watches; edit it), `modules/`
    /// (served to the agent), `cache/` (the agent's module cache). Created with the example
    /// plugins if missing.
    #[arg(long, env = "WASMESH_UP_DIR", default_value = "wasmesh-demo")]
    dir: PathBuf,
    /// Gateway port (written into config/routing.yaml when it is created).
    #[arg(long, default_value_t = 8080)]
    gateway_port: u16,
    /// Demo upstream port.
    #[arg(long, default_value_t = 18081)]
    upstream_port: u16,
    /// Module source port.
    #[arg(long, default_value_t = 18082)]
    module_port: u16,
    /// Control plane ADS port.
    #[arg(long, default_value_t = 15010)]
    xds_port: u16,
    /// Agent port (the proxy's ADS server).
    #[arg(long, default_value_t = 15011)]
    agent_port: u16,
    /// Proxy admin port (/stats, /config_dump, /ready).
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    /// Proxy workers.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Writes the example config and modules unless the directory already has them.
fn prepare(a: &UpArgs) -> anyhow::Result<PathBuf> {
    let config = a.dir.join("config");
    let modules = a.dir.join("modules");
    std::fs::create_dir_all(&config).with_context(|| format!("creating {}", config.display()))?;
    std::fs::create_dir_all(&modules).with_context(|| format!("creating {}", modules.display()))?;
    let fill = |t: &str| {
        t.replace("{{GATEWAY_PORT}}", &a.gateway_port.to_string())
            .replace("{{UPSTREAM_PORT}}", &a.upstream_port.to_string())
            .replace(
                "{{MODULE_BASE}}",
                &format!("http://127.0.0.1:{}", a.module_port),
            )
    };
    for (name, text) in [("routing.yaml", ROUTING), ("plugins.yaml", PLUGINS)] {
        let p = config.join(name);
        if !p.exists() {
            std::fs::write(&p, fill(text)).with_context(|| format!("writing {}", p.display()))?;
        }
    }
    for (name, bytes) in test_plugins::DEMO_MODULES {
        let p = modules.join(name);
        if !p.exists() {
            std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
        }
    }
    Ok(config)
}

/// Serves `f` on `addr` with hyper (HTTP/1.1).
async fn serve<F>(addr: SocketAddr, what: &'static str, f: F) -> anyhow::Result<()>
where
    F: Fn(Request<Incoming>) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("{what}: cannot bind {addr}"))?;
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                continue;
            };
            let f = f.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let f = f.clone();
                    async move { Ok::<_, Infallible>(f(req)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    Ok(())
}

/// The demo upstream: echoes the request line and headers as JSON-ish text.
fn echo(req: Request<Incoming>) -> Response<Full<Bytes>> {
    let mut body = format!("{} {}\n", req.method(), req.uri());
    for (k, v) in req.headers() {
        body.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("<binary>")));
    }
    Response::builder()
        .header("content-type", "text/plain")
        .header("server", "demo-upstream")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

fn module_source(
    dir: PathBuf,
) -> impl Fn(Request<Incoming>) -> Response<Full<Bytes>> + Clone + Send + Sync {
    move |req| {
        let name = req.uri().path().trim_start_matches('/');
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        match valid
            .then(|| std::fs::read(dir.join(name)))
            .and_then(Result::ok)
        {
            Some(bytes) => Response::new(Full::new(Bytes::from(bytes))),
            None => Response::builder()
                .status(404)
                .body(Full::new(Bytes::from_static(b"not found\n")))
                .unwrap_or_default(),
        }
    }
}

fn gateway_bootstrap(a: &UpArgs) -> anyhow::Result<wasmesh_proxy::pb::bootstrap::Bootstrap> {
    let yaml = format!(
        r#"
node:
  id: router~127.0.0.1~demo-gateway.demo~demo.svc.cluster.local
  cluster: demo-gateway.demo
  metadata: {{NAMESPACE: demo, LABELS: {{istio: ingressgateway}}}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: xds-grpc}}}}]
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds-grpc
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {agent}}}}}}}}}]}}]
"#,
        admin = a.admin_port,
        agent = a.agent_port
    );
    Ok(wasmesh_proxy::config::bootstrap::parse(&yaml)?)
}

pub(crate) fn up(a: UpArgs) -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config_dir = prepare(&a)?;
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(async {
        serve(loopback(a.upstream_port), "demo upstream", echo).await?;
        serve(
            loopback(a.module_port),
            "module source",
            module_source(a.dir.join("modules")),
        )
        .await?;
        let cp = wasmesh_control_plane::ControlPlane::start(wasmesh_control_plane::Settings::new(
            &config_dir,
            loopback(a.xds_port),
        ))
        .await
        .context("starting the control plane")?;
        let cfg = wasmesh_agent::AgentConfig::new(
            wasmesh_agent::ListenAddr::Tcp(loopback(a.agent_port)),
            format!("127.0.0.1:{}", a.xds_port),
            a.dir.join("cache"),
        );
        let agent = wasmesh_agent::Agent::start(cfg)
            .await
            .context("starting the agent")?;
        let bootstrap = gateway_bootstrap(&a)?;
        crate::use_compiler_process();
        let opts = wasmesh_proxy::ProxyOptions {
            concurrency: a.concurrency.max(1),
            drain_timeout: Duration::from_secs(2),
            on_idle: Some(crate::return_free_memory),
            ..Default::default()
        };
        let (started_tx, started_rx) =
            tokio::sync::oneshot::channel::<wasmesh_proxy::xds::Started>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        // The proxy's workers are their own threads; its xDS client runs on a thread of its own.
        let proxy = std::thread::Builder::new()
            .name("wasmesh-gateway".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(wasmesh_proxy::xds::run(
                    bootstrap,
                    opts,
                    started_tx,
                    async {
                        let _ = stop_rx.await;
                    },
                ))?;
                anyhow::Ok(())
            })?;
        match tokio::time::timeout(Duration::from_secs(60), started_rx).await {
            Ok(Ok(Ok(_))) => {}
            _ => anyhow::bail!(
                "the gateway did not get its configuration within 60 s; see the log above"
            ),
        }
        banner(&a, &config_dir);
        tokio::signal::ctrl_c().await.ok();
        tracing::info!("stopping");
        let _ = stop_tx.send(());
        let _ = tokio::task::spawn_blocking(move || proxy.join()).await;
        agent.shutdown().await;
        drop(cp);
        anyhow::Ok(())
    })
}

fn banner(a: &UpArgs, config_dir: &Path) {
    let g = a.gateway_port;
    println!(
        "\nwasmesh is up: control plane :{xds}, agent :{agent}, gateway :{g} (admin :{admin}), demo upstream :{up}\n\n\
         Try:\n  curl -i http://127.0.0.1:{g}/                          # 401 from the api-key plugin\n  \
         curl -i -H 'x-api-key: demo' http://127.0.0.1:{g}/     # 200 with x-wasmesh: hello\n  \
         curl -s http://127.0.0.1:{admin}/stats | grep wasm\n\n\
         Edit {plugins} (e.g. change `x-wasmesh: hello`) and save:\n\
         the gateway picks it up within a second. Ctrl-C stops everything.\n",
        xds = a.xds_port,
        agent = a.agent_port,
        admin = a.admin_port,
        up = a.upstream_port,
        plugins = config_dir.join("plugins.yaml").display(),
    );
}

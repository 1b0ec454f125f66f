//! What an HTTP callout sends and what the plugin gets back, against real Envoy 1.40: the
//! `callout` plugin calls a raw recording upstream; the request it receives (header names and
//! values, in order) must be the one Envoy's async client sends.

use std::net::SocketAddr;

use test_support::proxy_peers::{free_ports, start_envoy, start_upstream};

use crate::http1_codec::raw_upstream;
use crate::support::*;

fn bootstrap(admin: u16, listen: u16, up: u16, side: u16) -> String {
    one_plugin(
        (admin, listen, up),
        test_plugins::CALLOUT,
        "callout",
        r#"{"cluster":"side","path":"/check?x=1","authority":"auth.local","timeout_ms":1500}"#,
        &cluster_yaml("side", side, false),
    )
}

/// The head of the request the callout upstream got: request line and `name: value` lines,
/// in order.
fn callout_head(raw: &str) -> Vec<String> {
    raw.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callout_requests_match_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let (side, seen) = raw_upstream();
    let ours = start_proxy(&bootstrap(0, 0, up.addr.port(), side.port()))?;
    let ours_addr = ours.listener_addr("main").expect("listener");
    let ports = free_ports(2)?;
    let envoy_yaml = bootstrap(ports[1], ports[0], up.addr.port(), side.port());
    let admin: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
    let _envoy = tokio::task::spawn_blocking(move || start_envoy(&envoy_yaml, admin)).await??;
    let envoy_addr: SocketAddr = ([127, 0, 0, 1], ports[0]).into();

    let mut heads = Vec::new();
    for addr in [envoy_addr, ours_addr] {
        let before = seen.lock().unwrap_or_else(|e| e.into_inner()).len();
        let r = send(addr, get("callout.example", "/orig?q=2")).await?;
        assert_eq!(r.status, 200, "the callout allowed the request: {r:?}");
        let reqs = seen.lock().unwrap_or_else(|e| e.into_inner());
        let raw = reqs.get(before).cloned().unwrap_or_default();
        heads.push(callout_head(&raw));
    }
    let (e, o) = (&heads[0], &heads[1]);
    assert!(
        e.iter().any(|l| l == "x-envoy-internal: true"),
        "envoy marks its callouts internal: {e:?}"
    );
    assert_eq!(o, e, "callout request: wasmesh vs envoy");
    Ok(())
}

fn grpc_bootstrap(admin: u16, listen: u16, up: u16) -> String {
    one_plugin(
        (admin, listen, up),
        test_plugins::CALLOUT,
        "callout",
        r#"{"cluster":"side","grpc":{"service":"authz.v1.Check","method":"Allow"},"timeout_ms":1500}"#,
        &cluster_yaml("side", up, true),
    )
}

/// What a gRPC callout did: (status, `x-callout-status`, the `x-grpc-reply` the upstream got).
async fn grpc_exchange(
    addr: SocketAddr,
    fail: Option<&str>,
) -> anyhow::Result<(u16, String, String)> {
    let mut req = get("grpc.example", "/orig?q=3");
    if let Some(code) = fail {
        req.headers_mut().insert("x-grpc-fail", code.parse()?);
    }
    let r = send(addr, req).await?;
    let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    Ok((
        r.status,
        r.headers
            .get("x-callout-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        json["headers"]["x-grpc-reply"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_callouts_match_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let ours = start_proxy(&grpc_bootstrap(0, 0, up.addr.port()))?;
    let ours_addr = ours.listener_addr("main").expect("listener");
    let ports = free_ports(2)?;
    let envoy_yaml = grpc_bootstrap(ports[1], ports[0], up.addr.port());
    let admin: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
    let _envoy = tokio::task::spawn_blocking(move || start_envoy(&envoy_yaml, admin)).await??;
    let envoy_addr: SocketAddr = ([127, 0, 0, 1], ports[0]).into();
    for fail in [None, Some("7"), Some("14")] {
        let e = grpc_exchange(envoy_addr, fail).await?;
        let o = grpc_exchange(ours_addr, fail).await?;
        if fail.is_none() {
            assert_eq!(
                e,
                (
                    200,
                    String::new(),
                    "/authz.v1.Check/Allow|/orig?q=3|cl=-".to_string()
                ),
                "envoy"
            );
        }
        assert_eq!(o, e, "gRPC callout failing with {fail:?}: wasmesh vs envoy");
    }
    Ok(())
}

/// A listener that accepts connections and then either closes them at once (`close`) or
/// holds them without answering.
async fn silent_upstream(close: bool) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            if !close {
                held.push(sock);
            }
        }
    });
    Ok(addr)
}

/// A failed callout as the plugin sees it, against Envoy 1.40. Envoy's async client gets the
/// router's local reply as the call's response: a refused connection or a connection closed
/// before the response are a 503 (`upstream connect error ...`), a timeout a 504. A cluster with
/// no host at all is refused while the call is dispatched (InternalFailure: the `callout`
/// plugin answers 500 itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callout_failures_reach_the_plugin_as_envoys_local_replies() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let refused = free_ports(1)?[0];
    let closer = silent_upstream(true).await?.port();
    let hole = silent_upstream(false).await?.port();
    let no_hosts = "  - name: empty\n    connect_timeout: 1s\n    load_assignment: {cluster_name: empty, endpoints: []}\n";
    let clusters = format!(
        "{}{}{}{no_hosts}",
        cluster_yaml("refused", refused, false),
        cluster_yaml("closer", closer, false),
        cluster_yaml("hole", hole, false),
    );
    let filter = |cluster: &str| {
        wasm_filter(
            &format!("c_{cluster}"),
            test_plugins::CALLOUT,
            &format!(r#"{{"cluster":"{cluster}","timeout_ms":400}}"#),
        )
    };
    let routes = ["refused", "closer", "hole", "empty"];
    // (a proxy per case: one plugin, calling that cluster)
    let mut seen: Vec<Vec<(u16, String)>> = Vec::new();
    for which in ["envoy", "ours"] {
        let mut got = Vec::new();
        for cluster in routes {
            let f = filter(cluster);
            let yaml = |admin: u16, listen: u16| {
                hcm_bootstrap((admin, listen, up.addr.port()), "", &f, &clusters)
            };
            let addr;
            let _keep: Box<dyn std::any::Any>;
            if which == "envoy" {
                let ports = free_ports(2)?;
                let y = yaml(ports[1], ports[0]);
                let admin: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
                let envoy = tokio::task::spawn_blocking(move || start_envoy(&y, admin)).await??;
                addr = SocketAddr::from(([127, 0, 0, 1], ports[0]));
                _keep = Box::new(envoy);
            } else {
                let ours = start_proxy(&yaml(0, 0))?;
                addr = ours.listener_addr("main").expect("listener");
                _keep = Box::new(ours);
            }
            let r = send(addr, get("h", "/")).await?;
            let status = r
                .headers
                .get("x-callout-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string();
            got.push((r.status, status));
        }
        seen.push(got);
    }
    assert_eq!(seen[1], seen[0], "wasmesh (left) vs Envoy (right)");
    assert_eq!(
        seen[0],
        [
            (403, "503".to_string()),
            (403, "503".to_string()),
            (403, "504".to_string()),
            (500, "-".to_string()),
        ],
        "envoy"
    );
    Ok(())
}

//! The order of the headers the upstream gets when a plugin edits them, against real Envoy
//! 1.40: a replaced header moves to the end (Envoy's `setCopy`), `host` is written first.

use std::net::SocketAddr;

use test_support::proxy_peers::{free_ports, start_envoy};

use crate::http1_codec::{header_names as names, raw_upstream};
use crate::support::*;

fn bootstrap(admin: u16, listen: u16, up: u16) -> String {
    one_plugin(
        (admin, listen, up),
        test_plugins::HEADERS,
        "headers",
        r#"{"request_replace":{"user-agent":"wasm"},"request_add":{"x-added":"1"},"request_remove":["x-gone"]}"#,
        "",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_headers_reach_the_upstream_in_envoys_order() -> anyhow::Result<()> {
    let (up, seen) = raw_upstream();
    let ours = start_proxy(&bootstrap(0, 0, up.port()))?;
    let ours_addr = ours.listener_addr("main").expect("listener");
    let ports = free_ports(2)?;
    let envoy_yaml = bootstrap(ports[1], ports[0], up.port());
    let admin: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
    let _envoy = tokio::task::spawn_blocking(move || start_envoy(&envoy_yaml, admin)).await??;
    let envoy_addr: SocketAddr = ([127, 0, 0, 1], ports[0]).into();
    let mut got = Vec::new();
    for addr in [envoy_addr, ours_addr] {
        let before = seen.lock().unwrap_or_else(|e| e.into_inner()).len();
        let req = http::Request::builder()
            .uri("/o")
            .header("accept", "*/*")
            .header("host", "order.example")
            .header("user-agent", "client")
            .header("x-gone", "1")
            .header("x-a", "1")
            .body(http_body_util::Full::new(bytes::Bytes::new()))?;
        let _ = send(addr, req).await?;
        let reqs = seen.lock().unwrap_or_else(|e| e.into_inner());
        got.push(names(&reqs.get(before).cloned().unwrap_or_default()));
    }
    assert_eq!(
        got[0].first().map(String::as_str),
        Some("host"),
        "envoy: {:?}",
        got[0]
    );
    assert_eq!(got[1], got[0], "wasmesh vs envoy");
    Ok(())
}

/// The request header names a plugin sees (`props_probe`'s `x-probe-request-names`) for an
/// h2 request from curl and an HTTP/1.1 one: Envoy keeps curl's h2 pseudo-header order
/// (`:method`, `:path`, `:scheme`, `:authority`) and puts its codec's order on HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_see_pseudo_headers_in_envoys_order() -> anyhow::Result<()> {
    let up = test_support::proxy_peers::start_upstream("up").await?;
    let yaml = |admin: u16, listen: u16| {
        one_plugin(
            (admin, listen, up.addr.port()),
            test_plugins::PROPS_PROBE,
            "probe",
            r#"{"paths": []}"#,
            "",
        )
    };
    let (_ours, ours_addr, _envoy, envoy_addr) = start_both(yaml).await?;
    let names = |addr: SocketAddr, h2: bool| async move {
        let mut args = vec!["-s", "-o", "/dev/null", "-D", "-"];
        if h2 {
            args.push("--http2-prior-knowledge");
        }
        let out = tokio::process::Command::new("curl")
            .args(&args)
            .arg(format!("http://{addr}/names"))
            .output()
            .await?;
        let head = String::from_utf8_lossy(&out.stdout).to_string();
        anyhow::Ok(
            head.lines()
                .find_map(|l| l.strip_prefix("x-probe-request-names: "))
                .unwrap_or("<missing>")
                .trim()
                .to_string(),
        )
    };
    for h2 in [true, false] {
        let e = names(envoy_addr, h2).await?;
        let o = names(ours_addr, h2).await?;
        assert!(e.starts_with(':'), "envoy (h2: {h2}): {e}");
        assert_eq!(o, e, "wasmesh (left) vs Envoy (right), h2: {h2}");
    }
    Ok(())
}

/// An h2 client's separate `cookie` fields reach plugins (and the upstream) as one header,
/// joined with `; `, as Envoy's codec joins them, after the client's other headers (the codec
/// adds it when the header block is complete).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_cookies_are_joined_like_envoy() -> anyhow::Result<()> {
    let up = test_support::proxy_peers::start_upstream("up").await?;
    let filter = wasm_filter(
        "p",
        test_plugins::PROPS_PROBE,
        r#"{"paths": ["request/headers/cookie"]}"#,
    );
    let (ours, ours_addr, envoy_proc, envoy_addr) =
        start_both(|admin, listen| hcm_bootstrap((admin, listen, up.addr.port()), "", &filter, ""))
            .await?;
    let mut seen = Vec::new();
    for addr in [envoy_addr, ours_addr] {
        let mut req = get_h2(addr, "h", "/");
        req.headers_mut()
            .append("cookie", http::HeaderValue::from_static("a=1"));
        req.headers_mut()
            .append("cookie", http::HeaderValue::from_static("b=2"));
        req.headers_mut()
            .append("x-a", http::HeaderValue::from_static("1"));
        let r = send_h2(addr, req).await?;
        let h = |n: &str| {
            r.headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        // (the names without the pseudo-headers: h2 gives us no wire order for those; curl's
        // order is what we present, and hyper's client sends another)
        let names: Vec<String> = h("x-probe-request-names")
            .split(',')
            .filter(|n| !n.starts_with(':'))
            .map(str::to_string)
            .collect();
        seen.push((names, h("x-probe-0")));
    }
    assert_eq!(seen[1], seen[0], "wasmesh (left) vs Envoy (right)");
    assert_eq!(seen[0].1, "a=1; b=2 | <missing>", "{:?}", seen[0]);
    assert_eq!(
        seen[0].0,
        ["x-a", "cookie", "x-forwarded-proto", "x-request-id"]
    );
    drop((ours, envoy_proc));
    Ok(())
}

/// A plugin that replaces `:scheme` and `:path`: the next plugin sees them moved to the end of
/// the pseudo-headers (Envoy's `setCopy`), and `request.scheme` is the new scheme, as in Envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_pseudo_headers_move_and_count_like_envoy() -> anyhow::Result<()> {
    let up = test_support::proxy_peers::start_upstream("up").await?;
    let filters = format!(
        "{}{}",
        wasm_filter(
            "h",
            test_plugins::HEADERS,
            r#"{"request_replace": {":scheme": "https", ":path": "/moved"}}"#,
        ),
        wasm_filter(
            "p",
            test_plugins::PROPS_PROBE,
            r#"{"paths": ["request.scheme"]}"#
        ),
    );
    let (ours, ours_addr, envoy_proc, envoy_addr) = start_both(|admin, listen| {
        hcm_bootstrap((admin, listen, up.addr.port()), "", &filters, "")
    })
    .await?;
    let mut seen = Vec::new();
    for addr in [envoy_addr, ours_addr] {
        for h2 in [false, true] {
            let r = if h2 {
                send_h2(addr, get_h2(addr, "h", "/")).await?
            } else {
                send(addr, get("h", "/")).await?
            };
            let h = |n: &str| {
                r.headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string()
            };
            let pseudo: Vec<String> = h("x-probe-request-names")
                .split(',')
                .filter(|n| n.starts_with(':'))
                .map(str::to_string)
                .collect();
            seen.push((r.status, pseudo, h("x-probe-0")));
        }
    }
    let (envoy, wasmesh) = seen.split_at(2);
    assert_eq!(
        wasmesh[0], envoy[0],
        "HTTP/1.1: wasmesh (left) vs Envoy (right)"
    );
    // (read at request headers, then at response headers, where Envoy has released them)
    assert_eq!(envoy[0].2, "https | <missing>", "{envoy:?}");
    assert_eq!(
        envoy[0].1,
        [":authority", ":method", ":path", ":scheme"],
        "{envoy:?}"
    );
    assert_eq!(wasmesh[1], envoy[1], "h2: wasmesh (left) vs Envoy (right)");
    drop((ours, envoy_proc));
    Ok(())
}

/// A weighted cluster's own `request_headers_to_add`: applied before the route's (Envoy's
/// weighted cluster entry evaluates its headers first), so the upstream gets them in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_cluster_headers_come_before_the_routes_like_envoy() -> anyhow::Result<()> {
    let (up, seen) = crate::http1_codec::raw_upstream();
    let yaml = |admin: u16, listen: u16| {
        hcm_bootstrap((admin, listen, up.port()), "", "", "").replace(
            r#"routes: [{match: {prefix: "/"}, route: {cluster: up}}]"#,
            r#"routes: [{match: {prefix: "/"}, request_headers_to_add: [{header: {key: x-route, value: r}}], route: {weighted_clusters: {clusters: [{name: up, weight: 1, request_headers_to_add: [{header: {key: x-cluster, value: c}}]}]}}}]"#,
        )
    };
    let (ours, ours_addr, envoy_proc, envoy_addr) = start_both(yaml).await?;
    let mut heads = Vec::new();
    for addr in [envoy_addr, ours_addr] {
        let before = seen.lock().unwrap_or_else(|e| e.into_inner()).len();
        let r = send(addr, get("h", "/w")).await?;
        assert_eq!(r.status, 200);
        let raw = seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(before)
            .cloned()
            .unwrap_or_default();
        heads.push(
            crate::http1_codec::header_names(&raw)
                .into_iter()
                .filter(|n| n.starts_with("x-route") || n.starts_with("x-cluster"))
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(heads[1], heads[0], "wasmesh (left) vs Envoy (right)");
    assert_eq!(heads[0], ["x-cluster", "x-route"], "envoy");
    drop((ours, envoy_proc));
    Ok(())
}

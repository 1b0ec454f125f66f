//! Trailers and the Wasm trailer callbacks, against real Envoy 1.40: the `trace` plugin records
//! every HTTP callback with its arguments (`qh`, `qb5`, `qt1`, `sh`, `sb72`, `st1`, `e` for
//! end of stream), and each case must give the same record, the same trailers on both sides
//! and the same plugin metrics in Envoy and in wasmesh. The upstream speaks h2; the client h2,
//! or HTTP/1.1 where the codec drops trailers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use test_support::proxy_peers::{free_ports, start_envoy, start_upstream};

use crate::support::*;

fn bootstrap(admin: u16, listen: u16, listen1: u16, up: u16) -> String {
    // `main` → cluster `up` (h2), and a copy of it, `h1up` → cluster `up1` (HTTP/1.1).
    let base = one_plugin(
        (admin, listen, up),
        test_plugins::TRACE,
        "trace",
        "",
        &cluster_yaml("up1", up, false),
    )
    .replacen(
        &cluster_yaml("up", up, false),
        &cluster_yaml("up", up, true),
        1,
    );
    let (from, to) = (
        base.find("  - name: main").unwrap_or(0),
        base.find("  clusters:").unwrap_or(0),
    );
    let second = base[from..to]
        .replace("name: main", "name: h1up")
        .replace(
            &format!("port_value: {listen}}}"),
            &format!("port_value: {listen1}}}"),
        )
        .replace("stat_prefix: main", "stat_prefix: h1up")
        .replace("{cluster: up}", "{cluster: up1}");
    let mut out = base.clone();
    out.insert_str(to, &second);
    out
}

/// What one exchange showed: status, the plugin's `x-trace` response header, the response
/// trailers the client got, and the trailers and body length the upstream got.
#[derive(Debug, PartialEq)]
struct Seen {
    status: u16,
    trace_header: String,
    client_trailers: BTreeMap<String, String>,
    upstream_trailers: Option<serde_json::Value>,
    upstream_body_len: u64,
}

type Case = (&'static str, bool, &'static str, &'static str, bool, bool);

/// (tag, h2 client, method, path, request trailers, h2 upstream): each request sends body `hello` unless
/// GET; an HTTP/1.1 body is chunked when it has trailers or the tag says `chunked`, else it
/// has a content-length.
const CASES: [Case; 12] = [
    ("h2post", true, "POST", "/trailers", true, true),
    ("h2postnotrailers", true, "POST", "/trailers", false, true),
    ("h2get", true, "GET", "/trailers", false, true),
    ("h2postplain", true, "POST", "/plain", true, true),
    ("h1post", false, "POST", "/trailers", true, true),
    ("h1get", false, "GET", "/trailers", false, true),
    ("h1postcl", false, "POST", "/trailers", false, true),
    ("h1postchunked", false, "POST", "/trailers", false, true),
    ("h2toh1post", true, "POST", "/trailers", true, false),
    ("h2toh1get", true, "GET", "/trailers", false, false),
    ("h1toh1postcl", false, "POST", "/plain", false, false),
    ("h1toh1postchunked", false, "POST", "/trailers", true, false),
];

async fn exchange(addr: SocketAddr, case: &Case) -> anyhow::Result<Seen> {
    let (tag, h2, method, path, with_trailers, _) = *case;
    let body = if method == "GET" { "" } else { "hello" };
    let mut req = http::Request::builder()
        .method(method)
        .header("x-trace-tag", tag)
        .header("te", "trailers");
    req = if h2 {
        req.uri(format!("http://trace.example{path}"))
            .version(http::Version::HTTP_2)
    } else {
        req.uri(path).header("host", "trace.example")
    };
    if tag.contains("chunked") {
        req = req.header("transfer-encoding", "chunked");
    }
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-client-trailer", http::HeaderValue::from_static("abc"));
    let full = Full::new(Bytes::from(body));
    let body = if with_trailers {
        full.with_trailers(std::future::ready(Some(Ok(trailers))))
            .boxed()
    } else {
        full.boxed()
    };
    let req = req.body(body)?;
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let resp = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await?;
        tokio::spawn(conn);
        let resp =
            tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await??;
        (resp, Box::new(sender) as Box<dyn std::any::Any + Send>)
    } else {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let resp =
            tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await??;
        (resp, Box::new(sender) as Box<dyn std::any::Any + Send>)
    };
    let (resp, sender) = resp;
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await?;
    // The connection stays open until the proxy is done with the stream: an HTTP/1.1 body
    // with a content-length is complete for the client before the upstream's trailers reach
    // the proxy, and a close then would reset the stream.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(sender);
    let client_trailers = collected
        .trailers()
        .map(|t| {
            t.iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    let json: serde_json::Value =
        serde_json::from_slice(&collected.to_bytes()).unwrap_or(serde_json::Value::Null);
    Ok(Seen {
        status: parts.status.as_u16(),
        trace_header: parts
            .headers
            .get("x-trace")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        client_trailers,
        upstream_trailers: json.get("trailers").cloned(),
        upstream_body_len: json["body_len"].as_u64().unwrap_or(u64::MAX),
    })
}

/// The `trace.` counters in `/stats`, as (name, value) lines.
async fn trace_counters(admin: SocketAddr) -> anyhow::Result<Vec<String>> {
    let stream = tokio::net::TcpStream::connect(admin).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri("/stats?filter=trace")
        .header("host", "admin")
        .body(Full::new(Bytes::new()))?;
    let body = sender
        .send_request(req)
        .await?
        .into_body()
        .collect()
        .await?;
    let text = String::from_utf8_lossy(&body.to_bytes()).to_string();
    let mut lines: Vec<String> = text
        .lines()
        // (this test's tags all start with `h`; other tests in the process use the plugin too)
        .filter(|l| l.starts_with("wasmcustom.trace.h"))
        .map(str::to_string)
        .collect();
    lines.sort();
    Ok(lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailer_callbacks_and_trailers_match_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let ours = start_proxy(&bootstrap(0, 0, 0, up.addr.port()))?;
    let ours_addrs = [
        ours.listener_addr("h1up").expect("listener"),
        ours.listener_addr("main").expect("listener"),
    ];
    let ports = free_ports(3)?;
    let envoy_yaml = bootstrap(ports[2], ports[0], ports[1], up.addr.port());
    let envoy_admin: SocketAddr = ([127, 0, 0, 1], ports[2]).into();
    let _envoy =
        tokio::task::spawn_blocking(move || start_envoy(&envoy_yaml, envoy_admin)).await??;
    let envoy_addrs: [SocketAddr; 2] = [
        ([127, 0, 0, 1], ports[1]).into(),
        ([127, 0, 0, 1], ports[0]).into(),
    ];

    let mut failures = Vec::new();
    let mut envoy_seen = Vec::new();
    for case in &CASES {
        let i = usize::from(case.5);
        let e = exchange(envoy_addrs[i], case)
            .await
            .map_err(|e| anyhow::anyhow!("{}: envoy: {e}", case.0))?;
        let o = exchange(ours_addrs[i], case)
            .await
            .map_err(|e| anyhow::anyhow!("{}: wasmesh: {e}", case.0))?;
        if e != o {
            failures.push(format!("{}:\n  envoy:   {e:?}\n  wasmesh: {o:?}", case.0));
        }
        envoy_seen.push(e);
    }
    // An h2 exchange where both sides send trailers must show them: the case is not vacuous.
    let e = &envoy_seen[0];
    assert!(e.trace_header.contains("qt1"), "{e:?}");

    // on_log ran for every stream, with the same record.
    let admin = ours.admin_addr().expect("admin");
    // (polled gently: Envoy's admin is not made for a connection every few milliseconds)
    let mut tries = 0;
    let (ec, oc) = loop {
        let ec = trace_counters(envoy_admin)
            .await
            .map_err(|e| anyhow::anyhow!("envoy admin {envoy_admin}: {e}"))?;
        let oc = trace_counters(admin)
            .await
            .map_err(|e| anyhow::anyhow!("wasmesh admin {admin}: {e}"))?;
        tries += 1;
        if ec == oc || tries == 10 {
            break (ec, oc);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(!ec.is_empty(), "envoy has no trace counters");
    if ec != oc {
        failures.push(format!("metrics:\n  envoy:   {ec:?}\n  wasmesh: {oc:?}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

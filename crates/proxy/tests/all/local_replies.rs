//! Local replies as Envoy 1.40 frames them, HTTP/1.1 and h2, GET and HEAD: an empty reply has
//! no `content-length` of its own (HTTP/1.1's codec writes `content-length: 0` after the other
//! headers; h2 sends none), and a HEAD request's reply keeps its `content-length` but sends no
//! body (over h2, HEADERS ends the stream).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;

use crate::support::*;

fn bootstrap(admin: u16, listen: u16) -> String {
    hcm_bootstrap((admin, listen, 9), "", "", "").replace(
        r#"routes: [{match: {prefix: "/"}, route: {cluster: up}}]"#,
        r#"routes: [{match: {prefix: "/empty"}, direct_response: {status: 503}}, {match: {prefix: "/"}, direct_response: {status: 200, body: {inline_string: "hello body"}}}]"#,
    )
}

/// The raw HTTP/1.1 response head (date masked) and whatever followed it.
fn h1(addr: SocketAddr, method: &str, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out)
        .split("\r\n")
        .map(|l| {
            if l.starts_with("date: ") {
                "date: *"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n"))
}

/// An h2 exchange: status, headers in order (date masked) and the body.
async fn h2(addr: SocketAddr, method: &str, path: &str) -> anyhow::Result<String> {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://h{path}"))
        .version(http::Version::HTTP_2)
        .body(Full::new(Bytes::new()))?;
    let r = send_h2(addr, req).await?;
    let headers: Vec<String> = r
        .headers
        .iter()
        .map(|(k, v)| {
            if k == "date" {
                "date: *".to_string()
            } else {
                format!("{k}: {}", v.to_str().unwrap_or_default())
            }
        })
        .collect();
    Ok(format!("{} {headers:?} {:?}", r.status, r.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_replies_are_framed_like_envoy() -> anyhow::Result<()> {
    let (ours, ours_addr, envoy_proc, envoy_addr) = start_both(bootstrap).await?;
    for (method, path) in [("GET", "/empty"), ("GET", "/body"), ("HEAD", "/body")] {
        let envoy = tokio::task::spawn_blocking(move || h1(envoy_addr, method, path)).await??;
        let wasmesh = tokio::task::spawn_blocking(move || h1(ours_addr, method, path)).await??;
        assert_eq!(
            wasmesh, envoy,
            "HTTP/1.1 {method} {path}: wasmesh (left) vs Envoy (right)"
        );
    }
    for (method, path) in [
        ("GET", "/empty"),
        ("HEAD", "/empty"),
        ("GET", "/body"),
        ("HEAD", "/body"),
    ] {
        let envoy = h2(envoy_addr, method, path).await?;
        let wasmesh = h2(ours_addr, method, path).await?;
        assert_eq!(
            wasmesh, envoy,
            "h2 {method} {path}: wasmesh (left) vs Envoy (right)"
        );
        assert_eq!(envoy.contains("content-length"), path == "/body", "{envoy}");
    }
    drop((ours, envoy_proc));
    Ok(())
}

/// A plugin that removes the response's `:status`: Envoy checks the required headers once the
/// filters are done and answers 502 `missing required header: :status` instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_status_is_envoys_502() -> anyhow::Result<()> {
    let up = test_support::proxy_peers::start_upstream("up").await?;
    let filter = wasm_filter(
        "h",
        test_plugins::HEADERS,
        r#"{"response_remove": [":status"]}"#,
    );
    let (ours, ours_addr, envoy_proc, envoy_addr) =
        start_both(|admin, listen| hcm_bootstrap((admin, listen, up.addr.port()), "", &filter, ""))
            .await?;
    let mut seen = Vec::new();
    for addr in [envoy_addr, ours_addr] {
        let a = tokio::task::spawn_blocking(move || h1(addr, "GET", "/")).await??;
        let b = h2(addr, "GET", "/").await?;
        seen.push((a, b));
    }
    assert_eq!(seen[1], seen[0], "wasmesh (left) vs Envoy (right)");
    assert!(
        seen[0].0.starts_with("HTTP/1.1 502 Bad Gateway")
            && seen[0].0.ends_with("missing required header: :status"),
        "{}",
        seen[0].0
    );
    drop((ours, envoy_proc));
    Ok(())
}

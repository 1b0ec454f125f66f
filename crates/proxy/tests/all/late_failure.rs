//! A plugin that fails in `proxy_on_response_body` (a trap, or a local reply it can no longer
//! send) after the response headers went on: against real Envoy 1.40 over HTTP/1.1, the client
//! gets the headers and then the connection closes, with none of the body.

use std::net::SocketAddr;
use std::time::Duration;

use test_support::proxy_peers::start_upstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// Everything the client reads until the proxy closes the connection, with the values of
/// `date` and the upstream service time masked.
async fn raw_exchange(addr: SocketAddr, trap: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET / HTTP/1.1\r\nHost: x\r\nx-trap: {trap}\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await??;
    Ok(String::from_utf8_lossy(&out)
        .split("\r\n")
        .map(|l| match l.split_once(": ") {
            Some((k, _)) if k == "date" || k == "x-envoy-upstream-service-time" => {
                format!("{k}: *")
            }
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\r\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_body_failures_reset_after_the_headers_like_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let direct = r#"direct_response: {status: 200, body: {inline_string: "direct"}}"#;
    for (trap, local) in [
        ("response-body", false),
        ("response-reply", false),
        ("response-body", true),
        ("response-reply", true),
    ] {
        // A fresh plugin each time: the failure leaves the VM failed. `local`: the response is
        // the route's direct response (a local reply, which ends `date`, `server`).
        let (ours, ours_addr, envoy_proc, envoy_addr) = start_both(|admin, listen| {
            let b = one_plugin(
                (admin, listen, up.addr.port()),
                test_plugins::TRAP,
                "t",
                "",
                "",
            );
            if local {
                b.replace("route: {cluster: up}", direct)
            } else {
                b
            }
        })
        .await?;
        let envoy = raw_exchange(envoy_addr, trap).await?;
        let wasmesh = raw_exchange(ours_addr, trap).await?;
        assert_eq!(
            wasmesh, envoy,
            "{trap} {local}: wasmesh (left) vs Envoy (right)"
        );
        assert!(envoy.starts_with("HTTP/1.1 200 OK\r\n"), "{trap}: {envoy}");
        assert!(envoy.contains("\r\nx-hostile: ok\r\n"), "{trap}: {envoy}");
        assert!(envoy.ends_with("\r\n\r\n"), "{trap}: no body byte: {envoy}");
        assert_eq!(
            envoy.contains("\r\ndate: *\r\nserver: envoy\r\n"),
            local,
            "{trap} {local}: {envoy}"
        );
        drop((ours, envoy_proc));
    }
    Ok(())
}

/// What an h2 client sees of one request: the reset before any HEADERS, or the status and
/// how the body ended.
async fn h2_outcome(addr: SocketAddr, trap: &str) -> anyhow::Result<String> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await?;
    tokio::spawn(conn);
    let mut req = get_h2(addr, "x", "/");
    req.headers_mut().insert("x-trap", trap.parse()?);
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await?;
    Ok(match resp {
        Err(e) => format!(
            "reset before headers ({})",
            e.is_canceled() || e.is_closed()
        ),
        Ok(r) => {
            let status = r.status();
            match r.into_body().collect().await {
                Ok(b) => format!("{status} with a {}-byte body", b.to_bytes().len()),
                Err(_) => format!("{status}, then a reset"),
            }
        }
    })
}

/// Over h2, Envoy 1.40 sends the response HEADERS, then RST_STREAM (curl 7.88 shows nothing
/// of such a stream when both come in one read, but the headers are on the wire).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_response_body_failures_reset_after_the_headers_like_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    for trap in ["response-body", "response-reply"] {
        let (ours, ours_addr, envoy_proc, envoy_addr) = start_both(|admin, listen| {
            one_plugin(
                (admin, listen, up.addr.port()),
                test_plugins::TRAP,
                "t",
                "",
                "",
            )
        })
        .await?;
        let envoy = h2_outcome(envoy_addr, trap).await?;
        let wasmesh = h2_outcome(ours_addr, trap).await?;
        assert_eq!(wasmesh, envoy, "{trap}: wasmesh (left) vs Envoy (right)");
        assert_eq!(envoy, "200 OK, then a reset", "{trap}");
        drop((ours, envoy_proc));
    }
    Ok(())
}

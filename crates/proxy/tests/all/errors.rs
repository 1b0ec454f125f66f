//! Envoy-compatible error answers: connect failure, timeout, upstream reset, malformed requests.

use std::io::{Read, Write};
use std::time::Duration;

use test_support::proxy_peers::{free_port, start_upstream};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_503_uf_and_counts() -> anyhow::Result<()> {
    let dead = free_port()?;
    let p = start_proxy(&basic(dead))?;
    let addr = p.listener_addr("main").unwrap();
    let r = send(addr, get("x", "/")).await?;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.text(),
        "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
    );
    assert_eq!(r.header("content-type"), Some("text/plain"));
    let stats = admin_get(&p, "/stats").await?.text();
    assert!(
        stats.contains("cluster.backend.upstream_cx_connect_fail: 1"),
        "{stats}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_is_504_and_retry_recovers_from_reset() -> anyhow::Result<()> {
    let up = start_upstream("u").await?;
    let yaml = fill(
        BASIC,
        &[
            ("PORT", up.addr.port().to_string()),
            ("FILTERS", String::new()),
            ("ROUTE_EXTRA", ", timeout: 0.2s, retry_policy: {retry_on: \"reset,retriable-status-codes\", num_retries: 2, retriable_status_codes: [418]}".to_string()),
        ],
    );
    let p = start_proxy(&yaml)?;
    let addr = p.listener_addr("main").unwrap();
    let r = send(addr, get("x", "/delay/2000")).await?;
    assert_eq!(
        (r.status, r.text().as_str()),
        (504, "upstream request timeout")
    );
    let r = send(addr, get("x", "/reset")).await?;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.text()
            .contains("retried and the latest reset reason: connection termination"),
        "{}",
        r.text()
    );
    let r = send(addr, get("x", "/status/418")).await?;
    assert_eq!(r.status, 418);
    let stats = admin_get(&p, "/stats").await?.text();
    assert!(
        stats.contains("cluster.backend.upstream_rq_timeout: 1"),
        "{stats}"
    );
    assert!(
        stats.contains("cluster.backend.upstream_rq_retry: 4"),
        "{stats}"
    );
    Ok(())
}

fn raw(addr: std::net::SocketAddr, req: &[u8]) -> anyhow::Result<String> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(req)?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_are_rejected() -> anyhow::Result<()> {
    let up = start_upstream("u").await?;
    let p = start_proxy(&basic(up.addr.port()))?;
    let addr = p.listener_addr("main").unwrap();
    let out = tokio::task::spawn_blocking(move || raw(addr, b"GET / HTTP/1.1\r\nhost x\r\n\r\n"))
        .await??;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let big = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let out = tokio::task::spawn_blocking(move || raw(addr, big.as_bytes())).await??;
    assert!(
        out.starts_with("HTTP/1.1 431"),
        "{}",
        &out[..out.len().min(200)]
    );
    // Pipelined requests are answered in order.
    let out = tokio::task::spawn_blocking(move || {
        raw(addr, b"GET /status/201 HTTP/1.1\r\nhost: x\r\n\r\nGET /status/202 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    })
    .await??;
    let first = out.find("HTTP/1.1 201").unwrap_or(usize::MAX);
    let second = out.find("HTTP/1.1 202").unwrap_or(usize::MAX);
    assert!(first < second && second != usize::MAX, "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_h2_concurrent_streams_and_large_bodies() -> anyhow::Result<()> {
    let up = start_upstream("u").await?;
    let p = start_proxy(&basic(up.addr.port()))?;
    let addr = p.listener_addr("main").unwrap();
    // curl 7.88 fails reused prior-knowledge h2 connections against Envoy too, so one curl
    // per request, ten at once.
    let mut runs = Vec::new();
    for i in 0..10 {
        runs.push(
            tokio::process::Command::new("curl")
                .args([
                    "-s",
                    "--http2-prior-knowledge",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code} %{size_download}",
                ])
                .arg(format!("http://{addr}/bytes/{}", 100_000 + i))
                .output(),
        );
    }
    for (i, out) in futures::future::join_all(runs)
        .await
        .into_iter()
        .enumerate()
    {
        let text = String::from_utf8_lossy(&out?.stdout).into_owned();
        assert_eq!(text, format!("200 {}", 100_000 + i));
    }
    let h2load = tokio::process::Command::new("h2load")
        .args(["-n", "200", "-c", "4", "-m", "10"])
        .arg(format!("http://{addr}/"))
        .output()
        .await?;
    let text = String::from_utf8_lossy(&h2load.stdout);
    assert!(text.contains("200 succeeded"), "{text}");
    Ok(())
}

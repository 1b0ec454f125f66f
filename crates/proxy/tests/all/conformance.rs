//! HTTP conformance with real sockets: slow clients, upstream resets mid-body, many h2 streams,
//! large streamed bodies.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use test_support::proxy_peers::start_upstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_dribbling_a_request() -> anyhow::Result<()> {
    let up = start_upstream("u").await?;
    let p = start_proxy(&basic(up.addr.port()))?;
    let mut s = tokio::net::TcpStream::connect(p.listener_addr("main").unwrap()).await?;
    let req =
        b"POST /slow HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello";
    for chunk in req.chunks(3) {
        s.write_all(chunk).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await??;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"body_len\":5"), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_mid_body_resets_downstream() -> anyhow::Result<()> {
    // An upstream that promises 1000 bytes, sends 3 and closes.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nabc")
                .await;
        }
    });
    let p = start_proxy(&basic(port))?;
    let addr = p.listener_addr("main").unwrap();
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = sender.send_request(get("x", "/")).await?;
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect()).await?;
    assert!(body.is_err(), "the truncated body must not look complete");
    // The proxy stays healthy.
    let r = send(addr, get("x", "/")).await;
    assert!(r.is_err() || r.is_ok_and(|r| r.status == 200));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_h2_streams_on_one_connection() -> anyhow::Result<()> {
    let up = start_upstream("u").await?;
    let p = start_proxy(&basic(up.addr.port()))?;
    let addr = p.listener_addr("main").unwrap();
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut tasks = Vec::new();
    for i in 0..100 {
        let mut s = sender.clone();
        tasks.push(tokio::spawn(async move {
            let req = http::Request::builder()
                .uri(format!("http://x/delay/{}", i % 20))
                .version(http::Version::HTTP_2)
                .body(Full::new(Bytes::new()))?;
            let resp = s.send_request(req).await?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            let j: serde_json::Value = serde_json::from_slice(&body)?;
            anyhow::Ok((status, j["path"].as_str().map(str::to_string)))
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, path) = t.await??;
        assert_eq!(status, 200);
        assert_eq!(path.as_deref(), Some(format!("/delay/{}", i % 20).as_str()));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways() -> anyhow::Result<()> {
    let up = start_upstream("u").await?;
    let p = start_proxy(&basic(up.addr.port()))?;
    let addr = p.listener_addr("main").unwrap();
    let big = Bytes::from(vec![b'z'; 8 * 1024 * 1024]);
    let req = http::Request::builder()
        .method("PUT")
        .uri("/upload")
        .header("host", "x")
        .body(Full::new(big))?;
    let r = send(addr, req).await?;
    assert_eq!(r.json()["body_len"], 8 * 1024 * 1024);
    let r = send(addr, get("x", "/bytes/8000000")).await?;
    assert_eq!(r.body.len(), 8_000_000);
    let text = p.stats().render_text();
    assert!(
        text.contains("http.ingress_http.downstream_rq_2xx: 2")
            || text.contains("downstream_rq_total: 2"),
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reset_while_upstream_pending_is_accounted() -> anyhow::Result<()> {
    let up = start_upstream("u").await?;
    let p = start_proxy(&basic(up.addr.port()))?;
    let addr = p.listener_addr("main").unwrap();
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri("http://x/delay/3000")
        .version(http::Version::HTTP_2)
        .body(Full::new(Bytes::new()))?;
    let pending = tokio::spawn(async move { sender.send_request(req).await });
    assert!(
        eventually(Duration::from_secs(2), || async {
            p.stats()
                .render_text()
                .contains("http.ingress_http.downstream_rq_active: 1")
        })
        .await
    );
    pending.abort(); // drops the response future: RST_STREAM(CANCEL)
    assert!(
        eventually(Duration::from_secs(2), || async {
            let t = p.stats().render_text();
            t.contains("http.ingress_http.downstream_rq_active: 0")
                && t.contains("http.ingress_http.downstream_rq_rx_reset: 1")
        })
        .await,
        "{}",
        p.stats().render_text()
    );
    Ok(())
}

fn stat(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(": ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_worker_keeps_only_a_few_idle_upstream_connections() -> anyhow::Result<()> {
    let up = start_upstream("u").await?;
    let p = start_proxy(&basic(up.addr.port()))?;
    let addr = p.listener_addr("main").unwrap();
    // A client that stays connected: the worker is not quiet while it is there.
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut keeper, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    assert_eq!(keeper.send_request(get("x", "/")).await?.status(), 200);
    // 20 requests at once: 20 upstream connections, pooled once their responses are read.
    let all = (0..20).map(|_| send(addr, get("x", "/delay/300")));
    for r in futures::future::join_all(all).await {
        assert_eq!(r?.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = admin_get(&p, "/stats").await?.text();
    let active = "cluster.backend.upstream_cx_active";
    assert!(stat(&stats, active) >= 20, "{}", stat(&stats, active));
    let total = stat(&stats, "cluster.backend.upstream_cx_total");
    // The last client leaves: the quiet worker closes all but 8 idle upstream connections.
    drop(keeper);
    let mut now = u64::MAX;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        now = stat(&admin_get(&p, "/stats").await?.text(), active);
        if now <= 8 {
            break;
        }
    }
    assert_eq!(now, 8, "idle upstream connections kept by a quiet worker");
    // The ones kept are reused: no new upstream connection for the next request.
    assert_eq!(send(addr, get("x", "/")).await?.status, 200);
    let stats = admin_get(&p, "/stats").await?.text();
    assert_eq!(stat(&stats, "cluster.backend.upstream_cx_total"), total);
    Ok(())
}

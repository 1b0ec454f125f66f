//! What the client gets when the upstream breaks HTTP, against real Envoy 1.40: a response
//! Envoy's codec rejects (two different `content-length`s, or not HTTP at all) is a 502 with
//! `reset reason: protocol error`; an h2 upstream that resets the stream is a 503 with
//! `reset reason: remote reset`.

use std::io::{Read, Write};
use std::net::TcpListener;

use test_support::proxy_peers::start_upstream;

use crate::support::*;

/// A raw upstream answering every request on a connection with `answer`, then closing.
fn raw_upstream(answer: &'static [u8]) -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(answer);
            });
        }
    });
    Ok(port)
}

async fn outcome(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
    let r = send(addr, get("h", path)).await?;
    Ok(format!(
        "{} {:?} {}",
        r.status,
        r.headers.get("content-type"),
        r.text()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_upstream_responses_get_envoys_status_and_reason() -> anyhow::Result<()> {
    for answer in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 91\r\n\r\nhello"[..],
        &b"NOT HTTP AT ALL\r\n\r\n"[..],
    ] {
        let port = raw_upstream(answer)?;
        let (ours, ours_addr, envoy_proc, envoy_addr) =
            start_both(|admin, listen| hcm_bootstrap((admin, listen, port), "", "", "")).await?;
        let envoy = outcome(envoy_addr, "/").await?;
        let wasmesh = outcome(ours_addr, "/").await?;
        assert_eq!(wasmesh, envoy, "wasmesh (left) vs Envoy (right)");
        assert!(envoy.starts_with("502 "), "{envoy}");
        assert!(envoy.ends_with("reset reason: protocol error"), "{envoy}");
        drop((ours, envoy_proc));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_stream_reset_by_the_upstream_is_a_remote_reset() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let (ours, ours_addr, envoy_proc, envoy_addr) = start_both(|admin, listen| {
        hcm_bootstrap((admin, listen, up.addr.port()), "", "", "").replacen(
            &cluster_yaml("up", up.addr.port(), false),
            &cluster_yaml("up", up.addr.port(), true),
            1,
        )
    })
    .await?;
    let envoy = outcome(envoy_addr, "/reset").await?;
    let wasmesh = outcome(ours_addr, "/reset").await?;
    assert_eq!(wasmesh, envoy, "wasmesh (left) vs Envoy (right)");
    assert!(envoy.starts_with("503 "), "{envoy}");
    assert!(envoy.contains("reset reason: remote reset"), "{envoy}");
    drop((ours, envoy_proc));
    Ok(())
}

/// Envoy writes the standard reason phrase whatever the upstream sent (`204 X` → `204 No
/// Content`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reason_phrase_is_the_standard_one() -> anyhow::Result<()> {
    let port = raw_upstream(b"HTTP/1.1 204 X\r\nx-a: 1\r\n\r\n")?;
    let (ours, ours_addr, envoy_proc, envoy_addr) =
        start_both(|admin, listen| hcm_bootstrap((admin, listen, port), "", "", "")).await?;
    let status_line = |addr: std::net::SocketAddr| -> anyhow::Result<String> {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        s.write_all(b"GET / HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n")?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(String::from_utf8_lossy(&out)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string())
    };
    let envoy = tokio::task::spawn_blocking(move || status_line(envoy_addr)).await??;
    let wasmesh = tokio::task::spawn_blocking(move || status_line(ours_addr)).await??;
    assert_eq!(wasmesh, envoy, "wasmesh (left) vs Envoy (right)");
    assert_eq!(envoy, "HTTP/1.1 204 No Content");
    drop((ours, envoy_proc));
    Ok(())
}

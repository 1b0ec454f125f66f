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

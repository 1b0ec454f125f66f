//! Listeners added, removed and moved after start (what an LDS update does), with two workers.

use std::net::SocketAddr;
use std::time::Duration;

use test_support::proxy_peers::free_port;
use wasmesh_proxy::RunningProxy;
use wasmesh_proxy::config::BuildOptions;

use crate::support::*;

/// One listener answering every request with `body` (no upstream needed).
fn listener(name: &str, port: u16, body: &str) -> String {
    format!(
        r#"
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                direct_response: {{status: 200, body: {{inline_string: "{body}"}}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"#
    )
}

fn bootstrap(listeners: &[String]) -> String {
    format!(
        "admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}\nstatic_resources:\n  listeners:{}\n",
        listeners.concat()
    )
}

fn update(p: &mut RunningProxy, listeners: &[String]) -> anyhow::Result<()> {
    let b = wasmesh_proxy::config::bootstrap::parse(&bootstrap(listeners))?;
    let opts = BuildOptions {
        concurrency: 2,
        store: p.stats().clone(),
        ..BuildOptions::default()
    };
    let config = wasmesh_proxy::config::build(&b, &opts)?;
    Ok(p.update(config)?)
}

async fn body(addr: SocketAddr) -> anyhow::Result<String> {
    Ok(send(addr, get("x", "/")).await?.text())
}

#[tokio::test]
async fn listeners_are_added_removed_and_rebound_without_a_restart() -> anyhow::Result<()> {
    let mut p = start_proxy_with(&bootstrap(&[listener("a", 0, "from a")]), 2)?;
    let a = p.listener_addr("a").unwrap();
    assert_eq!(body(a).await?, "from a");

    // Add b; a keeps its socket (same port) and its new body applies to new streams.
    update(
        &mut p,
        &[listener("a", 0, "from a v2"), listener("b", 0, "from b")],
    )?;
    let b = p.listener_addr("b").expect("b is bound");
    assert_eq!(
        p.listener_addr("a"),
        Some(a),
        "an unchanged listener keeps its address"
    );
    for _ in 0..8 {
        // Several connections, so both workers' sockets answer.
        assert_eq!(body(b).await?, "from b");
        assert_eq!(body(a).await?, "from a v2");
    }
    let listed = admin_get(&p, "/listeners").await?.text();
    assert!(listed.contains(&format!("b::{b}")), "{listed}");

    // A keep-alive connection to a, open across the removal.
    let stream = tokio::net::TcpStream::connect(a).await?;
    let (mut kept, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let r = kept.send_request(get("x", "/")).await?;
    assert_eq!(r.status(), 200);
    drop(r);

    // Remove a: it stops accepting and drains its connections, b still serves.
    update(&mut p, &[listener("b", 0, "from b")])?;
    assert!(
        eventually(Duration::from_secs(5), || {
            let closed = kept.is_closed();
            async move { closed }
        })
        .await,
        "the idle keep-alive connection of removed listener a was not drained"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            tokio::net::TcpStream::connect(a).await.is_err()
        })
        .await,
        "removed listener a still accepts on {a}"
    );
    assert_eq!(p.listener_addr("a"), None);
    assert_eq!(body(b).await?, "from b");
    assert!(!admin_get(&p, "/listeners").await?.text().contains("a::"));

    // Move b to a new port: the old one closes, the new one serves.
    let port = free_port()?;
    update(&mut p, &[listener("b", port, "b moved")])?;
    let moved = p.listener_addr("b").unwrap();
    assert_eq!(moved.port(), port);
    assert_eq!(body(moved).await?, "b moved");
    assert!(
        eventually(Duration::from_secs(5), || async {
            tokio::net::TcpStream::connect(b).await.is_err()
        })
        .await,
        "old address of b still accepts"
    );
    p.shutdown();
    Ok(())
}

#[tokio::test]
async fn a_listener_that_cannot_bind_rejects_the_update_and_keeps_the_last_config()
-> anyhow::Result<()> {
    let mut p = start_proxy_with(&bootstrap(&[listener("a", 0, "from a")]), 2)?;
    let a = p.listener_addr("a").unwrap();
    // Someone else holds this port (without SO_REUSEPORT, so our bind fails).
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port();
    let err = update(
        &mut p,
        &[listener("a", 0, "from a v2"), listener("busy", port, "x")],
    )
    .expect_err("binding a taken port must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("busy") && msg.contains(&port.to_string()),
        "{msg}"
    );
    assert_eq!(p.listener_addr("busy"), None);
    assert_eq!(
        body(a).await?,
        "from a",
        "the last good config keeps serving"
    );
    p.shutdown();
    Ok(())
}

static IDLE_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn count_idle_run() {
    IDLE_RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

fn idle_runs() -> usize {
    IDLE_RUNS.load(std::sync::atomic::Ordering::SeqCst)
}

#[tokio::test]
async fn a_worker_runs_its_idle_hook_when_its_last_connection_closes() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bootstrap = wasmesh_proxy::config::bootstrap::parse(&bootstrap(&[listener("i", 0, "ok")]))?;
    let opts = wasmesh_proxy::ProxyOptions {
        concurrency: 1,
        drain_timeout: Duration::from_secs(1),
        on_idle: Some(count_idle_run),
        ..Default::default()
    };
    let p = wasmesh_proxy::start(&bootstrap, &opts)?;
    let addr = p.listener_addr("i").expect("bound");
    let mut c1 = tokio::net::TcpStream::connect(addr).await?;
    let mut c2 = tokio::net::TcpStream::connect(addr).await?;
    let mut buf = [0u8; 512];
    for c in [&mut c1, &mut c2] {
        c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await?;
        let n = c.read(&mut buf).await?;
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "answered");
    }
    let before = idle_runs();
    drop(c1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(idle_runs(), before, "one connection is still open");
    drop(c2);
    assert!(
        eventually(Duration::from_secs(2), || async { idle_runs() > before }).await,
        "the hook runs once the last connection is gone"
    );
    // Closing again within the gap defers the run instead of dropping it.
    let after_first = idle_runs();
    let c3 = tokio::net::TcpStream::connect(addr).await?;
    drop(c3);
    assert!(
        eventually(Duration::from_secs(2), || async {
            idle_runs() > after_first
        })
        .await,
        "a second idle moment runs the hook too"
    );
    Ok(())
}

//! L4: tcp_proxy with network filters.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmesh_proxy::filter::{Any, BuildContext, LocalBoxFuture, Registry, WorkerContext};
use wasmesh_proxy::network_filter::{
    CloseType, NetStatus, NetworkCx, NetworkFilter, NetworkFilterConfig,
};
use wasmesh_proxy::{BuildOptions, ProxyOptions};

use crate::support::*;

const TCP: &str = r#"
static_resources:
  listeners:
  - name: tcp
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      {FILTERS}
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp_stats
          cluster: echo
  clusters:
  - name: echo
    load_assignment:
      cluster_name: echo
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {PORT}}}}}]}]
"#;

type Events = Arc<Mutex<Vec<String>>>;

struct Cfg(Events);
impl NetworkFilterConfig for Cfg {
    fn create_filter(&self, _w: &WorkerContext) -> Box<dyn NetworkFilter> {
        Box::new(Recorder(Arc::clone(&self.0)))
    }
}

struct Recorder(Events);
impl Recorder {
    fn push(&self, s: String) {
        if let Ok(mut v) = self.0.lock() {
            v.push(s);
        }
    }
}
impl NetworkFilter for Recorder {
    fn on_downstream_data<'a>(
        &'a mut self,
        cx: &'a mut NetworkCx,
        data: &'a mut BytesMut,
        end: bool,
    ) -> LocalBoxFuture<'a, NetStatus> {
        self.push(format!("down {:?} {end}", String::from_utf8_lossy(data)));
        if data.ends_with(b"quit") {
            cx.close();
        }
        // Hold data until a newline arrives (the buffer accumulates).
        let s = if end || data.ends_with(b"\n") {
            NetStatus::Continue
        } else {
            NetStatus::StopIteration
        };
        Box::pin(std::future::ready(s))
    }
    fn on_upstream_data<'a>(
        &'a mut self,
        _cx: &'a mut NetworkCx,
        data: &'a mut BytesMut,
        _end: bool,
    ) -> LocalBoxFuture<'a, NetStatus> {
        self.push(format!("up {:?}", String::from_utf8_lossy(data)));
        Box::pin(std::future::ready(NetStatus::Continue))
    }
    fn on_downstream_close(&mut self, _cx: &mut NetworkCx, c: CloseType) {
        self.push(format!("down_close {c:?}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_with_network_filter_buffering_and_close() -> anyhow::Result<()> {
    let up = test_support::proxy_peers::start_tcp_upper_echo().await?;
    let events: Events = Arc::default();
    let mut registry = Registry::with_builtin_filters();
    let ev = Arc::clone(&events);
    registry.register_network(
        "type.googleapis.com/google.protobuf.Struct",
        Arc::new(move |_a: &Any, _c: &BuildContext| {
            Ok(Arc::new(Cfg(Arc::clone(&ev))) as Arc<dyn NetworkFilterConfig>)
        }),
    );
    let filter = "- name: recorder\n        typed_config: {\"@type\": type.googleapis.com/google.protobuf.Struct, value: {}}";
    let yaml = fill(
        TCP,
        &[
            ("PORT", up.addr.port().to_string()),
            ("FILTERS", filter.into()),
        ],
    );
    let bootstrap = wasmesh_proxy::config::bootstrap::parse(&yaml)?;
    let opts = BuildOptions {
        registry,
        ..BuildOptions::default()
    };
    let config = wasmesh_proxy::config::build(&bootstrap, &opts)?;
    let p = wasmesh_proxy::start_with(
        config,
        opts.store,
        &ProxyOptions {
            concurrency: 1,
            drain_timeout: Duration::from_secs(1),
            ..Default::default()
        },
    )?;
    let addr = p.listener_addr("tcp").unwrap();

    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"hel").await?;
    s.write_all(b"lo\n").await?;
    let mut buf = [0u8; 6];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await??;
    assert_eq!(&buf, b"HELLO\n");
    s.write_all(b"quit").await?;
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await??;
    assert_eq!(n, 0, "closed by the filter");
    let ev = events.lock().map(|e| e.clone()).unwrap_or_default();
    assert!(ev.iter().any(|e| e == "down \"hello\\n\" false"), "{ev:?}");
    assert!(ev.iter().any(|e| e == "up \"HELLO\\n\""), "{ev:?}");
    assert!(ev.iter().any(|e| e == "down_close Local"), "{ev:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_rbac_deny_closes() -> anyhow::Result<()> {
    let up = test_support::proxy_peers::start_tcp_upper_echo().await?;
    let filter = "- name: envoy.filters.network.rbac\n        typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC, stat_prefix: tcp_rbac, rules: {action: ALLOW}}";
    let yaml = fill(
        TCP,
        &[
            ("PORT", up.addr.port().to_string()),
            ("FILTERS", filter.into()),
        ],
    );
    let p = start_proxy(&yaml)?;
    let mut s = tokio::net::TcpStream::connect(p.listener_addr("tcp").unwrap()).await?;
    let _ = s.write_all(b"hi\n").await;
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await?;
    assert!(
        r.is_err() || rest.is_empty(),
        "denied connection got data: {rest:?}"
    );
    let text = p.stats().render_text();
    assert!(text.contains("tcp_rbac.rbac.denied: 1"), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_filter_in_front_of_http_sees_raw_bytes() -> anyhow::Result<()> {
    let up = test_support::proxy_peers::start_upstream("u").await?;
    let events: Events = Arc::default();
    let mut registry = Registry::with_builtin_filters();
    let ev = Arc::clone(&events);
    registry.register_network(
        "type.googleapis.com/google.protobuf.Struct",
        Arc::new(move |_a: &Any, _c: &BuildContext| {
            Ok(Arc::new(Cfg(Arc::clone(&ev))) as Arc<dyn NetworkFilterConfig>)
        }),
    );
    let yaml = basic(up.addr.port()).replace(
        "    - filters:\n      - name: envoy.filters.network.http_connection_manager",
        "    - filters:\n      - name: recorder\n        typed_config: {\"@type\": type.googleapis.com/google.protobuf.Struct, value: {}}\n      - name: envoy.filters.network.http_connection_manager",
    );
    let bootstrap = wasmesh_proxy::config::bootstrap::parse(&yaml)?;
    let opts = BuildOptions {
        registry,
        ..BuildOptions::default()
    };
    let config = wasmesh_proxy::config::build(&bootstrap, &opts)?;
    let p = wasmesh_proxy::start_with(
        config,
        opts.store,
        &ProxyOptions {
            concurrency: 1,
            drain_timeout: Duration::from_secs(1),
            ..Default::default()
        },
    )?;
    let addr = p.listener_addr("main").unwrap();
    let r = send(addr, get("x", "/through")).await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/through");
    let ok = eventually(Duration::from_secs(2), || async {
        let ev = events.lock().map(|e| e.clone()).unwrap_or_default();
        ev.iter()
            .any(|e| e.starts_with("down \"GET /through HTTP/1.1"))
            && ev.iter().any(|e| e.starts_with("up \"HTTP/1.1 200 OK"))
    })
    .await;
    assert!(ok, "{:?}", events.lock().map(|e| e.clone()));
    Ok(())
}

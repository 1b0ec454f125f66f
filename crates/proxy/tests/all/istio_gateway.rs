//! wasmesh under the configuration Istio generates: the whole config of a real
//! `istio-ingressgateway` (Istio 1.22.3, from its `/config_dump`: istio-agent's bootstrap with
//! its ADS and SDS Unix-socket clusters, Istio's stats tags and matcher, the `0.0.0.0_8080`
//! gateway listener with its RDS routes inlined and Istio's HTTP filters
//! (`istio.metadata_exchange`, `grpc_stats`, `istio.alpn`, `fault`, `cors`, `istio.stats`),
//! the health listener on 15021 and the EDS clusters with their endpoints inlined, pointed at a
//! local upstream; listeners and admin moved to 127.0.0.1 port 0). Source:
//! ServiceLayerNetworking/multiparty-lb `exp_3_node/ingress_envoy_config_dump.json`, commit
//! 45835bdf. Stock Envoy cannot load it (it lacks Istio's own filters), so the expectations are
//! what Istio's Envoy does with these routes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::http1_codec::raw_upstream;
use crate::support::*;

const GATEWAY: &str = include_str!("../fixtures/istio/ingressgateway-1.22.3.json");

/// Sends `raw` and returns the whole response (the request says `connection: close`).
fn exchange(addr: SocketAddr, raw: String) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    s.write_all(raw.as_bytes()).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

fn get(host: &str, path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n{extra}connection: close\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_istio_ingress_gateway_config_serves_its_routes() -> anyhow::Result<()> {
    let (up, seen) = raw_upstream();
    let config = GATEWAY.replace("54321", &up.port().to_string());
    let proxy = start_proxy(&config)?;
    let gateway = proxy
        .listener_addr("0.0.0.0_8080")
        .expect("gateway listener");
    let health = proxy
        .listener_addr("static_15021")
        .expect("health listener");
    let seen2 = std::sync::Arc::clone(&seen);
    let (routed, subset, unknown, normalized, ready, upstream) =
        tokio::task::spawn_blocking(move || {
            let routed = exchange(gateway, get("app1.mplb.com:8080", "/hello", ""));
            let subset = exchange(
                gateway,
                get("app2.mplb.com", "/x", "x-lb-endpt: app2-1\r\n"),
            );
            let unknown = exchange(gateway, get("app9.mplb.com", "/", ""));
            let normalized = exchange(gateway, get("app3.mplb.com", "/a/./b/../c", ""));
            let ready = exchange(health, get("localhost:15021", "/healthz/ready", ""));
            let upstream = seen2.lock().unwrap_or_else(|e| e.into_inner()).clone();
            (routed, subset, unknown, normalized, ready, upstream)
        })
        .await?;
    // A host with the gateway's port still matches (`ignore_port_in_host_matching`).
    assert!(routed.starts_with("HTTP/1.1 200 OK"), "{routed}");
    assert!(subset.starts_with("HTTP/1.1 200 OK"), "{subset}");
    // No virtual host: Envoy's 404.
    assert!(unknown.starts_with("HTTP/1.1 404 Not Found"), "{unknown}");
    assert!(normalized.starts_with("HTTP/1.1 200 OK"), "{normalized}");
    // The readiness probe goes to the `agent` cluster (pilot-agent's 15020).
    assert!(ready.starts_with("HTTP/1.1 200 OK"), "{ready}");
    assert_eq!(upstream.len(), 4, "{upstream:#?}");
    let first = upstream[0].to_ascii_lowercase();
    assert!(first.starts_with("get /hello http/1.1\r\n"), "{first}");
    // istiod's routes: attempt counts on, no route timeout (`timeout: 0s`), the gateway's
    // `use_remote_address` and request ids.
    assert!(
        first.contains("\r\nx-envoy-attempt-count: 1\r\n"),
        "{first}"
    );
    assert!(!first.contains("x-envoy-expected-rq-timeout-ms"), "{first}");
    assert!(
        first.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"),
        "{first}"
    );
    assert!(first.contains("\r\nx-request-id: "), "{first}");
    assert!(
        upstream[1].starts_with("GET /x HTTP/1.1\r\n"),
        "{}",
        upstream[1]
    );
    // `normalize_path: true`.
    assert!(
        upstream[2].starts_with("GET /a/c HTTP/1.1\r\n"),
        "{}",
        upstream[2]
    );
    assert!(
        upstream[3].starts_with("GET /healthz/ready HTTP/1.1\r\n"),
        "{}",
        upstream[3]
    );
    // Istio's `stats_matcher` keeps per-service cluster stats out, and what istio-agent reads
    // in (its readiness check reads `listener_manager.workers_started`).
    let stats = String::from_utf8_lossy(&admin_get(&proxy, "/stats").await?.body).to_string();
    assert!(!stats.contains("cluster.outbound|"), "{stats}");
    assert!(
        stats.contains("listener_manager.total_listeners_active: 3\n"),
        "{stats}"
    );
    assert!(
        stats.contains("cluster_manager.active_clusters: 16\n"),
        "{stats}"
    );
    Ok(())
}

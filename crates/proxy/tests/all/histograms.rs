//! Plugin histograms against real Envoy 1.40: what the admin API shows only changes at a stats
//! flush (`stats_flush_interval`), and then it is Envoy's arithmetic: quantiles in `/stats`
//! (`P0(<interval>,<cumulative>) ...`), bucket counts and `_sum` in `/stats/prometheus`, and the
//! same in `/stats?format=json`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use test_support::proxy_peers::start_upstream;

use crate::support::*;

/// Request body sizes: the `metrics` plugin records each request's body size.
const SIZES: [usize; 9] = [1, 5, 10, 11, 99, 100, 1000, 1099, 50000];

fn post(body: usize) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method("POST")
        .uri("/")
        .header("host", "h.example")
        .body(Full::new(Bytes::from(vec![b'a'; body])))
        .unwrap_or_default()
}

/// The histogram as each admin format shows it: the `/stats` line, the Prometheus block, the
/// JSON quantiles, and whether `/stats?usedonly` lists it.
async fn observe(admin: SocketAddr) -> anyhow::Result<(String, String, String, bool)> {
    const NAME: &str = "wasmcustom.wasmesh_request_body_bytes";
    let text = send(admin, get("admin", "/stats")).await?.text();
    let line = text
        .lines()
        .find(|l| l.starts_with(NAME))
        .unwrap_or_default()
        .to_string();
    let prom: String = send(admin, get("admin", "/stats/prometheus"))
        .await?
        .text()
        .lines()
        .filter(|l| l.contains("wasmesh_request_body_bytes"))
        .map(|l| format!("{l}\n"))
        .collect();
    let json: serde_json::Value = serde_json::from_str(
        &send(admin, get("admin", "/stats?format=json"))
            .await?
            .text(),
    )?;
    let quantiles = json["stats"]
        .as_array()
        .and_then(|s| s.iter().find_map(|e| e.get("histograms")))
        .and_then(|h| h["computed_quantiles"].as_array())
        .and_then(|q| q.iter().find(|e| e["name"] == NAME))
        .map(|e| e["values"].to_string())
        .unwrap_or_default();
    let used = send(admin, get("admin", "/stats?usedonly"))
        .await?
        .text()
        .lines()
        .any(|l| l.starts_with(NAME));
    Ok((line, prom, quantiles, used))
}

async fn requests(addr: SocketAddr) -> anyhow::Result<()> {
    for size in SIZES {
        let r = send(addr, post(size)).await?;
        anyhow::ensure!(r.status == 200, "status {}", r.status);
    }
    Ok(())
}

fn bootstrap(admin: u16, listen: u16, up: u16, flush: &str) -> String {
    format!(
        "stats_flush_interval: {flush}\n{}",
        one_plugin((admin, listen, up), test_plugins::METRICS, "m", "", "")
    )
}

/// Samples are not shown until a flush: Envoy prints `No recorded values` and zero counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histograms_show_nothing_before_a_flush_like_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let (ours, ours_addr, envoy_proc, envoy_addr) =
        start_both(|admin, listen| bootstrap(admin, listen, up.addr.port(), "60s")).await?;
    requests(envoy_addr).await?;
    requests(ours_addr).await?;
    let envoy = observe(envoy_proc.admin).await?;
    let wasmesh = observe(ours.admin_addr().expect("admin")).await?;
    assert_eq!(wasmesh, envoy, "wasmesh (left) vs Envoy (right)");
    assert!(envoy.0.ends_with(": No recorded values"), "{}", envoy.0);
    assert!(envoy.1.contains("wasmesh_request_body_bytes_count{} 0"));
    assert!(!envoy.3, "not in usedonly before a flush");
    Ok(())
}

/// Two flushes after the last sample: the interval is empty (`nan`, JSON `null`) and the
/// cumulative statistics hold every sample, whatever the flush timers' phase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_histograms_match_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let (ours, ours_addr, envoy_proc, envoy_addr) =
        start_both(|admin, listen| bootstrap(admin, listen, up.addr.port(), "0.2s")).await?;
    requests(envoy_addr).await?;
    requests(ours_addr).await?;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let envoy = observe(envoy_proc.admin).await?;
    let wasmesh = observe(ours.admin_addr().expect("admin")).await?;
    assert_eq!(wasmesh, envoy, "wasmesh (left) vs Envoy (right)");
    assert!(
        envoy.0.contains(" P75(nan,1033.3333333333333) "),
        "{}",
        envoy.0
    );
    assert!(
        envoy
            .1
            .contains("wasmesh_request_body_bytes_bucket{le=\"1000\"} 8\n"),
        "{}",
        envoy.1
    );
    assert!(envoy.3, "listed by usedonly once flushed");
    Ok(())
}

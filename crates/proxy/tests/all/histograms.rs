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

/// The proxy's own stats that each request charges, as `/stats` names them: the router's
/// per-response counters (`upstream_rq_<code>`, `upstream_rq_<class>xx`,
/// `upstream_rq_completed`, each again under `external.`), made only once charged, and the
/// timing histograms (`downstream_rq_time`, `upstream_rq_time`, `upstream_cx_connect_ms`, ...),
/// with the sample counts Prometheus shows after a flush. Times are masked (they differ run
/// to run); names, counter values and sample counts must be Envoy's.
async fn core_stats(admin: SocketAddr) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let text = send(admin, get("admin", "/stats")).await?.text();
    let relevant = |n: &str| {
        (n.starts_with("cluster.up.") || n.starts_with("http.main."))
            && (n.contains("upstream_rq_") || n.contains("_time") || n.contains("_ms"))
            && !n.contains("_rq_total")
            && !n.contains("timeout")
            && !n.contains("retry")
            && !n.contains("pending")
            && !n.contains("rq_per_")
            && !n.contains("_active")
            && !n.contains("_tx_")
            && !n.contains("_rx_")
            && !n.contains("max_duration")
            && !n.contains("cancelled")
            && !n.contains("maintenance")
            && !n.contains("0rtt")
    };
    let stats: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(n, _)| relevant(n))
        .map(|(n, v)| {
            if v.starts_with("P0(") || v == "No recorded values" {
                format!("{n}: <histogram>")
            } else {
                format!("{n}: {v}")
            }
        })
        .collect();
    let prom: Vec<String> = send(admin, get("admin", "/stats/prometheus"))
        .await?
        .text()
        .lines()
        .filter(|l| {
            l.ends_with(|c: char| c.is_ascii_digit())
                && (l.starts_with("envoy_cluster_upstream_rq_time_count")
                    || l.starts_with("envoy_cluster_external_upstream_rq_time_count")
                    || l.starts_with("envoy_cluster_upstream_cx_connect_ms_count")
                    || l.starts_with("envoy_http_downstream_rq_time_count")
                    || l.starts_with("envoy_cluster_upstream_rq{")
                    || l.starts_with("envoy_cluster_external_upstream_rq{")
                    || l.starts_with("envoy_cluster_upstream_rq_xx{")
                    || l.starts_with("envoy_cluster_external_upstream_rq_xx{")
                    || l.starts_with("envoy_cluster_upstream_rq_completed{"))
                && !l.contains("\"admin\"")
        })
        .map(str::to_string)
        .collect();
    Ok((stats, prom))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timing_and_response_code_stats_match_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let (ours, ours_addr, envoy_proc, envoy_addr) = start_both(|admin, listen| {
        format!(
            "stats_flush_interval: 0.2s\n{}",
            hcm_bootstrap((admin, listen, up.addr.port()), "", "", "")
        )
    })
    .await?;
    for addr in [envoy_addr, ours_addr] {
        for path in ["/", "/", "/status/404", "/", "/status/503"] {
            send(addr, get("h.example", path)).await?;
        }
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let envoy = core_stats(envoy_proc.admin).await?;
    let wasmesh = core_stats(ours.admin_addr().expect("admin")).await?;
    assert_eq!(
        wasmesh.0, envoy.0,
        "/stats: wasmesh (left) vs Envoy (right)"
    );
    assert_eq!(
        wasmesh.1, envoy.1,
        "/stats/prometheus: wasmesh (left) vs Envoy (right)"
    );
    let has = |s: &str| envoy.0.iter().any(|l| l == s);
    assert!(has("cluster.up.upstream_rq_200: 3"), "{:#?}", envoy.0);
    assert!(
        has("cluster.up.external.upstream_rq_5xx: 1"),
        "{:#?}",
        envoy.0
    );
    assert!(
        has("http.main.downstream_rq_time: <histogram>"),
        "{:#?}",
        envoy.0
    );
    assert!(
        envoy.1.iter().any(|l| l
            == "envoy_http_downstream_rq_time_count{envoy_http_conn_manager_prefix=\"main\"} 5"),
        "{:#?}",
        envoy.1
    );
    Ok(())
}

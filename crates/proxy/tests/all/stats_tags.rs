//! The bootstrap's `stats_config.stats_tags`, against real Envoy 1.40: a regex tag cuts its
//! part out of a plugin metric's name and becomes a Prometheus label, a fixed tag is added to
//! every stat (the proxy-wasm Go SDK's metrics example relies on this), while `/stats` keeps
//! the full names.

use std::net::SocketAddr;

use test_support::proxy_peers::start_upstream;

use crate::support::*;

const STATS_CONFIG: &str = r#"stats_config:
  stats_tags:
  - tag_name: mesh
    fixed_value: m1
  - tag_name: value
    regex: '(_value=([a-z]+))'
  - tag_name: whole
    regex: '(zz)'
"#;

fn bootstrap(admin: u16, listen: u16, up: u16) -> String {
    let yaml = one_plugin((admin, listen, up), test_plugins::TRACE, "tr", "", "");
    format!("{STATS_CONFIG}{yaml}")
}

/// The `trace` plugin's metric lines after requests tagged `st_value=foo`, `st_value=bar` and
/// `stzz` (the plugin's counter is `trace.<tag>.<callbacks>`; other tests in the process use
/// the plugin with other tags).
async fn observe(addr: SocketAddr, admin: SocketAddr) -> anyhow::Result<(String, String)> {
    for tag in ["st_value=foo", "st_value=bar", "stzz"] {
        let mut req = get("tags.example", "/");
        req.headers_mut().insert("x-trace-tag", tag.parse()?);
        let r = send(addr, req).await?;
        anyhow::ensure!(r.status == 200, "status {}", r.status);
    }
    let grep = |text: String| -> String {
        text.lines()
            .filter(|l| l.contains("trace.st") || l.contains("trace_st"))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    // on_log runs after the response: give it a moment.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let prom = grep(send(admin, get("admin", "/stats/prometheus")).await?.text());
    let text = grep(send(admin, get("admin", "/stats")).await?.text());
    Ok((prom, text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_tags_label_plugin_metrics_like_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let (ours, ours_addr, envoy_proc, envoy_addr) =
        start_both(|admin, listen| bootstrap(admin, listen, up.addr.port())).await?;
    let envoy = observe(envoy_addr, envoy_proc.admin).await?;
    let wasmesh = observe(ours_addr, ours.admin_addr().expect("admin")).await?;
    assert_eq!(
        wasmesh.0, envoy.0,
        "/stats/prometheus: wasmesh (left) vs Envoy (right)"
    );
    assert_eq!(
        wasmesh.1, envoy.1,
        "/stats: wasmesh (left) vs Envoy (right)"
    );
    assert!(envoy.0.contains("value=\"foo\""), "{}", envoy.0);
    Ok(())
}

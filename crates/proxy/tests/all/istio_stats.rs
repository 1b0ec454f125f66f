//! Istio's bootstrap `stats_config` against real Envoy 1.40: `use_all_default_tags: false` with
//! Istio's own tag regexes (ECMAScript, with lookahead) and its `stats_matcher` inclusion list,
//! plus an extra inclusion prefix as `proxyStatsMatcher` adds. The stats both proxies keep must
//! have the same Prometheus names, labels and values, and the readiness lines istio-agent reads
//! must be the same.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use test_support::proxy_peers::start_upstream;

use crate::support::*;

/// Istio 1.2x's `envoy_bootstrap.json` stats section, as istio-agent renders it.
const ISTIO_STATS_CONFIG: &str = r#"stats_config:
  use_all_default_tags: false
  stats_tags:
  - {tag_name: cluster_name, regex: '^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)'}
  - {tag_name: tcp_prefix, regex: '^tcp\.((.*?)\.)\w+?$'}
  - {regex: '_rq(_(\d{3}))$', tag_name: response_code}
  - {tag_name: response_code_class, regex: '_rq(_(\dxx))$'}
  - {tag_name: http_conn_manager_listener_prefix, regex: '^listener(?=\.).*?\.http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)'}
  - {tag_name: http_conn_manager_prefix, regex: '^http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)'}
  - {tag_name: listener_address, regex: '^listener\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)'}
  - {regex: '(cache\.(.+?)\.)', tag_name: cache}
  - {regex: '(component\.(.+?)\.)', tag_name: component}
  - {regex: '(tag\.(.+?);\.)', tag_name: tag}
  - {regex: '(wasm_filter\.(.+?)\.)', tag_name: wasm_filter}
  - {tag_name: authz_enforce_result, regex: 'rbac(\.(allowed|denied))'}
  stats_matcher:
    inclusion_list:
      patterns:
      - prefix: reporter=
      - prefix: cluster_manager
      - prefix: listener_manager
      - prefix: server
      - prefix: cluster.xds-grpc
      - prefix: wasm
      - prefix: cluster.up
      - suffix: rbac.allowed
      - suffix: rbac.denied
      - suffix: downstream_cx_active
      - safe_regex: {regex: 'vhost\..*\.route\..*'}
      - prefix: component
      - prefix: istio
"#;

/// The samples both proxies must report identically (Prometheus name and labels).
const SAME: &[&str] = &[
    "envoy_server_state{}",
    "envoy_server_live{}",
    "envoy_server_concurrency{}",
    "envoy_listener_manager_workers_started{}",
    "envoy_listener_manager_total_listeners_active{}",
    "envoy_cluster_manager_active_clusters{}",
    "envoy_cluster_upstream_rq_total{cluster_name=\"up\"}",
    "envoy_cluster_upstream_rq{response_code_class=\"2xx\",cluster_name=\"up\"}",
    "envoy_cluster_upstream_cx_total{cluster_name=\"up\"}",
    "envoy_http_main_downstream_cx_active{}",
];

/// `name{labels}` → value, for every sample line.
fn samples(prom: &str) -> BTreeMap<String, String> {
    prom.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

struct Seen {
    prom: BTreeMap<String, String>,
    ready_lines: String,
    update_lines: String,
}

async fn observe(addr: SocketAddr, admin: SocketAddr) -> anyhow::Result<Seen> {
    observe_tags(addr, admin, &["isa", "isb"]).await
}

async fn observe_tags(addr: SocketAddr, admin: SocketAddr, tags: &[&str]) -> anyhow::Result<Seen> {
    for tag in tags {
        let mut req = get("istio.example", "/");
        req.headers_mut().insert("x-trace-tag", tag.parse()?);
        let r = send(addr, req).await?;
        anyhow::ensure!(r.status == 200, "status {}", r.status);
    }
    // on_log runs after the response; connections close.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let prom = send(admin, get("admin", "/stats/prometheus")).await?.text();
    // What istio-agent's readiness probe asks (pilot-agent status/util/stats.go).
    let ready_lines = send(
        admin,
        get(
            "admin",
            "/stats?usedonly&filter=%5E(server%5C.state%7Clistener_manager%5C.workers_started)",
        ),
    )
    .await?
    .text();
    let update_lines = send(
        admin,
        get(
            "admin",
            "/stats?usedonly&filter=%5E(cluster_manager%5C.cds%7Clistener_manager%5C.lds)%5C.(update_success%7Cupdate_rejected)%24",
        ),
    )
    .await?
    .text();
    Ok(Seen {
        prom: samples(&prom),
        ready_lines,
        update_lines,
    })
}

/// Both proxies with the `trace` plugin (`tr`) and `stats_config` (a YAML section) before it.
async fn start_trace_plugin(
    stats_config: &str,
    up: u16,
) -> anyhow::Result<(
    wasmesh_proxy::RunningProxy,
    SocketAddr,
    test_support::proxy_peers::Envoy,
    SocketAddr,
)> {
    start_both(|admin, listen| {
        let yaml = one_plugin((admin, listen, up), test_plugins::TRACE, "tr", "", "");
        format!("{stats_config}{yaml}")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_stats_config_names_and_filters_stats_like_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let (ours, ours_addr, envoy_proc, envoy_addr) =
        start_trace_plugin(ISTIO_STATS_CONFIG, up.addr.port()).await?;
    let envoy = observe(envoy_addr, envoy_proc.admin).await?;
    let wasmesh = observe(ours_addr, ours.admin_addr().expect("admin")).await?;
    for key in SAME {
        assert_eq!(
            (key, wasmesh.prom.get(*key)),
            (key, envoy.prom.get(*key)),
            "wasmesh (left) vs Envoy (right)"
        );
        assert!(envoy.prom.contains_key(*key), "Envoy lacks {key}");
    }
    // Stats outside the inclusion list exist in neither (Envoy never creates them).
    for (name, seen) in [("wasmesh", &wasmesh), ("Envoy", &envoy)] {
        let stray: Vec<_> = seen
            .prom
            .keys()
            .filter(|k| k.starts_with("envoy_http_downstream_rq") || k.contains("\"main\""))
            .collect();
        assert!(stray.is_empty(), "{name} kept excluded stats: {stray:?}");
    }
    // Plugin metrics: whichever of them Envoy keeps, we keep, with the same names and values.
    let plugin = |s: &Seen| -> BTreeMap<String, String> {
        s.prom
            .iter()
            .filter(|(k, _)| k.starts_with("trace_is"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    assert_eq!(plugin(&wasmesh), plugin(&envoy), "plugin metrics");
    assert_eq!(wasmesh.ready_lines, envoy.ready_lines, "readiness lines");
    assert_eq!(
        envoy.ready_lines,
        "listener_manager.workers_started: 1\nserver.state: 0\n"
    );
    assert_eq!(wasmesh.update_lines, envoy.update_lines, "xDS update lines");
    Ok(())
}

/// Which name of a plugin metric the matcher sees (with or without Envoy's `wasmcustom.`
/// namespace): whatever Envoy keeps, we keep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stats_matcher_sees_plugin_metrics_as_envoy_does() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let matcher = "stats_config:
  stats_matcher:
    inclusion_list:
      patterns:
      - prefix: trace.imb
      - prefix: wasmcustom.trace.imc
      - prefix: server.state
";
    let (ours, ours_addr, envoy_proc, envoy_addr) =
        start_trace_plugin(matcher, up.addr.port()).await?;
    let tags = ["ima", "imb", "imc"];
    let envoy = observe_tags(envoy_addr, envoy_proc.admin, &tags).await?;
    let wasmesh = observe_tags(ours_addr, ours.admin_addr().expect("admin"), &tags).await?;
    let keys = |s: &Seen| s.prom.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        keys(&wasmesh),
        keys(&envoy),
        "wasmesh (left) vs Envoy (right)"
    );
    assert!(keys(&envoy).contains(&"envoy_server_state{}".to_string()));
    Ok(())
}

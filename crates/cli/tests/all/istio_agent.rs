//! wasmesh in Envoy's place under istio-agent: the binary, called `envoy`, started with the
//! bootstrap istio-agent renders (Istio's `envoy_bootstrap.json`: ADS over the agent's Unix
//! socket, Istio's stats tags and matcher, the Prometheus and health listeners) and the exact
//! arguments istio-agent passes (`pilot/pkg/envoy/proxy.go`). Before the agent answers, the
//! admin API reports what real Envoy reports; once config arrives, the readiness check
//! istio-agent runs passes and the gateway serves with its plugin.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::e2e::{CpProcess, distinct_ports, plugin, routing, start_cp, version_at, write};

/// Istio's `envoy_bootstrap.json` as istio-agent renders it for a gateway pod (no tracer),
/// admin on `admin`, the agent's status port `status`, Prometheus on `prom`, health on
/// `health`, ADS over the Unix socket `xds`.
fn istio_bootstrap((admin, status, prom, health): (u16, u16, u16, u16), xds: &Path) -> String {
    let h2 = serde_json::json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}});
    let at = |name: &str, address: serde_json::Value| serde_json::json!({"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}]});
    let tcp = |port: u16| serde_json::json!({"socket_address": {"protocol": "TCP", "address": "127.0.0.1", "port_value": port}});
    let hcm = |prefix: &str, path: &str, cluster: &str| {
        serde_json::json!({"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "codec_type": "AUTO", "stat_prefix": prefix,
            "route_config": {"virtual_hosts": [{"name": "backend", "domains": ["*"],
                "routes": [{"match": {"prefix": path}, "route": {"cluster": cluster}}]}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]})
    };
    let tags: Vec<serde_json::Value> = [
        (
            "cluster_name",
            r"^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)",
        ),
        ("tcp_prefix", r"^tcp\.((.*?)\.)\w+?$"),
        ("response_code", r"_rq(_(\d{3}))$"),
        ("response_code_class", r"_rq(_(\dxx))$"),
        (
            "http_conn_manager_listener_prefix",
            r"^listener(?=\.).*?\.http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)",
        ),
        (
            "http_conn_manager_prefix",
            r"^http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)",
        ),
        (
            "listener_address",
            r"^listener\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)",
        ),
        (
            "mongo_prefix",
            r"^mongo\.(.+?)\.(collection|cmd|cx_|op_|delays_|decoding_)(.*?)$",
        ),
        ("cache", r"(cache\.(.+?)\.)"),
        ("component", r"(component\.(.+?)\.)"),
        ("tag", r"(tag\.(.+?);\.)"),
        ("wasm_filter", r"(wasm_filter\.(.+?)\.)"),
        ("authz_enforce_result", r"rbac(\.(allowed|denied))"),
        ("authz_dry_run_action", r"(\.istio_dry_run_(allow|deny)_)"),
        ("authz_dry_run_result", r"(\.shadow_(allowed|denied))"),
    ]
    .iter()
    .map(|(n, r)| serde_json::json!({"tag_name": n, "regex": r}))
    .collect();
    let prefixes = [
        "reporter=",
        "cluster_manager",
        "listener_manager",
        "server",
        "cluster.xds-grpc",
        "wasm",
        "component",
        "istio",
    ];
    let mut patterns: Vec<serde_json::Value> = prefixes
        .iter()
        .map(|p| serde_json::json!({"prefix": p}))
        .collect();
    for s in [
        "rbac.allowed",
        "rbac.denied",
        "shadow_allowed",
        "shadow_denied",
        "downstream_cx_active",
    ] {
        patterns.push(serde_json::json!({"suffix": s}));
    }
    patterns.push(serde_json::json!({"safe_regex": {"regex": r"vhost\..*\.route\..*"}}));
    let ads =
        serde_json::json!({"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"});
    serde_json::json!({
        "node": {
            "id": "router~127.0.0.1~gw.demo~demo.svc.cluster.local",
            "cluster": "gw.demo",
            "locality": {},
            "metadata": {"NAMESPACE": "demo", "LABELS": {"istio": "ingressgateway"},
                "CLUSTER_ID": "Kubernetes", "ISTIO_VERSION": "1.24.0", "MESH_ID": "cluster.local",
                "ENVOY_PROMETHEUS_PORT": prom, "ENVOY_STATUS_PORT": health,
                "PROXY_CONFIG": {"proxyAdminPort": admin, "statusPort": status, "concurrency": 2}}
        },
        "layered_runtime": {"layers": [
            {"name": "global config", "static_layer": {
                "envoy.reloadable_features.http_reject_path_with_fragment": false,
                "overload.global_downstream_max_connections": 2147483647,
                "re2.max_program_size.error_level": 32768}},
            {"name": "admin", "admin_layer": {}}]},
        "bootstrap_extensions": [{"name": "envoy.bootstrap.internal_listener", "typed_config": {
            "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
            "type_url": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener",
            "value": {"buffer_size_kb": 64}}}],
        "stats_config": {"use_all_default_tags": false, "stats_tags": tags,
            "stats_matcher": {"inclusion_list": {"patterns": patterns}}},
        "admin": {
            "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": "/dev/null"}}],
            "profile_path": "/var/lib/istio/data/envoy.prof",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}
        },
        "dynamic_resources": {"lds_config": ads, "cds_config": ads, "ads_config": {
            "api_type": "GRPC", "set_node_on_first_message_only": true,
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]}},
        "static_resources": {
            "clusters": [
                {"name": "prometheus_stats", "type": "STATIC", "connect_timeout": "0.250s",
                 "lb_policy": "ROUND_ROBIN", "load_assignment": at("prometheus_stats", tcp(admin))},
                {"name": "agent", "type": "STATIC", "connect_timeout": "0.250s",
                 "lb_policy": "ROUND_ROBIN", "load_assignment": at("agent", tcp(status))},
                {"name": "sds-grpc", "type": "STATIC", "typed_extension_protocol_options": h2,
                 "connect_timeout": "1s", "lb_policy": "ROUND_ROBIN",
                 "load_assignment": at("sds-grpc", serde_json::json!({"pipe": {"path": "./var/run/secrets/workload-spiffe-uds/socket"}}))},
                {"name": "xds-grpc", "type": "STATIC", "connect_timeout": "1s", "lb_policy": "ROUND_ROBIN",
                 "load_assignment": at("xds-grpc", serde_json::json!({"pipe": {"path": xds}})),
                 "circuit_breakers": {"thresholds": [
                    {"priority": "DEFAULT", "max_connections": 100000, "max_pending_requests": 100000, "max_requests": 100000},
                    {"priority": "HIGH", "max_connections": 100000, "max_pending_requests": 100000, "max_requests": 100000}]},
                 "upstream_connection_options": {"tcp_keepalive": {"keepalive_time": 300}},
                 "max_requests_per_connection": 1,
                 "typed_extension_protocol_options": h2}
            ],
            "listeners": [
                {"address": {"socket_address": {"protocol": "TCP", "address": "0.0.0.0", "port_value": prom}},
                 "filter_chains": [hcm("stats", "/stats/prometheus", "prometheus_stats")]},
                {"address": {"socket_address": {"protocol": "TCP", "address": "0.0.0.0", "port_value": health}},
                 "filter_chains": [hcm("agent", "/healthz/ready", "agent")]}
            ]
        }
    })
    .to_string()
}

/// The `--config-yaml` istio-agent passes from a bootstrap override: one more static listener
/// (lists are appended), answering `merged`.
fn override_json(port: u16) -> String {
    serde_json::json!({"static_resources": {"listeners": [{
        "name": "override",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "override",
                "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                    {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "merged"}}}]}]},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]
    }]}})
    .to_string()
}

/// istio-agent's Envoy arguments (`envoy.args`, with `-l`, `--component-log-level`,
/// `--log-format` and the override from its extra args and options).
fn istio_args(config: &Path, overlay: &str) -> Vec<String> {
    [
        "-c",
        &config.display().to_string(),
        "--drain-time-s",
        "45",
        "--drain-strategy",
        "immediate",
        "--local-address-ip-version",
        "v4",
        "--file-flush-interval-msec",
        "1000",
        "--disable-hot-restart",
        "--allow-unknown-static-fields",
        "-l",
        "warning",
        "--component-log-level",
        "misc:error",
        "--log-format",
        "%Y-%m-%dT%T.%fZ\t%l\tenvoy %n %g:%#\t%v\tthread=%t",
        "--config-yaml",
        overlay,
        "--concurrency",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `GET path` over a fresh connection: (status, body), or `None` if nothing answers.
pub(crate) fn http(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// istio-agent's readiness check of Envoy (`pilot/cmd/pilot-agent/status/ready/probe.go`):
/// `server.state` LIVE, workers started, and CDS and LDS each updated.
fn istio_probe(admin: SocketAddr) -> Result<(), String> {
    let stats = |filter: &str| -> Result<Vec<(String, u64)>, String> {
        let (status, body) = http(admin, "GET", &format!("/stats?usedonly&filter={filter}"))
            .ok_or("admin does not answer")?;
        if status != 200 {
            return Err(format!("/stats: {status}"));
        }
        Ok(body
            .lines()
            .filter_map(|l| l.split_once(": "))
            .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
            .collect())
    };
    let get = |lines: &[(String, u64)], name: &str| {
        lines.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    };
    let ready = stats("%5E(server%5C.state%7Clistener_manager%5C.workers_started)")?;
    if let Some(state) = get(&ready, "server.state")
        && state != 0
    {
        return Err(format!("server is not live, current state is: {state}"));
    }
    if get(&ready, "listener_manager.workers_started") != Some(1) {
        return Err("workers have not yet started".into());
    }
    let updates = stats(
        "%5E(cluster_manager%5C.cds%7Clistener_manager%5C.lds)%5C.(update_success%7Cupdate_rejected)%24",
    )?;
    let cds = get(&updates, "cluster_manager.cds.update_success").unwrap_or(0);
    let lds = get(&updates, "listener_manager.lds.update_success").unwrap_or(0);
    if cds == 0 || lds == 0 {
        return Err(format!(
            "config not received from XDS server: cds {cds} lds {lds}"
        ));
    }
    Ok(())
}

/// A child process killed when dropped.
pub(crate) struct Child(pub(crate) std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `program` (our binary linked as `envoy`, or Envoy) with istio-agent's arguments; waits for
/// its admin API to answer.
pub(crate) fn start(program: &Path, args: &[String], admin: SocketAddr, log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    let child = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn");
    let mut child = Child(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(admin, "GET", "/ready").is_none() {
        assert!(
            child.0.try_wait().expect("wait").is_none(),
            "{} exited before its admin API answered",
            program.display()
        );
        assert!(Instant::now() < deadline, "admin API never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Our binary under the name istio-agent runs.
fn envoy_named_wasmesh(dir: &Path) -> std::path::PathBuf {
    let link = dir.join("envoy");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_wasmesh"), &link).expect("symlink");
    link
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_agent_runs_wasmesh_as_its_envoy() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let tmp = tempfile::tempdir().expect("tmp");
    let ours_bin = envoy_named_wasmesh(tmp.path());
    let sock = tmp.path().join("XDS");
    let [admin, status, prom, health, extra, gw, xds] = distinct_ports::<7>();
    let boot = tmp.path().join("envoy-rev.json");
    std::fs::write(&boot, istio_bootstrap((admin, status, prom, health), &sock)).expect("write");
    let args = istio_args(&boot, &override_json(extra));
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], admin));
    let ours_log = tmp.path().join("ours.log");
    let ours = start(&ours_bin, &args, admin_addr, &ours_log);

    // Before the agent answers: what real Envoy reports with the same bootstrap and arguments.
    let before = (
        http(admin_addr, "GET", "/ready"),
        istio_probe(admin_addr).is_ok(),
    );
    {
        let [e_admin, e_status, e_prom, e_health, e_extra] = distinct_ports::<5>();
        let e_boot = tmp.path().join("envoy-real.json");
        let e_sock = tmp.path().join("XDS-envoy");
        std::fs::write(
            &e_boot,
            istio_bootstrap((e_admin, e_status, e_prom, e_health), &e_sock),
        )
        .expect("write");
        let e_admin = SocketAddr::from(([127, 0, 0, 1], e_admin));
        let envoy_bin = test_support::proxy_peers::envoy_binary().expect("envoy");
        let envoy = start(
            &envoy_bin,
            &istio_args(&e_boot, &override_json(e_extra)),
            e_admin,
            &tmp.path().join("envoy.log"),
        );
        let envoy_before = (http(e_admin, "GET", "/ready"), istio_probe(e_admin).is_ok());
        drop(envoy);
        assert_eq!(
            before, envoy_before,
            "before config: wasmesh (left) vs Envoy (right)"
        );
    }
    assert_eq!(
        before.0,
        Some((503, "PRE_INITIALIZING\n".to_string())),
        "{}",
        std::fs::read_to_string(&ours_log).unwrap_or_default()
    );

    // The control plane and the agent (on istio-agent's Unix socket) come up.
    let config_dir = tmp.path().join("config");
    std::fs::create_dir_all(&config_dir).expect("dir");
    let upstream = test_support::echo::start("echo").await.expect("echo");
    write(
        &config_dir,
        "routing.yaml",
        &routing(gw, upstream.addr.port()),
    );
    write(&config_dir, "plugin.yaml", &plugin("istio"));
    let cp: CpProcess = start_cp(&config_dir, xds).await;
    let agent = wasmesh_agent::Agent::start(wasmesh_agent::AgentConfig::new(
        wasmesh_agent::ListenAddr::Unix(sock.clone()),
        format!("127.0.0.1:{xds}"),
        tmp.path().join("cache"),
    ))
    .await
    .expect("agent");

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Err(String::new());
    while Instant::now() < deadline {
        last = tokio::task::spawn_blocking(move || istio_probe(admin_addr))
            .await
            .expect("join");
        if last.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        last,
        Ok(()),
        "istio-agent's readiness check; log:\n{}",
        std::fs::read_to_string(&ours_log).unwrap_or_default()
    );
    let checks = tokio::task::spawn_blocking(move || {
        let local = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        (
            http(admin_addr, "GET", "/ready"),
            http(local(prom), "GET", "/stats/prometheus"),
            http(local(extra), "GET", "/"),
        )
    })
    .await
    .expect("join");
    assert_eq!(checks.0, Some((200, "LIVE\n".to_string())));
    // `/config_dump` in Envoy's xDS shape, as `istioctl proxy-config` reads it.
    let dump = tokio::task::spawn_blocking(move || http(admin_addr, "GET", "/config_dump"))
        .await
        .expect("join")
        .expect("config_dump answers");
    let dump: serde_json::Value = serde_json::from_str(&dump.1).expect("json");
    let section = |t: &str| {
        dump["configs"]
            .as_array()
            .and_then(|c| {
                c.iter()
                    .find(|c| c["@type"] == format!("type.googleapis.com/envoy.admin.v3.{t}"))
            })
            .cloned()
            .unwrap_or_else(|| panic!("no {t} in {dump}"))
    };
    let boot = section("BootstrapConfigDump");
    assert!(
        boot["bootstrap"]["dynamic_resources"]["ads_config"].is_object(),
        "the bootstrap as given: {boot}"
    );
    let listeners = section("ListenersConfigDump");
    let dynamic = listeners["dynamic_listeners"]
        .as_array()
        .expect("dynamic_listeners");
    assert!(
        dynamic.iter().any(|l| {
            l["active_state"]["listener"]["@type"]
                == "type.googleapis.com/envoy.config.listener.v3.Listener"
                && !l["active_state"]["version_info"]
                    .as_str()
                    .unwrap_or_default()
                    .is_empty()
                && l["active_state"]["last_updated"]
                    .as_str()
                    .is_some_and(|t| t.ends_with('Z'))
        }),
        "{listeners}"
    );
    assert_eq!(
        listeners["static_listeners"].as_array().map(Vec::len),
        Some(3),
        "Prometheus, health and the --config-yaml listener: {listeners}"
    );
    let clusters = section("ClustersConfigDump");
    assert!(
        clusters["dynamic_active_clusters"]
            .as_array()
            .is_some_and(|c| !c.is_empty()),
        "{clusters}"
    );
    // `?resource=` as istioctl asks for one kind.
    let only = tokio::task::spawn_blocking(move || {
        http(admin_addr, "GET", "/config_dump?resource=dynamic_listeners")
    })
    .await
    .expect("join")
    .expect("answers");
    let only: serde_json::Value = serde_json::from_str(&only.1).expect("json");
    assert_eq!(
        only["configs"].as_array().map(Vec::len),
        Some(dynamic.len()),
        "{only}"
    );
    assert_eq!(
        only["configs"][0]["@type"],
        "type.googleapis.com/envoy.admin.v3.ListenersConfigDump.DynamicListener"
    );
    let ecds = section("EcdsConfigDump");
    assert!(
        ecds["ecds_filters"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| {
                f["ecds_filter"]["typed_config"]["@type"]
                    == "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
            })),
        "{ecds}"
    );
    // The gateway (from xDS) runs the plugin.
    assert_eq!(version_at(gw).await, Ok(Some("istio".into())));
    // Prometheus scrapes go through the static listener to the admin API, with Istio's matcher.
    let (code, scrape) = checks.1.expect("prometheus listener answers");
    assert_eq!(code, 200);
    assert!(scrape.contains("envoy_server_state{} 0\n"), "{scrape}");
    assert!(
        scrape.contains("envoy_listener_manager_workers_started{} 1\n"),
        "{scrape}"
    );
    assert!(
        !scrape.contains("envoy_cluster_upstream_rq_total"),
        "cluster stats are outside Istio's inclusion list: {scrape}"
    );
    // `--config-yaml` added its listener to the file's.
    assert_eq!(checks.2, Some((200, "merged".to_string())));

    // `POST /quitquitquit` stops the proxy, as istio-agent's shutdown does.
    let quit = tokio::task::spawn_blocking(move || http(admin_addr, "POST", "/quitquitquit"))
        .await
        .expect("join");
    assert_eq!(quit.map(|q| q.0), Some(200));
    let mut ours = ours;
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = ours.0.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        exit.is_some_and(|s| s.success()),
        "exit after /quitquitquit: {exit:?}"
    );
    agent.shutdown().await;
    tokio::task::spawn_blocking(move || cp.stop())
        .await
        .expect("join");
}

/// `--mode validate` answers as Envoy's does, for a good bootstrap and a bad one.
#[test]
fn validate_mode_answers_as_envoy() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ours_bin = envoy_named_wasmesh(tmp.path());
    let envoy_bin = test_support::proxy_peers::envoy_binary().expect("envoy");
    let [admin, status, prom, health] = distinct_ports::<4>();
    let good = tmp.path().join("good.json");
    std::fs::write(
        &good,
        istio_bootstrap((admin, status, prom, health), &tmp.path().join("XDS")),
    )
    .expect("write");
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "static_resources: {clusters: [{name: c, no_such_field: 1}]}\n",
    )
    .expect("write");
    let run = |bin: &Path, file: &Path, extra: &[&str]| {
        let out = Command::new(bin)
            .args(["--mode", "validate", "-c"])
            .arg(file)
            .args(extra)
            .output()
            .expect("run");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    for bin in [&ours_bin, &envoy_bin] {
        let (ok, text) = run(bin, &good, &["--allow-unknown-static-fields"]);
        assert!(ok, "{}: {text}", bin.display());
        assert!(
            text.contains(&format!("configuration '{}' OK", good.display())),
            "{}: {text}",
            bin.display()
        );
        let (ok, text) = run(bin, &bad, &[]);
        assert!(!ok, "{} accepted an unknown field: {text}", bin.display());
        assert!(text.contains("no_such_field"), "{}: {text}", bin.display());
    }
}

//! The admin API.

use std::time::Duration;

use test_support::proxy_peers::start_upstream;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_answer_like_envoy() -> anyhow::Result<()> {
    let up = start_upstream("u").await?;
    let p = start_proxy_with(&basic(up.addr.port()), 2)?;
    let addr = p.listener_addr("main").unwrap();
    assert_eq!(send(addr, get("x", "/")).await?.status, 200);

    let ready = admin_get(&p, "/ready").await?;
    assert_eq!((ready.status, ready.text().as_str()), (200, "LIVE\n"));
    let prom = admin_get(&p, "/stats/prometheus").await?.text();
    assert!(
        prom.contains("# TYPE envoy_http_downstream_rq_total counter"),
        "{prom}"
    );
    assert!(
        prom.contains(
            "envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix=\"ingress_http\"} 1"
        ),
        "{prom}"
    );
    assert!(
        prom.contains("envoy_cluster_upstream_rq_total{envoy_cluster_name=\"backend\"} 1"),
        "{prom}"
    );
    let filtered = admin_get(
        &p,
        "/stats?filter=%5Ecluster%5C.backend%5C.upstream_rq_total%24",
    )
    .await?
    .text();
    assert_eq!(filtered, "cluster.backend.upstream_rq_total: 1\n");
    let dump = admin_get(&p, "/config_dump").await?.json();
    assert_eq!(
        dump["configs"][0]["@type"],
        "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump"
    );
    assert_eq!(
        dump["configs"][1]["static_clusters"][0]["cluster"]["name"],
        "backend"
    );
    assert_eq!(
        dump["configs"][2]["static_listeners"][0]["listener"]["name"],
        "main"
    );
    // Envoy writes the `.proto` field names, not the JSON mapping's camelCase.
    assert!(
        dump["configs"][0]["bootstrap"]["static_resources"].is_object(),
        "{dump}"
    );
    assert!(
        dump["configs"][1]["static_clusters"][0]["cluster"]["connect_timeout"].is_string(),
        "{dump}"
    );
    let clusters = admin_get(&p, "/clusters").await?.text();
    assert!(
        clusters.contains(&format!("backend::{}::rq_total::1", up.addr)),
        "{clusters}"
    );
    assert!(clusters.contains("::health_flags::healthy"), "{clusters}");
    let listeners = admin_get(&p, "/listeners").await?.text();
    assert_eq!(listeners, format!("main::{addr}\n"));

    let quit = p.quit_requested();
    let waiter = tokio::spawn(async move { quit.notified().await });
    let admin = p.admin_addr().unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri("/quitquitquit")
        .header("host", "admin")
        .body(http_body_util::Full::new(bytes::Bytes::new()))?;
    assert_eq!(send(admin, req).await?.status, 200);
    tokio::time::timeout(Duration::from_secs(2), waiter).await??;
    // Drain: the proxy stops accepting.
    tokio::task::spawn_blocking(move || p.shutdown()).await?;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_in_flight_requests_finish() -> anyhow::Result<()> {
    let up = start_upstream("u").await?;
    let p = start_proxy(&basic(up.addr.port()))?;
    let addr = p.listener_addr("main").unwrap();
    let in_flight = tokio::spawn(async move { send(addr, get("x", "/delay/400")).await });
    // Wait until the request reached the upstream side of the proxy.
    assert!(
        eventually(Duration::from_secs(2), || async {
            p.stats()
                .render_text()
                .contains("http.ingress_http.downstream_rq_active: 1")
        })
        .await
    );
    let stopper = tokio::task::spawn_blocking(move || p.shutdown());
    let r = in_flight.await??;
    assert_eq!(
        r.status, 200,
        "in-flight request completes during the drain"
    );
    stopper.await?;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
    Ok(())
}

/// What istio-agent calls on Envoy's admin API when its pod stops, against Envoy 1.40:
/// `/healthcheck/fail` turns `/ready` to 503 DRAINING until `/healthcheck/ok`;
/// `/drain_listeners` closes the listeners and leaves `/ready` LIVE; GET on these is 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_and_health_check_endpoints_answer_like_envoy() -> anyhow::Result<()> {
    let up = start_upstream("u").await?;
    let (ours, ours_addr, envoy, envoy_addr) = start_both(|admin, listen| {
        one_plugin(
            (admin, listen, up.addr.port()),
            test_plugins::HEADERS,
            "h",
            "{}",
            "",
        )
    })
    .await?;
    let run = |admin: std::net::SocketAddr, listener: std::net::SocketAddr| async move {
        let call = |method: &'static str, path: &'static str| async move {
            let mut req = get("admin", path);
            *req.method_mut() = method.parse()?;
            let r = send(admin, req).await?;
            anyhow::Ok(format!("{method} {path}: {} {:?}", r.status, r.text()))
        };
        let mut seen = Vec::new();
        for (method, path) in [
            ("GET", "/quitquitquit"),
            ("GET", "/drain_listeners"),
            ("POST", "/healthcheck/fail"),
            ("GET", "/ready"),
            ("POST", "/healthcheck/ok"),
            ("GET", "/ready"),
            ("POST", "/drain_listeners"),
        ] {
            seen.push(call(method, path).await?);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let served = send(listener, get("x", "/")).await.map(|r| r.status).ok();
        seen.push(format!("listener after the drain: {served:?}"));
        seen.push(call("GET", "/ready").await?);
        anyhow::Ok(seen)
    };
    // `/server_info`: the same state and a subset of Envoy's fields, with their types.
    let info =
        |admin| async move { anyhow::Ok(send(admin, get("admin", "/server_info")).await?.json()) };
    let (their_info, my_info) = (
        info(envoy.admin).await?,
        info(ours.admin_addr().expect("admin")).await?,
    );
    assert_eq!(my_info["state"], their_info["state"]);
    for (k, v) in my_info.as_object().expect("object") {
        let theirs = &their_info[k];
        assert!(
            std::mem::discriminant(v) == std::mem::discriminant(theirs),
            "/server_info {k}: {v} vs Envoy's {theirs}"
        );
    }
    assert!(
        my_info["uptime_current_epoch"]
            .as_str()
            .is_some_and(|u| u.ends_with('s'))
    );
    let theirs = run(envoy.admin, envoy_addr).await?;
    let mine = run(ours.admin_addr().expect("admin"), ours_addr).await?;
    assert_eq!(mine, theirs, "wasmesh (left) vs Envoy (right)");
    assert!(
        theirs.contains(&"GET /ready: 503 \"DRAINING\\n\"".to_string()),
        "{theirs:?}"
    );
    assert!(
        theirs.contains(&"listener after the drain: None".to_string()),
        "{theirs:?}"
    );
    Ok(())
}

/// `/clusters` (text and `format=json`, which `istioctl proxy-config endpoint` reads) and
/// `/listeners?format=json` after one proxied request, against Envoy 1.40: per-host counters
/// and gauges, default thresholds, health; ports normalized.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_and_listeners_match_envoy() -> anyhow::Result<()> {
    let up = test_support::proxy_peers::start_upstream("up").await?;
    let (ours, ours_addr, envoy, envoy_addr) =
        start_both(|admin, listen| hcm_bootstrap((admin, listen, up.addr.port()), "", "", ""))
            .await?;
    let mut seen = Vec::new();
    for (addr, admin) in [
        (ours_addr, ours.admin_addr().expect("admin")),
        (envoy_addr, envoy.admin),
    ] {
        let r = send(addr, get("c.example", "/")).await?;
        anyhow::ensure!(r.status == 200, "status {}", r.status);
        let text = send(admin, get("admin", "/clusters")).await?.text();
        let text = text.replace(&up.addr.to_string(), "UP");
        let json: serde_json::Value = serde_json::from_str(
            &send(admin, get("admin", "/clusters?format=json"))
                .await?
                .text(),
        )?;
        let mut listeners: serde_json::Value = serde_json::from_str(
            &send(admin, get("admin", "/listeners?format=json"))
                .await?
                .text(),
        )?;
        listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"] =
            serde_json::json!(0);
        seen.push((
            text,
            json.to_string().replace(&up.addr.port().to_string(), "UP"),
            listeners,
        ));
    }
    assert_eq!(
        seen[0].0, seen[1].0,
        "/clusters: wasmesh (left) vs Envoy (right)"
    );
    assert_eq!(
        seen[0].1, seen[1].1,
        "/clusters?format=json: wasmesh vs Envoy"
    );
    assert_eq!(
        seen[0].2, seen[1].2,
        "/listeners?format=json: wasmesh vs Envoy"
    );
    assert!(
        seen[1].0.contains("up::UP::rq_success::1\n"),
        "{}",
        seen[1].0
    );
    Ok(())
}

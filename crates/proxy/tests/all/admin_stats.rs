//! The admin API's stats views against real Envoy 1.40: `/stats/prometheus?filter=` and
//! `/stats?format=prometheus&filter=` keep only the stats whose Envoy name matches, sent as
//! `text/plain; charset=UTF-8`; the admin listener's own `listener.admin.*` and `http.admin.*`
//! stats count the admin requests (the one asking included); `http.<prefix>.rs_too_large`.

use std::net::SocketAddr;
use std::time::Duration;

use test_support::proxy_peers::start_upstream;

use crate::support::*;

/// `path` on `admin`: (status, content type, body).
async fn call(admin: SocketAddr, path: &str) -> anyhow::Result<(u16, String, String)> {
    let r = send(admin, get("admin", path)).await?;
    let ct = r.header("content-type").unwrap_or_default().to_string();
    Ok((r.status, ct, r.text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_filter_and_content_type_match_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let (ours, ours_addr, envoy, envoy_addr) =
        start_both(|admin, listen| hcm_bootstrap((admin, listen, up.addr.port()), "", "", ""))
            .await?;
    let ours_admin = ours.admin_addr().expect("admin");
    for addr in [ours_addr, envoy_addr] {
        assert_eq!(send(addr, get("p.example", "/")).await?.status, 200);
    }
    let paths = [
        r"/stats/prometheus?filter=^http\.main\.downstream_rq_(total|[0-9]xx)$",
        r"/stats?format=prometheus&filter=^http\.main\.(rs_too_large|downstream_rq_completed)$",
        // The regex is matched against Envoy's names, not the Prometheus ones.
        r"/stats/prometheus?filter=envoy_http_downstream_rq_total",
        r"/stats/prometheus?filter=(",
        // Only the stats written since start (what istio-agent scrapes).
        r"/stats/prometheus?usedonly&filter=^http\.main\.downstream_rq_(total|[0-9]xx|completed|http[12]_total)$",
    ];
    for path in paths {
        let mut theirs = call(envoy.admin, path).await?;
        let mut mine = call(ours_admin, path).await?;
        if theirs.0 == 400 {
            // The message is the regex engine's (re2's in Envoy).
            (theirs.2, mine.2) = (String::new(), String::new());
        }
        assert_eq!(mine, theirs, "{path}: wasmesh (left) vs Envoy (right)");
    }
    let (status, ct, body) = call(envoy.admin, paths[0]).await?;
    assert_eq!((status, ct.as_str()), (200, "text/plain; charset=UTF-8"));
    assert!(
        body.contains("envoy_http_downstream_rq_xx{envoy_response_code_class=\"2\",envoy_http_conn_manager_prefix=\"main\"} 1"),
        "{body}"
    );
    assert!(!body.contains("upstream"), "{body}");
    let (_, _, body) = call(envoy.admin, paths[2]).await?;
    assert!(!body.contains("envoy_http"), "{body}");
    let (_, _, body) = call(envoy.admin, paths[4]).await?;
    assert!(
        body.contains("envoy_response_code_class=\"2\"")
            && !body.contains("envoy_response_code_class=\"5\""),
        "{body}"
    );
    Ok(())
}

/// `listener.admin.*` and `http.admin.*` after a few admin requests, text and Prometheus; the
/// histograms are left out (their values are timings).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_stats_match_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let (ours, _ours_addr, envoy, _envoy_addr) =
        start_both(|admin, listen| hcm_bootstrap((admin, listen, up.addr.port()), "", "", ""))
            .await?;
    let ours_admin = ours.admin_addr().expect("admin");
    let filter = r"^(listener\.admin\.|http\.admin\.(downstream_rq_([1-5]xx|completed|total|active|http1_total|too_large|rx_reset)|downstream_cx_(total|active)|rs_too_large|no_route|rq_redirect|rq_direct_response)$)";
    // (name, value) of the text and Prometheus samples, histograms left out.
    let snapshot = |admin: SocketAddr| async move {
        let text = call(admin, &format!("/stats?filter={filter}")).await?.2;
        let prom = call(admin, &format!("/stats/prometheus?filter={filter}"))
            .await?
            .2;
        let split = |l: &str, sep: &str| {
            let (k, v) = l.rsplit_once(sep)?;
            Some((k.to_string(), v.parse::<i64>().ok()?))
        };
        let text: Vec<(String, i64)> = text.lines().filter_map(|l| split(l, ": ")).collect();
        let prom: Vec<(String, i64)> = prom
            .lines()
            .filter(|l| !l.starts_with('#') && !l.contains("_bucket") && !l.contains("_sum{"))
            .filter(|l| !l.contains("_count{"))
            .filter_map(|l| split(l, " "))
            .collect();
        anyhow::Ok((text, prom))
    };
    // What the requests below add (the harness polled Envoy's `/ready` before).
    let delta = |before: &[(String, i64)], after: &[(String, i64)]| -> Vec<String> {
        after
            .iter()
            .map(|(k, v)| {
                let b = before.iter().find(|(n, _)| n == k).map_or(0, |(_, b)| *b);
                if k.contains("_active") {
                    format!("{k} = {v}")
                } else if k.contains("cx_destroy") && *v > b {
                    // (a closed connection is counted when each server gets to its close, a
                    // moment after the answer: one may be in flight while both are polled)
                    format!("{k} += some")
                } else {
                    format!("{k} += {}", v - b)
                }
            })
            .collect()
    };
    let before = (snapshot(ours_admin).await?, snapshot(envoy.admin).await?);
    for admin in [ours_admin, envoy.admin] {
        for path in ["/ready", "/nonexistent", "/server_info"] {
            let _ = call(admin, path).await?;
        }
    }
    // Closed connections are counted once the server sees them close: poll both alike until
    // they agree (each poll is one more admin request on each side).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let (mine, theirs) = loop {
        let (m, t) = (snapshot(ours_admin).await?, snapshot(envoy.admin).await?);
        let m = (delta(&before.0.0, &m.0), delta(&before.0.1, &m.1));
        let t = (delta(&before.1.0, &t.0), delta(&before.1.1, &t.1));
        if m == t || tokio::time::Instant::now() > deadline {
            break (m, t);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        theirs
            .0
            .iter()
            .any(|l| l == "listener.admin.http.admin.downstream_rq_4xx += 1"),
        "{theirs:?}"
    );
    assert!(
        theirs
            .0
            .iter()
            .any(|l| l == "http.admin.downstream_rq_active = 1"),
        "{theirs:?}"
    );
    assert!(
        theirs
            .1
            .iter()
            .any(|l| l.starts_with("envoy_listener_admin_downstream_cx_total{} += ")),
        "{theirs:?}"
    );
    assert_eq!(mine.0, theirs.0, "/stats: wasmesh (left) vs Envoy (right)");
    assert_eq!(mine.1, theirs.1, "/stats/prometheus: wasmesh vs Envoy");
    Ok(())
}

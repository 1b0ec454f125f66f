//! Retries as Envoy 1.40 counts and logs them: a retried response is charged under
//! `retry.upstream_rq_<code>`, the final one under `upstream_rq_<code>`; running out of retries
//! sets the `URX` flag and `upstream_rq_retry_limit_exceeded`; an upstream reset or timeout is
//! charged with the router's own 503 or 504; a route timeout's details are `response_timeout`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};

use test_support::proxy_peers::{free_ports, start_envoy};

use crate::support::*;

type Seen = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// An upstream answering every request with `answer` (`None`: close without answering, or
/// hold the connection open when `hold`); the heads it read are kept in the second value.
fn upstream(answer: Option<&'static [u8]>, hold: bool) -> anyhow::Result<(u16, Seen)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    let seen: Seen = Seen::default();
    let record = std::sync::Arc::clone(&seen);
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            record
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            match answer {
                Some(a) => {
                    let _ = s.write_all(a);
                }
                None if hold => held.push(s),
                None => {}
            }
        }
    });
    Ok((port, seen))
}

fn bootstrap(admin: u16, listen: u16, log: &std::path::Path, st: u16, hole: u16) -> String {
    let access_log = format!(
        r#"          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {}
              log_format: {{text_format_source: {{inline_string: "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n"}}}}
"#,
        log.display()
    );
    // (the `up` cluster of the common bootstrap is unused: routes go to `st` and `hole`)
    hcm_bootstrap(
        (admin, listen, st),
        &access_log,
        "",
        &(cluster_yaml("st", st, false) + &cluster_yaml("hole", hole, false)),
    )
    .replace(
        r#"- {name: all, domains: ["*"], routes: [{match: {prefix: "/"}, route: {cluster: up}}]}"#,
        r#"- name: all
              domains: ["*"]
              include_request_attempt_count: true
              routes:
              - match: {prefix: "/timeout"}
                route: {cluster: hole, timeout: 0.3s}
              - match: {prefix: "/"}
                route: {cluster: st, retry_policy: {retry_on: "5xx", num_retries: 2}}"#,
    )
}

/// The `cluster.*` request counters that are not 0.
fn cluster_counters(stats: &str) -> Vec<String> {
    let mut v: Vec<String> = stats
        .lines()
        .filter(|l| l.starts_with("cluster.") && !l.ends_with(": 0"))
        .filter(|l| l.contains("upstream_rq_") && !l.contains("upstream_rq_total"))
        .filter(|l| !l.contains("_time") && !l.contains("pending_total"))
        // (counters only: `upstream_rq_per_cx` is a histogram we do not keep)
        .filter(|l| !l.contains("No recorded values") && !l.contains("P0("))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_counted_and_logged_like_envoy() -> anyhow::Result<()> {
    for (name, answer) in [
        (
            "503",
            Some(&b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"[..]),
        ),
        ("reset", None),
    ] {
        let (st, st_seen) = upstream(answer, false)?;
        let (hole, _) = upstream(None, true)?;
        let dir = tempfile::tempdir()?;
        let (ours_log, envoy_log) = (dir.path().join("ours.log"), dir.path().join("envoy.log"));
        let ours = start_proxy(&bootstrap(0, 0, &ours_log, st, hole))?;
        let ours_addr = ours.listener_addr("main").expect("listener");
        let ports = free_ports(2)?;
        let y = bootstrap(ports[1], ports[0], &envoy_log, st, hole);
        let admin: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
        let envoy = tokio::task::spawn_blocking(move || start_envoy(&y, admin)).await??;
        let envoy_addr = SocketAddr::from(([127, 0, 0, 1], ports[0]));
        let mut seen = Vec::new();
        for addr in [envoy_addr, ours_addr] {
            st_seen.lock().unwrap_or_else(|e| e.into_inner()).clear();
            let a = send(addr, get("h", "/r")).await?.status;
            let b = send(addr, get("h", "/timeout")).await?.status;
            // Each attempt's head (the virtual host asks for `x-envoy-attempt-count`), the
            // header names in order.
            let heads: Vec<Vec<String>> = st_seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|h| {
                    h.lines()
                        .skip(1)
                        .take_while(|l| !l.is_empty())
                        .filter(|l| !l.starts_with("x-request-id"))
                        // (a retry gets the time left, which differs by a few ms between the
                        // proxies, and may still round to 15000 when the retry is quick)
                        .map(
                            |l| match l.strip_prefix("x-envoy-expected-rq-timeout-ms: ") {
                                Some(v) if v.parse::<u64>().is_ok_and(|ms| ms <= 15000) => {
                                    "x-envoy-expected-rq-timeout-ms: <=15000".to_string()
                                }
                                _ => l.to_string(),
                            },
                        )
                        .collect()
                })
                .collect();
            seen.push((a, b, heads));
        }
        assert_eq!(seen[1], seen[0], "{name}: wasmesh (left) vs Envoy (right)");
        assert!(
            seen[0].2.len() == 3 && seen[0].2[2].contains(&"x-envoy-attempt-count: 3".to_string()),
            "{name}: {:?}",
            seen[0].2
        );
        let envoy_stats = cluster_counters(&send(admin, get("admin", "/stats")).await?.text());
        let ours_stats = cluster_counters(&admin_get(&ours, "/stats").await?.text());
        assert_eq!(
            ours_stats, envoy_stats,
            "{name}: wasmesh (left) vs Envoy (right)"
        );
        // Envoy writes its access log on a timer.
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
        assert_eq!(
            read(&ours_log),
            read(&envoy_log),
            "{name}: wasmesh (left) vs Envoy (right)"
        );
        assert!(read(&envoy_log).contains(" URX"), "{}", read(&envoy_log));
        assert!(
            read(&envoy_log).contains("/timeout 504 UT response_timeout"),
            "{}",
            read(&envoy_log)
        );
        drop((ours, envoy));
    }
    Ok(())
}

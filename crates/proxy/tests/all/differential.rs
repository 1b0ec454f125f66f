//! Differential tests: the same bootstrap runs in real Envoy 1.40 and in wasmesh; every case
//! must give the same status, headers (ignoring `date` and the value of
//! `x-envoy-upstream-service-time`) and body (the upstream echoes the request it received as
//! JSON, so request-side differences show up too; `x-request-id` values are random and only
//! compared in shape).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use test_support::proxy_peers::{free_port, free_ports, start_envoy, start_upstream};

use crate::support::*;

const DIFF: &str = r#"
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: {ADMIN}}}
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: {LISTEN}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "{LOG}"
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "{LOG}.json"
              log_format:
                json_format:
                  code: "%RESPONSE_CODE%"
                  method: "%REQ(:METHOD)%"
                  path: "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"
                  authority: "%REQ(:AUTHORITY)%"
                  flags: "%RESPONSE_FLAGS%"
                  details: "%RESPONSE_CODE_DETAILS%"
                  cluster: "%UPSTREAM_CLUSTER%"
                  rx: "%BYTES_RECEIVED%"
                  tx: "%BYTES_SENT%"
                  content_type: "%RESP(CONTENT-TYPE)%"
                  protocol: "%PROTOCOL%"
                  line: "%REQ(:METHOD)% %REQ(:PATH):10% -> %RESPONSE_CODE%"
          route_config:
            name: local_route
            response_headers_to_add:
            - header: {key: x-global, value: g}
            request_headers_to_remove: [x-drop-me]
            virtual_hosts:
            - name: api
              domains: ["api.example.com", "api.example.com:*"]
              request_headers_to_add:
              - header: {key: x-vh, value: v1}
              - header: {key: x-vh, value: v2}
                append_action: OVERWRITE_IF_EXISTS_OR_ADD
              - header: {key: x-keep, value: added}
                append_action: ADD_IF_ABSENT
              response_headers_to_add:
              - header: {key: x-vh-resp, value: r}
              routes:
              - match: {prefix: "/v1/", headers: [{name: x-canary, present_match: true}]}
                route: {cluster: up}
              - match: {prefix: "/v1/"}
                route: {cluster: up, prefix_rewrite: "/internal/", host_rewrite_literal: "rewritten.internal"}
              - match: {safe_regex: {regex: "/items/[0-9]+"}}
                route: {cluster: up, timeout: 3s}
              - match: {path: "/direct"}
                direct_response: {status: 202, body: {inline_string: "direct answer"}}
              - match: {path: "/empty"}
                direct_response: {status: 204}
              - match: {prefix: "/old/"}
                redirect: {prefix_rewrite: "/new/", response_code: PERMANENT_REDIRECT}
              - match: {path: "/secure"}
                redirect: {https_redirect: true}
              - match: {prefix: "/moved"}
                redirect: {host_redirect: other.example.com, path_redirect: /landing, strip_query: true, response_code: FOUND}
              - match: {prefix: "/nohosts"}
                route: {cluster: nohosts}
              - match: {prefix: "/dead"}
                route: {cluster: dead}
              - match: {prefix: "/"}
                route: {cluster: up}
                request_headers_to_add: [{header: {key: x-route, value: rt}}]
                response_headers_to_remove: [x-upstream]
            - name: locked
              domains: ["locked.example.com"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: up}
              include_request_attempt_count: true
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  - name: rbac
    address: {socket_address: {address: 127.0.0.1, port_value: {LISTEN2}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: rbac_http
          route_config:
            virtual_hosts:
            - {name: all, domains: ["*"], routes: [{match: {prefix: "/"}, route: {cluster: up}}]}
          http_filters:
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: DENY
                policies:
                  admin:
                    permissions: [{url_path: {path: {prefix: /admin}}}]
                    principals: [{any: true}]
                  evil-local:
                    permissions: [{header: {name: x-evil, present_match: true}}, {header: {name: ":method", string_match: {exact: DELETE}}}]
                    principals: [{remote_ip: {address_prefix: 127.0.0.0, prefix_len: 8}}]
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: up
    connect_timeout: 1s
    load_assignment:
      cluster_name: up
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {UP}}}}}]}]
  - name: nohosts
    connect_timeout: 1s
    load_assignment: {cluster_name: nohosts}
  - name: dead
    connect_timeout: 1s
    load_assignment:
      cluster_name: dead
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {DEAD}}}}}]}]
"#;

#[derive(Debug, PartialEq)]
struct Normalized {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

fn normalize(r: Resp) -> Normalized {
    let mut headers = BTreeMap::new();
    for (k, v) in &r.headers {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        let v = match k.as_str() {
            "date" => continue,
            "x-envoy-upstream-service-time" => "<ms>".to_string(),
            _ => v,
        };
        headers.insert(k.as_str().to_string(), v);
    }
    let body = match serde_json::from_slice::<serde_json::Value>(&r.body) {
        Ok(mut j) => {
            if let Some(id) = j["headers"].get_mut("x-request-id") {
                let shape_ok = id
                    .as_str()
                    .is_some_and(|s| s.len() == 36 && s.matches('-').count() == 4);
                *id = serde_json::Value::String(if shape_ok {
                    "<uuid>".into()
                } else {
                    format!("bad id {id}")
                });
            }
            j.to_string()
        }
        Err(_) => String::from_utf8_lossy(&r.body).into_owned(),
    };
    Normalized {
        status: r.status,
        headers,
        body,
    }
}

type Case = (
    &'static str,
    fn(SocketAddr) -> http::Request<Full<Bytes>>,
    bool,
);

fn req(
    method: &str,
    host: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: &str,
) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default()
}

fn cases() -> Vec<Case> {
    vec![
        (
            "plain get",
            |_| req("GET", "api.example.com", "/", &[], ""),
            false,
        ),
        (
            "prefix and host rewrite",
            |_| req("GET", "api.example.com", "/v1/users?id=7", &[], ""),
            false,
        ),
        (
            "header match",
            |_| {
                req(
                    "GET",
                    "api.example.com",
                    "/v1/users",
                    &[("x-canary", "1")],
                    "",
                )
            },
            false,
        ),
        (
            "regex route and route timeout",
            |_| req("GET", "api.example.com", "/items/12", &[], ""),
            false,
        ),
        (
            "regex miss falls through",
            |_| req("GET", "api.example.com", "/items/12a", &[], ""),
            false,
        ),
        (
            "direct response",
            |_| req("GET", "api.example.com", "/direct", &[], ""),
            false,
        ),
        (
            "direct response without body",
            |_| req("GET", "api.example.com", "/empty", &[], ""),
            false,
        ),
        (
            "unknown vhost 404",
            |_| req("GET", "nowhere.example.com", "/", &[], ""),
            false,
        ),
        (
            "connect failure 503",
            |_| req("GET", "api.example.com", "/dead", &[], ""),
            false,
        ),
        (
            "post with body",
            |_| {
                req(
                    "POST",
                    "api.example.com",
                    "/submit",
                    &[("content-type", "text/plain")],
                    "hello body",
                )
            },
            false,
        ),
        (
            "upstream status passthrough",
            |_| req("GET", "api.example.com", "/status/418", &[], ""),
            false,
        ),
        (
            "upstream 204",
            |_| req("GET", "api.example.com", "/status/204", &[], ""),
            false,
        ),
        (
            "no healthy upstream",
            |_| req("GET", "api.example.com", "/nohosts", &[], ""),
            false,
        ),
        (
            "redirect prefix",
            |_| req("GET", "api.example.com", "/old/a?x=1", &[], ""),
            false,
        ),
        (
            "redirect https",
            |_| req("GET", "api.example.com", "/secure?y=2", &[], ""),
            false,
        ),
        (
            "redirect host and path",
            |_| req("GET", "api.example.com", "/moved/z?q=1", &[], ""),
            false,
        ),
        (
            "header mutations",
            |_| {
                req(
                    "GET",
                    "api.example.com",
                    "/mut",
                    &[
                        ("x-drop-me", "1"),
                        ("x-keep", "mine"),
                        ("x-route", "client"),
                    ],
                    "",
                )
            },
            false,
        ),
        (
            "incoming request id kept",
            |_| {
                req(
                    "GET",
                    "api.example.com",
                    "/",
                    &[("x-request-id", "abc")],
                    "",
                )
            },
            false,
        ),
        (
            "hop-by-hop headers stripped",
            |_| {
                req(
                    "GET",
                    "api.example.com",
                    "/",
                    &[
                        ("connection", "keep-alive, x-foo"),
                        ("keep-alive", "timeout=5"),
                        ("te", "gzip"),
                    ],
                    "",
                )
            },
            false,
        ),
        (
            "h2 get",
            |a| {
                http::Request::builder()
                    .uri(format!("http://api.example.com:{}/v1/h2", a.port()))
                    .version(http::Version::HTTP_2)
                    .body(Full::new(Bytes::new()))
                    .unwrap_or_default()
            },
            true,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_matches_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let dead = free_port()?;
    let logs = tempfile::tempdir()?;
    let (our_log, envoy_log) = (logs.path().join("ours.log"), logs.path().join("envoy.log"));
    let render = |listen: u16, listen2: u16, admin: u16, log: &std::path::Path| {
        fill(
            DIFF,
            &[
                ("LOG", log.display().to_string()),
                ("LISTEN", listen.to_string()),
                ("LISTEN2", listen2.to_string()),
                ("ADMIN", admin.to_string()),
                ("UP", up.addr.port().to_string()),
                ("DEAD", dead.to_string()),
            ],
        )
    };
    let ours_yaml = render(0, 0, 0, &our_log);
    let ours = start_proxy(&ours_yaml)?;
    let ours_addr = ours.listener_addr("main").unwrap();

    let ports = free_ports(3)?;
    let (listen, listen2, admin) = (ports[0], ports[1], ports[2]);
    let envoy_yaml = render(listen, listen2, admin, &envoy_log);
    let admin_addr: SocketAddr = format!("127.0.0.1:{admin}").parse()?;
    let _envoy =
        tokio::task::spawn_blocking(move || start_envoy(&envoy_yaml, admin_addr)).await??;
    let envoy_addr: SocketAddr = format!("127.0.0.1:{listen}").parse()?;

    let mut failures = Vec::new();
    for (name, make, h2) in cases() {
        let (e, o) = if h2 {
            (
                send_h2(envoy_addr, make(envoy_addr)).await?,
                send_h2(ours_addr, make(ours_addr)).await?,
            )
        } else {
            (
                send(envoy_addr, make(envoy_addr)).await?,
                send(ours_addr, make(ours_addr)).await?,
            )
        };
        let (mut e, mut o) = (normalize(e), normalize(o));
        if h2 {
            // The authority carries each proxy's own port.
            e.body = e.body.replace(&listen.to_string(), "<port>");
            o.body = o.body.replace(&ours_addr.port().to_string(), "<port>");
        }
        if e != o {
            failures.push(format!("{name}:\n  envoy:   {e:?}\n  wasmesh: {o:?}"));
        }
    }
    // RBAC with request-dependent policies: same decisions, same 403s.
    let envoy_rbac: SocketAddr = format!("127.0.0.1:{listen2}").parse()?;
    let ours_rbac = ours.listener_addr("rbac").unwrap();
    type RbacCase = (
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
        u16,
    );
    let rbac_cases: [RbacCase; 4] = [
        ("GET", "/admin/panel", &[], 403),
        ("GET", "/fine", &[], 200),
        ("GET", "/fine", &[("x-evil", "1")], 403),
        ("DELETE", "/fine", &[], 403),
    ];
    for h2 in [false, true] {
        for (method, path, headers, want) in rbac_cases {
            let make = |addr: SocketAddr| {
                let mut b = http::Request::builder().method(method);
                b = if h2 {
                    b.uri(format!("http://x:{}{path}", addr.port()))
                        .version(http::Version::HTTP_2)
                } else {
                    b.uri(path).header("host", "x")
                };
                for (k, v) in headers {
                    b = b.header(*k, *v);
                }
                b.body(Full::new(Bytes::new())).unwrap_or_default()
            };
            let (e, o) = if h2 {
                (
                    send_h2(envoy_rbac, make(envoy_rbac)).await?,
                    send_h2(ours_rbac, make(ours_rbac)).await?,
                )
            } else {
                (
                    send(envoy_rbac, make(envoy_rbac)).await?,
                    send(ours_rbac, make(ours_rbac)).await?,
                )
            };
            let (mut e, mut o) = (normalize(e), normalize(o));
            e.body = e.body.replace(&listen2.to_string(), "<port>");
            o.body = o.body.replace(&ours_rbac.port().to_string(), "<port>");
            assert_eq!(e.status, want, "envoy {method} {path} {headers:?}");
            if e != o {
                failures.push(format!("rbac {method} {path} {headers:?} (h2={h2}):\n  envoy:   {e:?}\n  wasmesh: {o:?}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} differences:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Same counters, same names and values.
    let envoy_stats = send(admin_addr, get("admin", "/stats")).await?.text();
    let our_stats = admin_get(&ours, "/stats").await?.text();
    for name in [
        "http.ingress_http.downstream_rq_total",
        "http.ingress_http.downstream_rq_2xx",
        "http.ingress_http.downstream_rq_4xx",
        "http.ingress_http.downstream_rq_5xx",
        "http.ingress_http.rq_direct_response",
        "http.ingress_http.rq_redirect",
        "http.ingress_http.no_route",
        "cluster.up.upstream_rq_total",
        "cluster.up.upstream_rq_2xx",
        "cluster.up.upstream_rq_4xx",
        "cluster.dead.upstream_cx_connect_fail",
        "cluster.nohosts.upstream_cx_none_healthy",
        "cluster.nohosts.membership_total",
        "http.rbac_http.rbac.denied",
        "http.rbac_http.rbac.allowed",
        "http.rbac_http.downstream_rq_4xx",
    ] {
        let value = |text: &str| {
            text.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.strip_prefix(": "))
                    .map(str::to_string)
            })
        };
        assert!(value(&our_stats).is_some(), "{name} missing");
        assert_eq!(value(&our_stats), value(&envoy_stats), "{name}");
    }

    // Access logs in Envoy's default format, line for line (times, ids and ports masked).
    let n = cases().len();
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    let complete = eventually(std::time::Duration::from_secs(5), || async {
        read(&envoy_log).lines().count() >= n && read(&our_log).lines().count() >= n
    })
    .await;
    assert!(
        complete,
        "access logs incomplete:\n{}\n{}",
        read(&envoy_log),
        read(&our_log)
    );
    let (e, o) = (
        normalize_log(&read(&envoy_log)),
        normalize_log(&read(&our_log)),
    );
    assert_eq!(e.len(), n);
    assert_eq!(e, o);

    // The JSON format, value for value (h2 authorities carry each proxy's port).
    let json_lines = |p: &std::path::Path| -> Vec<serde_json::Value> {
        let port = regex::Regex::new(r":\d+").unwrap_or_else(|e| panic!("{e}"));
        read(&p.with_extension("log.json"))
            .lines()
            .map(|l| {
                serde_json::from_str(&port.replace_all(l, ":P")).unwrap_or(serde_json::Value::Null)
            })
            .collect()
    };
    let complete = eventually(std::time::Duration::from_secs(5), || async {
        json_lines(&envoy_log).len() >= n && json_lines(&our_log).len() >= n
    })
    .await;
    assert!(complete, "json access logs incomplete");
    let (ej, oj) = (json_lines(&envoy_log), json_lines(&our_log));
    assert_eq!(ej.len(), n);
    for (i, (e, o)) in ej.iter().zip(oj.iter()).enumerate() {
        assert_eq!(e, o, "json access log line {i}");
    }
    Ok(())
}

/// Masks start time, duration, upstream service time, request ids and ports.
fn normalize_log(text: &str) -> Vec<String> {
    let re = regex::Regex::new(
        r#"^\[[^\]]+\] ("[^"]*") (\d+) (\S+) (\d+) (\d+) (\d+) (\S+) "([^"]*)" "([^"]*)" "([^"]*)" "([^"]*)" "([^"]*)"$"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let port = regex::Regex::new(r":\d+").unwrap_or_else(|e| panic!("{e}"));
    text.lines()
        .map(|l| match re.captures(l) {
            Some(c) => {
                let g = |i: usize| c.get(i).map_or("", |m| m.as_str());
                let id = if g(10).len() == 36 || g(10) == "abc" {
                    "<id-ok>"
                } else {
                    g(10)
                };
                let ust = if g(7) == "-" { "-" } else { "<ms>" };
                format!(
                    "[T] {} {} {} {} {} <dur> {ust} \"{}\" \"{}\" \"{id}\" \"{}\" \"{}\"",
                    g(1),
                    g(2),
                    g(3),
                    g(4),
                    g(5),
                    g(8),
                    g(9),
                    port.replace_all(g(11), ":P"),
                    port.replace_all(g(12), ":P")
                )
            }
            None => format!("unparsed: {l}"),
        })
        .collect()
}

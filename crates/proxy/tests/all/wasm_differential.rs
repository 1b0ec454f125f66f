//! Differential tests of the Wasm filter: the same bootstrap, with the example plugins, runs in
//! real Envoy 1.40 (V8) and in wasmesh (wasmtime); each case must give the same status, headers
//! and body (the upstream echoes the request it got, so request-side edits are compared too).
//! Values that differ by nature are normalized: `date`, the service time, request ids, and the
//! client and listener ports plugins report.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use test_support::proxy_peers::{free_ports, start_envoy, start_upstream};

use crate::support::*;

/// One listener per plugin setup: (listener name, http_filters YAML).
fn listeners() -> Vec<(&'static str, String)> {
    let wasm_with = |name: &str, plugin: &str, config: &str, policy: &str, extra: &str| {
        let cfg = if config.is_empty() {
            String::new()
        } else {
            format!(
                "\n                configuration:\n                  \"@type\": type.googleapis.com/google.protobuf.StringValue\n                  value: '{config}'"
            )
        };
        format!(
            r#"
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {name}
                root_id: {name}{cfg}
                failure_policy: {policy}{extra}
                vm_config:
                  vm_id: {name}
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: "{path}"}}}}"#,
            path = test_plugins::path(plugin).display()
        )
    };
    let wasm = |name: &str, plugin: &str, config: &str, policy: &str| {
        wasm_with(name, plugin, config, policy, "")
    };
    vec![
        (
            "headers",
            wasm(
                "headers",
                test_plugins::HEADERS,
                r#"{"request_add":{"x-added":"1","x-multi":"b"},"request_remove":["x-remove-me"],"request_replace":{"user-agent":"wasm","x-multi":"a"},"response_add":{"x-resp":"yes"},"response_replace":{"content-type":"text/wasm"}}"#,
                "FAIL_CLOSED",
            ),
        ),
        (
            "auth",
            wasm(
                "auth",
                test_plugins::AUTH,
                r#"{"header":"x-api-key","value":"secret"}"#,
                "FAIL_CLOSED",
            ),
        ),
        (
            "body",
            wasm(
                "body",
                test_plugins::BODY_REWRITE,
                r#"{"request":{"from":"cat","to":"tiger"},"response":{"from":"POST","to":"PUTT"}}"#,
                "FAIL_CLOSED",
            ),
        ),
        (
            "body_count",
            wasm_with(
                "body_count",
                test_plugins::BODY_REWRITE,
                r#"{"request":{"from":"cat","to":"tiger"},"response":{"from":"POST","to":"PUTT"},"count_header":"x-rewrites"}"#,
                "FAIL_CLOSED",
                "\n                allow_on_headers_stop_iteration: true",
            ),
        ),
        (
            "log_view",
            wasm(
                "log_view",
                test_plugins::HEADERS,
                r#"{"log_view":true}"#,
                "FAIL_CLOSED",
            ),
        ),
        (
            "log_reply",
            wasm(
                "log_reply",
                test_plugins::HEADERS,
                r#"{"log_view":true}"#,
                "FAIL_CLOSED",
            ) + &wasm(
                "log_reply_auth",
                test_plugins::AUTH,
                r#"{"header":"x-api-key","value":"secret"}"#,
                "FAIL_CLOSED",
            ),
        ),
        (
            "props",
            wasm("props", test_plugins::PROPERTIES, "", "FAIL_CLOSED"),
        ),
        (
            "trap_closed",
            wasm("trap_closed", test_plugins::TRAP, "", "FAIL_CLOSED"),
        ),
        (
            "trap_open",
            wasm("trap_open", test_plugins::TRAP, "", "FAIL_OPEN"),
        ),
        // The deprecated `fail_open: true`: the stream whose call failed goes on too.
        (
            "trap_legacy",
            wasm_with(
                "trap_legacy",
                test_plugins::TRAP,
                "",
                "UNSPECIFIED",
                "\n                fail_open: true",
            ),
        ),
        (
            "trap_legacy_body",
            wasm_with(
                "trap_legacy_body",
                test_plugins::TRAP,
                "",
                "UNSPECIFIED",
                "\n                fail_open: true",
            ),
        ),
        (
            "abi010",
            wasm("abi010", test_plugins::ABI010, "", "FAIL_CLOSED"),
        ),
        (
            "callout",
            wasm(
                "callout",
                test_plugins::CALLOUT,
                r#"{"cluster":"up","path":"/status/200"}"#,
                "FAIL_CLOSED",
            ),
        ),
        (
            "callout_deny",
            wasm(
                "callout_deny",
                test_plugins::CALLOUT,
                r#"{"cluster":"up","path":"/status/503"}"#,
                "FAIL_CLOSED",
            ),
        ),
        (
            "chain",
            wasm(
                "chain_a",
                test_plugins::HEADERS,
                r#"{"request_add":{"x-chain":"a"},"response_add":{"x-chain":"a"}}"#,
                "FAIL_CLOSED",
            ) + &wasm(
                "chain_b",
                test_plugins::HEADERS,
                r#"{"request_add":{"x-chain":"b"},"response_add":{"x-chain":"b"}}"#,
                "FAIL_CLOSED",
            ),
        ),
    ]
}

fn bootstrap(admin: u16, ports: &[u16], up: u16) -> String {
    let mut s = format!(
        "admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}\nstatic_resources:\n  listeners:\n"
    );
    for ((name, filters), port) in listeners().iter().zip(ports) {
        s.push_str(&format!(
            r#"  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config:
            virtual_hosts:
            - {{name: all, domains: ["*"], routes: [{{match: {{prefix: "/dead"}}, route: {{cluster: dead}}}}, {{match: {{prefix: "/"}}, route: {{cluster: up}}}}]}}
          http_filters:{filters}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
        ));
    }
    s.push_str(&format!(
        r#"  clusters:
  - name: up
    connect_timeout: 1s
    load_assignment:
      cluster_name: up
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {up}}}}}}}}}]}}]
  - name: dead
    connect_timeout: 1s
    load_assignment:
      cluster_name: dead
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}}}}}]}}]
"#
    ));
    s
}

#[derive(Debug, PartialEq)]
struct Normalized {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

fn normalize(r: Resp, ports: &[u16]) -> Normalized {
    let scrub = |s: String| {
        let mut s = s;
        for p in ports {
            s = s
                .replace(&format!(":{p}"), ":<port>")
                .replace(&p.to_string(), "<port>");
        }
        s
    };
    let mut headers = BTreeMap::new();
    for (k, v) in &r.headers {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        let v = match k.as_str() {
            "date" => continue,
            "x-envoy-upstream-service-time" => "<ms>".into(),
            // the client's ephemeral port
            "x-prop-source-address" => v
                .rsplit_once(':')
                .map(|(ip, _)| format!("{ip}:<port>"))
                .unwrap_or(v),
            _ => scrub(v),
        };
        headers.insert(k.as_str().to_string(), v);
    }
    let body = match serde_json::from_slice::<serde_json::Value>(&r.body) {
        Ok(mut j) => {
            if let Some(id) = j["headers"].get_mut("x-request-id") {
                *id = serde_json::Value::String("<uuid>".into());
            }
            scrub(j.to_string())
        }
        Err(_) => scrub(String::from_utf8_lossy(&r.body).into_owned()),
    };
    Normalized {
        status: r.status,
        headers,
        body,
    }
}

fn req(method: &str, path: &str, extra: &[(&str, &str)], body: &str) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "wasm.example.com");
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default()
}

type Case = (
    &'static str,
    &'static str,
    fn() -> http::Request<Full<Bytes>>,
);

fn cases() -> Vec<Case> {
    vec![
        ("header edits", "headers", || {
            req(
                "GET",
                "/h",
                &[
                    ("x-remove-me", "1"),
                    ("user-agent", "curl"),
                    ("x-multi", "z"),
                ],
                "",
            )
        }),
        ("auth denied", "auth", || req("GET", "/", &[], "")),
        ("auth wrong key", "auth", || {
            req("GET", "/", &[("x-api-key", "nope")], "")
        }),
        ("auth allowed", "auth", || {
            req("GET", "/", &[("x-api-key", "secret")], "")
        }),
        ("request and response body rewrite", "body", || {
            req(
                "POST",
                "/b",
                &[("content-type", "text/plain")],
                "a cat, another cat",
            )
        }),
        ("body rewrite, no body", "body", || {
            req("GET", "/nobody", &[], "")
        }),
        (
            "headers held while the body is buffered get edits from body callbacks",
            "body_count",
            || {
                req(
                    "POST",
                    "/b",
                    &[("content-type", "text/plain")],
                    "a cat, another cat, a third cat",
                )
            },
        ),
        ("held headers, no body", "body_count", || {
            req("GET", "/nobody", &[], "")
        }),
        ("on_log view, first request", "log_view", || {
            req("GET", "/l1", &[("x-client", "1")], "")
        }),
        ("on_log view: the headers on_log saw", "log_view", || {
            req("POST", "/l2", &[("content-type", "text/plain")], "body")
        }),
        (
            "on_log view of an upstream failure: the reply",
            "log_view",
            || req("GET", "/dead", &[], ""),
        ),
        (
            "on_log view of an upstream failure: what on_log saw",
            "log_view",
            || req("GET", "/l3", &[], ""),
        ),
        (
            "on_log view of a client reset: the reset",
            "log_view",
            || req("GET", "/delay/1000", &[(CLIENT_RESET, "1")], ""),
        ),
        (
            "on_log view of a client reset: what on_log saw",
            "log_view",
            || req("GET", "/l4", &[], ""),
        ),
        (
            "on_log view of a local reply: the reply",
            "log_reply",
            || req("GET", "/denied", &[], ""),
        ),
        (
            "on_log view of a local reply: what on_log saw",
            "log_reply",
            || req("GET", "/allowed", &[("x-api-key", "secret")], ""),
        ),
        ("properties", "props", || req("GET", "/p?q=1", &[], "")),
        ("trap fail closed", "trap_closed", || {
            req("GET", "/", &[("x-trap", "1")], "")
        }),
        ("trap fail closed, VM stays failed", "trap_closed", || {
            req("GET", "/", &[], "")
        }),
        ("trap fail open", "trap_open", || {
            req("GET", "/", &[("x-trap", "1")], "")
        }),
        (
            "trap fail open, plugin skipped afterwards",
            "trap_open",
            || req("GET", "/", &[], ""),
        ),
        ("trap, legacy fail_open", "trap_legacy", || {
            req("GET", "/", &[("x-trap", "1")], "")
        }),
        ("trap, legacy fail_open, afterwards", "trap_legacy", || {
            req("GET", "/", &[], "")
        }),
        (
            "trap in the response body, legacy fail_open",
            "trap_legacy_body",
            || req("GET", "/", &[("x-trap", "response-body")], ""),
        ),
        ("abi 0.1.0", "abi010", || req("GET", "/", &[], "")),
        ("callout allows", "callout", || req("GET", "/c", &[], "")),
        ("callout denies", "callout_deny", || {
            req("GET", "/c", &[], "")
        }),
        ("two plugins in order", "chain", || req("GET", "/", &[], "")),
    ]
}

/// Header marking a case whose client goes away before the response (see [`send_case`]).
const CLIENT_RESET: &str = "x-test-client-reset";

/// Sends a case's request; one marked [`CLIENT_RESET`] is written raw and the connection
/// closed 100 ms later, before the upstream answers (status 0, nothing back), then 300 ms are
/// left for the proxy to finish the stream.
async fn send_case(addr: SocketAddr, req: http::Request<Full<Bytes>>) -> anyhow::Result<Resp> {
    if !req.headers().contains_key(CLIENT_RESET) {
        return send(addr, req).await;
    }
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "{} {} HTTP/1.1\r\nhost: wasm.example.com\r\n{CLIENT_RESET}: 1\r\n\r\n",
        req.method(),
        req.uri()
    );
    s.write_all(head.as_bytes()).await?;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    drop(s);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    Ok(Resp {
        status: 0,
        headers: http::HeaderMap::new(),
        body: Bytes::new(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_plugins_match_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let n = listeners().len();
    let ours_yaml = bootstrap(0, &vec![0; n], up.addr.port());
    let ours = start_proxy(&ours_yaml)?;
    let names: Vec<&str> = listeners().iter().map(|(n, _)| *n).collect();
    let ours_ports: Vec<u16> = names
        .iter()
        .map(|n| ours.listener_addr(n).map(|a| a.port()).unwrap_or(0))
        .collect();

    let mut envoy_ports = free_ports(n + 1)?;
    let admin = envoy_ports.pop().unwrap_or_default();
    let envoy_yaml = bootstrap(admin, &envoy_ports, up.addr.port());
    let admin_addr: SocketAddr = format!("127.0.0.1:{admin}").parse()?;
    let _envoy =
        tokio::task::spawn_blocking(move || start_envoy(&envoy_yaml, admin_addr)).await??;

    let mut all_ports = ours_ports.clone();
    all_ports.extend(&envoy_ports);
    let mut failures = Vec::new();
    for (name, listener, make) in cases() {
        let i = names.iter().position(|n| *n == listener).unwrap_or(0);
        let e_addr: SocketAddr = format!("127.0.0.1:{}", envoy_ports[i]).parse()?;
        let o_addr: SocketAddr = format!("127.0.0.1:{}", ours_ports[i]).parse()?;
        let e = send_case(e_addr, make())
            .await
            .map_err(|e| anyhow::anyhow!("{name}: envoy: {e}"))?;
        let o = send_case(o_addr, make())
            .await
            .map_err(|e| anyhow::anyhow!("{name}: wasmesh: {e}"))?;
        let (e, o) = (normalize(e, &all_ports), normalize(o, &all_ports));
        if e != o {
            failures.push(format!("{name}:\n  envoy:   {e:?}\n  wasmesh: {o:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases().len(),
        failures.join("\n")
    );
    Ok(())
}

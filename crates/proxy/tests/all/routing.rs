//! Routing: virtual hosts, matches, rewrites, weighted clusters, h2, load balancing.

use std::time::Duration;

use test_support::proxy_peers::start_upstream;

use crate::support::*;

const ROUTES: &str = r#"
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 0}}
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          route_config:
            name: local_route
            virtual_hosts:
            - name: api
              domains: ["api.example.com"]
              routes:
              - match: {prefix: "/v1/", headers: [{name: x-canary, string_match: {exact: "yes"}}]}
                route: {cluster: b}
              - match: {prefix: "/v1/"}
                route: {cluster: a, prefix_rewrite: "/internal/", host_rewrite_literal: "a.internal"}
              - match: {safe_regex: {regex: "/items/[0-9]+"}}
                route: {cluster: b}
              - match: {path: "/hello"}
                direct_response: {status: 200, body: {inline_string: "hello world"}}
            - name: split
              domains: ["split.example.com"]
              routes:
              - match: {prefix: "/"}
                route:
                  weighted_clusters:
                    clusters:
                    - {name: a, weight: 50}
                    - {name: b, weight: 50}
            - name: both
              domains: ["both.example.com"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: ab}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: a
    type: STATIC
    load_assignment:
      cluster_name: a
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {A}}}}}]}]
  - name: b
    type: STRICT_DNS
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: b
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: localhost, port_value: {B}}}}}]}]
  - name: ab
    type: STATIC
    lb_policy: LEAST_REQUEST
    load_assignment:
      cluster_name: ab
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {A}}}}
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {B}}}}
"#;

async fn setup() -> anyhow::Result<(
    test_support::proxy_peers::Upstream,
    test_support::proxy_peers::Upstream,
    wasmesh_proxy::RunningProxy,
)> {
    let a = start_upstream("a").await?;
    let b = start_upstream("b").await?;
    let yaml = fill(
        ROUTES,
        &[
            ("A", a.addr.port().to_string()),
            ("B", b.addr.port().to_string()),
        ],
    );
    let p = start_proxy(&yaml)?;
    Ok((a, b, p))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_hosts_paths_headers_and_rewrites() -> anyhow::Result<()> {
    let (_a, _b, p) = setup().await?;
    let addr = p.listener_addr("main").unwrap();

    let r = send(addr, get("api.example.com", "/v1/users?x=1")).await?;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["upstream"], "a");
    assert_eq!(j["path"], "/internal/users?x=1");
    assert_eq!(j["headers"]["host"], "a.internal");
    assert_eq!(j["headers"]["x-envoy-original-path"], "/v1/users?x=1");
    assert_eq!(j["headers"]["x-forwarded-proto"], "http");
    assert_eq!(j["headers"]["x-envoy-expected-rq-timeout-ms"], "15000");
    assert!(
        j["headers"]["x-request-id"]
            .as_str()
            .is_some_and(|s| s.len() == 36)
    );
    assert_eq!(r.header("server"), Some("envoy"));
    assert!(r.header("x-envoy-upstream-service-time").is_some());

    let mut req = get("api.example.com", "/v1/users");
    req.headers_mut().insert("x-canary", "yes".parse()?);
    let r = send(addr, req).await?;
    assert_eq!(
        r.json()["upstream"],
        "b",
        "header match routes to b (h2 upstream)"
    );

    let r = send(addr, get("api.example.com", "/items/42")).await?;
    assert_eq!(r.json()["upstream"], "b");
    let r = send(addr, get("api.example.com", "/items/42x")).await?;
    assert_eq!(r.status, 404);

    let r = send(addr, get("api.example.com", "/hello")).await?;
    assert_eq!((r.status, r.text().as_str()), (200, "hello world"));
    assert_eq!(r.header("content-type"), Some("text/plain"));

    let r = send(addr, get("nowhere.example.com", "/")).await?;
    assert_eq!(r.status, 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_clusters_and_least_request_spread_load() -> anyhow::Result<()> {
    let (_a, _b, p) = setup().await?;
    let addr = p.listener_addr("main").unwrap();
    for host in ["split.example.com", "both.example.com"] {
        let (mut a, mut b) = (0, 0);
        for _ in 0..60 {
            let r = send(addr, get(host, "/")).await?;
            match r.json()["upstream"].as_str() {
                Some("a") => a += 1,
                Some("b") => b += 1,
                other => panic!("unexpected upstream {other:?}"),
            }
        }
        assert!(a > 5 && b > 5, "{host}: a={a} b={b}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_downstream_keepalive_and_request_id_propagation() -> anyhow::Result<()> {
    let (_a, _b, p) = setup().await?;
    let addr = p.listener_addr("main").unwrap();
    let r = send_h2(addr, get_h2(addr, "api.example.com", "/v1/x")).await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/internal/x");

    // An incoming x-request-id is kept (the request is internal: use_remote_address is off).
    let mut req = get("api.example.com", "/v1/x");
    req.headers_mut().insert("x-request-id", "my-id".parse()?);
    let r = send(addr, req).await?;
    assert_eq!(r.json()["headers"]["x-request-id"], "my-id");

    // Many requests on one keep-alive connection, with a body.
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    for i in 0..20 {
        let req = http::Request::builder()
            .method("POST")
            .uri("/v1/echo")
            .header("host", "api.example.com")
            .body(http_body_util::Full::new(bytes::Bytes::from(vec![
                b'a';
                i * 100
            ])))?;
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await?
            .to_bytes();
        let j: serde_json::Value = serde_json::from_slice(&body)?;
        assert_eq!(j["body_len"], i * 100);
    }
    let stats = admin_get(&p, "/stats").await?.text();
    assert!(
        stats.contains("http.ingress_http.downstream_rq_total: 22"),
        "{stats}"
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            admin_get(&p, "/stats")
                .await
                .is_ok_and(|r| r.text().contains("http.ingress_http.downstream_rq_2xx: 22"))
        })
        .await
    );
    Ok(())
}

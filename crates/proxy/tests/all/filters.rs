//! The HTTP filter API from a filter's side (a test filter registered like the Wasm filter is),
//! and the built-in RBAC filter.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use test_support::proxy_peers::start_upstream;
use wasmesh_proxy::filter::{
    Any, BuildContext, DataStatus, FilterCx, HeadersStatus, HttpFilter, HttpFilterConfig,
    LocalBoxFuture, LocalReply, Registry, StreamInfo, WorkerContext,
};
use wasmesh_proxy::{BuildOptions, ProxyOptions};

use crate::support::*;

const STRUCT_URL: &str = "type.googleapis.com/google.protobuf.Struct";

type Log = Arc<Mutex<Vec<String>>>;

struct TestConfig {
    log: Log,
}

impl HttpFilterConfig for TestConfig {
    fn create_filter(&self, worker: &WorkerContext) -> Box<dyn HttpFilter> {
        Box::new(TestFilter {
            log: Arc::clone(&self.log),
            worker: worker.clone(),
            buffer_response: false,
        })
    }
}

struct TestFilter {
    log: Log,
    worker: WorkerContext,
    buffer_response: bool,
}

impl HttpFilter for TestFilter {
    fn on_request_headers<'a>(
        &'a mut self,
        cx: &'a mut FilterCx,
        headers: &'a mut http::request::Parts,
        _end_stream: bool,
    ) -> LocalBoxFuture<'a, HeadersStatus> {
        Box::pin(async move {
            self.buffer_response = headers.headers.contains_key("x-test-buffer-response");
            if headers.headers.contains_key("x-test-hold") {
                return HeadersStatus::StopIteration;
            }
            if let Some(p) = headers
                .headers
                .get("x-test-reroute")
                .and_then(|v| v.to_str().ok())
            {
                if let Ok(u) = p.parse() {
                    headers.uri = u;
                }
                cx.clear_route_cache();
            }
            if let Some(p) = headers
                .headers
                .get("x-test-callout")
                .and_then(|v| v.to_str().ok())
            {
                let req = http::Request::builder()
                    .uri(p)
                    .header("host", "callout")
                    .body(Bytes::new())
                    .unwrap_or_default();
                match self
                    .worker
                    .http_call("a", req, Some(Duration::from_secs(2)))
                    .await
                {
                    Ok(resp) if resp.status() != 200 => {
                        return HeadersStatus::LocalReply(LocalReply::new(
                            resp.status(),
                            format!("callout said {}", resp.status().as_u16()),
                            "test_callout_denied",
                        ));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        return HeadersStatus::LocalReply(LocalReply::new(
                            http::StatusCode::BAD_GATEWAY,
                            e.to_string(),
                            "callout_failed",
                        ));
                    }
                }
                if !matches!(
                    self.worker
                        .http_call("nope", http::Request::new(Bytes::new()), None)
                        .await,
                    Err(wasmesh_proxy::filter::CalloutError::UnknownCluster(_))
                ) {
                    return HeadersStatus::LocalReply(LocalReply::new(
                        http::StatusCode::INTERNAL_SERVER_ERROR,
                        "",
                        "bad",
                    ));
                }
            }
            HeadersStatus::Continue
        })
    }

    fn on_request_body<'a>(
        &'a mut self,
        cx: &'a mut FilterCx,
        data: &'a mut Bytes,
        end_stream: bool,
    ) -> LocalBoxFuture<'a, DataStatus> {
        let status = match cx.request_headers_mut() {
            // Headers held: buffer everything, then tag the headers with what the body was.
            Some(held) if end_stream => {
                held.headers
                    .insert("x-body-seen", http::HeaderValue::from(data.len()));
                DataStatus::Continue
            }
            Some(_) => DataStatus::StopIterationAndBuffer,
            None => DataStatus::Continue,
        };
        Box::pin(std::future::ready(status))
    }

    fn on_response_headers<'a>(
        &'a mut self,
        _cx: &'a mut FilterCx,
        headers: &'a mut http::response::Parts,
        _end_stream: bool,
    ) -> LocalBoxFuture<'a, HeadersStatus> {
        headers
            .headers
            .insert("x-test-filter", http::HeaderValue::from_static("seen"));
        if self.buffer_response {
            headers.headers.remove(http::header::CONTENT_LENGTH);
        }
        Box::pin(std::future::ready(HeadersStatus::Continue))
    }

    fn on_response_body<'a>(
        &'a mut self,
        _cx: &'a mut FilterCx,
        data: &'a mut Bytes,
        end_stream: bool,
    ) -> LocalBoxFuture<'a, DataStatus> {
        let status = if !self.buffer_response {
            DataStatus::Continue
        } else if end_stream {
            *data = Bytes::from(format!("len={}", data.len()));
            DataStatus::Continue
        } else {
            DataStatus::StopIterationAndBuffer
        };
        Box::pin(std::future::ready(status))
    }

    fn on_log(&mut self, info: &StreamInfo) {
        if let Ok(mut l) = self.log.lock() {
            l.push(format!(
                "{} {} {} rx={} tx={}",
                info.response_code.unwrap_or(0),
                info.route_name.as_deref().unwrap_or("-"),
                info.cluster_name.as_deref().unwrap_or("-"),
                info.bytes_received,
                info.bytes_sent,
            ));
        }
    }
}

const TWO_ROUTES: &str = r#"
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
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - name: route_b
                match: {prefix: "/b/"}
                route: {cluster: b}
              - name: route_a
                match: {prefix: "/"}
                route: {cluster: a}
          http_filters:
          - name: test
            typed_config:
              "@type": type.googleapis.com/google.protobuf.Struct
              value: {}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: a
    load_assignment:
      cluster_name: a
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {A}}}}}]}]
  - name: b
    load_assignment:
      cluster_name: b
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {B}}}}}]}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_api_reroute_callout_buffering_local_reply_and_log() -> anyhow::Result<()> {
    let a = start_upstream("a").await?;
    let b = start_upstream("b").await?;
    let log: Log = Arc::default();
    let mut registry = Registry::with_builtin_filters();
    let l2 = Arc::clone(&log);
    registry.register_http(
        STRUCT_URL,
        Arc::new(move |_any: &Any, ctx: &BuildContext| {
            assert_eq!(ctx.stat_prefix, "ingress_http");
            Ok(Arc::new(TestConfig {
                log: Arc::clone(&l2),
            }) as Arc<dyn HttpFilterConfig>)
        }),
    );
    let yaml = fill(
        TWO_ROUTES,
        &[
            ("A", a.addr.port().to_string()),
            ("B", b.addr.port().to_string()),
        ],
    );
    let bootstrap = wasmesh_proxy::config::bootstrap::parse(&yaml)?;
    let opts = BuildOptions {
        registry,
        ..BuildOptions::default()
    };
    let config = wasmesh_proxy::config::build(&bootstrap, &opts)?;
    let p = wasmesh_proxy::start_with(
        config,
        opts.store,
        &ProxyOptions {
            concurrency: 1,
            drain_timeout: Duration::from_secs(1),
            ..Default::default()
        },
    )?;
    let addr = p.listener_addr("main").unwrap();

    // Route re-selection after a filter changes :path.
    let mut req = get("x", "/a");
    req.headers_mut()
        .insert("x-test-reroute", "/b/moved".parse()?);
    let r = send(addr, req).await?;
    assert_eq!(r.json()["upstream"], "b");
    assert_eq!(r.json()["path"], "/b/moved");
    assert_eq!(r.header("x-test-filter"), Some("seen"));

    // A callout that says no becomes a local reply, which goes through the response hooks.
    let mut req = get("x", "/a");
    req.headers_mut()
        .insert("x-test-callout", "/status/403".parse()?);
    let r = send(addr, req).await?;
    assert_eq!((r.status, r.text().as_str()), (403, "callout said 403"));
    assert_eq!(r.header("x-test-filter"), Some("seen"));
    let mut req = get("x", "/a");
    req.headers_mut()
        .insert("x-test-callout", "/status/200".parse()?);
    assert_eq!(send(addr, req).await?.status, 200);

    // Headers held until the whole body arrived; the body hook still edits them.
    let req = http::Request::builder()
        .method("POST")
        .uri("/a")
        .header("host", "x")
        .header("x-test-hold", "1")
        .body(http_body_util::Full::new(Bytes::from(vec![b'q'; 300_000])))?;
    let r = send(addr, req).await?;
    assert_eq!(r.json()["headers"]["x-body-seen"], "300000", "{}", r.text());
    assert_eq!(r.json()["body_len"], 300_000);

    // A held request over the listener's buffer limit is answered 413 (Envoy's decoder buffer).
    let small = fill(TWO_ROUTES, &[("A", a.addr.port().to_string()), ("B", b.addr.port().to_string())]).replace(
        "    address: {socket_address: {address: 127.0.0.1, port_value: 0}}\n    filter_chains:",
        "    address: {socket_address: {address: 127.0.0.1, port_value: 0}}\n    per_connection_buffer_limit_bytes: 1024\n    filter_chains:",
    );
    let mut registry2 = Registry::with_builtin_filters();
    let l3 = Arc::new(Mutex::new(Vec::new()));
    registry2.register_http(
        STRUCT_URL,
        Arc::new(move |_any: &Any, _ctx: &BuildContext| {
            Ok(Arc::new(TestConfig {
                log: Arc::clone(&l3),
            }) as Arc<dyn HttpFilterConfig>)
        }),
    );
    let opts2 = BuildOptions {
        registry: registry2,
        ..BuildOptions::default()
    };
    let config2 =
        wasmesh_proxy::config::build(&wasmesh_proxy::config::bootstrap::parse(&small)?, &opts2)?;
    let p2 = wasmesh_proxy::start_with(
        config2,
        opts2.store,
        &ProxyOptions {
            concurrency: 1,
            drain_timeout: Duration::from_secs(1),
            ..Default::default()
        },
    )?;
    let req = http::Request::builder()
        .method("POST")
        .uri("/a")
        .header("host", "x")
        .header("x-test-hold", "1")
        .body(http_body_util::Full::new(Bytes::from(vec![b'q'; 300_000])))?;
    let r = send(p2.listener_addr("main").unwrap(), req).await?;
    assert_eq!((r.status, r.text().as_str()), (413, "Payload Too Large"));
    assert_eq!(r.header("x-test-filter"), Some("seen"));

    // Response body buffered until the end, then replaced.
    let mut req = get("x", "/bytes/300000");
    req.headers_mut()
        .insert("x-test-buffer-response", "1".parse()?);
    let r = send(addr, req).await?;
    assert_eq!(r.text(), "len=300000");

    assert!(
        eventually(Duration::from_secs(2), || async {
            log.lock().map(|l| l.len() >= 5).unwrap_or(false)
        })
        .await,
        "{log:?}"
    );
    let l = log.lock().map(|l| l.clone()).unwrap_or_default();
    assert!(l[0].starts_with("200 route_b b rx=0 tx="), "{l:?}");
    // The route's cluster is known from the moment the route is (Envoy sets the upstream
    // cluster info when it resolves the route), also for a local reply before the router.
    assert!(l[1].starts_with("403 route_a a rx=0 tx=16"), "{l:?}");
    assert!(l[3].starts_with("200 route_a a rx=300000"), "{l:?}");
    assert!(l[4].starts_with("200 route_a a rx=0 tx=10"), "{l:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_deny_all_and_allow_all() -> anyhow::Result<()> {
    let up = start_upstream("u").await?;
    let rbac = |rules: &str| {
        format!(
            "- name: envoy.filters.http.rbac\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC\n              rules: {rules}"
        )
    };
    let deny = fill(
        BASIC,
        &[
            ("PORT", up.addr.port().to_string()),
            ("ROUTE_EXTRA", String::new()),
            ("FILTERS", rbac("{action: ALLOW}")),
        ],
    );
    let p = start_proxy(&deny)?;
    let r = send(p.listener_addr("main").unwrap(), get("x", "/")).await?;
    assert_eq!((r.status, r.text().as_str()), (403, "RBAC: access denied"));
    let stats = admin_get(&p, "/stats").await?.text();
    assert!(
        stats.contains("http.ingress_http.rbac.denied: 1"),
        "{stats}"
    );
    let allow = fill(
        BASIC,
        &[
            ("PORT", up.addr.port().to_string()),
            ("ROUTE_EXTRA", String::new()),
            (
                "FILTERS",
                rbac(
                    "{action: ALLOW, policies: {all: {permissions: [{any: true}], principals: [{any: true}]}}}",
                ),
            ),
        ],
    );
    let p = start_proxy(&allow)?;
    let r = send(p.listener_addr("main").unwrap(), get("x", "/")).await?;
    assert_eq!(r.status, 200);
    let stats = admin_get(&p, "/stats").await?.text();
    assert!(
        stats.contains("http.ingress_http.rbac.allowed: 1"),
        "{stats}"
    );
    Ok(())
}

//! The Wasm filter driven through the filter API as the connection manager drives it, with the
//! example plugins and a fake callout dispatcher (no sockets).

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{
    AsyncDataSource, DataSource, async_data_source, data_source,
};
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::wasm::v3::{
    FailurePolicy, PluginConfig, ReloadConfig, VmConfig, plugin_config,
};
use prost::Message;

use super::*;
use crate::filter::{CalloutError, HttpCallDispatcher, NodeInfo};
use crate::pb::Any;

struct FakeCallouts;

impl HttpCallDispatcher for FakeCallouts {
    fn http_call(
        &self,
        cluster: &str,
        request: http::Request<Bytes>,
        _timeout: Option<Duration>,
    ) -> LocalBoxFuture<'_, Result<http::Response<Bytes>, CalloutError>> {
        let allowed = request.uri().path() == "/check"
            && request
                .headers()
                .get("x-original-path")
                .is_some_and(|v| v == "/ok");
        let cluster = cluster.to_string();
        Box::pin(async move {
            tokio::task::yield_now().await;
            if cluster != "auth" {
                return Err(CalloutError::UnknownCluster(cluster));
            }
            let status = if allowed { 200 } else { 503 };
            Ok(http::Response::builder()
                .status(status)
                .header("x-user", "alice")
                .body(Bytes::new())
                .expect("resp"))
        })
    }
}

fn any_string(s: &str) -> Any {
    Any {
        type_url: "type.googleapis.com/google.protobuf.StringValue".into(),
        value: s.to_string().encode_to_vec(),
    }
}

fn wasm_any(plugin: &str, config: &str, policy: FailurePolicy) -> Any {
    wasm_any_with(plugin, config, policy, false)
}

/// With `allow_on_headers_stop_iteration` set as given.
fn wasm_any_with(plugin: &str, config: &str, policy: FailurePolicy, stop_iteration: bool) -> Any {
    let pc = PluginConfig {
        allow_on_headers_stop_iteration: stop_iteration
            .then_some(envoy_types::pb::google::protobuf::BoolValue { value: true }),
        name: format!("test.{plugin}"),
        root_id: plugin.into(),
        configuration: (!config.is_empty()).then(|| any_string(config)),
        failure_policy: policy as i32,
        reload_config: Some(ReloadConfig {
            backoff: Some(envoy_types::pb::envoy::config::core::v3::BackoffStrategy {
                base_interval: Some(envoy_types::pb::google::protobuf::Duration {
                    seconds: 0,
                    nanos: 1_000_000,
                }),
                max_interval: None,
            }),
        }),
        vm: Some(plugin_config::Vm::VmConfig(VmConfig {
            vm_id: format!("vm.{plugin}"),
            runtime: "envoy.wasm.runtime.v8".into(),
            code: Some(AsyncDataSource {
                specifier: Some(async_data_source::Specifier::Local(DataSource {
                    specifier: Some(data_source::Specifier::Filename(
                        test_plugins::path(plugin).display().to_string(),
                    )),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    #[allow(deprecated, reason = "struct literal must name every field")]
    let wasm = Wasm { config: Some(pc) };
    Any {
        type_url: WASM_HTTP_TYPE_URL.into(),
        value: wasm.encode_to_vec(),
    }
}

fn build_cx() -> BuildContext {
    BuildContext {
        node: Arc::new(NodeInfo {
            id: "router~10.0.0.1~gw.demo~demo.svc.cluster.local".into(),
            ..Default::default()
        }),
        filter_name: "envoy.filters.http.wasm".into(),
        listener_name: "test".into(),
        stat_prefix: "test".into(),
        field_path: "http_filters[0]".into(),
        cluster_names: Arc::from(vec!["auth".to_string()]),
        cluster_endpoints: Default::default(),
        stats: crate::stats::Store::new(),
        concurrency: 1,
    }
}

fn config(plugin: &str, cfg: &str, policy: FailurePolicy) -> Arc<dyn HttpFilterConfig> {
    build_http(&wasm_any(plugin, cfg, policy), &build_cx())
        .unwrap_or_else(|e| panic!("build {plugin}: {e}"))
}

fn run<F: Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    tokio::task::LocalSet::new().block_on(&rt, f)
}

fn worker() -> WorkerContext {
    WorkerContext::new(0, Rc::new(FakeCallouts))
}

fn stream(worker: &WorkerContext) -> FilterCx {
    let a: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
    let b: SocketAddr = "127.0.0.1:50000".parse().expect("addr");
    let info = StreamInfo::new(
        Arc::from("test"),
        a,
        b,
        http::Version::HTTP_11,
        Arc::new(NodeInfo::default()),
    );
    FilterCx::new(info, worker.clone())
}

fn request(path: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::builder()
        .uri(path)
        .header("host", "example.com");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).expect("request").into_parts().0
}

fn response() -> http::response::Parts {
    http::Response::builder()
        .status(200)
        .header("server", "upstream")
        .body(())
        .expect("resp")
        .into_parts()
        .0
}

fn reply(s: HeadersStatus) -> LocalReply {
    match s {
        HeadersStatus::LocalReply(r) => r,
        other => panic!("expected a local reply, got {other:?}"),
    }
}

#[test]
fn headers_plugin_edits_and_clears_the_route_cache() {
    let cfg = config(
        test_plugins::HEADERS,
        r#"{"request_add":{"x-added":"1"},"response_remove":["server"]}"#,
        FailurePolicy::Unspecified,
    );
    run(async {
        let w = worker();
        let mut f = cfg.create_filter(&w);
        let mut cx = stream(&w);
        let mut req = request("/a", &[]);
        assert!(matches!(
            f.on_request_headers(&mut cx, &mut req, true).await,
            HeadersStatus::Continue
        ));
        assert_eq!(
            req.headers.get("x-added").map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        assert_eq!(
            req.headers.get("host").map(|v| v.as_bytes()),
            Some(&b"example.com"[..])
        );
        assert!(
            cx.take_route_cache_cleared(),
            "changed request headers clear the route cache"
        );
        let mut resp = response();
        assert!(matches!(
            f.on_response_headers(&mut cx, &mut resp, true).await,
            HeadersStatus::Continue
        ));
        assert!(resp.headers.get("server").is_none());
        f.on_log(cx.stream_info());
    });
}

#[test]
fn unchanged_headers_do_not_clear_the_route_cache() {
    let cfg = config(
        test_plugins::AUTH,
        r#"{"value":"k"}"#,
        FailurePolicy::Unspecified,
    );
    run(async {
        let w = worker();
        let mut f = cfg.create_filter(&w);
        let mut cx = stream(&w);
        let mut req = request("/", &[("x-api-key", "k")]);
        assert!(matches!(
            f.on_request_headers(&mut cx, &mut req, true).await,
            HeadersStatus::Continue
        ));
        assert!(!cx.take_route_cache_cleared());
    });
}

#[test]
fn auth_plugin_local_reply() {
    let cfg = config(
        test_plugins::AUTH,
        r#"{"value":"k"}"#,
        FailurePolicy::Unspecified,
    );
    run(async {
        let w = worker();
        let mut f = cfg.create_filter(&w);
        let mut cx = stream(&w);
        let mut req = request("/", &[]);
        let r = reply(f.on_request_headers(&mut cx, &mut req, true).await);
        assert_eq!(r.status.as_u16(), 401);
        assert_eq!(&r.body[..], b"unauthorized\n");
        assert_eq!(
            r.headers.get("www-authenticate").map(|v| v.as_bytes()),
            Some(&b"ApiKey"[..])
        );
    });
}

#[test]
fn callout_suspends_the_stream_until_the_answer() {
    let cfg = config(
        test_plugins::CALLOUT,
        r#"{"cluster":"auth"}"#,
        FailurePolicy::Unspecified,
    );
    run(async {
        let w = worker();
        let mut f = cfg.create_filter(&w);
        let mut cx = stream(&w);
        let mut req = request("/ok", &[]);
        assert!(matches!(
            f.on_request_headers(&mut cx, &mut req, true).await,
            HeadersStatus::Continue
        ));
        assert_eq!(
            req.headers.get("x-auth-checked").map(|v| v.as_bytes()),
            Some(&b"yes"[..])
        );
        assert_eq!(
            req.headers.get("x-user").map(|v| v.as_bytes()),
            Some(&b"alice"[..])
        );

        let mut f2 = cfg.create_filter(&w);
        let mut cx2 = stream(&w);
        let mut req2 = request("/denied", &[]);
        let r = reply(f2.on_request_headers(&mut cx2, &mut req2, true).await);
        assert_eq!(r.status.as_u16(), 403);
        assert_eq!(
            r.headers.get("x-callout-status").map(|v| v.as_bytes()),
            Some(&b"503"[..])
        );
    });
}

#[test]
fn body_rewrite_buffers_through_the_chain() {
    let cfg = config(
        test_plugins::BODY_REWRITE,
        r#"{"request":{"from":"cat","to":"dog"}}"#,
        FailurePolicy::Unspecified,
    );
    run(async {
        let w = worker();
        let mut f = cfg.create_filter(&w);
        let mut cx = stream(&w);
        let mut req = request("/", &[("content-length", "11")]);
        assert!(matches!(
            f.on_request_headers(&mut cx, &mut req, false).await,
            HeadersStatus::Continue
        ));
        assert!(req.headers.get("content-length").is_none());
        let mut chunk = Bytes::from_static(b"cat ");
        assert!(matches!(
            f.on_request_body(&mut cx, &mut chunk, false).await,
            DataStatus::StopIterationAndBuffer
        ));
        // the connection manager calls again with the accumulated buffer
        let mut all = Bytes::from_static(b"cat cat cat");
        assert!(matches!(
            f.on_request_body(&mut cx, &mut all, true).await,
            DataStatus::Continue
        ));
        assert_eq!(&all[..], b"dog dog dog");
    });
}

/// A stream through `body_rewrite` with `count_header`, with or without
/// `allow_on_headers_stop_iteration`.
fn count_header_stream(w: &WorkerContext, stop_iteration: bool) -> (Box<dyn HttpFilter>, FilterCx) {
    let cfg = r#"{"request":{"from":"cat","to":"dog"},"count_header":"x-rewrites"}"#;
    let any = wasm_any_with(
        test_plugins::BODY_REWRITE,
        cfg,
        FailurePolicy::Unspecified,
        stop_iteration,
    );
    let config = build_http(&any, &build_cx()).unwrap_or_else(|e| panic!("build: {e}"));
    (config.create_filter(w), stream(w))
}

#[test]
fn header_edits_from_a_body_callback_reach_held_headers() {
    run(async {
        let w = worker();
        let (mut f, mut cx) = count_header_stream(&w, true);
        let mut req = request("/", &[("content-length", "11")]);
        assert!(matches!(
            f.on_request_headers(&mut cx, &mut req, false).await,
            HeadersStatus::StopIteration
        ));
        assert!(cx.take_route_cache_cleared(), "content-length removed");
        // The connection manager parks the held headers where body hooks can change them.
        cx.hold_request_headers(req);
        let mut all = Bytes::from_static(b"cat cat cat");
        assert!(matches!(
            f.on_request_body(&mut cx, &mut all, true).await,
            DataStatus::Continue
        ));
        assert_eq!(&all[..], b"dog dog dog");
        assert!(
            cx.take_route_cache_cleared(),
            "a request header edit clears the route cache"
        );
        let back = cx.release_request_headers().expect("held headers");
        assert_eq!(
            back.headers.get("x-rewrites").map(|v| v.as_bytes()),
            Some(&b"3"[..])
        );
        assert!(back.headers.get("content-length").is_none());
    });
}

#[test]
fn by_default_a_pause_from_headers_stops_the_whole_stream() {
    // Envoy turns a headers Pause into StopAllIterationAndWatermark unless
    // allow_on_headers_stop_iteration is set: nothing reaches the plugin until it resumes.
    run(async {
        let w = worker();
        let (mut f, mut cx) = count_header_stream(&w, false);
        let mut req = request("/", &[]);
        let waited = tokio::time::timeout(
            Duration::from_millis(200),
            f.on_request_headers(&mut cx, &mut req, false),
        )
        .await;
        assert!(waited.is_err(), "the headers hook must wait for a resume");
    });
}

#[test]
fn header_edits_from_a_body_callback_after_the_headers_went_on_change_nothing() {
    run(async {
        let w = worker();
        let (mut f, mut cx) = count_header_stream(&w, true);
        let mut req = request("/", &[]);
        let _ = f.on_request_headers(&mut cx, &mut req, false).await;
        let _ = cx.take_route_cache_cleared();
        // Nothing held (another filter let the headers go on): the edit has nowhere to go.
        let mut all = Bytes::from_static(b"cat");
        assert!(matches!(
            f.on_request_body(&mut cx, &mut all, true).await,
            DataStatus::Continue
        ));
        assert!(!cx.take_route_cache_cleared());
        assert!(cx.release_request_headers().is_none());
    });
}

#[test]
fn trap_fail_closed_replies_503_and_stays_failed() {
    let cfg = config(test_plugins::TRAP, "", FailurePolicy::FailClosed);
    run(async {
        let w = worker();
        for (i, headers) in [&[("x-trap", "1")][..], &[][..]].iter().enumerate() {
            let mut f = cfg.create_filter(&w);
            let mut cx = stream(&w);
            let mut req = request("/", headers);
            let r = reply(f.on_request_headers(&mut cx, &mut req, true).await);
            assert_eq!(r.status.as_u16(), 503, "request {i}");
            assert_eq!(r.details, "wasm_fail_stream");
        }
    });
}

#[test]
fn trap_fail_open_fails_that_stream_then_skips_the_plugin() {
    // Envoy 1.40 (checked in wasm_differential): the request whose callback trapped gets 503
    // even under FAIL_OPEN; later requests skip the plugin.
    let cfg = config(test_plugins::TRAP, "", FailurePolicy::FailOpen);
    run(async {
        let w = worker();
        let mut f = cfg.create_filter(&w);
        let mut cx = stream(&w);
        let mut req = request("/", &[("x-trap", "1")]);
        assert_eq!(
            reply(f.on_request_headers(&mut cx, &mut req, true).await)
                .status
                .as_u16(),
            503
        );
        let mut f2 = cfg.create_filter(&w);
        let mut cx2 = stream(&w);
        let mut req2 = request("/", &[]);
        assert!(matches!(
            f2.on_request_headers(&mut cx2, &mut req2, true).await,
            HeadersStatus::Continue
        ));
        let mut resp = response();
        assert!(matches!(
            f2.on_response_headers(&mut cx2, &mut resp, true).await,
            HeadersStatus::Continue
        ));
        assert!(resp.headers.get("x-hostile").is_none(), "plugin skipped");
    });
}

#[test]
fn trap_fail_reload_gets_a_fresh_vm() {
    let cfg = config(test_plugins::TRAP, "", FailurePolicy::FailReload);
    run(async {
        let w = worker();
        let mut f = cfg.create_filter(&w);
        let mut cx = stream(&w);
        let mut req = request("/", &[("x-trap", "1")]);
        assert_eq!(
            reply(f.on_request_headers(&mut cx, &mut req, true).await)
                .status
                .as_u16(),
            503
        );
        tokio::time::sleep(Duration::from_millis(5)).await; // past the 1 ms reload backoff
        let mut f2 = cfg.create_filter(&w);
        let mut cx2 = stream(&w);
        let mut req2 = request("/", &[]);
        assert!(matches!(
            f2.on_request_headers(&mut cx2, &mut req2, true).await,
            HeadersStatus::Continue
        ));
        let mut resp = response();
        assert!(matches!(
            f2.on_response_headers(&mut cx2, &mut resp, true).await,
            HeadersStatus::Continue
        ));
        assert_eq!(
            resp.headers.get("x-hostile").map(|v| v.as_bytes()),
            Some(&b"ok"[..]),
            "the new VM runs the plugin"
        );
    });
}

#[test]
fn bad_plugin_configuration_fails_the_config_naming_the_plugin() {
    let err = build_http(
        &wasm_any(test_plugins::HEADERS, "{bad", FailurePolicy::Unspecified),
        &build_cx(),
    )
    .err()
    .expect("rejected");
    let msg = err.to_string();
    assert!(
        msg.contains("http_filters[0]") && msg.contains("test.headers"),
        "{msg}"
    );
}

#[test]
fn default_fail_reload_option_reloads_plugins_without_a_policy() {
    set_default_fail_reload(true);
    let cfg = config(test_plugins::TRAP, "", FailurePolicy::Unspecified);
    set_default_fail_reload(false);
    run(async {
        let w = worker();
        let mut f = cfg.create_filter(&w);
        let mut cx = stream(&w);
        let mut req = request("/", &[("x-trap", "1")]);
        assert_eq!(
            reply(f.on_request_headers(&mut cx, &mut req, true).await)
                .status
                .as_u16(),
            503
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut f2 = cfg.create_filter(&w);
        let mut cx2 = stream(&w);
        let mut req2 = request("/", &[]);
        assert!(matches!(
            f2.on_request_headers(&mut cx2, &mut req2, true).await,
            HeadersStatus::Continue
        ));
    });
    // without the option the same plugin stays failed (Envoy's FAIL_CLOSED default)
    let cfg = config(test_plugins::TRAP, "{}", FailurePolicy::Unspecified);
    run(async {
        let w = worker();
        for headers in [&[("x-trap", "1")][..], &[][..]] {
            let mut f = cfg.create_filter(&w);
            let mut cx = stream(&w);
            let mut req = request("/", headers);
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert_eq!(
                reply(f.on_request_headers(&mut cx, &mut req, true).await)
                    .status
                    .as_u16(),
                503
            );
        }
    });
}

//! Each example plugin, driven as the proxy drives it, with assertions on what it did.

use wasm_host::{
    BufferType, DataAction, Effect, Error, FilterAction, HeaderMap, HeadersAction,
    HttpCallResponse, LogLevel, MapType, MetricValue, PeerType, PropertyValue, StreamProperties,
    StreamType,
};

use crate::harness::*;

#[test]
fn headers_plugin_edits_request_and_response() {
    let cfg = r#"{"request_add":{"x-added":"1"},"request_remove":["x-remove-me"],"request_replace":{"user-agent":"wasmesh"},
                 "response_add":{"x-resp":"yes"},"response_remove":["server"],"response_replace":{"content-type":"application/json"}}"#;
    let (mut vm, _host) = start(test_plugins::HEADERS, cfg);
    let ctx = new_stream(
        &mut vm,
        request_headers(
            "/a",
            &[
                ("x-remove-me", "1"),
                ("User-Agent", "curl"),
                ("user-agent", "dup"),
            ],
        ),
    );
    assert_eq!(
        vm.on_request_headers(ctx, true).expect("call"),
        HeadersAction::Continue
    );
    let req = vm.take_map(ctx, MapType::RequestHeaders).expect("headers");
    assert_eq!(req.get_str("x-added"), Some("1"));
    assert_eq!(req.get(b"x-remove-me"), None);
    assert_eq!(
        req.iter().filter(|(k, _)| *k == b"user-agent").count(),
        1,
        "replace leaves one value"
    );
    assert_eq!(req.get_str("user-agent"), Some("wasmesh"));

    let mut resp = response_headers("200");
    resp.add(b"server", b"nginx");
    vm.set_map(ctx, MapType::ResponseHeaders, resp)
        .expect("set");
    assert_eq!(
        vm.on_response_headers(ctx, false).expect("call"),
        HeadersAction::Continue
    );
    let resp = vm.take_map(ctx, MapType::ResponseHeaders).expect("headers");
    assert_eq!(resp.get_str("x-resp"), Some("yes"));
    assert_eq!(resp.get(b"server"), None);
    assert_eq!(resp.get_str("content-type"), Some("application/json"));
    vm.complete(ctx).expect("complete");
    assert_eq!(vm.context_count(), 1, "only the root context is left");
}

#[test]
fn headers_plugin_rejects_bad_json() {
    let (res, host) = try_start(test_plugins::HEADERS, "{not json");
    match res {
        Err(Error::Rejected { callback, .. }) => assert_eq!(callback, "proxy_on_configure"),
        Err(e) => panic!("expected a rejected configuration, got {e}"),
        Ok(_) => panic!("bad JSON must be rejected"),
    }
    assert!(
        host.logs_at(LogLevel::Error)
            .iter()
            .any(|l| l.contains("invalid plugin configuration")),
        "logs: {}",
        host.all_logs()
    );
}

#[test]
fn auth_plugin_denies_with_local_reply_and_allows_matching_key() {
    let (mut vm, _) = start(
        test_plugins::AUTH,
        r#"{"header":"x-api-key","value":"secret"}"#,
    );
    let denied = new_stream(&mut vm, request_headers("/", &[("x-api-key", "wrong")]));
    assert_eq!(
        vm.on_request_headers(denied, true).expect("call"),
        HeadersAction::StopAllWatermark
    );
    let effects = vm.take_effects();
    let reply = local_reply(&effects, denied).expect("local reply");
    assert_eq!(reply.status, 401);
    assert_eq!(reply.body, b"unauthorized\n");
    assert_eq!(reply.grpc_status, None);
    assert_eq!(
        reply.headers,
        vec![
            (b"www-authenticate".to_vec(), b"ApiKey".to_vec()),
            (b"content-type".to_vec(), b"text/plain".to_vec())
        ]
    );

    let allowed = new_stream(&mut vm, request_headers("/", &[("x-api-key", "secret")]));
    assert_eq!(
        vm.on_request_headers(allowed, true).expect("call"),
        HeadersAction::Continue
    );
    assert!(vm.take_effects().is_empty());
    vm.complete(denied).expect("complete");
    vm.complete(allowed).expect("complete");
}

#[test]
fn body_rewrite_buffers_until_end_of_stream_then_replaces() {
    let (mut vm, _) = start(
        test_plugins::BODY_REWRITE,
        r#"{"request":{"from":"cat","to":"dog"},"response":{"from":"hello","to":"bye"}}"#,
    );
    let mut req = request_headers("/", &[("content-length", "17")]);
    req.replace(b":method", b"POST");
    let ctx = new_stream(&mut vm, req);
    assert_eq!(
        vm.on_request_headers(ctx, false).expect("call"),
        HeadersAction::Continue
    );
    assert_eq!(
        vm.map(ctx, MapType::RequestHeaders)
            .and_then(|m| m.get(b"content-length")),
        None
    );
    vm.set_buffer(ctx, BufferType::HttpRequestBody, b"a cat and ".to_vec())
        .expect("set");
    assert_eq!(
        vm.on_request_body(ctx, false).expect("call"),
        DataAction::StopAndBuffer
    );
    vm.append_buffer(ctx, BufferType::HttpRequestBody, b"a cat")
        .expect("append");
    assert_eq!(
        vm.on_request_body(ctx, true).expect("call"),
        DataAction::Continue
    );
    assert_eq!(
        vm.take_buffer(ctx, BufferType::HttpRequestBody)
            .expect("body"),
        b"a dog and a dog"
    );

    vm.set_map(ctx, MapType::ResponseHeaders, response_headers("200"))
        .expect("set");
    assert_eq!(
        vm.on_response_headers(ctx, false).expect("call"),
        HeadersAction::Continue
    );
    assert_eq!(
        vm.map(ctx, MapType::ResponseHeaders)
            .and_then(|m| m.get(b"content-length")),
        None
    );
    vm.set_buffer(ctx, BufferType::HttpResponseBody, b"hello hello".to_vec())
        .expect("set");
    assert_eq!(
        vm.on_response_body(ctx, true).expect("call"),
        DataAction::Continue
    );
    assert_eq!(
        vm.take_buffer(ctx, BufferType::HttpResponseBody)
            .expect("body"),
        b"bye bye"
    );
}

#[test]
fn callout_pauses_then_resumes_with_headers_from_the_answer() {
    let host = TestHost {
        clusters: vec!["auth".into()],
        ..Default::default()
    };
    let cfg = config(
        test_plugins::CALLOUT,
        r#"{"cluster":"auth","path":"/check","authority":"auth.local","timeout_ms":250}"#,
    );
    let (mut vm, host) = start_with(test_plugins::CALLOUT, cfg, host);
    let ctx = new_stream(&mut vm, request_headers("/orig?q=1", &[]));
    assert_eq!(
        vm.on_request_headers(ctx, true).expect("call"),
        HeadersAction::StopAllWatermark
    );
    let call = host.record.borrow_mut().calls.pop().expect("dispatched");
    assert_eq!(call.upstream, "auth");
    assert_eq!(call.headers.get_str(":path"), Some("/check"));
    assert_eq!(call.headers.get_str(":authority"), Some("auth.local"));
    assert_eq!(call.headers.get_str("x-original-path"), Some("/orig?q=1"));
    assert_eq!(call.timeout, Some(std::time::Duration::from_millis(250)));
    assert_eq!(call.root_context_id, vm.root_context_id());
    assert_eq!(call.origin_context_id, ctx);

    let answer = HttpCallResponse {
        headers: HeaderMap::from_entries([(":status", "200"), ("x-user", "alice")]),
        body: b"ok".to_vec(),
        trailers: HeaderMap::new(),
    };
    vm.on_http_call_response(call.token, Some(answer))
        .expect("callback");
    let effects = vm.take_effects();
    assert_eq!(
        effects,
        vec![Effect::Continue {
            context_id: ctx,
            stream: StreamType::HttpRequest
        }]
    );
    let req = vm.take_map(ctx, MapType::RequestHeaders).expect("headers");
    assert_eq!(req.get_str("x-auth-checked"), Some("yes"));
    assert_eq!(req.get_str("x-user"), Some("alice"));
    assert_eq!(vm.pending_calls(), 0);
}

#[test]
fn callout_denies_on_failure_and_on_unknown_cluster() {
    let host = TestHost {
        clusters: vec!["auth".into()],
        ..Default::default()
    };
    let (mut vm, host) = start_with(
        test_plugins::CALLOUT,
        config(test_plugins::CALLOUT, r#"{"cluster":"auth"}"#),
        host,
    );
    let ctx = new_stream(&mut vm, request_headers("/", &[]));
    vm.on_request_headers(ctx, true).expect("call");
    let token = host.record.borrow().calls[0].token;
    vm.on_http_call_response(token, None).expect("callback");
    let reply = local_reply(&vm.take_effects(), ctx).expect("403");
    assert_eq!(reply.status, 403);
    assert_eq!(
        reply.headers,
        vec![(b"x-callout-status".to_vec(), b"none".to_vec())]
    );
    assert_eq!(reply.body, b"denied by callout\n");
    // the same token again is ignored (already delivered)
    vm.on_http_call_response(token, None)
        .expect("stale token ignored");
    assert!(vm.take_effects().is_empty());

    let (mut vm, host) = start(test_plugins::CALLOUT, r#"{"cluster":"missing"}"#);
    let ctx = new_stream(&mut vm, request_headers("/", &[]));
    vm.on_request_headers(ctx, true).expect("call");
    let reply = local_reply(&vm.take_effects(), ctx).expect("500");
    assert_eq!(reply.status, 500);
    assert!(
        host.logs_at(LogLevel::Warn)
            .iter()
            .any(|l| l.contains("dispatch_http_call to cluster \"missing\" failed"))
    );
}

#[test]
fn tick_updates_shared_data_read_by_streams() {
    let mut cfg = config(test_plugins::TICK_SHARED, r#"{"tick_ms":20}"#);
    cfg.vm_id = "tick-test".into();
    let (mut vm, _) = start_with(test_plugins::TICK_SHARED, cfg.clone(), TestHost::default());
    assert_eq!(vm.tick_period(), Some(std::time::Duration::from_millis(20)));
    // a second VM of the same vm_id (another worker) shares the data
    let (mut vm2, _) = start_with(test_plugins::TICK_SHARED, cfg, TestHost::default());
    for _ in 0..3 {
        vm.on_tick().expect("tick");
    }
    vm2.on_tick().expect("tick");
    let ctx = new_stream(&mut vm2, request_headers("/", &[]));
    vm2.on_request_headers(ctx, true).expect("call");
    vm2.set_map(ctx, MapType::ResponseHeaders, response_headers("200"))
        .expect("set");
    vm2.on_response_headers(ctx, true).expect("call");
    assert_eq!(
        header(vm2.map(ctx, MapType::ResponseHeaders), "x-tick-count").as_deref(),
        Some("4")
    );
    assert_eq!(
        runtime()
            .shared()
            .get("tick-test", b"tick_shared.count")
            .map(|v| v.0),
        Some(b"4".to_vec())
    );
}

#[test]
fn queue_carries_paths_from_streams_to_the_root() {
    let mut cfg = config(test_plugins::QUEUE, "");
    cfg.vm_id = "queue-test".into();
    let (mut vm, host) = start_with(test_plugins::QUEUE, cfg, TestHost::default());
    for path in ["/one", "/two"] {
        let ctx = new_stream(&mut vm, request_headers(path, &[]));
        vm.on_request_headers(ctx, true).expect("call");
        vm.complete(ctx).expect("complete");
    }
    // the host was told twice; deliver as the proxy's worker would
    let notes: Vec<(u32, u32)> = host.notes.0.lock().expect("lock").drain(..).collect();
    assert_eq!(notes.len(), 2);
    assert!(notes.iter().all(|(root, _)| *root == vm.root_context_id()));
    vm.on_queue_ready(notes[0].0, notes[0].1)
        .expect("queue ready");
    let ctx = new_stream(&mut vm, request_headers("/three", &[]));
    vm.set_map(ctx, MapType::ResponseHeaders, response_headers("200"))
        .expect("set");
    vm.on_response_headers(ctx, true).expect("call");
    let resp = vm.map(ctx, MapType::ResponseHeaders).expect("headers");
    assert_eq!(
        resp.get_str("x-queue-count"),
        Some("2"),
        "one notification drains every item"
    );
    assert_eq!(resp.get_str("x-queue-last"), Some("/two"));
}

#[test]
fn metrics_counter_gauge_histogram() {
    let (mut vm, _) = start(test_plugins::METRICS, "");
    let metrics = runtime().metrics().clone();
    let value = |name: &str| {
        metrics
            .snapshot()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    };
    let before = match value("wasmesh_requests_total") {
        Some(MetricValue::Counter(c)) => c,
        _ => 0,
    };
    let ctx = new_stream(&mut vm, request_headers("/", &[]));
    vm.on_request_headers(ctx, false).expect("call");
    vm.set_buffer(ctx, BufferType::HttpRequestBody, vec![0; 700])
        .expect("set");
    vm.on_request_body(ctx, true).expect("call");
    vm.set_map(ctx, MapType::ResponseHeaders, response_headers("200"))
        .expect("set");
    vm.on_response_headers(ctx, true).expect("call");
    let total: u64 = header(vm.map(ctx, MapType::ResponseHeaders), "x-requests-total")
        .expect("header")
        .parse()
        .expect("number");
    assert!(total > before, "counter went up: {before} -> {total}");
    vm.complete(ctx).expect("complete");
    let Some(MetricValue::Histogram { count, sum, .. }) = value("wasmesh_request_body_bytes")
    else {
        panic!("histogram missing");
    };
    assert!(count >= 1 && sum >= 700, "count {count} sum {sum}");
    assert!(matches!(
        value("wasmesh_inflight"),
        Some(MetricValue::Gauge(_))
    ));
}

#[test]
fn properties_come_from_headers_plugin_config_node_and_stream() {
    let (mut vm, _) = start(test_plugins::PROPERTIES, "");
    let ctx = new_stream(&mut vm, request_headers("/p?x=1", &[]));
    vm.on_request_headers(ctx, true).expect("call");
    vm.set_map(ctx, MapType::ResponseHeaders, response_headers("200"))
        .expect("set");
    vm.on_response_headers(ctx, true).expect("call");
    let resp = vm.take_map(ctx, MapType::ResponseHeaders).expect("headers");
    let get = |k: &str| resp.get_str(k).map(str::to_string);
    assert_eq!(get("x-prop-request-path").as_deref(), Some("/p?x=1"));
    assert_eq!(get("x-prop-request-method").as_deref(), Some("GET"));
    assert_eq!(get("x-prop-request-host").as_deref(), Some("example.com"));
    assert_eq!(
        get("x-prop-source-address").as_deref(),
        Some("10.1.2.3:5555")
    );
    assert_eq!(get("x-prop-destination-port").as_deref(), Some("8080"));
    assert_eq!(
        get("x-prop-plugin-name").as_deref(),
        Some("test.properties")
    );
    assert_eq!(get("x-prop-plugin-root-id").as_deref(), Some("properties"));
    assert_eq!(
        get("x-prop-node-id").as_deref(),
        Some("sidecar~10.0.0.1~app-1.demo~demo.svc.cluster.local")
    );
    assert_eq!(get("x-prop-node-namespace").as_deref(), Some("demo"));
}

#[test]
fn logging_at_every_level_and_stdout() {
    let (mut vm, host) = start(test_plugins::LOGGING, "");
    let ctx = new_stream(&mut vm, request_headers("/log", &[]));
    vm.on_request_headers(ctx, true).expect("call");
    for level in [
        LogLevel::Trace,
        LogLevel::Debug,
        LogLevel::Info,
        LogLevel::Warn,
        LogLevel::Error,
        LogLevel::Critical,
    ] {
        let lines = host.logs_at(level);
        for msg in ["vm start", "configure", "request headers: /log"] {
            assert!(
                lines.iter().any(|l| l == msg),
                "{level:?} missing {msg:?}; logs:\n{}",
                host.all_logs()
            );
        }
    }
    assert!(
        host.logs_at(LogLevel::Info)
            .iter()
            .any(|l| l == "stdout: request headers: /log"),
        "stdout line, newline stripped:\n{}",
        host.all_logs()
    );
}

#[test]
fn abi_0_1_0_plugin_runs() {
    let (mut vm, _) = start(test_plugins::ABI010, "");
    assert_eq!(vm.plugin().module().abi(), wasm_host::AbiVersion::V0_1_0);
    let ctx = new_stream(&mut vm, request_headers("/", &[]));
    assert_eq!(
        vm.on_request_headers(ctx, true).expect("call"),
        HeadersAction::Continue
    );
    assert_eq!(
        header(vm.map(ctx, MapType::RequestHeaders), "x-abi").as_deref(),
        Some("0.1.0")
    );
    vm.set_map(ctx, MapType::ResponseHeaders, response_headers("200"))
        .expect("set");
    vm.on_response_headers(ctx, true).expect("call");
    assert_eq!(
        header(vm.map(ctx, MapType::ResponseHeaders), "x-abi").as_deref(),
        Some("0.1.0")
    );
}

#[test]
fn assemblyscript_plugin_runs() {
    let mut cfg = config(test_plugins::AS_ADD_HEADER, "");
    cfg.root_id = "add_header".into();
    let (mut vm, host) = start_with(test_plugins::AS_ADD_HEADER, cfg, TestHost::default());
    assert_eq!(vm.plugin().module().abi(), wasm_host::AbiVersion::V0_2_0);
    let ctx = new_stream(&mut vm, request_headers("/", &[]));
    assert_eq!(
        vm.on_request_headers(ctx, true).expect("call"),
        HeadersAction::Continue,
        "{}",
        host.all_logs()
    );
    assert_eq!(
        header(vm.map(ctx, MapType::RequestHeaders), "x-sdk").as_deref(),
        Some("assemblyscript")
    );
    vm.set_map(ctx, MapType::ResponseHeaders, response_headers("200"))
        .expect("set");
    vm.on_response_headers(ctx, true).expect("call");
    assert_eq!(
        header(vm.map(ctx, MapType::ResponseHeaders), "x-sdk").as_deref(),
        Some("assemblyscript")
    );
    vm.complete(ctx).expect("complete");
}

#[test]
fn tcp_counter_counts_and_closes_on_denied_prefix() {
    let (mut vm, host) = start(test_plugins::TCP_COUNTER, r#"{"deny_prefix":"BAD"}"#);
    let (ok, action) = vm.new_tcp_context(Box::new(Props)).expect("conn");
    assert_eq!(action, FilterAction::Continue);
    vm.set_buffer(ok, BufferType::DownstreamData, b"GOOD data".to_vec())
        .expect("set");
    assert_eq!(
        vm.on_downstream_data(ok, false).expect("call"),
        FilterAction::Continue
    );
    vm.set_buffer(ok, BufferType::UpstreamData, b"reply".to_vec())
        .expect("set");
    assert_eq!(
        vm.on_upstream_data(ok, false).expect("call"),
        FilterAction::Continue
    );
    vm.on_downstream_close(ok, PeerType::Remote).expect("close");
    assert!(
        host.logs_at(LogLevel::Info)
            .iter()
            .any(|l| l == "connection closed: down=9 up=5"),
        "{}",
        host.all_logs()
    );
    vm.complete(ok).expect("complete");

    let (bad, _) = vm.new_tcp_context(Box::new(Props)).expect("conn");
    vm.set_buffer(bad, BufferType::DownstreamData, b"BAD stuff".to_vec())
        .expect("set");
    assert_eq!(
        vm.on_downstream_data(bad, false).expect("call"),
        FilterAction::Stop
    );
    assert_eq!(
        vm.take_effects(),
        vec![Effect::Close {
            context_id: bad,
            stream: StreamType::Downstream
        }]
    );
    let counters = runtime().metrics().snapshot();
    let get = |n: &str| {
        counters
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    assert!(
        matches!(get("tcp_counter_downstream_bytes"), Some(MetricValue::Counter(c)) if c >= 18)
    );
    assert!(matches!(get("tcp_counter_connections"), Some(MetricValue::Counter(c)) if c >= 2));
}

#[test]
fn trial_reports_what_the_plugin_did() {
    use wasm_host::trial::{TrialInput, run};
    let plugin = plugin_with(
        test_plugins::CALLOUT,
        config(test_plugins::CALLOUT, r#"{"cluster":"auth"}"#),
    );
    let input = TrialInput {
        request_headers: request_headers("/x", &[]),
        response_headers: response_headers("200"),
        callout_response: Some(HttpCallResponse {
            headers: HeaderMap::from_entries([(":status", "200"), ("x-user", "bob")]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let report = run(&plugin, &input);
    assert!(report.failure.is_none(), "{report}");
    assert_eq!(report.callouts.len(), 1);
    assert_eq!(report.request.headers_after.get_str("x-user"), Some("bob"));
    assert!(report.local_reply.is_none());
    let text = report.to_string();
    assert!(
        text.contains("+ x-user: bob") && text.contains("callout to cluster \"auth\""),
        "{text}"
    );

    let denied = run(
        &plugin,
        &TrialInput {
            callout_response: None,
            ..input
        },
    );
    assert_eq!(denied.local_reply.as_ref().map(|r| r.status), Some(403));
    assert!(denied.response.is_none());
}

/// Properties whose final request headers are handed over only when the VM asks.
struct LazyHeaders {
    asked: std::rc::Rc<std::cell::Cell<u32>>,
}

impl StreamProperties for LazyHeaders {
    fn get(&self, _path: &[&[u8]]) -> Option<PropertyValue> {
        None
    }

    fn headers(&self, map: MapType) -> Option<HeaderMap> {
        self.asked.set(self.asked.get() + 1);
        (map == MapType::RequestHeaders)
            .then(|| request_headers("/final", &[("x-bench-in", "from-the-proxy")]))
    }
}

#[test]
fn a_lazy_map_is_built_only_when_the_plugin_reads_it() {
    let (mut vm, _host) = start(test_plugins::BENCH_RW, "");
    let asked = std::rc::Rc::new(std::cell::Cell::new(0));
    let ctx = vm
        .new_http_context(Box::new(LazyHeaders {
            asked: asked.clone(),
        }))
        .expect("context");
    vm.set_map_lazy(ctx, MapType::RequestHeaders).expect("lazy");
    vm.set_map_lazy(ctx, MapType::ResponseHeaders)
        .expect("lazy");
    assert_eq!(asked.get(), 0, "nothing built before the plugin runs");
    vm.on_request_headers(ctx, true).expect("runs");
    // bench_rw reads x-bench-in and adds x-bench-out: both on the map built on demand.
    let map = vm
        .map(ctx, MapType::RequestHeaders)
        .expect("built on first read");
    assert_eq!(
        header(Some(map), "x-bench-out").as_deref(),
        Some("from-the-proxy")
    );
    assert_eq!(header(Some(map), ":path").as_deref(), Some("/final"));
    assert_eq!(
        asked.get(),
        2,
        "each lazy map of the context built once, on first use"
    );
    assert!(vm.map(ctx, MapType::ResponseHeaders).is_none());
    // A map set eagerly afterwards replaces the lazy one.
    vm.set_map(ctx, MapType::RequestHeaders, request_headers("/x", &[]))
        .expect("set");
    vm.on_request_headers(ctx, true).expect("runs");
    assert_eq!(asked.get(), 2, "no lazy map left to build");
    let map = vm.map(ctx, MapType::RequestHeaders).expect("set");
    assert_eq!(header(Some(map), "x-bench-out").as_deref(), Some("none"));
}

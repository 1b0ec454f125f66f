//! A recording host and helpers to drive plugins like the proxy does.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex, OnceLock};

use wasm_host::{
    Effect, Error, HeaderMap, Host, HttpCall, LogLevel, MapType, NodeInfo, Plugin, PluginConfig,
    PluginVm, PropertyValue, QueueNotifier, Runtime, RuntimeConfig, Status, StreamProperties,
};

/// One runtime for the whole test binary (modules compile once).
pub(crate) fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| Runtime::new(RuntimeConfig::default()).expect("runtime"))
}

#[derive(Default)]
pub(crate) struct Record {
    pub(crate) logs: Vec<(LogLevel, String)>,
    pub(crate) calls: Vec<HttpCall>,
    pub(crate) grpc_calls: Vec<wasm_host::GrpcCall>,
}

/// Queue notifications, shared across threads like the proxy's would be.
#[derive(Default)]
pub(crate) struct Notes(pub(crate) Mutex<Vec<(u32, u32)>>);

impl QueueNotifier for Notes {
    fn notify(&self, root: u32, queue: u32) {
        self.0.lock().expect("lock").push((root, queue));
    }
}

#[derive(Clone, Default)]
pub(crate) struct TestHost {
    pub(crate) record: Rc<RefCell<Record>>,
    pub(crate) notes: Arc<Notes>,
    /// Clusters that exist for `proxy_http_call`.
    pub(crate) clusters: Vec<String>,
}

impl Host for TestHost {
    fn log(&mut self, _plugin: &str, level: LogLevel, message: &str) {
        self.record
            .borrow_mut()
            .logs
            .push((level, message.to_string()));
    }

    fn log_level(&self) -> LogLevel {
        LogLevel::Trace
    }

    fn dispatch_http_call(&mut self, call: HttpCall) -> Result<(), Status> {
        if !self.clusters.contains(&call.upstream) {
            return Err(Status::BadArgument);
        }
        self.record.borrow_mut().calls.push(call);
        Ok(())
    }

    fn dispatch_grpc_call(&mut self, call: wasm_host::GrpcCall) -> Result<(), Status> {
        if call.upstream != b"grpc-cluster" {
            return Err(Status::ParseFailure);
        }
        self.record.borrow_mut().grpc_calls.push(call);
        Ok(())
    }

    fn queue_notifier(&self) -> Option<Arc<dyn QueueNotifier>> {
        Some(self.notes.clone())
    }
}

impl TestHost {
    pub(crate) fn logs_at(&self, level: LogLevel) -> Vec<String> {
        self.record
            .borrow()
            .logs
            .iter()
            .filter(|(l, _)| *l == level)
            .map(|(_, m)| m.clone())
            .collect()
    }

    pub(crate) fn all_logs(&self) -> String {
        self.record
            .borrow()
            .logs
            .iter()
            .map(|(l, m)| format!("{l:?}: {m}\n"))
            .collect()
    }
}

/// Stream properties the proxy would provide.
pub(crate) struct Props;

impl StreamProperties for Props {
    fn get(&self, path: &[&[u8]]) -> Option<PropertyValue> {
        match path {
            [b"source", b"address"] => Some(PropertyValue::string("10.1.2.3:5555")),
            [b"destination", b"port"] => Some(PropertyValue::Int(8080)),
            _ => None,
        }
    }
}

pub(crate) fn node() -> Arc<NodeInfo> {
    Arc::new(NodeInfo {
        id: "sidecar~10.0.0.1~app-1.demo~demo.svc.cluster.local".into(),
        cluster: "app.demo".into(),
        metadata: vec![("NAMESPACE".into(), PropertyValue::string("demo"))],
        proto: vec![],
    })
}

pub(crate) fn config(name: &str, configuration: &str) -> PluginConfig {
    PluginConfig {
        name: format!("test.{name}"),
        root_id: name.to_string(),
        vm_id: format!("vm-{name}"),
        configuration: configuration.as_bytes().to_vec(),
        node: node(),
        ..Default::default()
    }
}

pub(crate) fn plugin_with(name: &str, cfg: PluginConfig) -> Arc<Plugin> {
    let bytes = test_plugins::bytes(name);
    let module = runtime()
        .compile(&bytes)
        .unwrap_or_else(|e| panic!("compile {name}: {e}"));
    Plugin::new(runtime(), module, cfg)
}

pub(crate) fn start(name: &str, configuration: &str) -> (PluginVm, TestHost) {
    start_with(name, config(name, configuration), TestHost::default())
}

pub(crate) fn start_with(name: &str, cfg: PluginConfig, host: TestHost) -> (PluginVm, TestHost) {
    let plugin = plugin_with(name, cfg);
    let vm = plugin
        .instantiate(Box::new(host.clone()))
        .unwrap_or_else(|e| panic!("instantiate {name}: {e}\nplugin logs:\n{}", host.all_logs()));
    (vm, host)
}

pub(crate) fn try_start(name: &str, configuration: &str) -> (Result<PluginVm, Error>, TestHost) {
    let host = TestHost::default();
    let plugin = plugin_with(name, config(name, configuration));
    (plugin.instantiate(Box::new(host.clone())), host)
}

pub(crate) fn request_headers(path: &str, extra: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::from_entries([
        (":method", "GET"),
        (":path", path),
        (":authority", "example.com"),
        (":scheme", "http"),
    ]);
    for (k, v) in extra {
        h.add(k.as_bytes(), v.as_bytes());
    }
    h
}

pub(crate) fn response_headers(status: &str) -> HeaderMap {
    HeaderMap::from_entries([
        (":status", status),
        ("content-type", "text/plain"),
        ("content-length", "5"),
    ])
}

/// New HTTP context with the given request headers set.
pub(crate) fn new_stream(vm: &mut PluginVm, headers: HeaderMap) -> u32 {
    let ctx = vm.new_http_context(Box::new(Props)).expect("context");
    vm.set_map(ctx, MapType::RequestHeaders, headers)
        .expect("set map");
    ctx
}

pub(crate) fn header(map: Option<&HeaderMap>, key: &str) -> Option<String> {
    map.and_then(|m| m.get_str(key)).map(str::to_string)
}

pub(crate) fn local_reply(effects: &[Effect], ctx: u32) -> Option<wasm_host::LocalReply> {
    effects.iter().find_map(|e| match e {
        Effect::LocalReply { context_id, reply } if *context_id == ctx => Some(reply.clone()),
        _ => None,
    })
}

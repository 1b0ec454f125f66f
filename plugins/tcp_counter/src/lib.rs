//! `tcp_counter`: a network (L4) filter that counts connections and bytes in both
//! directions and closes connections whose first bytes start with a denied prefix.
//! Behaviour and configuration: plugins/README.md.

use log::{error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, RootContext, StreamContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, PeerType};
use serde::Deserialize;
use std::cell::OnceCell;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(TcpRoot { config: Rc::default(), ids: OnceCell::new() })
    });
}}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    deny_prefix: Option<String>,
    /// `[key, value]`: set with the `set_envoy_filter_state` foreign function at each new
    /// connection (e.g. `["envoy.tcp_proxy.cluster", "b"]` routes the TCP proxy to `b`).
    filter_state: Option<(String, String)>,
}

/// Envoy's `SetEnvoyFilterStateArguments {string path = 1; string value = 2;}`, encoded.
fn filter_state_args(key: &str, value: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, s) in [(0x0a_u8, key), (0x12, value)] {
        out.push(tag);
        let mut n = s.len();
        while n >= 0x80 {
            out.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out.extend_from_slice(s.as_bytes());
    }
    out
}

#[derive(Debug, Clone, Copy)]
struct MetricIds {
    downstream_bytes: u32,
    upstream_bytes: u32,
    connections: u32,
}

impl MetricIds {
    fn define() -> Self {
        let counter =
            |name| hostcalls::define_metric(MetricType::Counter, name).unwrap_or_default();
        MetricIds {
            downstream_bytes: counter("tcp_counter_downstream_bytes"),
            upstream_bytes: counter("tcp_counter_upstream_bytes"),
            connections: counter("tcp_counter_connections"),
        }
    }
}

fn add(metric_id: u32, n: usize) {
    // Counters reject a zero delta (BadArgument), and an empty read is not news.
    if n > 0 {
        if let Err(status) = hostcalls::increment_metric(metric_id, n as i64) {
            warn!("tcp_counter: increment_metric({metric_id}) failed: {status:?}");
        }
    }
}

struct TcpRoot {
    config: Rc<Config>,
    ids: OnceCell<MetricIds>,
}

impl Context for TcpRoot {}

impl RootContext for TcpRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        self.ids.get_or_init(MetricIds::define);
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        let raw = if raw.is_empty() { &b"{}"[..] } else { &raw[..] };
        match serde_json::from_slice::<Config>(raw) {
            Ok(config) => {
                self.config = Rc::new(config);
                true
            }
            Err(err) => {
                error!("tcp_counter: invalid plugin configuration: {err}");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::StreamContext)
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        let ids = *self.ids.get_or_init(MetricIds::define);
        Some(Box::new(TcpCounter {
            config: Rc::clone(&self.config),
            ids,
            down: 0,
            up: 0,
            seen_first_data: false,
        }))
    }
}

struct TcpCounter {
    config: Rc<Config>,
    ids: MetricIds,
    down: u64,
    up: u64,
    seen_first_data: bool,
}

impl Context for TcpCounter {}

impl StreamContext for TcpCounter {
    fn on_new_connection(&mut self) -> Action {
        add(self.ids.connections, 1);
        if let Some((key, value)) = &self.config.filter_state {
            let args = filter_state_args(key, value);
            let result =
                hostcalls::call_foreign_function("set_envoy_filter_state", Some(&args));
            match result {
                Ok(_) => info!("tcp_counter: filter state {key}={value}: Ok"),
                Err(status) => info!("tcp_counter: filter state {key}={value}: {status:?}"),
            }
        }
        Action::Continue
    }

    fn on_downstream_data(&mut self, data_size: usize, _end_of_stream: bool) -> Action {
        self.down += data_size as u64;
        add(self.ids.downstream_bytes, data_size);
        if !self.seen_first_data && data_size > 0 {
            self.seen_first_data = true;
            if let Some(prefix) = self.config.deny_prefix.as_deref() {
                let data = self.get_downstream_data(0, data_size).unwrap_or_default();
                if data.starts_with(prefix.as_bytes()) {
                    warn!("tcp_counter: closing connection: data starts with denied prefix {prefix:?}");
                    self.close_downstream();
                    return Action::Pause;
                }
            }
        }
        Action::Continue
    }

    fn on_upstream_data(&mut self, data_size: usize, _end_of_stream: bool) -> Action {
        self.up += data_size as u64;
        add(self.ids.upstream_bytes, data_size);
        Action::Continue
    }

    fn on_downstream_close(&mut self, peer_type: PeerType) {
        info!("connection closed: down={} up={}", self.down, self.up);
        let who = match peer_type {
            PeerType::Local => "local",
            PeerType::Remote => "remote",
            _ => "unknown",
        };
        let name = format!("tcp_counter_closed_{who}");
        if let Ok(id) = proxy_wasm::hostcalls::define_metric(MetricType::Counter, &name) {
            let _ = proxy_wasm::hostcalls::increment_metric(id, 1);
        }
    }
}

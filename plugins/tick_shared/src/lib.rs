//! `tick_shared`: a timer in the root context increments a counter in shared data; every
//! response reports it. Behaviour and configuration: plugins/README.md.

use log::{error, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, Status};
use serde::Deserialize;
use std::time::Duration;

const KEY: &str = "tick_shared.count";
const DEFAULT_TICK_MS: u64 = 100;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(TickRoot { tick_ms: DEFAULT_TICK_MS })
    });
}}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    tick_ms: Option<u64>,
}

fn parse(what: &str, raw: Option<Vec<u8>>) -> Result<Config, ()> {
    let raw = raw.unwrap_or_default();
    if raw.is_empty() {
        return Ok(Config::default());
    }
    serde_json::from_slice(&raw).map_err(|err| error!("tick_shared: invalid {what}: {err}"))
}

struct TickRoot {
    tick_ms: u64,
}

impl Context for TickRoot {
    /// The VM is going away: counts it in shared data key `tick_shared.done`.
    fn on_done(&mut self) -> bool {
        loop {
            let (value, cas) = self.get_shared_data(DONE_KEY);
            let n = value
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            match self.set_shared_data(DONE_KEY, Some((n + 1).to_string().as_bytes()), cas) {
                Err(Status::CasMismatch) => continue,
                _ => return true,
            }
        }
    }
}

/// Root contexts told the plugin is going away (`proxy_on_done` on the root).
const DONE_KEY: &str = "tick_shared.done";

impl RootContext for TickRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        // A missing key has no CAS to guard it: two VMs that both found `on_done`'s key absent
        // would both write "1". The main thread's VM starts before any worker's (in Envoy and
        // in wasmesh), so the key exists before two VMs can race on it.
        if let (None, _) = self.get_shared_data(DONE_KEY) {
            let _ = self.set_shared_data(DONE_KEY, Some(b"0"), None);
        }
        let Ok(config) = parse("vm configuration", self.get_vm_configuration()) else {
            return false;
        };
        if let Some(ms) = config.tick_ms {
            self.tick_ms = ms;
        }
        self.set_tick_period(Duration::from_millis(self.tick_ms));
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Ok(config) = parse("plugin configuration", self.get_plugin_configuration()) else {
            return false;
        };
        if let Some(ms) = config.tick_ms {
            self.tick_ms = ms;
        }
        self.set_tick_period(Duration::from_millis(self.tick_ms));
        true
    }

    fn on_tick(&mut self) {
        // Compare-and-swap loop: VMs on other workers increment the same key.
        loop {
            let (value, cas) = self.get_shared_data(KEY);
            let n = value
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            match self.set_shared_data(KEY, Some((n + 1).to_string().as_bytes()), cas) {
                Ok(()) => return,
                Err(Status::CasMismatch) => continue,
                Err(status) => {
                    warn!("tick_shared: set_shared_data({KEY}) failed: {status:?}");
                    return;
                }
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(TickHttp))
    }
}

struct TickHttp;

impl Context for TickHttp {}

impl HttpContext for TickHttp {
    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let value = self.get_shared_data(KEY).0.unwrap_or_else(|| b"0".to_vec());
        self.add_http_response_header_bytes("x-tick-count", &value);
        Action::Continue
    }
}

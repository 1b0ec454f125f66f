//! `headers`: adds, replaces and removes request and response headers as configured.
//! Behaviour and configuration: plugins/README.md.

use log::error;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(HeadersRoot { config: Rc::default() })
    });
}}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    request_add: BTreeMap<String, String>,
    request_remove: Vec<String>,
    request_replace: BTreeMap<String, String>,
    response_add: BTreeMap<String, String>,
    response_remove: Vec<String>,
    response_replace: BTreeMap<String, String>,
    /// Report what `on_log` saw: see plugins/README.md.
    log_view: bool,
}

/// Shared-data key of the `log_view` report.
const LAST_LOG: &str = "headers.last_log";

struct HeadersRoot {
    config: Rc<Config>,
}

impl Context for HeadersRoot {}

impl RootContext for HeadersRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        let raw = if raw.is_empty() { &b"{}"[..] } else { &raw[..] };
        match serde_json::from_slice::<Config>(raw) {
            Ok(config) => {
                self.config = Rc::new(config);
                true
            }
            Err(err) => {
                error!("headers: invalid plugin configuration: {err}");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Headers {
            config: Rc::clone(&self.config),
        }))
    }
}

struct Headers {
    config: Rc<Config>,
}

impl Context for Headers {}

impl HttpContext for Headers {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let c = &self.config;
        for name in &c.request_remove {
            self.set_http_request_header(name, None);
        }
        for (name, value) in &c.request_replace {
            self.set_http_request_header(name, Some(value));
        }
        for (name, value) in &c.request_add {
            self.add_http_request_header(name, value);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let c = &self.config;
        if c.log_view {
            if let (Some(last), _) = self.get_shared_data(LAST_LOG) {
                self.add_http_response_header("x-last-log", &String::from_utf8_lossy(&last));
            }
        }
        for name in &c.response_remove {
            self.set_http_response_header(name, None);
        }
        for (name, value) in &c.response_replace {
            self.set_http_response_header(name, Some(value));
        }
        for (name, value) in &c.response_add {
            self.add_http_response_header(name, value);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if !self.config.log_view {
            return;
        }
        let names = |pairs: Vec<(String, String)>| {
            let mut n: Vec<String> = pairs.into_iter().map(|(k, _)| k).collect();
            n.sort();
            n.join(",")
        };
        let status = self.get_http_response_header(":status").unwrap_or_default();
        let report = format!(
            "status={status};request={};response={}",
            names(self.get_http_request_headers()),
            names(self.get_http_response_headers())
        );
        if let Err(e) = self.set_shared_data(LAST_LOG, Some(report.as_bytes()), None) {
            error!("headers: set_shared_data failed: {e:?}");
        }
    }
}

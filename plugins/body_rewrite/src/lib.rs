//! `body_rewrite`: buffers the whole request and/or response body and replaces every
//! occurrence of a byte string. Behaviour and configuration: plugins/README.md.

use log::error;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(BodyRewriteRoot { config: Rc::default() })
    });
}}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rewrite {
    from: String,
    to: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    request: Option<Rewrite>,
    response: Option<Rewrite>,
    /// When set, the headers of a side with a rewrite and a body are held (Pause) until the
    /// body is complete, then this header is added with the number of replacements.
    count_header: Option<String>,
}

/// Replaces every non-overlapping occurrence of `from`, left to right (like `str::replace`,
/// but on bytes so a body that is not UTF-8 is still handled); also says how many it replaced.
fn replace_all(haystack: &[u8], from: &[u8], to: &[u8]) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    let mut n = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
            n += 1;
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    (out, n)
}

struct BodyRewriteRoot {
    config: Rc<Config>,
}

impl Context for BodyRewriteRoot {}

impl RootContext for BodyRewriteRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        let raw = if raw.is_empty() { &b"{}"[..] } else { &raw[..] };
        let config = match serde_json::from_slice::<Config>(raw) {
            Ok(config) => config,
            Err(err) => {
                error!("body_rewrite: invalid plugin configuration: {err}");
                return false;
            }
        };
        for (side, rewrite) in [("request", &config.request), ("response", &config.response)] {
            if rewrite.as_ref().is_some_and(|r| r.from.is_empty()) {
                error!("body_rewrite: invalid plugin configuration: {side}.from is empty");
                return false;
            }
        }
        self.config = Rc::new(config);
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(BodyRewrite {
            config: Rc::clone(&self.config),
        }))
    }
}

struct BodyRewrite {
    config: Rc<Config>,
}

impl Context for BodyRewrite {}

impl HttpContext for BodyRewrite {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.config.request.is_some() {
            self.set_http_request_header("content-length", None);
            if self.config.count_header.is_some() && !end_of_stream {
                return Action::Pause;
            }
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(rewrite) = &self.config.request else {
            return Action::Continue;
        };
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        let (new, n) = replace_all(&body, rewrite.from.as_bytes(), rewrite.to.as_bytes());
        self.set_http_request_body(0, body_size, &new);
        if let Some(name) = &self.config.count_header {
            self.add_http_request_header(name, &n.to_string());
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.config.response.is_some() {
            self.set_http_response_header("content-length", None);
            if self.config.count_header.is_some() && !end_of_stream {
                return Action::Pause;
            }
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(rewrite) = &self.config.response else {
            return Action::Continue;
        };
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self
            .get_http_response_body(0, body_size)
            .unwrap_or_default();
        let (new, n) = replace_all(&body, rewrite.from.as_bytes(), rewrite.to.as_bytes());
        self.set_http_response_body(0, body_size, &new);
        if let Some(name) = &self.config.count_header {
            self.add_http_response_header(name, &n.to_string());
        }
        Action::Continue
    }
}

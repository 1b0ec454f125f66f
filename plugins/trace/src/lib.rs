//! `trace`: records every HTTP callback the host makes, with its arguments, and shows the
//! record where a test can compare hosts (spec: plugins/README.md).
//!
//! Tokens, in call order: `qh`/`sh` request/response headers, `qb<size>`/`sb<size>` body,
//! `qt<n>`/`st<n>` trailers (n = number of trailers), with an `e` suffix when end_of_stream.
//! - response header `x-trace`: the tokens so far, space separated;
//! - request trailer `x-wasm-req-trailer: added`, when the request has trailers (and the
//!   names of the trailers seen in the record as `qt<n>`);
//! - response trailer `x-trace`: the tokens so far, when the response has trailers;
//! - at `on_log`: a counter `trace.<tag>.<tokens joined by _>` incremented once, where
//!   `<tag>` is the request header `x-trace-tag` (or `none`); and the log line
//!   `trace <tag>: <tokens>` at info.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(TraceRoot) });
}}

struct TraceRoot;

impl Context for TraceRoot {}

impl RootContext for TraceRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    /// As an access logger (`envoy.access_loggers.wasm`): the finished stream's request header
    /// `x-trace-tag`, response code and `:path`, as a counter and a log line.
    fn on_log(&mut self) {
        let header = |name: &str| {
            proxy_wasm::hostcalls::get_map_value(MapType::HttpRequestHeaders, name)
                .ok()
                .flatten()
        };
        let tag = header("x-trace-tag").unwrap_or_else(|| "none".into());
        let path = header(":path").unwrap_or_default();
        let code = self
            .get_property(vec!["response", "code"])
            .filter(|v| v.len() == 8)
            .map(|v| i64::from_le_bytes(v[..8].try_into().unwrap_or([0; 8])))
            .unwrap_or(-1);
        let name = format!("trace_log.{tag}.{code}");
        if let Ok(id) = proxy_wasm::hostcalls::define_metric(MetricType::Counter, &name) {
            let _ = proxy_wasm::hostcalls::increment_metric(id, 1);
        }
        log::info!("trace access log {tag}: {code} {path}");
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Trace::default()))
    }
}

#[derive(Default)]
struct Trace {
    tokens: Vec<String>,
    tag: Option<String>,
}

impl Trace {
    fn push(&mut self, token: String, end_of_stream: bool) {
        self.tokens
            .push(if end_of_stream { token + "e" } else { token });
    }
}

impl Context for Trace {}

impl HttpContext for Trace {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.tag = self.get_http_request_header("x-trace-tag");
        self.push("qh".into(), end_of_stream);
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.push(format!("qb{body_size}"), end_of_stream);
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, num_trailers: usize) -> Action {
        self.push(format!("qt{num_trailers}"), false);
        self.add_http_request_trailer("x-wasm-req-trailer", "added");
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.push("sh".into(), end_of_stream);
        self.set_http_response_header("x-trace", Some(&self.tokens.join(" ")));
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.push(format!("sb{body_size}"), end_of_stream);
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, num_trailers: usize) -> Action {
        self.push(format!("st{num_trailers}"), false);
        self.add_http_response_trailer("x-trace", &self.tokens.join(" "));
        Action::Continue
    }

    fn on_log(&mut self) {
        let tag = self.tag.clone().unwrap_or_else(|| "none".into());
        let name = format!("trace.{tag}.{}", self.tokens.join("_"));
        if let Ok(id) = proxy_wasm::hostcalls::define_metric(MetricType::Counter, &name) {
            let _ = proxy_wasm::hostcalls::increment_metric(id, 1);
        }
        log::info!("trace {tag}: {}", self.tokens.join(" "));
    }
}

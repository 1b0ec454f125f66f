//! wasmesh benchmark plugin: on request headers reads one header (`x-bench-in`) and adds one
//! (`x-bench-out: <value or "none">`). The smallest realistic plugin round trip; see
//! plugins/README.md.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream))
    }
}

struct Stream;

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let value = self.get_http_request_header("x-bench-in");
        self.add_http_request_header("x-bench-out", value.as_deref().unwrap_or("none"));
        Action::Continue
    }
}

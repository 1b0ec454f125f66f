//! `memory_hog`: on request headers with `x-hog`, allocates 1 MiB blocks and keeps them
//! forever until linear memory cannot grow (allocation failure aborts = traps); otherwise
//! adds `x-hostile: ok` to the response. Behaviour: plugins/README.md.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use std::sync::Mutex;

/// Everything allocated stays reachable, so nothing can be freed or optimised away.
static HOARD: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
const MIB: usize = 1 << 20;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(MemoryHog))
    }
}

struct MemoryHog;

impl Context for MemoryHog {}

impl HttpContext for MemoryHog {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.get_http_request_header("x-hog").is_some() {
            let mut hoard = HOARD.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                // Non-zero fill: every page is written, not just reserved.
                hoard.push(std::hint::black_box(vec![0xA5u8; MIB]));
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.add_http_response_header("x-hostile", "ok");
        Action::Continue
    }
}

//! `loop` (crate busy_loop): spins forever on request headers when `x-loop` is present;
//! otherwise adds `x-hostile: ok` to the response. Behaviour: plugins/README.md.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

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
        Some(Box::new(BusyLoop))
    }
}

struct BusyLoop;

impl Context for BusyLoop {}

impl HttpContext for BusyLoop {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.get_http_request_header("x-loop").is_some() {
            // black_box keeps the optimiser from proving the loop side-effect free; only the
            // host's CPU deadline (epoch interruption / fuel) can stop this.
            let mut spins: u64 = 0;
            loop {
                spins = std::hint::black_box(spins.wrapping_add(1));
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.add_http_response_header("x-hostile", "ok");
        Action::Continue
    }
}

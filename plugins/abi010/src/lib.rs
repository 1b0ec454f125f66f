//! `abi010`: built with the old `proxy-wasm` 0.1.4 SDK, so the module exports
//! `proxy_abi_version_0_1_0` and uses the 0.1.0 callback signatures (no end_of_stream on
//! header callbacks). Adds `x-abi: 0.1.0` to requests and responses. See plugins/README.md.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

// SDK 0.1.x has no `main!` macro (its examples export `_start` for wasm32-unknown-unknown).
// On wasm32-wasip1 a cdylib is a WASI reactor: export `_initialize`, run the static
// constructors first, exactly what `proxy_wasm::main!` expands to in 0.2.x.
extern "C" {
    fn __wasm_call_ctors();
}

#[no_mangle]
pub extern "C" fn _initialize() {
    // SAFETY: called once by the host before any other export, as WASI reactors require.
    unsafe { __wasm_call_ctors() };
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Abi010))
    }
}

struct Abi010;

impl Context for Abi010 {}

impl HttpContext for Abi010 {
    fn on_http_request_headers(&mut self, _num_headers: usize) -> Action {
        self.add_http_request_header("x-abi", "0.1.0");
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize) -> Action {
        self.add_http_response_header("x-abi", "0.1.0");
        Action::Continue
    }
}

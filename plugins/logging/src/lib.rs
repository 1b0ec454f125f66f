//! `logging`: logs at every level from start-up, configuration and request headers, and
//! writes to stdout through WASI `fd_write`. Behaviour: plugins/README.md.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(LoggingRoot) });
}}

/// One line per level, trace to critical, in that order. The first five go through the
/// `log` crate (the SDK's logger); `log` has no critical level, so that one calls
/// `proxy_log` directly.
fn log_all_levels(message: &str) {
    log::trace!("{message}");
    log::debug!("{message}");
    log::info!("{message}");
    log::warn!("{message}");
    log::error!("{message}");
    // A host that rejects the call has nowhere better to report it.
    let _ = hostcalls::log(LogLevel::Critical, message);
}

struct LoggingRoot;

impl Context for LoggingRoot {}

impl RootContext for LoggingRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        log_all_levels("vm start");
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        log_all_levels("configure");
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Logging))
    }
}

struct Logging;

impl Context for Logging {}

impl HttpContext for Logging {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        log_all_levels(&format!("request headers: {path}"));
        println!("stdout: request headers: {path}");
        Action::Continue
    }
}

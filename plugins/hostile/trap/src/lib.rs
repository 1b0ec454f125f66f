//! `trap`: panics (a Wasm trap) on request headers when `x-trap` is present (with the value
//! `response-body`: in the first response body callback instead; with `response-reply`, that
//! callback sends a local reply); otherwise adds `x-hostile: ok` to the response. Behaviour:
//! plugins/README.md.

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
        Some(Box::new(Trap { on_body: None }))
    }
}

/// What the first response body callback does.
#[derive(Clone, Copy)]
enum OnBody {
    Trap,
    Reply,
}

struct Trap {
    on_body: Option<OnBody>,
}

impl Context for Trap {}

impl HttpContext for Trap {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.get_http_request_header("x-trap").as_deref() {
            None => {}
            Some("response-body") => self.on_body = Some(OnBody::Trap),
            Some("response-reply") => self.on_body = Some(OnBody::Reply),
            // The SDK's panic hook logs this at critical, then `unreachable` traps.
            Some(_) => panic!("trap requested"),
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        match self.on_body.take() {
            Some(OnBody::Trap) => panic!("trap requested in the response body"),
            Some(OnBody::Reply) => {
                self.send_http_response(418, vec![], Some(b"late reply"));
                Action::Pause
            }
            None => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.add_http_response_header("x-hostile", "ok");
        Action::Continue
    }
}

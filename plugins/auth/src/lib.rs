//! `auth`: rejects requests whose API-key header is missing or wrong with a 401 local reply.
//! Behaviour and configuration: plugins/README.md.

use log::error;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, GrpcStatusCode, LogLevel};
use serde::Deserialize;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(AuthRoot { config: None }) });
}}

fn default_header() -> String {
    "x-api-key".to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_header")]
    header: String,
    value: String,
    /// Deny with `send_grpc_response(grpc_status, "denied by auth", [x-auth: grpc])` instead
    /// (only Aborted (10), PermissionDenied (7) and Unauthenticated (16); others: Unknown).
    #[serde(default)]
    grpc_status: Option<u32>,
    /// Deny (403 `denied body`) from the request body callback whose buffered body contains
    /// this text, whatever the key.
    #[serde(default)]
    body_deny: Option<String>,
}

struct AuthRoot {
    config: Option<Rc<Config>>,
}

impl Context for AuthRoot {}

impl RootContext for AuthRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        match serde_json::from_slice::<Config>(&raw) {
            Ok(config) => {
                self.config = Some(Rc::new(config));
                true
            }
            Err(err) => {
                error!("auth: invalid plugin configuration: {err}");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Without a valid configuration (on_configure failed or was never called) every
        // request is rejected: an auth filter fails closed.
        Some(Box::new(Auth {
            config: self.config.clone(),
        }))
    }
}

struct Auth {
    config: Option<Rc<Config>>,
}

impl Context for Auth {}

impl HttpContext for Auth {
    fn on_http_request_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        let Some(deny) = self.config.as_ref().and_then(|c| c.body_deny.clone()) else {
            return Action::Continue;
        };
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        if body.windows(deny.len().max(1)).any(|w| w == deny.as_bytes()) {
            self.send_http_response(403, vec![], Some(b"denied body"));
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(config) = &self.config {
            let presented = self.get_http_request_header_bytes(&config.header);
            if presented.as_deref() == Some(config.value.as_bytes()) {
                return Action::Continue;
            }
        }
        if let Some(code) = self.config.as_ref().and_then(|c| c.grpc_status) {
            let status = match code {
                7 => GrpcStatusCode::PermissionDenied,
                10 => GrpcStatusCode::Aborted,
                16 => GrpcStatusCode::Unauthenticated,
                _ => GrpcStatusCode::Unknown,
            };
            self.send_grpc_response(status, Some("denied by auth"), vec![("x-auth", b"grpc")]);
            return Action::Pause;
        }
        self.send_http_response(
            401,
            vec![
                ("www-authenticate", "ApiKey"),
                ("content-type", "text/plain"),
            ],
            Some(b"unauthorized\n"),
        );
        Action::Pause
    }
}

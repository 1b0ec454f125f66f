//! `callout`: asks an external HTTP service (via `proxy_http_call`) whether a request may
//! pass, and forwards the answer's `x-user` header upstream. Behaviour: plugins/README.md.

use log::{error, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;
use std::rc::Rc;
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(CalloutRoot { config: None }) });
}}

fn default_path() -> String {
    "/check".to_string()
}

fn default_timeout_ms() -> u64 {
    1000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    cluster: String,
    /// Call this gRPC method (unary) instead of making an HTTP call.
    #[serde(default)]
    grpc: Option<GrpcTarget>,
    #[serde(default = "default_path")]
    path: String,
    /// Defaults to `cluster`.
    #[serde(default)]
    authority: Option<String>,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrpcTarget {
    service: String,
    method: String,
}

struct CalloutRoot {
    config: Option<Rc<Config>>,
}

impl Context for CalloutRoot {}

impl RootContext for CalloutRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        match serde_json::from_slice::<Config>(&raw) {
            Ok(config) => {
                self.config = Some(Rc::new(config));
                true
            }
            Err(err) => {
                error!("callout: invalid plugin configuration: {err}");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Callout {
            config: self.config.clone(),
        }))
    }
}

struct Callout {
    config: Option<Rc<Config>>,
}

impl Callout {
    fn fail_dispatch(&self, why: &str) -> Action {
        warn!("callout: {why}");
        self.send_http_response(
            500,
            vec![("content-type", "text/plain")],
            Some(b"callout dispatch failed\n"),
        );
        Action::Pause
    }
}

impl Context for Callout {
    fn on_grpc_call_response(&mut self, _token_id: u32, status_code: u32, response_size: usize) {
        if status_code == 0 {
            let reply = self
                .get_grpc_call_response_body(0, response_size)
                .unwrap_or_default();
            self.add_http_request_header("x-auth-checked", "yes");
            self.add_http_request_header_bytes("x-grpc-reply", &reply);
            self.resume_http_request();
        } else {
            let status = format!("grpc-{status_code}");
            self.send_http_response(
                403,
                vec![("x-callout-status", &status)],
                Some(b"denied by callout\n"),
            );
        }
    }

    fn on_http_call_response(
        &mut self,
        _token_id: u32,
        _num_headers: usize,
        _body_size: usize,
        _num_trailers: usize,
    ) {
        // A failed call (reset, timeout, no such cluster) arrives with no headers at all.
        let status = self
            .get_http_call_response_header(":status")
            .unwrap_or_else(|| "none".to_string());
        if status == "200" {
            self.add_http_request_header("x-auth-checked", "yes");
            if let Some(user) = self.get_http_call_response_header_bytes("x-user") {
                self.add_http_request_header_bytes("x-user", &user);
            }
            self.resume_http_request();
        } else {
            self.send_http_response(
                403,
                vec![("x-callout-status", &status)],
                Some(b"denied by callout\n"),
            );
        }
    }
}

impl HttpContext for Callout {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(config) = self.config.clone() else {
            return self.fail_dispatch("no valid plugin configuration");
        };
        let original_path = self.get_http_request_header(":path").unwrap_or_default();
        if let Some(grpc) = &config.grpc {
            let fail = self
                .get_http_request_header("x-grpc-fail")
                .unwrap_or_default();
            let mut metadata = vec![("x-original-path", original_path.as_bytes())];
            if !fail.is_empty() {
                metadata.push(("x-grpc-fail", fail.as_bytes()));
            }
            return match self.dispatch_grpc_call(
                &config.cluster,
                &grpc.service,
                &grpc.method,
                metadata,
                Some(original_path.as_bytes()),
                Duration::from_millis(config.timeout_ms),
            ) {
                Ok(_token) => Action::Pause,
                Err(status) => self.fail_dispatch(&format!(
                    "dispatch_grpc_call to cluster {:?} failed: {status:?}",
                    config.cluster
                )),
            };
        }
        let authority = config.authority.as_deref().unwrap_or(&config.cluster);
        let headers = vec![
            (":method", "GET"),
            (":path", config.path.as_str()),
            (":authority", authority),
            ("x-original-path", original_path.as_str()),
        ];
        match self.dispatch_http_call(
            &config.cluster,
            headers,
            None,
            vec![],
            Duration::from_millis(config.timeout_ms),
        ) {
            Ok(_token) => Action::Pause,
            Err(status) => self.fail_dispatch(&format!(
                "dispatch_http_call to cluster {:?} failed: {status:?}",
                config.cluster
            )),
        }
    }
}

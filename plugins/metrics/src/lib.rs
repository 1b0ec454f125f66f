//! `metrics`: a counter, a gauge and a histogram driven by HTTP streams; the response
//! reports the counter read back through `proxy_get_metric`. Behaviour: plugins/README.md.

use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use std::cell::OnceCell;

const REQUESTS_TOTAL: &str = "wasmesh_requests_total";
const INFLIGHT: &str = "wasmesh_inflight";
const REQUEST_BODY_BYTES: &str = "wasmesh_request_body_bytes";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(MetricsRoot { ids: OnceCell::new() })
    });
}}

#[derive(Debug, Clone, Copy)]
struct MetricIds {
    requests_total: u32,
    inflight: u32,
    request_body_bytes: u32,
}

impl MetricIds {
    fn define() -> Self {
        let define = |kind, name| hostcalls::define_metric(kind, name).unwrap_or_default();
        MetricIds {
            requests_total: define(MetricType::Counter, REQUESTS_TOTAL),
            inflight: define(MetricType::Gauge, INFLIGHT),
            request_body_bytes: define(MetricType::Histogram, REQUEST_BODY_BYTES),
        }
    }
}

struct MetricsRoot {
    ids: OnceCell<MetricIds>,
}

impl Context for MetricsRoot {}

impl RootContext for MetricsRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        self.ids.get_or_init(MetricIds::define);
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Lazily, in case the host never called on_vm_start for this root context.
        let ids = *self.ids.get_or_init(MetricIds::define);
        Some(Box::new(MetricsHttp {
            ids,
            body_bytes: 0,
            counted: false,
            finished: false,
        }))
    }
}

struct MetricsHttp {
    ids: MetricIds,
    /// Sum of the `body_size` of every on_http_request_body call (the plugin never pauses,
    /// so each call reports only the new chunk).
    body_bytes: u64,
    counted: bool,
    finished: bool,
}

impl MetricsHttp {
    /// Runs once per stream, at the first of on_done / on_log.
    fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        if self.counted {
            if let Err(status) = hostcalls::increment_metric(self.ids.inflight, -1) {
                warn!("metrics: decrement {INFLIGHT} failed: {status:?}");
            }
        }
        if let Err(status) = hostcalls::record_metric(self.ids.request_body_bytes, self.body_bytes)
        {
            warn!("metrics: record {REQUEST_BODY_BYTES} failed: {status:?}");
        }
    }
}

impl Context for MetricsHttp {
    fn on_done(&mut self) -> bool {
        self.finish();
        true
    }
}

impl HttpContext for MetricsHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Err(status) = hostcalls::increment_metric(self.ids.requests_total, 1) {
            warn!("metrics: increment {REQUESTS_TOTAL} failed: {status:?}");
        }
        if let Err(status) = hostcalls::increment_metric(self.ids.inflight, 1) {
            warn!("metrics: increment {INFLIGHT} failed: {status:?}");
        }
        self.counted = true;
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        self.body_bytes += body_size as u64;
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let value = match hostcalls::get_metric(self.ids.requests_total) {
            Ok(n) => n.to_string(),
            Err(status) => {
                warn!("metrics: get {REQUESTS_TOTAL} failed: {status:?}");
                "<error>".to_string()
            }
        };
        self.add_http_response_header("x-requests-total", &value);
        Action::Continue
    }

    fn on_log(&mut self) {
        self.finish();
    }
}

//! `queue`: request paths go through a shared queue to the root context, which counts them
//! in shared data; responses report the count and the last path. Behaviour: plugins/README.md.

use log::warn;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, Status};

const QUEUE: &str = "wasmesh_queue";
const COUNT_KEY: &str = "queue.count";
const LAST_KEY: &str = "queue.last";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(QueueRoot) });
}}

struct QueueRoot;

impl QueueRoot {
    fn increment_count(&self) {
        loop {
            let (value, cas) = self.get_shared_data(COUNT_KEY);
            let n = value
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            match self.set_shared_data(COUNT_KEY, Some((n + 1).to_string().as_bytes()), cas) {
                Ok(()) => return,
                Err(Status::CasMismatch) => continue,
                Err(status) => {
                    warn!("queue: set_shared_data({COUNT_KEY}) failed: {status:?}");
                    return;
                }
            }
        }
    }
}

impl Context for QueueRoot {}

impl RootContext for QueueRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        // Registering makes this root context the one notified by on_queue_ready.
        self.register_shared_queue(QUEUE);
        true
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        loop {
            match self.dequeue_shared_queue(queue_id) {
                Ok(Some(item)) => {
                    self.increment_count();
                    if let Err(status) = self.set_shared_data(LAST_KEY, Some(&item), None) {
                        warn!("queue: set_shared_data({LAST_KEY}) failed: {status:?}");
                    }
                }
                Ok(None) => return,
                Err(status) => {
                    warn!("queue: dequeue_shared_queue({queue_id}) failed: {status:?}");
                    return;
                }
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(QueueHttp))
    }
}

struct QueueHttp;

impl Context for QueueHttp {}

impl HttpContext for QueueHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        match self.resolve_shared_queue("", QUEUE) {
            Some(queue_id) => {
                if let Err(status) = self.enqueue_shared_queue(queue_id, Some(path.as_bytes())) {
                    warn!("queue: enqueue_shared_queue({queue_id}) failed: {status:?}");
                }
            }
            None => warn!("queue: shared queue {QUEUE} not found"),
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let count = self
            .get_shared_data(COUNT_KEY)
            .0
            .unwrap_or_else(|| b"0".to_vec());
        let last = self
            .get_shared_data(LAST_KEY)
            .0
            .unwrap_or_else(|| b"<missing>".to_vec());
        self.add_http_response_header_bytes("x-queue-count", &count);
        self.add_http_response_header_bytes("x-queue-last", &last);
        Action::Continue
    }
}

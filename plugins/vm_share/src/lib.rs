//! `vm_share`: shows whether plugins share a VM (spec: plugins/README.md). Envoy runs every
//! plugin whose vm_id, VM configuration and code are the same in one VM per thread, each with
//! a root context of its own; their globals are shared.
//!
//! Plugin configuration: a name (any text). Response header `x-vm-share-<name>`:
//! `root=<root context id> roots=<root contexts this VM made> starts=<on_vm_start calls in
//! this VM> seen=<requests this VM's plugins saw, this one included>`.

use std::cell::Cell;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

thread_local! {
    static ROOTS: Cell<u32> = const { Cell::new(0) };
    static STARTS: Cell<u32> = const { Cell::new(0) };
    static SEEN: Cell<u32> = const { Cell::new(0) };
}

fn bump(c: &'static std::thread::LocalKey<Cell<u32>>) -> u32 {
    c.with(|c| {
        c.set(c.get() + 1);
        c.get()
    })
}

fn get(c: &'static std::thread::LocalKey<Cell<u32>>) -> u32 {
    c.with(Cell::get)
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|root| -> Box<dyn RootContext> {
        bump(&ROOTS);
        Box::new(ShareRoot { root, name: String::new() })
    });
}}

struct ShareRoot {
    root: u32,
    name: String,
}

impl Context for ShareRoot {}

impl RootContext for ShareRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        bump(&STARTS);
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        self.name = self
            .get_plugin_configuration()
            .map(|c| String::from_utf8_lossy(&c).into_owned())
            .unwrap_or_default();
        log::info!("vm_share {} root={}", self.name, self.root);
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Share {
            root: self.root,
            name: self.name.clone(),
            seen: 0,
        }))
    }
}

struct Share {
    root: u32,
    name: String,
    seen: u32,
}

impl Context for Share {}

impl HttpContext for Share {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.seen = bump(&SEEN);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let value = format!(
            "root={} roots={} starts={} seen={}",
            self.root,
            get(&ROOTS),
            get(&STARTS),
            self.seen
        );
        self.set_http_response_header(&format!("x-vm-share-{}", self.name), Some(&value));
        Action::Continue
    }
}

//! `props_probe`: reads the property paths of its configuration in three phases (request
//! headers, response headers, on_log) and shows what the host answered, so a test can compare
//! hosts path by path (spec: plugins/README.md).

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use serde::Deserialize;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(ProbeRoot::default()) });
}}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    paths: Vec<String>,
    /// Properties to set (`proxy_set_property`) in request headers before the reads.
    #[serde(default)]
    set: std::collections::BTreeMap<String, String>,
    /// Response header prefix (`x-probe-<name>-`; default `x-probe-`), so two probes in one
    /// chain do not overwrite each other's headers.
    #[serde(default)]
    name: String,
    /// CEL expressions run through Envoy's `expr_create` / `expr_evaluate` / `expr_delete`
    /// foreign functions in `on_http_response_headers`.
    #[serde(default)]
    exprs: Vec<String>,
}

#[derive(Default)]
struct ProbeRoot {
    paths: Rc<Vec<String>>,
    set: Rc<Vec<(String, String)>>,
    prefix: Rc<str>,
    exprs: Rc<Vec<String>>,
}

impl Context for ProbeRoot {}

impl RootContext for ProbeRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        match serde_json::from_slice::<Config>(&raw) {
            Ok(c) => {
                self.paths = Rc::new(c.paths);
                self.set = Rc::new(c.set.into_iter().collect());
                self.exprs = Rc::new(c.exprs);
                self.prefix = if c.name.is_empty() {
                    "x-probe-".into()
                } else {
                    format!("x-probe-{}-", c.name).into()
                };
                true
            }
            Err(e) => {
                log::error!("props_probe: invalid plugin configuration: {e}");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Probe {
            paths: Rc::clone(&self.paths),
            set: Rc::clone(&self.set),
            prefix: Rc::clone(&self.prefix),
            exprs: Rc::clone(&self.exprs),
            expr_request: Vec::new(),
            request: Vec::new(),
            header_at_body: None,
            request_names: String::new(),
        }))
    }
}

struct Probe {
    paths: Rc<Vec<String>>,
    set: Rc<Vec<(String, String)>>,
    prefix: Rc<str>,
    exprs: Rc<Vec<String>>,
    /// The expressions' values in `on_http_request_headers`.
    expr_request: Vec<String>,
    request: Vec<String>,
    /// Request header `x-probe-h` as read from the request body callback.
    header_at_body: Option<String>,
    /// The request header names seen in `on_http_request_headers`, in order.
    request_names: String,
}

/// Request header `x-probe-h` read with `proxy_get_header_map_value` now: the value,
/// `<missing>`, or `<error:Status>` (the raw import: the SDK panics on some statuses).
fn request_header() -> String {
    extern "C" {
        fn proxy_get_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
    }
    let key = "x-probe-h";
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer to a buffer it allocated in this module's memory with
    // proxy_on_memory_allocate, and its size; ownership passes to us.
    let status = unsafe { proxy_get_header_map_value(0, key.as_ptr(), key.len(), &mut data, &mut size) };
    match status {
        0 if data.is_null() => "<missing>".into(),
        // SAFETY: see above; the buffer came from the SDK's allocator (Vec of u8).
        0 => unsafe { String::from_utf8_lossy(&Vec::from_raw_parts(data, size, size)).into_owned() },
        1 => "<missing>".into(),
        2 => "<error:BadArgument>".into(),
        s => format!("<error:{s}>"),
    }
}

/// What the host answered for `path`, printable: the value as text when it is printable
/// ASCII, else `hex:<bytes>` (both cut at 96 characters, then `...`); `<missing>` for
/// NotFound, `<empty>` for an empty value, `<error:Status>` for another status.
fn read(path: &str) -> String {
    let v = match proxy_wasm::hostcalls::get_property(segments(path)) {
        Err(status) => return format!("<error:{status:?}>"),
        Ok(None) => return "<missing>".into(),
        Ok(Some(v)) if v.is_empty() => return "<empty>".into(),
        Ok(Some(v)) => v,
    };
    printable(&v)
}

/// Runs `expr` through the expression foreign functions: the value shown as [`read`] shows
/// property values, or `<create:Status>` / `<eval:Status>`; then `; <delete:Status>` if the
/// delete failed.
fn eval(expr: &str) -> String {
    use proxy_wasm::hostcalls::call_foreign_function as call;
    let token = match call("expr_create", Some(expr.as_bytes())) {
        Ok(Some(t)) => t,
        Ok(None) => return "<create:no-token>".into(),
        Err(s) => return format!("<create:{s:?}>"),
    };
    let mut out = match call("expr_evaluate", Some(&token)) {
        Ok(Some(v)) if v.is_empty() => "<empty>".into(),
        Ok(Some(v)) => printable(&v),
        Ok(None) => "<empty>".into(),
        Err(s) => format!("<eval:{s:?}>"),
    };
    if let Err(s) = call("expr_delete", Some(&token)) {
        out.push_str(&format!("; <delete:{s:?}>"));
    }
    out
}

/// Text when every byte is printable ASCII, else `hex:<bytes>`, cut at 96 characters.
fn printable(v: &[u8]) -> String {
    let mut text = if v.iter().all(|b| (0x20..0x7f).contains(b)) {
        String::from_utf8_lossy(v).into_owned()
    } else {
        format!("hex:{}", hex(v))
    };
    if text.len() > 96 {
        text.truncate(96);
        text.push_str("...");
    }
    text
}

/// Segments are separated by `/` when the path has one (segments with dots, like
/// `envoy.filters.http.wasm`), else by `.`.
fn segments(path: &str) -> Vec<&str> {
    let sep = if path.contains('/') { '/' } else { '.' };
    path.split(sep).collect()
}

fn hex(v: &[u8]) -> String {
    v.iter().map(|b| format!("{b:02x}")).collect()
}

impl Context for Probe {}

impl HttpContext for Probe {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        for (path, value) in self.set.iter() {
            if let Err(status) = proxy_wasm::hostcalls::set_property(segments(path), Some(value.as_bytes())) {
                log::warn!("props_probe: set_property({path}) failed: {status:?}");
            }
        }
        self.request = self.paths.iter().map(|p| read(p)).collect();
        self.expr_request = self.exprs.iter().map(|e| eval(e)).collect();
        let names: Vec<String> = self
            .get_http_request_headers()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        self.request_names = names.join(",");
        Action::Continue
    }

    fn on_http_request_body(&mut self, _size: usize, _eos: bool) -> Action {
        if self.header_at_body.is_none() {
            self.header_at_body = Some(request_header());
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let response_names: Vec<String> = self
            .get_http_response_headers()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let pre = Rc::clone(&self.prefix);
        self.set_http_response_header(&format!("{pre}request-names"), Some(&self.request_names.clone()));
        self.set_http_response_header(&format!("{pre}response-names"), Some(&response_names.join(",")));
        let at_body = self.header_at_body.clone().unwrap_or_else(|| "<no-body>".into());
        self.set_http_response_header(&format!("{pre}header-at-body"), Some(&at_body));
        self.set_http_response_header(&format!("{pre}header-at-response"), Some(&request_header()));
        for (i, p) in self.paths.iter().enumerate() {
            let q = self.request.get(i).cloned().unwrap_or_else(|| "<not-read>".into());
            let s = read(p);
            self.set_http_response_header(&format!("{pre}{i}"), Some(&format!("{q} | {s}")));
        }
        for (i, e) in self.exprs.iter().enumerate() {
            let q = self.expr_request.get(i).cloned().unwrap_or_else(|| "<not-read>".into());
            let s = eval(e);
            self.set_http_response_header(&format!("{pre}expr-{i}"), Some(&format!("{q} | {s}")));
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        for (i, p) in self.paths.iter().enumerate() {
            let v = read(p);
            log::info!("props_probe log {p}: {v}");
            let name = format!("probe.log.{i}.{}", hex(v.as_bytes()));
            if let Ok(id) = proxy_wasm::hostcalls::define_metric(MetricType::Counter, &name) {
                let _ = proxy_wasm::hostcalls::increment_metric(id, 1);
            }
        }
    }
}

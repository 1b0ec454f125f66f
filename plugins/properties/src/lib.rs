//! `properties`: reads Envoy attributes with `proxy_get_property` on request headers and
//! echoes them as `x-prop-*` response headers. Behaviour: plugins/README.md.

use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(PropertiesRoot) });
}}

const MISSING: &str = "<missing>";

/// How the bytes a property returns become a header value.
#[derive(Clone, Copy)]
enum Decode {
    /// Raw bytes (strings, and Struct string values such as node metadata).
    Raw,
    /// 8-byte little-endian int64, printed in decimal.
    Int64,
}

/// (response header, property path, decoding)
const PROPERTIES: &[(&str, &[&str], Decode)] = &[
    ("x-prop-request-path", &["request", "path"], Decode::Raw),
    ("x-prop-request-method", &["request", "method"], Decode::Raw),
    ("x-prop-request-host", &["request", "host"], Decode::Raw),
    ("x-prop-source-address", &["source", "address"], Decode::Raw),
    (
        "x-prop-destination-port",
        &["destination", "port"],
        Decode::Int64,
    ),
    ("x-prop-plugin-name", &["plugin_name"], Decode::Raw),
    ("x-prop-plugin-root-id", &["plugin_root_id"], Decode::Raw),
    ("x-prop-node-id", &["xds", "node", "id"], Decode::Raw),
    (
        "x-prop-node-namespace",
        &["xds", "node", "metadata", "NAMESPACE"],
        Decode::Raw,
    ),
];

fn read(path: &[&str], decode: Decode) -> Vec<u8> {
    match hostcalls::get_property(path.to_vec()) {
        Ok(Some(bytes)) => match decode {
            Decode::Raw => bytes,
            Decode::Int64 => match <[u8; 8]>::try_from(bytes.as_slice()) {
                Ok(le) => i64::from_le_bytes(le).to_string().into_bytes(),
                Err(_) => format!("<bad-length:{}>", bytes.len()).into_bytes(),
            },
        },
        Ok(None) => MISSING.as_bytes().to_vec(),
        Err(status) => {
            warn!("properties: get_property({path:?}) failed: {status:?}");
            format!("<error:{status:?}>").into_bytes()
        }
    }
}

struct PropertiesRoot;

impl Context for PropertiesRoot {}

impl RootContext for PropertiesRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Properties { values: Vec::new() }))
    }
}

struct Properties {
    /// One value per entry of PROPERTIES, read on request headers.
    values: Vec<Vec<u8>>,
}

impl Context for Properties {}

impl HttpContext for Properties {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.values = PROPERTIES
            .iter()
            .map(|(_, path, decode)| read(path, *decode))
            .collect();
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (i, (header, _, _)) in PROPERTIES.iter().enumerate() {
            let value = self.values.get(i).map_or(MISSING.as_bytes(), Vec::as_slice);
            self.add_http_response_header_bytes(header, value);
        }
        Action::Continue
    }
}

//! Integration tests of the Wasm host: the example plugins (built from source by
//! `test-plugins`) driven through a recording host, hostile plugins, malformed modules and
//! randomized host calls. One binary, modules per area.

mod fuzz;
mod harness;
mod hostile;
mod http_plugins;
mod malformed;
mod runtime;

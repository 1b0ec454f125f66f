//! End-to-end tests of the whole system in one process: control plane → agent → our proxy, with
//! live WasmPlugin changes under load.

mod compile;
mod e2e;
mod istio_agent;
mod log_level;
mod plugin_oci;

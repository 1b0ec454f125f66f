//! wasmesh agent (being built).

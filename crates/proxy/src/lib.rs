//! wasmesh proxy (being built).

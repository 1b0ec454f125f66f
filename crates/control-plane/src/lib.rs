//! wasmesh control-plane (being built).

//! wasmesh xds (being built).

//! wasm-host

//! Envoy xDS v3 glue: the descriptor pool for the proto3 JSON mapping, an ADS server that serves
//! per-node snapshots (state of the world) with versions, nonces and ACK/NACK tracking, and a
//! small ADS client. This crate knows the xDS protocol, not Istio.
//!
//! **For other crates:** [`descriptor_pool()`] returns the Envoy v3 `prost_reflect::DescriptorPool`
//! (all of `envoy_types::pb`); [`descriptors::from_json`] / [`descriptors::to_json`] convert
//! between proto3 JSON and protobuf bytes (Envoy's YAML/JSON loader semantics, unknown fields rejected).

pub mod descriptors;

pub use descriptors::{DescriptorError, descriptor_pool};

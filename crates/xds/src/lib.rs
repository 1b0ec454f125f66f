//! Envoy xDS v3 glue: the descriptor pool for the proto3 JSON mapping, an ADS server that serves
//! per-node snapshots (state of the world) with versions, nonces and ACK/NACK tracking, and a
//! small ADS client. This crate knows the xDS protocol, not Istio.
//!
//! **For other crates:** [`descriptor_pool()`] returns the Envoy v3 `prost_reflect::DescriptorPool`
//! (all of `envoy_types::pb`; [`release_descriptor_pool`] frees it when idle); [`descriptors::from_json`] / [`descriptors::to_json`] convert
//! between proto3 JSON and protobuf bytes (Envoy's YAML/JSON loader semantics, unknown fields rejected).
//!
//! Server: put a [`Snapshot`] per node id into a [`SnapshotCache`]; [`AdsServer`] streams it.
//! Client: [`client::AdsClient::subscribe`] yields `(version, Vec<Any>)` updates to ACK or NACK.

pub mod client;
mod delta;
pub mod descriptors;
pub mod server;
pub mod snapshot;

pub use descriptors::{
    DescriptorError, descriptor_pool, on_descriptor_release, release_descriptor_pool,
};
pub use server::{AdsServer, NodeEvent, NodeStatus, ServerError, SnapshotCache};
pub use snapshot::{Resources, Snapshot, type_url};

//! Integration tests of the agent against real peers: docker-registry, Envoy.

mod oci;
mod registry;

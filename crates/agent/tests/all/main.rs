//! Integration tests of the agent against real peers: docker-registry, Envoy, and a fake
//! control plane (test-support's ADS server).

mod control_plane;
mod envoy;
mod http;
mod oci;
mod proxy;
mod registry;
mod util;

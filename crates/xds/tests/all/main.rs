//! Integration tests of the ADS server and client over real gRPC on loopback.

mod ads;
mod delta;

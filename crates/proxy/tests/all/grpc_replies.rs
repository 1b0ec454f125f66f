//! Local replies to gRPC requests, against real Envoy 1.40: Envoy answers a gRPC request
//! (`content-type: application/grpc`) with a trailers-only response, `200` with
//! `grpc-status` (the plugin's, else mapped from the HTTP status) and the body as
//! `grpc-message`, whether the reply comes from a plugin (`send_grpc_response`,
//! `send_http_response`) or from the proxy (no healthy upstream). A non-gRPC request gets a
//! plain reply with no `grpc-status` (the proxy-wasm Rust SDK's grpc_auth_random example).

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use test_support::proxy_peers::{free_ports, start_envoy, start_upstream};

use crate::support::*;

fn request(grpc: bool, key: Option<&str>) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::builder()
        .method("POST")
        .uri("http://grpc.example/hello.HelloService/SayHello")
        .version(http::Version::HTTP_2)
        .header(
            "content-type",
            if grpc {
                "application/grpc"
            } else {
                "application/json"
            },
        )
        .header("te", "trailers");
    if let Some(k) = key {
        b = b.header("x-api-key", k);
    }
    b.body(Full::new(Bytes::from_static(b"\0\0\0\0\x06\n\x04Rust")))
        .unwrap_or_default()
}

/// What a client sees: status, the headers that matter and the body.
async fn observe(addr: SocketAddr, grpc: bool, key: Option<&str>) -> anyhow::Result<String> {
    let r = send_h2(addr, request(grpc, key)).await?;
    let h = |n: &str| {
        r.headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    Ok(format!(
        "{} ct={} grpc-status={} grpc-message={} x-auth={} www-authenticate={} body={:?}",
        r.status,
        h("content-type"),
        h("grpc-status"),
        h("grpc-message"),
        h("x-auth"),
        h("www-authenticate"),
        String::from_utf8_lossy(&r.body)
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_replies_to_grpc_requests_match_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let dead = free_ports(1)?[0];
    let cases = [
        // send_grpc_response(Aborted, "denied by auth")
        (
            r#"{"value": "k", "grpc_status": 10}"#,
            up.addr.port(),
            true,
            None,
        ),
        (
            r#"{"value": "k", "grpc_status": 10}"#,
            up.addr.port(),
            false,
            None,
        ),
        // send_http_response(401, ..., "unauthorized\n")
        (r#"{"value": "k"}"#, up.addr.port(), true, None),
        // the proxy's own 503 (no upstream listening)
        (r#"{"value": "k"}"#, dead, true, Some("k")),
    ];
    for (config, port, grpc, key) in cases {
        let ports = free_ports(2)?;
        let envoy_yaml = one_plugin(
            (ports[1], ports[0], port),
            test_plugins::AUTH,
            "au",
            config,
            "",
        );
        let admin: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
        let _envoy = tokio::task::spawn_blocking(move || start_envoy(&envoy_yaml, admin)).await??;
        let ours = start_proxy(&one_plugin(
            (0, 0, port),
            test_plugins::AUTH,
            "au",
            config,
            "",
        ))?;
        let e = observe(([127, 0, 0, 1], ports[0]).into(), grpc, key).await?;
        let o = observe(ours.listener_addr("main").expect("listener"), grpc, key).await?;
        assert_eq!(
            o, e,
            "wasmesh (left) vs Envoy (right): {config} grpc={grpc}"
        );
    }
    Ok(())
}

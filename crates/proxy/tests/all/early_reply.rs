//! A response that starts before the whole request was read, against real Envoy 1.40: the
//! `auth` plugin rejects a request in its headers callback while the client is still sending
//! the body. Envoy adds `connection: close` and closes after the response (delayed close),
//! so the client gets the reply and can still write the rest of its body. Documented
//! difference: Envoy then closes with the client's unread bytes in its socket, which resets
//! the connection; wasmesh reads and discards them (up to 1 s), so the connection ends with
//! a clean close.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use test_support::proxy_peers::{free_ports, start_envoy, start_upstream};

use crate::http1_codec::read_message;
use crate::support::*;

fn bootstrap(admin: u16, listen: u16, up: u16) -> String {
    one_plugin(
        (admin, listen, up),
        test_plugins::AUTH,
        "auth",
        r#"{"header":"x-api-key","value":"secret"}"#,
        "",
    )
}

/// What the client saw: (status code, `connection: close` in the reply, the rest of the
/// body could be written, the connection then ended cleanly rather than by a reset).
#[derive(Debug, PartialEq)]
struct Outcome {
    status: String,
    close_header: bool,
    wrote_rest: bool,
    clean_end: bool,
}

fn exchange(addr: SocketAddr, first: &[u8], rest: &[u8]) -> Outcome {
    let mut s = TcpStream::connect(addr).expect("connect");
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    s.write_all(first).expect("write");
    let reply = read_message(&mut s);
    std::thread::sleep(Duration::from_millis(100));
    let wrote_rest = rest.is_empty() || s.write_all(rest).is_ok();
    let mut tail = [0u8; 64];
    let clean_end = match s.read(&mut tail) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), ErrorKind::ConnectionReset),
    };
    let head = reply.to_ascii_lowercase();
    Outcome {
        status: reply.split(' ').nth(1).unwrap_or_default().to_string(),
        close_header: head.contains("\r\nconnection: close\r\n"),
        wrote_rest,
        clean_end,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_before_the_body_is_read_closes_like_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let ours = start_proxy(&bootstrap(0, 0, up.addr.port()))?;
    let ours_addr = ours.listener_addr("main").expect("listener");
    let ports = free_ports(2)?;
    let envoy_yaml = bootstrap(ports[1], ports[0], up.addr.port());
    let admin: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
    let _envoy = tokio::task::spawn_blocking(move || start_envoy(&envoy_yaml, admin)).await??;
    let envoy_addr: SocketAddr = ([127, 0, 0, 1], ports[0]).into();

    // (name, first write, what the client writes after the reply)
    let big = vec![b'a'; 256 * 1024];
    let mut cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        (
            "body sent with the headers",
            b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello".to_vec(),
            Vec::new(),
        ),
        (
            "chunked body still being sent",
            b"POST /b HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"
                .to_vec(),
            b"5\r\nworld\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "no body",
            b"GET /c HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(),
            Vec::new(),
        ),
    ];
    let large = b"POST /d HTTP/1.1\r\nhost: x\r\ncontent-length: 262149\r\n\r\nhello".to_vec();
    cases.push(("large body still being sent", large, big));
    let mut failures = Vec::new();
    for (name, first, rest) in &cases {
        let (f, r) = (first.clone(), rest.clone());
        let e = tokio::task::spawn_blocking(move || exchange(envoy_addr, &f, &r)).await?;
        let (f, r) = (first.clone(), rest.clone());
        let o = tokio::task::spawn_blocking(move || exchange(ours_addr, &f, &r)).await?;
        assert_eq!(e.status, "401", "{name}: envoy: {e:?}");
        assert!(
            o.clean_end,
            "{name}: wasmesh ends the connection cleanly: {o:?}"
        );
        let same = |x: &Outcome| (x.status.clone(), x.close_header, x.wrote_rest);
        if same(&e) != same(&o) || (rest.is_empty() && e.clean_end != o.clean_end) {
            failures.push(format!("{name}:\n  envoy:   {e:?}\n  wasmesh: {o:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// Sends each raw request to Envoy and to us (one connection each) and asserts both answer
/// 403 with the same `connection: close` decision.
async fn closes_as_envoy(
    yaml: impl Fn(u16, u16) -> String,
    requests: &[&'static [u8]],
) -> anyhow::Result<()> {
    let (_ours, ours_addr, _envoy, envoy_addr) = start_both(yaml).await?;
    let head = |addr: SocketAddr, req: &'static [u8]| {
        let mut s = TcpStream::connect(addr).expect("connect");
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        s.write_all(req).expect("write");
        let reply = read_message(&mut s).to_ascii_lowercase();
        (
            reply.split(' ').nth(1).unwrap_or_default().to_string(),
            reply.contains("\r\nconnection: close\r\n"),
        )
    };
    for &req in requests {
        let e = tokio::task::spawn_blocking(move || head(envoy_addr, req)).await?;
        let o = tokio::task::spawn_blocking(move || head(ours_addr, req)).await?;
        assert_eq!(e.0, "403", "envoy");
        assert_eq!(
            o,
            e,
            "wasmesh (left) vs Envoy (right): {}",
            String::from_utf8_lossy(req)
        );
    }
    Ok(())
}

/// A plugin that paused the request for a callout and then rejects it replies after Envoy's
/// codec has read the whole (small) request: the connection stays open, no
/// `connection: close`; as it does when the body is still coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_after_a_callout_keeps_the_connection_like_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let side = start_upstream("side").await?;
    let yaml = |admin: u16, listen: u16| {
        one_plugin(
            (admin, listen, up.addr.port()),
            test_plugins::CALLOUT,
            "co",
            r#"{"cluster": "side", "path": "/status/403"}"#,
            &cluster_yaml("side", side.addr.port(), false),
        )
    };
    closes_as_envoy(
        yaml,
        &[
            b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello",
            b"POST /b HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
        ],
    )
    .await
}

/// A plugin that rejects a request in a body callback before the end of stream (the
/// proxy-wasm Go SDK's http_body_chunk example) replies before Envoy's codec has delivered
/// the request's end, even when the whole body came in one packet: `connection: close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_from_a_body_callback_closes_like_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let yaml = |admin: u16, listen: u16| {
        one_plugin(
            (admin, listen, up.addr.port()),
            test_plugins::AUTH,
            "auth",
            r#"{"value": "k", "body_deny": "pattern"}"#,
            "",
        )
    };
    closes_as_envoy(
        yaml,
        &[
            b"POST /a HTTP/1.1\r\nhost: x\r\nx-api-key: k\r\ncontent-length: 13\r\n\r\nxx pattern xx",
            b"POST /b HTTP/1.1\r\nhost: x\r\nx-api-key: k\r\ntransfer-encoding: chunked\r\n\r\nd\r\nxx pattern xx\r\n0\r\n\r\n",
        ],
    )
    .await
}

/// A plugin after the one that replied never sees the request, yet Envoy still logs the stream
/// in it: its access-log call creates the plugin's context and runs `on_log` (the `trace`
/// plugin's counter records no callback). Logging and telemetry plugins count these requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_after_a_local_reply_still_log_like_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let filters = format!(
        "{}{}",
        wasm_filter("auth", test_plugins::AUTH, r#"{"value": "secret"}"#),
        wasm_filter("tr", test_plugins::TRACE, "")
    );
    let (ours, ours_addr, envoy_proc, envoy_addr) = start_both(|admin, listen| {
        hcm_bootstrap((admin, listen, up.addr.port()), "", &filters, "")
    })
    .await?;
    let mut seen = Vec::new();
    for (addr, admin) in [
        (envoy_addr, envoy_proc.admin),
        (ours_addr, ours.admin_addr().expect("admin")),
    ] {
        let denied = send(addr, get("h", "/")).await?;
        let mut ok = get("h", "/");
        ok.headers_mut()
            .insert("x-api-key", http::HeaderValue::from_static("secret"));
        let allowed = send(addr, ok).await?;
        let traces: Vec<String> = send(admin, get("admin", "/stats"))
            .await?
            .text()
            .lines()
            .filter(|l| l.starts_with("wasmcustom.trace."))
            .map(str::to_string)
            .collect();
        seen.push((denied.status, allowed.status, traces));
    }
    assert_eq!(seen[1], seen[0], "wasmesh (left) vs Envoy (right)");
    assert_eq!((seen[0].0, seen[0].1), (401, 200));
    assert_eq!(
        seen[0].2.len(),
        2,
        "one counter per request: {:?}",
        seen[0].2
    );
    drop((ours, envoy_proc));
    Ok(())
}

//! Envoy's HTTP/1 codec defaults, against real Envoy 1.40: both proxies get the same raw bytes
//! from a raw client and a raw upstream, and what each peer received must agree.
//! - Trailers (`enable_trailers` off): a chunked request's trailers are dropped on the way in,
//!   an upstream response's on the way out of the upstream connection.
//! - HTTP/1.0 (`accept_http_10` off): 426 `Upgrade Required`, nothing sent upstream.
//! - `Expect: 100-continue`: the proxy answers 100 itself and strips the header.
//! - An absolute-form target: its authority becomes `Host`; the upstream gets origin form.
//! - A client's `x-envoy-internal` is removed; other `x-envoy-*` headers pass.
//! - An HTTP/1.1 request with no `Host`: an empty 400, nothing sent upstream.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use test_support::proxy_peers::{free_ports, start_envoy};

use crate::support::*;

/// Reads one HTTP/1.1 message (head plus a chunked body, trailers included) off `s`.
pub(crate) fn read_message(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let head = text[..head_end].to_ascii_lowercase();
            let chunked = head.contains("transfer-encoding: chunked");
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let rest = &text[head_end + 4..];
            // a fixed length body, or the last chunk, then trailer lines, then an empty line
            if !chunked && rest.len() >= length
                || rest.starts_with("0\r\n") && rest.ends_with("\r\n\r\n")
                || rest.contains("\r\n0\r\n") && rest.ends_with("\r\n\r\n")
            {
                return text;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&buf).to_string(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A raw upstream: records each request it reads and answers with a chunked body and a
/// declared trailer.
pub(crate) fn raw_upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let record = Arc::clone(&record);
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                loop {
                    let req = read_message(&mut s);
                    if req.is_empty() {
                        return;
                    }
                    record.lock().unwrap_or_else(|e| e.into_inner()).push(req);
                    let resp = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\
                                transfer-encoding: chunked\r\ntrailer: x-up-trailer\r\n\r\n\
                                5\r\nworld\r\n0\r\nx-up-trailer: yes\r\n\r\n";
                    if s.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Sends `raw` and returns the raw response (after any `100 Continue`, which is kept).
fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    s.write_all(raw).expect("write");
    let mut out = read_message(&mut s);
    if out.starts_with("HTTP/1.1 100") {
        out.push_str(&read_message(&mut s));
    }
    out
}

/// Sends `raw` through the proxy at `addr`: (the client's raw response, the raw request the
/// upstream got, empty if none).
fn through(addr: SocketAddr, seen: &Mutex<Vec<String>>, raw: &[u8]) -> (String, String) {
    let before = seen.lock().unwrap_or_else(|e| e.into_inner()).len();
    let resp = exchange(addr, raw);
    let reqs = seen.lock().unwrap_or_else(|e| e.into_inner());
    (resp, reqs.get(before).cloned().unwrap_or_default())
}

/// A chunked POST with a trailer (and `te: trailers`).
const POST_WITH_TRAILER: &[u8] = b"POST /t HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\
    te: trailers\r\ntrailer: x-client-trailer\r\n\r\n5\r\nhello\r\n0\r\nx-client-trailer: abc\r\n\r\n";

/// What one proxy did with the trailers: (upstream got the client's, client got the upstream's,
/// status line, body data).
fn outcome(addr: SocketAddr, seen: &Mutex<Vec<String>>) -> (bool, bool, String, bool) {
    let (resp, req) = through(addr, seen, POST_WITH_TRAILER);
    (
        req.contains("x-client-trailer: abc"),
        resp.contains("x-up-trailer: yes"),
        resp.lines().next().unwrap_or_default().to_string(),
        resp.contains("world") && req.contains("hello"),
    )
}

/// Envoy and wasmesh on the same raw upstream; `f` runs against each address.
async fn both<T: Send + 'static>(
    f: fn(SocketAddr, &Mutex<Vec<String>>) -> T,
) -> anyhow::Result<(T, T)> {
    let (up, seen) = raw_upstream();
    // The common bootstrap (admin first, then the listener, both on port 0); Envoy gets
    // fixed ports.
    let render = |listen: u16, admin: u16| {
        basic(up.port())
            .replacen("port_value: 0", &format!("port_value: {admin}"), 1)
            .replacen("port_value: 0", &format!("port_value: {listen}"), 1)
    };
    let ours = start_proxy(&render(0, 0))?;
    let ours_addr = ours.listener_addr("main").expect("listener");
    let ports = free_ports(2)?;
    let envoy_yaml = render(ports[0], ports[1]);
    let admin: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
    let _envoy = tokio::task::spawn_blocking(move || start_envoy(&envoy_yaml, admin)).await??;
    let envoy_addr: SocketAddr = ([127, 0, 0, 1], ports[0]).into();
    let seen2 = Arc::clone(&seen);
    let e = tokio::task::spawn_blocking(move || f(envoy_addr, &seen2)).await?;
    let seen2 = Arc::clone(&seen);
    let o = tokio::task::spawn_blocking(move || f(ours_addr, &seen2)).await?;
    Ok((e, o))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_trailers_are_dropped_both_ways_like_envoy() -> anyhow::Result<()> {
    let (e, o) = both(outcome).await?;
    assert_eq!(e.2, "HTTP/1.1 200 OK", "envoy: {e:?}");
    assert!(e.3, "envoy passed the bodies: {e:?}");
    // Envoy's default: neither trailer crosses an HTTP/1.1 codec.
    assert_eq!((e.0, e.1), (false, false), "envoy: {e:?}");
    assert_eq!(o, e, "wasmesh vs envoy");
    Ok(())
}

/// A local reply the proxy answered itself: (status code, body, content type, whether
/// anything reached the upstream).
fn codec_reply(
    addr: SocketAddr,
    seen: &Mutex<Vec<String>>,
    raw: &[u8],
) -> (String, String, String, bool) {
    let (resp, req) = through(addr, seen, raw);
    let code = resp.split(' ').nth(1).unwrap_or_default().to_string();
    let body = resp
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let content_type = resp
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    (code, body, content_type, !req.is_empty())
}

/// An HTTP/1.0 request.
fn http10(addr: SocketAddr, seen: &Mutex<Vec<String>>) -> (String, String, String, bool) {
    codec_reply(addr, seen, b"GET /old HTTP/1.0\r\nhost: x\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_requests_get_426_like_envoy() -> anyhow::Result<()> {
    let (e, o) = both(http10).await?;
    assert_eq!(e.0, "426", "envoy: {e:?}");
    assert!(!e.3, "envoy sent nothing upstream: {e:?}");
    assert_eq!(o, e, "wasmesh vs envoy");
    Ok(())
}

/// (got 100 Continue, final status, upstream saw `expect`, upstream got the body).
fn expect_continue(addr: SocketAddr, seen: &Mutex<Vec<String>>) -> (bool, String, bool, bool) {
    let (resp, req) = through(
        addr,
        seen,
        b"POST /e HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 3\r\n\r\nabc",
    );
    let last_status = resp
        .lines()
        .rev()
        .find(|l| l.starts_with("HTTP/1.1 "))
        .unwrap_or_default()
        .to_string();
    (
        resp.starts_with("HTTP/1.1 100 Continue"),
        last_status,
        req.to_ascii_lowercase().contains("expect:"),
        req.ends_with("abc"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_and_stripped_like_envoy() -> anyhow::Result<()> {
    let (e, o) = both(expect_continue).await?;
    assert_eq!(
        e,
        (true, "HTTP/1.1 200 OK".to_string(), false, true),
        "envoy"
    );
    assert_eq!(o, e, "wasmesh vs envoy");
    Ok(())
}

/// The request line and `host` the upstream got for an absolute-form target.
fn absolute_form(addr: SocketAddr, seen: &Mutex<Vec<String>>) -> (String, String) {
    let (_, req) = through(
        addr,
        seen,
        b"GET http://abs.example/a?q=1 HTTP/1.1\r\nhost: other\r\nconnection: close\r\n\r\n",
    );
    let line = req.lines().next().unwrap_or_default().to_string();
    let host = req
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("host: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    (line, host)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_sets_the_host_like_envoy() -> anyhow::Result<()> {
    let (e, o) = both(absolute_form).await?;
    assert_eq!(
        e,
        ("GET /a?q=1 HTTP/1.1".to_string(), "abs.example".to_string()),
        "envoy"
    );
    assert_eq!(o, e, "wasmesh vs envoy");
    Ok(())
}

/// A request whose headers pass 60 KiB.
fn big_headers(addr: SocketAddr, seen: &Mutex<Vec<String>>) -> (String, String, String, bool) {
    let mut raw = b"GET /big HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-big: ".to_vec();
    raw.extend(std::iter::repeat_n(b'a', 70_000));
    raw.extend_from_slice(b"\r\n\r\n");
    codec_reply(addr, seen, &raw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_over_60_kib_get_envoys_431() -> anyhow::Result<()> {
    let (e, o) = both(big_headers).await?;
    assert_eq!(e.0, "431", "envoy: {e:?}");
    assert!(!e.3, "envoy sent nothing upstream");
    assert_eq!(o, e, "wasmesh vs envoy");
    Ok(())
}

/// The client headers Envoy's HCM may clean before the filters: `x-envoy-*` ones, a header
/// nominated by `connection`, `te` with more than `trailers`.
const CLEANED: &[&str] = &[
    "x-envoy-internal",
    "x-envoy-foo",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-max-retries",
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
    "x-envoy-external-address",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-ip-tags",
    "x-envoy-original-path",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-stream-duration-ms",
    "x-envoy-attempt-count",
    "x-envoy-force-trace",
    "x-nominated",
    "te",
];

/// Which of [`CLEANED`] reached the upstream, with their values.
fn envoy_headers(addr: SocketAddr, seen: &Mutex<Vec<String>>) -> Vec<String> {
    let mut raw = String::from("GET /x HTTP/1.1\r\nhost: x\r\nconnection: close, x-nominated\r\n");
    for h in CLEANED {
        let v = match *h {
            "te" => "gzip, trailers",
            _ => "1",
        };
        raw.push_str(&format!("{h}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    let (_, req) = through(addr, seen, raw.as_bytes());
    let mut got: Vec<String> = req
        .lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(k, _)| CLEANED.contains(&k.to_ascii_lowercase().as_str()))
        })
        .map(|l| l.to_ascii_lowercase())
        .collect();
    got.sort();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_internal_headers_are_cleaned_like_envoy() -> anyhow::Result<()> {
    let (e, o) = both(envoy_headers).await?;
    assert!(e.contains(&"x-envoy-foo: 1".to_string()), "envoy: {e:?}");
    assert!(
        !e.contains(&"x-envoy-internal: 1".to_string()),
        "envoy: {e:?}"
    );
    assert_eq!(o, e, "wasmesh vs envoy");
    Ok(())
}

/// `te: trailers` nominated by `connection` is kept (Envoy keeps a nominated `te` that asks
/// for trailers); another nominated header goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nominated_te_trailers_goes_upstream_like_envoy() -> anyhow::Result<()> {
    fn te(addr: SocketAddr, seen: &Mutex<Vec<String>>) -> Vec<String> {
        let (_, req) = through(
            addr,
            seen,
            b"GET /te HTTP/1.1\r\nhost: x\r\nconnection: te, x-gone, close\r\nte: trailers\r\n\
              x-gone: 1\r\n\r\n",
        );
        req.lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.starts_with("te:") || l.starts_with("x-gone:")
            })
            .map(str::to_ascii_lowercase)
            .collect()
    }
    let (e, o) = both(te).await?;
    assert_eq!(e, ["te: trailers"], "envoy");
    assert_eq!(o, e, "wasmesh vs envoy");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_host_gets_envoys_400() -> anyhow::Result<()> {
    fn no_host(addr: SocketAddr, seen: &Mutex<Vec<String>>) -> (String, String, String, bool) {
        codec_reply(
            addr,
            seen,
            b"GET /nohost HTTP/1.1\r\nconnection: close\r\n\r\n",
        )
    }
    let (e, o) = both(no_host).await?;
    assert_eq!(
        e,
        ("400".to_string(), String::new(), String::new(), false),
        "envoy"
    );
    assert_eq!(o, e, "wasmesh vs envoy");
    Ok(())
}

/// The names of the headers the upstream got, in the order it got them.
fn upstream_header_order(addr: SocketAddr, seen: &Mutex<Vec<String>>) -> Vec<String> {
    let (_, req) = through(
        addr,
        seen,
        b"POST /order HTTP/1.1\r\nhost: x\r\nuser-agent: t\r\nx-b: 1\r\naccept: */*\r\n\
          x-a: 2\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi",
    );
    header_names(&req)
}

/// The header names of a raw HTTP/1.1 message, in order.
pub(crate) fn header_names(raw: &str) -> Vec<String> {
    raw.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':').map(|(k, _)| k.to_ascii_lowercase()))
        .collect()
}

/// Plugins that list or hash the headers, and upstreams that log them, see Envoy's order: the
/// client's headers as sent, then `x-forwarded-proto`, `x-request-id` and the router's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_gets_headers_in_envoys_order() -> anyhow::Result<()> {
    let (e, o) = both(upstream_header_order).await?;
    assert!(
        e.iter().position(|h| h == "x-forwarded-proto")
            < e.iter().position(|h| h == "x-request-id"),
        "envoy: {e:?}"
    );
    assert_eq!(o, e, "wasmesh vs envoy");
    Ok(())
}

/// For each method, whether a request without a body reached the upstream with
/// `content-length: 0`.
fn bodiless_lengths(addr: SocketAddr, seen: &Mutex<Vec<String>>) -> Vec<(String, bool)> {
    ["POST", "PUT", "PATCH", "DELETE", "OPTIONS", "GET", "HEAD"]
        .iter()
        .map(|m| {
            let raw = format!("{m} /len HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            let (_, req) = through(addr, seen, raw.as_bytes());
            (
                m.to_string(),
                req.to_ascii_lowercase()
                    .contains("\r\ncontent-length: 0\r\n"),
            )
        })
        .collect()
}

/// Envoy's HTTP/1 encoder states an empty body (`content-length: 0`) on a headers-only
/// request, except for methods that do not carry one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bodiless_request_says_content_length_0_like_envoy() -> anyhow::Result<()> {
    let (e, o) = both(bodiless_lengths).await?;
    assert!(e.iter().any(|(m, cl)| m == "POST" && *cl), "envoy: {e:?}");
    assert_eq!(o, e, "wasmesh vs envoy");
    Ok(())
}

/// (status code, body, whether anything reached the upstream, the upgrade-related headers the
/// upstream got).
fn upgrades(addr: SocketAddr, seen: &Mutex<Vec<String>>) -> Vec<(String, bool, Vec<String>)> {
    [
        "GET /ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        "GET /h2c HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, HTTP2-Settings, close\r\n\
         upgrade: h2c\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    ]
    .iter()
    .map(|raw| {
        let (resp, req) = through(addr, seen, raw.as_bytes());
        let headers: Vec<String> = req
            .lines()
            .filter_map(|l| l.split_once(':').map(|(k, _)| k.to_ascii_lowercase()))
            .filter(|k| ["connection", "upgrade", "http2-settings"].contains(&k.as_str()))
            .collect();
        (
            resp.split(' ').nth(1).unwrap_or_default().to_string(),
            !req.is_empty(),
            headers,
        )
    })
    .collect()
}

/// Without `upgrade_configs` Envoy refuses a WebSocket upgrade (403, before any filter) and
/// serves an h2c upgrade request as plain HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_are_refused_or_ignored_like_envoy() -> anyhow::Result<()> {
    let (e, o) = both(upgrades).await?;
    assert_eq!(e[0].0, "403", "envoy: {e:?}");
    assert_eq!(o, e, "wasmesh vs envoy");
    Ok(())
}

/// Requests Envoy's HTTP/1 codec refuses (status, details as Envoy 1.40 logs them).
const MALFORMED: &[&[u8]] = &[
    // a header line without a colon (http1.codec_error)
    b"GET / HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n",
    // a method with a separator in it
    b"G(ET / HTTP/1.1\r\nHost: x\r\n\r\n",
    // an unknown version: 426 (low_version)
    b"GET / HTTP/9.1\r\nHost: x\r\n\r\n",
    // a space in the target
    b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
    // a control character in a header value (http1.invalid_characters)
    b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
    // an invalid and a repeated content-length
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
    // not HTTP at all (a TLS hello on a plain listener)
    b"\x16\x03\x01\x00\x05hello\r\n\r\n",
    // a good request, then a bad one on the same connection
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n",
];

/// Sends `raw` and reads until the proxy closes: the whole raw answer with `date` and the
/// upstream's time masked.
fn until_close(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    s.write_all(raw).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out)
        .lines()
        .map(|l| {
            let lower = l.to_ascii_lowercase();
            if lower.starts_with("date: ") {
                "date: D"
            } else if lower.starts_with("x-envoy-upstream-service-time: ") {
                "x-envoy-upstream-service-time: T"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What the client got for each [`MALFORMED`] request, a request with 101 headers (one past
/// Envoy's and hyper's 100) and an HTTP/1.0 one; whether anything reached the upstream.
fn malformed(addr: SocketAddr, seen: &Mutex<Vec<String>>) -> (Vec<String>, usize) {
    let before = seen.lock().unwrap_or_else(|e| e.into_inner()).len();
    let mut answers: Vec<String> = MALFORMED.iter().map(|r| until_close(addr, r)).collect();
    let mut many = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..100 {
        many.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    answers.push(until_close(addr, &many));
    answers.push(until_close(addr, b"GET / HTTP/1.0\r\n\r\n"));
    let upstream = seen.lock().unwrap_or_else(|e| e.into_inner()).len() - before;
    (answers, upstream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_envoys_codec_replies() -> anyhow::Result<()> {
    let (e, o) = both(malformed).await?;
    // Envoy: `Bad Request` with a body, `server` and `connection: close`, in HTTP/1.1.
    assert!(
        e.0[0].starts_with("HTTP/1.1 400 Bad Request\ncontent-length: 11\n"),
        "envoy: {:?}",
        e.0[0]
    );
    assert!(e.0[2].starts_with("HTTP/1.1 426 "), "envoy: {:?}", e.0[2]);
    assert!(e.0[9].starts_with("HTTP/1.1 431 "), "envoy: {:?}", e.0[9]);
    assert!(e.0[10].starts_with("HTTP/1.1 426 "), "envoy: {:?}", e.0[10]);
    assert_eq!(e.1, 1, "envoy: only the good request went upstream");
    for (i, (e, o)) in e.0.iter().zip(&o.0).enumerate() {
        assert_eq!(o, e, "case {i}: wasmesh vs envoy");
    }
    assert_eq!(o.1, e.1, "requests upstream: wasmesh vs envoy");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_counted_and_logged_like_envoys() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("access.log");
    let yaml = basic(1).replacen(
        "stat_prefix: ingress_http",
        &format!(
            "stat_prefix: ingress_http\n          access_log:\n          - name: f\n            \
             typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              \
             path: {}\n              log_format: {{text_format_source: {{inline_string: \"%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %REQ(:METHOD)% %PROTOCOL% %BYTES_SENT%\\n\"}}}}",
            log.display()
        ),
        1,
    );
    let ours = start_proxy(&yaml)?;
    let addr = ours.listener_addr("main").expect("listener");
    let raw: Vec<&[u8]> = vec![
        MALFORMED[0],
        MALFORMED[2],
        MALFORMED[4],
        b"GET / HTTP/1.0\r\n\r\n",
    ];
    tokio::task::spawn_blocking(move || {
        for r in raw {
            until_close(addr, r);
        }
    })
    .await?;
    let stats = String::from_utf8_lossy(&admin_get(&ours, "/stats").await?.body).to_string();
    // (Envoy 1.40 printed these for the same four requests)
    for line in [
        "http.ingress_http.downstream_cx_protocol_error: 4",
        "http.ingress_http.downstream_rq_4xx: 4",
        "http.ingress_http.downstream_rq_total: 4",
        "http.ingress_http.downstream_rq_active: 0",
    ] {
        assert!(stats.lines().any(|l| l == line), "{line} in\n{stats}");
    }
    let mut text = String::new();
    for _ in 0..50 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            "400 DPE http1.codec_error - HTTP/1.1 11",
            "426 DPE low_version - HTTP/1.1 16",
            "400 DPE http1.invalid_characters - HTTP/1.1 11",
            "426 DPE low_version - HTTP/1.1 16",
        ]
    );
    Ok(())
}

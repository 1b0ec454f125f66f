//! Request body chunks as plugins see them, against real Envoy 1.40: Envoy's HTTP/1.1 codec
//! hands a filter everything one socket read got (it reads until the socket would block), so a
//! body the client wrote at once comes as one `on_http_request_body` call, not as the reader's
//! 8, 16, 32 ... KiB pieces. The `trace` plugin records each call's `body_size` (`qb<n>`, `e`
//! at the end of stream) in its `x-trace` response header.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use test_support::proxy_peers::start_upstream;

use crate::support::*;

/// Writes a POST with a `len`-byte body in one write; returns the `x-trace` response header.
fn traced_post(addr: SocketAddr, len: usize, chunked: bool) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = vec![b'x'; len];
    let mut req = if chunked {
        // One chunk per 16 KiB, as a client streaming a file writes them.
        let mut r = b"POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
        for c in body.chunks(16 * 1024) {
            r.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            r.extend_from_slice(c);
            r.extend_from_slice(b"\r\n");
        }
        r.extend_from_slice(b"0\r\n\r\n");
        r
    } else {
        format!("POST / HTTP/1.1\r\nhost: h\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n")
            .into_bytes()
    };
    if !chunked {
        req.extend_from_slice(&body);
    }
    s.write_all(&req)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out);
    anyhow::ensure!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        text.lines().next().unwrap_or_default()
    );
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("x-trace: "))
        .unwrap_or_default()
        .to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_read_at_once_is_one_callback_like_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let (ours, ours_addr, envoy_proc, envoy_addr) = start_both(|admin, listen| {
        one_plugin(
            (admin, listen, up.addr.port()),
            test_plugins::TRACE,
            "tr",
            "",
            "",
        )
    })
    .await?;
    for (len, chunked) in [(60_000, false), (60_000, true), (100, false)] {
        let envoy =
            tokio::task::spawn_blocking(move || traced_post(envoy_addr, len, chunked)).await??;
        let wasmesh =
            tokio::task::spawn_blocking(move || traced_post(ours_addr, len, chunked)).await??;
        assert_eq!(
            wasmesh, envoy,
            "{len} bytes, chunked {chunked}: wasmesh (left) vs Envoy (right)"
        );
        assert!(
            envoy.contains(&format!("qb{len} ")),
            "{len} {chunked}: {envoy}"
        );
    }
    drop((ours, envoy_proc));
    Ok(())
}

/// A raw HTTP/1.1 upstream answering every request with a `len`-byte body, head and body in
/// one write.
fn one_write_upstream(len: usize) -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    let mut answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n").into_bytes();
    answer.extend(std::iter::repeat_n(b'y', len));
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {
                    if s.write_all(&answer).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(port)
}

/// The same for a response body: Envoy's upstream codec reads what the upstream wrote at once
/// and the plugin gets it in one `on_http_response_body`. The `trace` plugin's `on_log` counter
/// name holds every callback (`...sb60000_sb0e` or the pieces).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_read_at_once_is_one_callback_like_envoy() -> anyhow::Result<()> {
    let port = one_write_upstream(60_000)?;
    let (ours, ours_addr, envoy_proc, envoy_addr) = start_both(|admin, listen| {
        one_plugin((admin, listen, port), test_plugins::TRACE, "tr", "", "")
    })
    .await?;
    let trace = |text: String| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("wasmcustom.trace."))
            .map(|l| l.split(':').next().unwrap_or_default().to_string())
            .collect()
    };
    let mut seen = Vec::new();
    for (addr, admin) in [
        (envoy_addr, envoy_proc.admin),
        (ours_addr, ours.admin_addr().expect("admin")),
    ] {
        let r = send(addr, get("h", "/")).await?;
        assert_eq!((r.status, r.body.len()), (200, 60_000));
        seen.push(trace(send(admin, get("admin", "/stats")).await?.text()));
    }
    assert_eq!(seen[1], seen[0], "wasmesh (left) vs Envoy (right)");
    assert!(
        seen[0].iter().any(|n| n.contains("_sb60000_")),
        "{:?}",
        seen[0]
    );
    drop((ours, envoy_proc));
    Ok(())
}

/// A body that arrives while a plugin holds the request headers (here: waiting for a 300 ms
/// callout) is buffered by Envoy, end of stream included, and the next plugin gets it in one
/// callback with `end_of_stream` set (`qb5e`), not the HTTP/1.1 codec's data-then-empty-end
/// (`qb5 qb0e`) that a body streaming past an idle chain gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_buffered_while_headers_are_held_comes_in_one_callback_like_envoy()
-> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let filters = format!(
        "{}{}",
        wasm_filter(
            "co",
            test_plugins::CALLOUT,
            r#"{"cluster": "up", "path": "/delay/300"}"#
        ),
        wasm_filter("tr", test_plugins::TRACE, "")
    );
    let (ours, ours_addr, envoy_proc, envoy_addr) = start_both(|admin, listen| {
        hcm_bootstrap((admin, listen, up.addr.port()), "", &filters, "")
    })
    .await?;
    for len in [5, 60_000] {
        let envoy =
            tokio::task::spawn_blocking(move || traced_post(envoy_addr, len, false)).await??;
        let wasmesh =
            tokio::task::spawn_blocking(move || traced_post(ours_addr, len, false)).await??;
        assert_eq!(
            wasmesh, envoy,
            "{len} bytes: wasmesh (left) vs Envoy (right)"
        );
        assert!(envoy.contains(&format!("qb{len}e")), "{len}: {envoy}");
    }
    drop((ours, envoy_proc));
    Ok(())
}

/// A POST to an upstream that refuses the connection. Envoy's codec has passed the body (read
/// with the headers) through the filters while the router was connecting (the router buffers
/// it), so the plugin saw it before the 503, and the request was complete, so the connection
/// stays open. (Over h2 the client's DATA frame may come after the refusal, in Envoy and in
/// wasmesh alike: then the plugin sees no body, `qh sh`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_reaches_the_filters_before_a_refused_upstream_like_envoy() -> anyhow::Result<()> {
    let refused = test_support::proxy_peers::free_ports(1)?[0];
    let (ours, ours_addr, envoy_proc, envoy_addr) = start_both(|admin, listen| {
        one_plugin((admin, listen, refused), test_plugins::TRACE, "tr", "", "")
    })
    .await?;
    let mut seen = Vec::new();
    for addr in [envoy_addr, ours_addr] {
        for h2 in [false, true] {
            let r = send_either(addr, h2, "POST", bytes::Bytes::from_static(b"hello")).await?;
            let h = |n: &str| {
                r.headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_string()
            };
            seen.push((r.status, h("x-trace"), h("connection")));
        }
    }
    let (envoy, wasmesh) = seen.split_at(2);
    assert_eq!(
        wasmesh[0], envoy[0],
        "HTTP/1.1: wasmesh (left) vs Envoy (right)"
    );
    assert_eq!(
        envoy[0],
        (503, "qh qb5 qb0e sh".to_string(), "-".to_string())
    );
    let h2 = [
        (503, "qh qb5e sh".to_string(), "-".to_string()),
        (503, "qh sh".to_string(), "-".to_string()),
    ];
    assert!(h2.contains(&envoy[1]), "Envoy, h2: {:?}", envoy[1]);
    assert!(h2.contains(&wasmesh[1]), "wasmesh, h2: {:?}", wasmesh[1]);
    drop((ours, envoy_proc));
    Ok(())
}

/// A plugin that buffers the whole request body, with a 16 KiB listener buffer limit and a
/// 100 KB body: over HTTP/1.1 Envoy answers 413 and closes the connection; an h2 stream's
/// limit is its flow-control window (256 MiB by default), so over h2 the body is buffered
/// whole and the request goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buffer_limit_of_an_h2_stream_is_its_window_like_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let filter = wasm_filter(
        "rw",
        test_plugins::BODY_REWRITE,
        r#"{"request": {"from": "a", "to": "b"}}"#,
    );
    let (ours, ours_addr, envoy_proc, envoy_addr) = start_both(|admin, listen| {
        hcm_bootstrap((admin, listen, up.addr.port()), "", &filter, "").replacen(
            "  - name: main\n",
            "  - name: main\n    per_connection_buffer_limit_bytes: 16384\n",
            1,
        )
    })
    .await?;
    let mut seen = Vec::new();
    for addr in [envoy_addr, ours_addr] {
        for h2 in [false, true] {
            let body = bytes::Bytes::from(vec![b'a'; 100_000]);
            let r = send_either(addr, h2, "POST", body).await?;
            let connection = r
                .headers
                .get("connection")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string();
            seen.push((r.status, connection));
        }
    }
    let (envoy, wasmesh) = seen.split_at(2);
    assert_eq!(wasmesh, envoy, "wasmesh (left) vs Envoy (right)");
    assert_eq!(
        envoy,
        [(413, "close".to_string()), (200, "-".to_string())],
        "Envoy"
    );
    drop((ours, envoy_proc));
    Ok(())
}

/// A GET with a body whose `content-length` a plugin removed: Envoy's HTTP/1 encoder sends the
/// body chunked, over HTTP/1.1 and from an h2 client (hyper's client would assume a GET has no
/// body and drop it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_body_without_its_length_goes_upstream_chunked_like_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let filter = wasm_filter(
        "h",
        test_plugins::HEADERS,
        r#"{"request_remove": ["content-length"]}"#,
    );
    let (ours, ours_addr, envoy_proc, envoy_addr) =
        start_both(|admin, listen| hcm_bootstrap((admin, listen, up.addr.port()), "", &filter, ""))
            .await?;
    let mut seen = Vec::new();
    for addr in [envoy_addr, ours_addr] {
        for h2 in [false, true] {
            let r = send_either(addr, h2, "GET", bytes::Bytes::from_static(b"hello-a")).await?;
            let j = r.json();
            seen.push((
                r.status,
                j["body_len"].clone(),
                j["headers"]["transfer-encoding"].clone(),
                r.headers.contains_key("connection"),
            ));
        }
    }
    let (envoy, wasmesh) = seen.split_at(2);
    assert_eq!(wasmesh, envoy, "wasmesh (left) vs Envoy (right)");
    assert_eq!(envoy[0].1, 7, "{envoy:?}");
    assert_eq!(envoy[0].2, "chunked", "{envoy:?}");
    drop((ours, envoy_proc));
    Ok(())
}

/// A side service that answers every request with `status` after `delay_ms`.
fn slow_side(status: u16, delay_ms: u64) -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                std::thread::sleep(Duration::from_millis(delay_ms));
                let _ = s.write_all(
                    format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                );
            });
        }
    });
    Ok(port)
}

/// A keep-alive POST with a `len`-byte body written at once; the response head and body
/// (read by its `content-length`).
fn keep_alive_post(addr: SocketAddr, len: usize) -> anyhow::Result<(String, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut w = s.try_clone()?;
    let writer = std::thread::spawn(move || {
        let mut req =
            format!("POST / HTTP/1.1\r\nhost: h\r\ncontent-length: {len}\r\n\r\n").into_bytes();
        req.extend(std::iter::repeat_n(b'x', len));
        let _ = w.write_all(&req);
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    let (head, body_len) = loop {
        let n = s.read(&mut buf)?;
        anyhow::ensure!(n > 0, "closed before a response");
        got.extend_from_slice(&buf[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..i]).to_string();
            let cl = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            got.drain(..i + 4);
            break (head, cl);
        }
    };
    while got.len() < body_len {
        let n = s.read(&mut buf)?;
        anyhow::ensure!(n > 0, "closed in the body");
        got.extend_from_slice(&buf[..n]);
    }
    let _ = writer.join();
    Ok((head, String::from_utf8_lossy(&got[..body_len]).to_string()))
}

/// A plugin paused on a 300 ms callout while a 300 KB body streams in: Envoy goes on reading
/// the body into its buffer meanwhile. Allowed, the next plugin gets the whole body in one
/// callback with the end of stream; denied, the request is complete when the 403 goes out, so
/// the connection stays open (no `connection: close`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_is_read_while_a_plugin_waits_like_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    for (status, what) in [(200u16, "allowed"), (403, "denied")] {
        let side = slow_side(status, 300)?;
        let filters = format!(
            "{}{}",
            wasm_filter(
                "co",
                test_plugins::CALLOUT,
                r#"{"cluster": "side", "timeout_ms": 3000}"#
            ),
            wasm_filter("tr", test_plugins::TRACE, ""),
        );
        let (ours, ours_addr, envoy_proc, envoy_addr) = start_both(|admin, listen| {
            hcm_bootstrap(
                (admin, listen, up.addr.port()),
                "",
                &filters,
                &cluster_yaml("side", side, false),
            )
        })
        .await?;
        let mut seen = Vec::new();
        for addr in [envoy_addr, ours_addr] {
            let (head, _) =
                tokio::task::spawn_blocking(move || keep_alive_post(addr, 300_000)).await??;
            let pick = |name: &str| {
                head.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap_or("-")
                    .to_string()
            };
            seen.push((
                head.lines().next().unwrap_or_default().to_string(),
                pick("x-trace: "),
                pick("connection: "),
            ));
        }
        assert_eq!(seen[1], seen[0], "{what}: wasmesh (left) vs Envoy (right)");
        if status == 200 {
            assert_eq!(seen[0].1, "qh qb300000e sh", "{what}: {seen:?}");
        } else {
            assert_eq!(seen[0].2, "-", "{what}: {seen:?}");
        }
        drop((ours, envoy_proc));
    }
    Ok(())
}

/// One request to `addr`, over h2 (prior knowledge) or HTTP/1.1, with a body.
async fn send_either(
    addr: SocketAddr,
    h2: bool,
    method: &str,
    body: bytes::Bytes,
) -> anyhow::Result<Resp> {
    let mut req = http::Request::builder()
        .method(method)
        .uri(if h2 { "http://h/" } else { "/" })
        .body(http_body_util::Full::new(body))?;
    if h2 {
        *req.version_mut() = http::Version::HTTP_2;
        send_h2(addr, req).await
    } else {
        req.headers_mut().insert("host", "h".parse()?);
        send(addr, req).await
    }
}

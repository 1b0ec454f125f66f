//! Per-worker upstream connection pools: HTTP/1.1 connections reused once their previous
//! response is done, one multiplexed h2 connection per host; plain TCP or TLS (ALPN).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::cluster::{Cluster, Host, UpstreamProtocol};
use crate::error::{ErrorKind, ProxyError};
use crate::read_ahead::{ReadAhead, ReadState};

/// Boxed error for bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of requests sent upstream and responses sent downstream (not `Send`: bodies
/// live on their worker).
pub type Body = Pin<Box<dyn http_body::Body<Data = Bytes, Error = BoxError>>>;

/// Boxes a body.
pub fn boxed<B>(b: B) -> Body
where
    B: http_body::Body<Data = Bytes> + 'static,
    B::Error: Into<BoxError>,
{
    use http_body_util::BodyExt;
    Box::pin(b.map_err(Into::into))
}

/// Spawns hyper's background futures on the worker's `LocalSet`.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: std::future::Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// Plain TCP or TLS.
pub enum MaybeTls {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl MaybeTls {
    /// The connection's local address (`upstream.local_address`).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            MaybeTls::Plain(t) => t.local_addr().ok(),
            MaybeTls::Tls(s) => s.get_ref().0.local_addr().ok(),
        }
    }
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }
}

type Key = (Arc<str>, SocketAddr);

#[derive(Default)]
struct Inner {
    idle_h1: HashMap<Key, Vec<IdleH1>>,
    h2: HashMap<Key, http2::SendRequest<Body>>,
}

/// An idle HTTP/1.1 connection: its sender and what its reads tell response bodies.
type IdleH1 = (http1::SendRequest<Body>, Arc<ReadState>);

/// The pools of one worker.
#[derive(Clone, Default)]
pub struct Pools {
    inner: Rc<RefCell<Inner>>,
}

/// Max idle HTTP/1.1 connections kept per host per worker.
const MAX_IDLE_PER_HOST: usize = 128;

/// Opens a connection (TCP + optional TLS) to `addr` for `cluster`.
pub async fn connect(cluster: &Cluster, host: &Host) -> Result<(MaybeTls, bool), ProxyError> {
    cluster.stats.cx_total.inc();
    host.cx_total.fetch_add(1, Ordering::Relaxed);
    let connecting = std::time::Instant::now();
    let tcp =
        match tokio::time::timeout(cluster.connect_timeout, TcpStream::connect(host.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                cluster.stats.cx_connect_fail.inc();
                host.connect_failed();
                return Err(ProxyError::new(ErrorKind::ConnectFailure(io_reason(&e))));
            }
            Err(_) => {
                cluster.stats.cx_connect_fail.inc();
                host.connect_failed();
                return Err(ProxyError::new(ErrorKind::ConnectFailure(
                    "Connection timed out".into(),
                )));
            }
        };
    host.connected();
    cluster.stats.cx_connect_ms.record_ms(connecting.elapsed());
    let _ = tcp.set_nodelay(true);
    match &cluster.tls {
        None => Ok((
            MaybeTls::Plain(tcp),
            cluster.protocol == UpstreamProtocol::Http2,
        )),
        Some(tls) => {
            let name = tls
                .sni
                .clone()
                .unwrap_or_else(|| rustls::pki_types::ServerName::IpAddress(host.addr.ip().into()));
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config));
            let stream =
                match tokio::time::timeout(cluster.connect_timeout, connector.connect(name, tcp))
                    .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        cluster.stats.cx_connect_fail.inc();
                        return Err(ProxyError::new(ErrorKind::ConnectFailure(format!(
                            "TLS error: {e}"
                        ))));
                    }
                    Err(_) => {
                        cluster.stats.cx_connect_fail.inc();
                        return Err(ProxyError::new(ErrorKind::ConnectFailure(
                            "TLS handshake timed out".into(),
                        )));
                    }
                };
            let h2 = match stream.get_ref().1.alpn_protocol() {
                Some(p) => p == b"h2",
                None => cluster.protocol == UpstreamProtocol::Http2,
            };
            Ok((MaybeTls::Tls(Box::new(stream)), h2))
        }
    }
}

/// The OS reason Envoy prints (`Connection refused`).
fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "Connection refused".into(),
        io::ErrorKind::TimedOut => "Connection timed out".into(),
        _ => {
            let s = e.to_string();
            // Strip " (os error N)".
            s.split(" (os error").next().unwrap_or(&s).to_string()
        }
    }
}

fn classify(e: &hyper::Error) -> ProxyError {
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        ProxyError::new(ErrorKind::UpstreamProtocol(e.to_string()))
    } else {
        // The causes too: an h2 stream reset by the peer shows only in hyper's source.
        let mut why = e.to_string();
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            why.push_str(": ");
            why.push_str(&c.to_string());
            cause = c.source();
        }
        ProxyError::new(ErrorKind::UpstreamReset(why))
    }
}

impl Pools {
    /// Closes idle HTTP/1.1 connections beyond `keep` per host (the most recently used stay).
    pub fn trim_idle(&self, keep: usize) {
        let mut inner = self.inner.borrow_mut();
        let mut closed = 0;
        for list in inner.idle_h1.values_mut() {
            if list.len() > keep {
                // Pushed at the end when returned: the front is the longest idle.
                closed += list.len() - keep;
                list.drain(..list.len() - keep);
            }
        }
        inner.idle_h1.retain(|_, l| !l.is_empty());
        if closed > 0 {
            tracing::debug!(closed, "closed idle upstream connections");
        }
    }

    /// Sends `req` to `host` of `cluster`, reusing a pooled connection when one is free.
    pub async fn send(
        &self,
        cluster: &Arc<Cluster>,
        cluster_name: &Arc<str>,
        host: &Arc<Host>,
        req: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, ProxyError> {
        self.send_with_reads(cluster, cluster_name, host, req)
            .await
            .map(|(r, _)| r)
    }

    /// [`Pools::send`], with what the HTTP/1.1 connection's reads tell the response body
    /// ([`crate::read_ahead::Coalesce`]; `None` over h2).
    pub(crate) async fn send_with_reads(
        &self,
        cluster: &Arc<Cluster>,
        cluster_name: &Arc<str>,
        host: &Arc<Host>,
        mut req: http::Request<Body>,
    ) -> Result<(http::Response<Incoming>, Option<Arc<ReadState>>), ProxyError> {
        host.rq_total.fetch_add(1, Ordering::Relaxed);
        let key: Key = (Arc::clone(cluster_name), host.addr);
        // h2: one multiplexed connection per host.
        let existing_h2 = self
            .inner
            .borrow()
            .h2
            .get(&key)
            .filter(|s| !s.is_closed())
            .cloned();
        if let Some(mut sender) = existing_h2 {
            set_h2_uri(&mut req);
            return sender
                .send_request(req)
                .await
                .map(|r| (r, None))
                .map_err(|e| classify(&e));
        }
        let idle = {
            let mut inner = self.inner.borrow_mut();
            let list = inner.idle_h1.entry(key.clone()).or_default();
            let mut found = None;
            while let Some((s, reads)) = list.pop() {
                if !s.is_closed() && s.is_ready() {
                    found = Some((s, reads));
                    break;
                }
            }
            found
        };
        let (mut sender, reads) = match idle {
            Some(s) => s,
            None => {
                let (io, h2) = connect(cluster, host).await?;
                if h2 {
                    let (mut sender, conn) = http2::Builder::new(LocalExec)
                        .timer(hyper_util::rt::TokioTimer::new())
                        .handshake(TokioIo::new(io))
                        .await
                        .map_err(|e| classify(&e))?;
                    let stats = cluster.stats.clone();
                    stats.cx_active.inc();
                    host.cx_active.fetch_add(1, Ordering::Relaxed);
                    let h = Arc::clone(host);
                    let opened = std::time::Instant::now();
                    tokio::task::spawn_local(async move {
                        let _ = conn.await;
                        stats.cx_active.dec();
                        stats.cx_length_ms.record_ms(opened.elapsed());
                        h.cx_active.fetch_sub(1, Ordering::Relaxed);
                    });
                    self.inner.borrow_mut().h2.insert(key, sender.clone());
                    set_h2_uri(&mut req);
                    return sender
                        .send_request(req)
                        .await
                        .map(|r| (r, None))
                        .map_err(|e| classify(&e));
                }
                // Read as Envoy reads an upstream: until the socket would block (its 1 MiB
                // connection buffer limit by default), for response body chunks like Envoy's.
                let reads = Arc::new(ReadState::on(io.local_addr()));
                let io = ReadAhead::new(io, 1024 * 1024, Arc::clone(&reads));
                let (sender, conn) = http1::Builder::new()
                    .handshake(TokioIo::new(io))
                    .await
                    .map_err(|e| classify(&e))?;
                let stats = cluster.stats.clone();
                stats.cx_active.inc();
                host.cx_active.fetch_add(1, Ordering::Relaxed);
                let h = Arc::clone(host);
                let opened = std::time::Instant::now();
                tokio::task::spawn_local(async move {
                    let _ = conn.await;
                    stats.cx_active.dec();
                    stats.cx_length_ms.record_ms(opened.elapsed());
                    h.cx_active.fetch_sub(1, Ordering::Relaxed);
                });
                (sender, reads)
            }
        };
        set_h1_uri(&mut req);
        let resp = sender.send_request(req).await.map_err(|e| classify(&e))?;
        let for_body = Arc::clone(&reads);
        // Back to the pool once this response is fully read.
        let inner = Rc::clone(&self.inner);
        tokio::task::spawn_local(async move {
            if sender.ready().await.is_ok() {
                let mut inner = inner.borrow_mut();
                let list = inner.idle_h1.entry(key).or_default();
                if list.len() < MAX_IDLE_PER_HOST {
                    list.push((sender, reads));
                }
            }
        });
        Ok((resp, Some(for_body)))
    }
}

/// HTTP/1.1 sends the origin form; `host` carries the authority.
fn set_h1_uri(req: &mut http::Request<Body>) {
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let pq = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        if let Ok(u) = pq.parse() {
            *req.uri_mut() = u;
        }
    }
    *req.version_mut() = http::Version::HTTP_11;
}

/// h2 needs `:scheme` and `:authority`: build them from the `host` header.
fn set_h2_uri(req: &mut http::Request<Body>) {
    let authority = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_else(|| "localhost".to_string());
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    if let Ok(u) = http::Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(pq)
        .build()
    {
        *req.uri_mut() = u;
    }
    req.headers_mut().remove(http::header::HOST);
    *req.version_mut() = http::Version::HTTP_2;
}

//! An HTTP/1.1 + h2c echo upstream on `127.0.0.1:0`: answers every request with 200 and a
//! plain-text body `METHOD PATH` followed by one `name: value` line per request header, plus an
//! `x-echo-upstream` response header naming the server. (Control-plane engineer's module.)

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running echo server; stops when dropped.
#[derive(Debug)]
pub struct EchoServer {
    /// Listening address.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(name: String, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut body = format!("{} {}\n", req.method(), req.uri());
    for (k, v) in req.headers() {
        body.push_str(&format!(
            "{}: {}\n",
            k,
            String::from_utf8_lossy(v.as_bytes())
        ));
    }
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    if let Ok(v) = name.parse() {
        resp.headers_mut().insert("x-echo-upstream", v);
    }
    Ok(resp)
}

/// Starts an echo server named `name`.
pub async fn start(name: &str) -> anyhow::Result<EchoServer> {
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
                let svc = hyper::service::service_fn(move |req| echo(name.clone(), req));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(EchoServer { addr, task })
}

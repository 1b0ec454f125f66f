//! Unit-test helpers: a tiny HTTP file server on 127.0.0.1:0 that counts requests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;

use crate::fetch::FetchOptions;

#[derive(Clone)]
pub(crate) struct Route {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
    pub(crate) delay: Duration,
}

pub(crate) struct FileServer {
    pub(crate) addr: SocketAddr,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    total: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FileServer {
    pub(crate) async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let routes: Arc<Mutex<HashMap<String, Route>>> = Arc::default();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let total = Arc::new(AtomicUsize::new(0));
        let (r, h, t) = (routes.clone(), hits.clone(), total.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (r, h, t) = (r.clone(), h.clone(), t.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (r, h, t) = (r.clone(), h.clone(), t.clone());
                            async move {
                                let path = req.uri().path().to_owned();
                                t.fetch_add(1, Ordering::SeqCst);
                                *h.lock().unwrap().entry(path.clone()).or_default() += 1;
                                let route = r.lock().unwrap().get(&path).cloned();
                                let route = route.unwrap_or(Route {
                                    status: 404,
                                    body: vec![],
                                    delay: Duration::ZERO,
                                });
                                if !route.delay.is_zero() {
                                    tokio::time::sleep(route.delay).await;
                                }
                                hyper::Response::builder()
                                    .status(route.status)
                                    .body(Full::new(Bytes::from(route.body)))
                            }
                        },
                    );
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            routes,
            hits,
            total,
            task,
        }
    }

    pub(crate) fn set(&self, path: &str, status: u16, body: Vec<u8>) {
        self.set_route(
            path,
            Route {
                status,
                body,
                delay: Duration::ZERO,
            },
        );
    }

    pub(crate) fn set_route(&self, path: &str, route: Route) {
        self.routes.lock().unwrap().insert(path.to_owned(), route);
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    pub(crate) fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
}

/// A small valid Wasm module, distinct per `seed`.
pub(crate) fn module(seed: u8) -> Vec<u8> {
    // A custom section carries the seed so modules differ.
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    m.extend_from_slice(&[0x00, 0x06, 0x04, b's', b'e', b'e', b'd', seed]);
    m
}

pub(crate) fn sha(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// Fast retries for tests.
pub(crate) fn fetch_options() -> FetchOptions {
    FetchOptions {
        http_initial_backoff: Duration::from_millis(10),
        http_max_backoff: Duration::from_millis(50),
        http_max_attempts: 3,
        http_request_timeout: Duration::from_secs(5),
        ..FetchOptions::default()
    }
}

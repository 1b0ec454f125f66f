//! Workers: N OS threads, each with a current-thread tokio runtime and a `LocalSet` (Envoy's
//! worker model), its own `SO_REUSEPORT` listening sockets and its own upstream pools.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::BodyExt;

use crate::config::ProxyConfig;
use crate::filter::{CalloutError, HttpCallDispatcher, LocalBoxFuture, WorkerContext};
use crate::upstream::Pools;

/// One worker's state, shared by its connections.
pub(crate) struct Worker {
    pub(crate) config: Arc<ArcSwap<ProxyConfig>>,
    pub(crate) pools: Pools,
    pub(crate) ctx: WorkerContext,
}

impl Worker {
    pub(crate) fn new(index: usize, config: Arc<ArcSwap<ProxyConfig>>) -> Rc<Self> {
        let pools = Pools::default();
        let dispatcher = Rc::new(Callouts {
            config: Arc::clone(&config),
            pools: pools.clone(),
        });
        Rc::new(Self {
            config,
            pools,
            ctx: WorkerContext::new(index, dispatcher),
        })
    }
}

/// HTTP callouts from filters, through the worker's pools.
struct Callouts {
    config: Arc<ArcSwap<ProxyConfig>>,
    pools: Pools,
}

impl HttpCallDispatcher for Callouts {
    fn has_hosts(&self, cluster: &str) -> bool {
        self.config
            .load()
            .clusters
            .get(cluster)
            .is_some_and(|c| c.has_hosts())
    }

    fn http_call(
        &self,
        cluster: &str,
        request: http::Request<Bytes>,
        timeout: Option<Duration>,
    ) -> LocalBoxFuture<'_, Result<http::Response<Bytes>, CalloutError>> {
        let cluster = cluster.to_string();
        Box::pin(async move {
            let config = self.config.load_full();
            let c = config
                .clusters
                .get(&cluster)
                .cloned()
                .ok_or_else(|| CalloutError::UnknownCluster(cluster.clone()))?;
            let host = c
                .pick(rand_u32())
                .ok_or_else(|| CalloutError::NoHealthyUpstream(cluster.clone()))?;
            let (mut parts, body) = request.into_parts();
            if !parts.headers.contains_key(http::header::HOST)
                && let Some(a) = parts.uri.authority()
                && let Ok(v) = http::HeaderValue::from_str(a.as_str())
            {
                parts.headers.insert(http::header::HOST, v);
            }
            // What Envoy's async client and router add: the request is internal, and the
            // upstream is told the timeout.
            parts
                .headers
                .insert("x-envoy-internal", http::HeaderValue::from_static("true"));
            if let Some(t) = timeout
                && let Ok(v) = http::HeaderValue::from_str(&t.as_millis().to_string())
            {
                parts.headers.insert("x-envoy-expected-rq-timeout-ms", v);
            }
            let body = if parts
                .extensions
                .get::<crate::filter::UnsizedBody>()
                .is_some()
            {
                unsized_body(body)
            } else {
                crate::hcm::full(body)
            };
            let req = http::Request::from_parts(parts, body);
            let start = std::time::Instant::now();
            let name: Arc<str> = Arc::from(cluster.as_str());
            c.stats.rq_total.inc();
            let fut = async {
                let resp = self
                    .pools
                    .send(&c, &name, &host, req)
                    .await
                    // Connection refused, reset before headers, a malformed response:
                    // the router's local reply, as Envoy's async client gets it.
                    .map_err(|e| CalloutError::Local {
                        status: e.status().as_u16(),
                        body: e.body(),
                    })?;
                let (mut parts, body) = resp.into_parts();
                if let Ok(v) = http::HeaderValue::from_str(&start.elapsed().as_millis().to_string())
                {
                    parts.headers.insert("x-envoy-upstream-service-time", v);
                }
                let collected = body
                    .collect()
                    .await
                    .map_err(|e| CalloutError::Reset(e.to_string()))?;
                if let Some(t) = collected.trailers() {
                    parts
                        .extensions
                        .insert(crate::filter::CalloutTrailers(t.clone()));
                }
                c.stats.record_status(parts.status.as_u16(), false);
                Ok(http::Response::from_parts(parts, collected.to_bytes()))
            };
            match timeout {
                Some(t) => tokio::time::timeout(t, fut).await.map_err(|_| {
                    c.stats.rq_timeout.inc();
                    CalloutError::Timeout
                })?,
                None => fut.await,
            }
        })
    }
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let id = std::thread::current().id();
    let mut h = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&(t, id), &mut h);
    std::hash::Hasher::finish(&h) | 1
}

/// A fast non-cryptographic random number (xorshift), per thread.
pub(crate) fn rand_u32() -> u32 {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        r.set(x);
        (x >> 32) as u32
    })
}

/// `b` as a body whose size is not known ahead (no `content-length` is sent for it).
fn unsized_body(b: bytes::Bytes) -> crate::upstream::Body {
    use http_body_util::BodyExt;
    let frames = futures::stream::once(async move {
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(b))
    });
    Box::pin(
        http_body_util::StreamBody::new(frames)
            .map_err(|e: std::convert::Infallible| -> crate::upstream::BoxError { match e {} }),
    )
}

//! `tcp_proxy` with network filters: bytes from downstream run through the filters in order,
//! bytes from upstream in reverse order; closes are reported to the filters; a filter can close
//! the connection.

use std::rc::Rc;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::listener::TcpProxyConfig;
use crate::network_filter::{CloseType, NetStatus, NetworkCx, NetworkFilter};
use crate::worker::Worker;

const READ_CHUNK: usize = 16 * 1024;

async fn run_filters(
    filters: &mut [Box<dyn NetworkFilter>],
    cx: &mut NetworkCx,
    buf: &mut BytesMut,
    end: bool,
    downstream: bool,
) -> bool {
    let order: Vec<usize> = if downstream {
        (0..filters.len()).collect()
    } else {
        (0..filters.len()).rev().collect()
    };
    for i in order {
        let Some(f) = filters.get_mut(i) else {
            continue;
        };
        let s = if downstream {
            f.on_downstream_data(cx, buf, end).await
        } else {
            f.on_upstream_data(cx, buf, end).await
        };
        if cx.close_requested() || s == NetStatus::StopIteration {
            return false;
        }
    }
    true
}

/// Proxies one downstream connection to the cluster of `cfg`.
pub(crate) async fn serve<D>(
    downstream: D,
    cfg: Arc<TcpProxyConfig>,
    mut filters: Vec<Box<dyn NetworkFilter>>,
    mut cx: NetworkCx,
    worker: Rc<Worker>,
) where
    D: AsyncRead + AsyncWrite + Unpin,
{
    cfg.cx_total.inc();
    let start = std::time::Instant::now();
    proxy(downstream, &cfg, &mut filters, &mut cx, &worker).await;
    cx.stream_info_mut().duration = Some(start.elapsed());
    let info = cx.stream_info();
    for f in filters.iter_mut() {
        f.on_log(info);
    }
    if !cfg.access_logs.is_empty() {
        let lc = crate::access_log::format::LogContext {
            info,
            request: None,
            response: None,
            trailers: None,
            tcp: true,
        };
        let summary = crate::access_log::RequestSummary::default();
        for log in &cfg.access_logs {
            match &log.sink {
                crate::access_log::Sink::Plugin(p) => p.log(info, &worker.ctx),
                _ => log.log(&lc, &summary),
            }
        }
    }
}

async fn proxy<D>(
    downstream: D,
    cfg: &TcpProxyConfig,
    filters: &mut [Box<dyn NetworkFilter>],
    cx: &mut NetworkCx,
    worker: &Worker,
) where
    D: AsyncRead + AsyncWrite + Unpin,
{
    for f in filters.iter_mut() {
        f.on_new_connection(cx).await;
        if cx.close_requested() {
            return;
        }
    }
    let config = worker.config.load_full();
    // A network filter may have chosen the cluster (filter state `envoy.tcp_proxy.cluster`).
    let cluster_name = match &cx.stream_info().tcp_proxy_cluster {
        Some(c) => Arc::clone(c),
        None => Arc::clone(cfg.cluster.pick(crate::worker::rand_u32())),
    };
    cx.stream_info_mut()
        .set_cluster(Some(Arc::clone(&cluster_name)), &config);
    let Some(cluster) = config.clusters.get(&*cluster_name).cloned() else {
        cfg.no_route.inc();
        return;
    };
    let Some(host) = cluster.pick(crate::worker::rand_u32()) else {
        cluster.stats.cx_none_healthy.inc();
        return;
    };
    cx.stream_info_mut().upstream_host = Some(host.addr);
    let upstream = match crate::upstream::connect(&cluster, &host).await {
        Ok((io, _)) => io,
        Err(e) => {
            tracing::debug!(cluster = %cluster_name, error = ?e.kind, "tcp_proxy upstream connect failed");
            // As Envoy's tcp_proxy (one connect attempt by default): `UF,URX`, the transport
            // failure reason, and the client's connection closed locally, which the network
            // filters hear of.
            let info = cx.stream_info_mut();
            info.response_flags
                .insert(crate::response_flags::ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
            info.response_flags
                .insert(crate::response_flags::ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
            info.upstream_transport_failure_reason =
                e.transport_failure_reason().map(|r| Arc::from(r.as_str()));
            for f in filters.iter_mut() {
                f.on_downstream_close(cx, CloseType::Local);
            }
            return;
        }
    };
    cluster.stats.cx_active.inc();
    relay(downstream, upstream, filters, cx, Some(cfg)).await;
    cluster.stats.cx_active.dec();
}

/// After a read of `n` bytes, reads whatever else is already there without waiting (Envoy
/// reads a socket until it would block): data that arrived with the peer's close is one
/// callback with end of stream, as in Envoy. Returns the bytes read in all and whether the
/// peer closed.
fn drain_ready<R: AsyncRead + Unpin>(r: &mut R, buf: &mut BytesMut, n: usize) -> (usize, bool) {
    use futures::FutureExt;
    if n == 0 {
        return (0, true);
    }
    let mut total = n;
    while buf.len() < READ_CHUNK * 4 {
        match r.read_buf(buf).now_or_never() {
            Some(Ok(0)) | Some(Err(_)) => return (total, true),
            Some(Ok(m)) => total += m,
            None => break,
        }
    }
    (total, false)
}

/// Moves bytes both ways between `downstream` and `upstream`, through the network filters
/// (downstream data in filter order, upstream data in reverse), until both sides closed or a
/// filter closed the connection. Also used in front of the HTTP connection manager, whose side
/// of the connection is then the `upstream` here.
pub(crate) async fn relay<D, U>(
    downstream: D,
    upstream: U,
    filters: &mut [Box<dyn NetworkFilter>],
    cx: &mut NetworkCx,
    cfg: Option<&TcpProxyConfig>,
) where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut dr, mut dw) = tokio::io::split(downstream);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let mut dbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut ubuf = BytesMut::with_capacity(READ_CHUNK);
    let (mut d_open, mut u_open) = (true, true);
    // The client half-closed while the upstream was open: as Envoy, the connection closes
    // (locally) once the upstream is done too, and filters hear of it then.
    let mut d_close_due = false;
    while d_open || u_open {
        tokio::select! {
            r = dr.read_buf(&mut dbuf), if d_open => {
                let (n, end) = drain_ready(&mut dr, &mut dbuf, r.unwrap_or(0));
                if let Some(cfg) = cfg {
                    cfg.rx_bytes.add(n as u64);
                }
                cx.stream_info_mut().bytes_received += n as u64;
                if run_filters(filters, cx, &mut dbuf, end, true).await && !dbuf.is_empty() {
                    if uw.write_all(&dbuf).await.is_err() {
                        break;
                    }
                    dbuf.clear();
                }
                if cx.close_requested() {
                    break;
                }
                if end {
                    d_open = false;
                    let _ = uw.shutdown().await;
                    if u_open {
                        d_close_due = true;
                    } else {
                        for f in filters.iter_mut() {
                            f.on_downstream_close(cx, CloseType::Remote);
                        }
                    }
                }
            }
            r = ur.read_buf(&mut ubuf), if u_open => {
                let (_, end) = drain_ready(&mut ur, &mut ubuf, r.unwrap_or(0));
                if run_filters(filters, cx, &mut ubuf, end, false).await && !ubuf.is_empty() {
                    if let Some(cfg) = cfg {
                        cfg.tx_bytes.add(ubuf.len() as u64);
                    }
                    cx.stream_info_mut().bytes_sent += ubuf.len() as u64;
                    if dw.write_all(&ubuf).await.is_err() {
                        break;
                    }
                    ubuf.clear();
                }
                if cx.close_requested() {
                    break;
                }
                if end {
                    u_open = false;
                    let _ = dw.shutdown().await;
                    for f in filters.iter_mut() {
                        f.on_upstream_close(cx, CloseType::Remote);
                    }
                    if std::mem::take(&mut d_close_due) {
                        for f in filters.iter_mut() {
                            f.on_downstream_close(cx, CloseType::Local);
                        }
                    }
                }
            }
        }
    }
    if cx.close_requested() {
        for f in filters.iter_mut() {
            f.on_downstream_close(cx, CloseType::Local);
            f.on_upstream_close(cx, CloseType::Local);
        }
    }
}

#[cfg(test)]
mod drain_tests {
    use super::*;

    #[tokio::test]
    async fn data_that_came_with_the_close_is_one_read_with_end_of_stream() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(b"abc").await.expect("write");
        a.write_all(b"def").await.expect("write");
        drop(a);
        let mut buf = BytesMut::new();
        let n = b.read_buf(&mut buf).await.expect("read");
        assert_eq!(drain_ready(&mut b, &mut buf, n), (6, true));
        assert_eq!(&buf[..], b"abcdef");

        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(b"abc").await.expect("write");
        let mut buf = BytesMut::new();
        let n = b.read_buf(&mut buf).await.expect("read");
        assert_eq!(
            drain_ready(&mut b, &mut buf, n),
            (3, false),
            "the peer is still open"
        );
        drop(a);
    }
}

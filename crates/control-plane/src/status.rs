//! A small debug HTTP endpoint (like istiod's `/debug/*` on 15014): per-file config status and
//! per-proxy sync status, as JSON. Plain HTTP/1.1 on a loopback address, one request per
//! connection; it reads only the request line.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tracing::{debug, info};
use wasmesh_xds::SnapshotCache;

use crate::source::ConfigSource;

/// `/debug/config_status`: every file (or Kubernetes object) with its errors, warnings and served
/// resource count.
pub fn config_status(source: &dyn ConfigSource) -> Value {
    let st = source.status();
    let files: Vec<Value> = st
        .files
        .iter()
        .map(|(path, f)| {
            json!({
                "file": path.display().to_string(),
                "applied": f.errors.is_empty(),
                "serving": f.serving,
                "errors": f.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                "warnings": f.warnings.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({"files": files})
}

/// `/debug/syncz`: per node, what it holds (acked) and what it rejected (nacked), against what
/// the control plane wants it to hold.
pub fn syncz(cache: &SnapshotCache) -> Value {
    let nodes: Vec<Value> = cache
        .statuses()
        .into_iter()
        .map(|(id, s)| {
            let want: serde_json::Map<String, Value> = cache
                .get(&id)
                .map(|snap| {
                    snap.type_urls()
                        .filter_map(|t| snap.get(t).map(|r| (t.to_string(), json!(r.version()))))
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "node": id,
                "streams": s.streams,
                "acked": s.acked,
                "nacked": s.nacked.iter().map(|(t, (v, m))| (t.clone(), json!({"version": v, "error": m}))).collect::<serde_json::Map<_, _>>(),
                "desired": want,
            })
        })
        .collect();
    json!({"nodes": nodes})
}

/// Serves `/debug/config_status` and `/debug/syncz` on `listener` forever.
pub async fn serve(
    listener: TcpListener,
    source: Arc<dyn ConfigSource>,
    cache: Arc<SnapshotCache>,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "debug status endpoint listening (/debug/config_status, /debug/syncz)");
    }
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let (source, cache) = (source.clone(), cache.clone());
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(read).read_line(&mut line).await.is_err() {
                return;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/");
            debug!(%peer, %path, "status request");
            let (code, body) = match path.split('?').next().unwrap_or_default() {
                "/debug/config_status" => ("200 OK", config_status(&*source)),
                "/debug/syncz" => ("200 OK", syncz(&cache)),
                _ => (
                    "404 Not Found",
                    json!({"error": "try /debug/config_status or /debug/syncz"}),
                ),
            };
            let body = serde_json::to_string_pretty(&body).unwrap_or_default();
            let resp = format!(
                "HTTP/1.1 {code}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = write.write_all(resp.as_bytes()).await;
            let _ = write.shutdown().await;
        });
    }
}

/// Binds `addr` for [`serve`].
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

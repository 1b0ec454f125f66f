//! `vm_config.code.remote`: Envoy fetches the module over HTTP through a cluster of the config
//! (`http_uri.uri`, `.cluster`, `.timeout`), retries (`retry_policy.num_retries`, default 1),
//! and accepts it only if its SHA-256 is `sha256`. Fetched modules are kept by hash, so a config
//! rebuilt over xDS does not fetch again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::RemoteDataSource;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use sha2::Digest as _;

/// Modules fetched so far, by lower-case SHA-256 hex.
fn cache() -> &'static Mutex<HashMap<String, Vec<u8>>> {
    static C: OnceLock<Mutex<HashMap<String, Vec<u8>>>> = OnceLock::new();
    C.get_or_init(Default::default)
}

/// Hashes whose fetch failed, and when (Envoy caches failures too, for a while).
fn failed() -> &'static Mutex<HashMap<String, std::time::Instant>> {
    static F: OnceLock<Mutex<HashMap<String, std::time::Instant>>> = OnceLock::new();
    F.get_or_init(Default::default)
}

/// How long a failed fetch is remembered.
const NEGATIVE_TTL: Duration = Duration::from_secs(10);

/// How many entries the cache holds, failures included (`wasm.remote_load_cache_entries`).
pub(crate) fn cached() -> usize {
    cache().lock().unwrap_or_else(|e| e.into_inner()).len()
        + failed().lock().unwrap_or_else(|e| e.into_inner()).len()
}

/// Whether the fetch of `r` failed less than [`NEGATIVE_TTL`] ago
/// (`wasm.remote_load_cache_negative_hits`).
pub(crate) fn recently_failed(r: &RemoteDataSource) -> bool {
    failed()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&r.sha256.to_ascii_lowercase())
        .is_some_and(|t| t.elapsed() < NEGATIVE_TTL)
}

/// The module `r` names, fetched from `endpoint` (the cluster's first host; `None`: the URI's
/// own host) or taken from the cache (then `true`). The error is the reason, for the config
/// error.
pub(crate) fn fetch(
    r: &RemoteDataSource,
    endpoint: Option<SocketAddr>,
) -> Result<(Vec<u8>, bool), String> {
    let want = r.sha256.to_ascii_lowercase();
    if want.is_empty() {
        return Err("sha256 is required".into());
    }
    if let Some(code) = cache().lock().unwrap_or_else(|e| e.into_inner()).get(&want) {
        return Ok((code.clone(), true));
    }
    let http = r.http_uri.as_ref().ok_or("http_uri is required")?;
    let uri: http::Uri = http
        .uri
        .parse()
        .map_err(|e| format!("bad uri {:?}: {e}", http.uri))?;
    let authority = uri
        .authority()
        .ok_or_else(|| format!("uri {:?} has no host", http.uri))?
        .clone();
    let addr = match endpoint {
        Some(a) => a,
        None => {
            use std::net::ToSocketAddrs as _;
            let port = authority.port_u16().unwrap_or(80);
            (authority.host(), port)
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve {}: {e}", authority.host()))?
                .next()
                .ok_or_else(|| format!("cannot resolve {}", authority.host()))?
        }
    };
    let timeout = http
        .timeout
        .as_ref()
        .map(|d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(5));
    let attempts = 1 + r
        .retry_policy
        .as_ref()
        .and_then(|p| p.num_retries.as_ref())
        .map_or(1, |n| n.value);
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let host = authority.to_string();
    // A thread of its own: config building may run on a runtime thread, which must not block
    // on another runtime.
    let fetched = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let mut last = String::new();
        for _ in 0..attempts {
            match rt
                .block_on(async { tokio::time::timeout(timeout, get(addr, &host, &path)).await })
            {
                Ok(Ok(body)) => return Ok(body),
                Ok(Err(e)) => last = e,
                Err(_) => last = format!("timed out after {timeout:?}"),
            }
        }
        Err(last)
    })
    .join()
    .map_err(|_| "fetch thread panicked".to_string())
    .and_then(|r| r)
    .and_then(|fetched| {
        let got = hex::encode(sha2::Sha256::digest(&fetched));
        if got == want {
            Ok(fetched)
        } else {
            Err(format!("sha256 mismatch: expected {want}, got {got}"))
        }
    });
    let fetched = match fetched {
        Ok(f) => f,
        Err(e) => {
            failed()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(want, std::time::Instant::now());
            return Err(e);
        }
    };
    failed()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&want);
    cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(want, fetched.clone());
    Ok((fetched, false))
}

/// One HTTP/1.1 GET; the body of a 200.
async fn get(addr: SocketAddr, host: &str, path: &str) -> Result<Vec<u8>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, host)
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if resp.status() != http::StatusCode::OK {
        return Err(format!("status {}", resp.status().as_u16()));
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(body.to_bytes().to_vec())
}

//! Fetching Wasm modules from remote sources: OCI registries and HTTP(S) servers.
//!
//! The fetchers only download and unpack; checksum verification against the
//! configured `sha256` and storage happen in [`crate::cache`].

pub mod http;
pub mod oci;
pub mod ssrf;
pub(crate) mod unbox;

use std::collections::HashSet;
use std::time::Duration;

pub use http::HttpFetcher;
pub use oci::{OciFetcher, PullSecret};

/// Download progress: bytes received so far and the total when the server announced it.
/// Called from the download task after every chunk.
pub type Progress = dyn Fn(u64, Option<u64>) + Send + Sync;

/// Istio's `ISTIO_WASM_MAX_BINARY_SIZE_BYTES` default: 256 MiB.
pub const DEFAULT_MAX_MODULE_SIZE: u64 = 256 * 1024 * 1024;
/// Istio's `WASM_HTTP_REQUEST_TIMEOUT` default.
pub const DEFAULT_HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Istio's `WASM_HTTP_REQUEST_MAX_RETRIES` default (attempts).
pub const DEFAULT_HTTP_MAX_ATTEMPTS: u32 = 5;

/// The 8-byte header of every Wasm binary module: `\0asm` and version 1.
pub const WASM_MAGIC: [u8; 4] = *b"\0asm";

/// `url` with any `user:password@` replaced by `***@`, for logs and error messages.
pub fn redact_url(url: &str) -> std::borrow::Cow<'_, str> {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            return std::borrow::Cow::Owned(format!("{scheme}://***@{}", &rest[at + 1..]));
        }
    }
    std::borrow::Cow::Borrowed(url)
}

/// Whether `bytes` starts like a Wasm binary module (Istio's `isValidWasmBinary`).
pub fn is_wasm_binary(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == WASM_MAGIC
}

#[cfg(test)]
#[test]
fn credentials_in_urls_are_redacted() {
    assert_eq!(
        redact_url("https://user:pa55@host:8443/p.wasm?x=1"),
        "https://***@host:8443/p.wasm?x=1"
    );
    assert_eq!(redact_url("https://host/a@b.wasm"), "https://host/a@b.wasm");
    assert_eq!(redact_url("oci://reg.io/ns/p:v1"), "oci://reg.io/ns/p:v1");
}

/// Registries (`host[:port]`) allowed without TLS verification (and, for OCI, over plain
/// HTTP). `*` allows every registry, as Istio's `WASM_INSECURE_REGISTRIES`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InsecureRegistries {
    all: bool,
    hosts: HashSet<String>,
}

impl InsecureRegistries {
    /// Parses a comma-separated list as `WASM_INSECURE_REGISTRIES`.
    pub fn parse(list: &str) -> Self {
        let mut out = Self::default();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if item == "*" {
                out.all = true;
            } else {
                out.hosts.insert(item.to_ascii_lowercase());
            }
        }
        out
    }

    /// Whether `host` (`host[:port]` as in the URL) is listed.
    pub fn contains(&self, host: &str) -> bool {
        self.all || self.hosts.contains(&host.to_ascii_lowercase())
    }
}

/// Settings shared by the fetchers.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Registries and HTTPS hosts allowed without TLS verification.
    pub insecure_registries: InsecureRegistries,
    /// Timeout of one HTTP request (not of the whole fetch with its retries).
    pub http_request_timeout: Duration,
    /// Attempts for one HTTP fetch, the first included.
    pub http_max_attempts: u32,
    /// First backoff between HTTP attempts; it grows 1.5x per attempt up to `http_max_backoff`.
    pub http_initial_backoff: Duration,
    /// Longest backoff between HTTP attempts.
    pub http_max_backoff: Duration,
    /// Largest module accepted (download, gunzip output, tar entry, OCI layer).
    pub max_module_size: u64,
    /// Extra networks refused, beyond link-local and cloud metadata addresses.
    pub blocked_networks: Vec<ssrf::IpNet>,
    /// Docker config JSON used for OCI pulls when the plugin has no pull secret (Istio's
    /// default keychain: `$DOCKER_CONFIG/config.json`).
    pub docker_config: Option<std::path::PathBuf>,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            insecure_registries: InsecureRegistries::default(),
            http_request_timeout: DEFAULT_HTTP_REQUEST_TIMEOUT,
            http_max_attempts: DEFAULT_HTTP_MAX_ATTEMPTS,
            http_initial_backoff: Duration::from_millis(500),
            http_max_backoff: Duration::from_secs(60),
            max_module_size: DEFAULT_MAX_MODULE_SIZE,
            blocked_networks: Vec::new(),
            docker_config: None,
        }
    }
}

/// Why a module could not be fetched. Messages name the url and the reason.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("wasm module download from {url} failed after {attempts} attempts, last error: {last}")]
    HttpExhausted {
        url: String,
        attempts: u32,
        last: String,
    },
    #[error("wasm module download from {url} failed: HTTP status {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("invalid url {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("refusing to fetch {url}: {addr} is a link-local, cloud metadata or blocked address")]
    BlockedAddress { url: String, addr: std::net::IpAddr },
    #[error(
        "refusing to fetch {url}: the registry sends clients to the token realm {realm}, a local, private or metadata address"
    )]
    BlockedRealm { url: String, realm: String },
    #[error("wasm module from {url} is larger than the maximum of {max} bytes")]
    TooLarge { url: String, max: u64 },
    #[error("cannot unpack wasm module from {url}: {reason}")]
    Unpack { url: String, reason: String },
    #[error(
        "fetched Wasm binary from {url} is invalid: it does not start with the Wasm magic \\0asm"
    )]
    NotWasm { url: String },
    #[error("cannot read the image manifest of {url}: {reason}")]
    Manifest { url: String, reason: String },
    /// The image is in no Wasm format. Istio's message (the url is in the log line around it).
    #[error("could not fetch Wasm binary: {reason}")]
    InvalidImage { url: String, reason: String },
    #[error("cannot download layer {digest} of {url}: {reason}")]
    Blob {
        url: String,
        digest: String,
        reason: String,
    },
    #[error("invalid image pull secret for {url}: {reason}")]
    PullSecret { url: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

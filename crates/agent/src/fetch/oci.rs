//! OCI registry fetcher: the three formats Istio accepts, in its order and with its rules, plus
//! the single-layer and CNCF Wasm artifacts Istio rejects.
//!
//! 1. Docker image (Docker manifest): the last layer must be
//!    `application/vnd.docker.image.rootfs.diff.tar.gzip`, holding `plugin.wasm`.
//! 2. OCI image: last layer `application/vnd.oci.image.layer.v1.tar+gzip` holding `plugin.wasm`
//!    (an uncompressed `...layer.v1.tar` is refused, as in Istio).
//! 3. Wasm OCI artifact: a layer `application/vnd.module.wasm.content.layer.v1+wasm` among
//!    exactly 2 (Istio) or as the only layer (ours).
//! 4. CNCF Wasm artifact: a layer `application/vnd.wasm.content.layer.v1+wasm` (ours).
//!
//! The checksum of an OCI module is the image manifest digest, as in Istio. Registries are
//! tried over HTTPS first and over plain HTTP where go-containerregistry would (see
//! [`plain_http_allowed`]) or when the server answered in plain HTTP.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;

use super::http::error_chain;
use super::{FetchError, FetchOptions, unbox};
use format::pick_format;

mod format;

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Istio's ("solo-io/wasm" spec) Wasm artifact layer.
pub const ISTIO_WASM_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
/// The CNCF TAG-Runtime Wasm OCI artifact layer.
pub const CNCF_WASM_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";

/// Docker config JSON (`{"auths": {...}}`), as a `kubernetes.io/dockerconfigjson` secret.
/// Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct PullSecret(pub Vec<u8>);

impl fmt::Debug for PullSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PullSecret(<redacted>)")
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, DockerAuth>,
}

#[derive(Deserialize, Default)]
struct DockerAuth {
    #[serde(default)]
    auth: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    identitytoken: String,
    #[serde(default)]
    registrytoken: String,
}

fn normalize_registry(key: &str) -> String {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let k = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match k.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        _ => k,
    }
}

impl PullSecret {
    /// The credentials for `registry` (`host[:port]`); anonymous when the secret has none.
    pub fn auth_for(&self, registry: &str, url: &str) -> Result<RegistryAuth, FetchError> {
        let bad = |reason: String| FetchError::PullSecret {
            url: url.to_owned(),
            reason,
        };
        if self.0.trim_ascii() == b"null" {
            return Err(bad("the secret is the JSON literal null".into()));
        }
        let cfg: DockerConfig = serde_json::from_slice(&self.0)
            .map_err(|e| bad(format!("not a docker config JSON: {e}")))?;
        let want = normalize_registry(registry);
        let Some(entry) = cfg
            .auths
            .into_iter()
            .find(|(k, _)| normalize_registry(k) == want)
            .map(|(_, v)| v)
        else {
            return Ok(RegistryAuth::Anonymous);
        };
        if !entry.registrytoken.is_empty() {
            return Ok(RegistryAuth::Bearer(entry.registrytoken));
        }
        if !entry.username.is_empty() || !entry.password.is_empty() {
            return Ok(RegistryAuth::Basic(entry.username, entry.password));
        }
        if !entry.auth.is_empty() {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(entry.auth.trim())
                .map_err(|_| bad(format!("auth of {registry} is not base64")))?;
            let decoded = String::from_utf8(decoded)
                .map_err(|_| bad(format!("auth of {registry} is not UTF-8")))?;
            let (u, p) = decoded
                .split_once(':')
                .ok_or_else(|| bad(format!("auth of {registry} is not user:password")))?;
            return Ok(RegistryAuth::Basic(u.to_owned(), p.to_owned()));
        }
        if !entry.identitytoken.is_empty() {
            // Docker sends an identity token as the password of user "<token>".
            return Ok(RegistryAuth::Basic("<token>".into(), entry.identitytoken));
        }
        Ok(RegistryAuth::Anonymous)
    }
}

#[derive(Deserialize)]
struct RawManifest {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<IndexEntry>,
}

#[derive(Deserialize, Clone, Debug)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: i64,
}

#[derive(Deserialize)]
struct IndexEntry {
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

/// How the module sits in the image, once the format is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// Docker image, `plugin.wasm` in the last layer.
    Docker,
    /// OCI image, `plugin.wasm` in the last layer.
    OciImage,
    /// Istio's Wasm artifact layer (raw module).
    WasmArtifact,
    /// CNCF Wasm artifact layer (raw module).
    CncfWasm,
    /// No Wasm format recognised: [`OciFetcher::fetch_module`] fails with the reason. As in
    /// Istio, this is found out after the checksum check and counts as a download failure.
    Invalid,
}

/// The result of reading a manifest: its digest (the module checksum) and the layer to download.
pub struct Prepared {
    client: Client,
    reference: Reference,
    url: String,
    /// The module layer, or why the image is in no Wasm format.
    layer: Result<Descriptor, String>,
    /// Recognised format.
    pub format: ImageFormat,
    /// Manifest digest, lowercase hex without `sha256:`.
    pub digest: String,
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("url", &self.url)
            .field("format", &self.format)
            .field("digest", &self.digest)
            .finish()
    }
}

/// Fetches modules from OCI registries. Cheap to clone.
#[derive(Clone)]
pub struct OciFetcher {
    opts: Arc<FetchOptions>,
    /// Registries found to speak plain HTTP, so the HTTPS try is skipped next time.
    plain_http: Arc<Mutex<HashMap<String, bool>>>,
    /// Clients per (registry, protocol, credentials): building one costs ~20 ms (TLS roots)
    /// and each keeps its connection pool and registry tokens.
    clients: Arc<Mutex<HashMap<String, Client>>>,
    /// Registries (and protocol) whose auth realm was checked.
    realms_ok: Arc<Mutex<std::collections::HashSet<String>>>,
}

/// The `realm` of a `Bearer` challenge.
fn bearer_realm(challenge: &str) -> Option<String> {
    let rest = challenge
        .trim()
        .strip_prefix("Bearer")
        .or_else(|| challenge.trim().strip_prefix("bearer"))?;
    let i = rest.find("realm=")?;
    let v = &rest[i + "realm=".len()..];
    let v = v
        .strip_prefix('"')
        .map(|v| v.split('"').next().unwrap_or(v))
        .unwrap_or_else(|| v.split(',').next().unwrap_or(v));
    Some(v.trim().to_owned())
}

/// Istio's rule: a realm must be http(s) and not `localhost`, `metadata.google.internal`, or a
/// private, loopback, link-local or blocked IP literal.
fn realm_is_blocked(realm: &str, extra: &[super::ssrf::IpNet]) -> bool {
    let Ok(u) = reqwest::Url::parse(realm) else {
        return true;
    };
    if u.scheme() != "http" && u.scheme() != "https" {
        return true;
    }
    let Some(host) = u.host_str() else {
        return true;
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if host == "localhost" || host == "metadata.google.internal" {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => {
            let private = match ip {
                std::net::IpAddr::V4(v4) => v4.is_private() || v4.is_loopback(),
                std::net::IpAddr::V6(v6) => {
                    v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00
                }
            };
            private || super::ssrf::is_blocked(ip, extra)
        }
        Err(_) => false,
    }
}

impl fmt::Debug for OciFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OciFetcher")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// Clients kept at most; the map is cleared past this (credentials rotate, registries come and go).
const MAX_CLIENTS: usize = 64;

fn auth_fingerprint(auth: &RegistryAuth) -> String {
    use sha2::Digest;
    let secret = match auth {
        RegistryAuth::Anonymous => return "anonymous".into(),
        RegistryAuth::Basic(u, p) => format!("basic\0{u}\0{p}"),
        RegistryAuth::Bearer(t) => format!("bearer\0{t}"),
    };
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// A module downloaded from a registry.
#[derive(Debug)]
pub struct Module {
    /// The module bytes.
    pub bytes: Vec<u8>,
    /// sha256 (hex) of `bytes` when already known (the verified layer digest of a raw Wasm layer).
    pub sha256: Option<String>,
}

/// go-containerregistry's `name.Registry.Scheme()`: registries it may reach over plain HTTP
/// without being told (RFC 1918 addresses, `localhost:<port>`, `*.local`/`*.localhost`, and
/// names containing `127.0.0.1` or `::1`). It still tries HTTPS first.
pub fn plain_http_allowed(registry: &str) -> bool {
    let host = registry.split(':').next().unwrap_or(registry);
    let rfc1918 = host
        .parse::<std::net::Ipv4Addr>()
        .is_ok_and(|ip| ip.is_private());
    // `.*\.local(?:host)?(?::\d{1,5})?$`
    let name = match registry.rsplit_once(':') {
        Some((n, p)) if (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => registry,
    };
    let local_name = name.ends_with(".local") || name.ends_with(".localhost");
    rfc1918
        || registry.starts_with("localhost:")
        || local_name
        || registry.contains("127.0.0.1")
        || registry.contains("::1")
}

/// Whether a failed HTTPS request met a server that answered in plain HTTP (Go's "server gave
/// HTTP response to HTTPS client"; rustls reports the `HTTP/` bytes as a bad record type).
fn answered_in_plain_http(error: &str) -> bool {
    error.contains("InvalidContentType")
        || error.contains("server gave HTTP response")
        || error.contains("HTTP response to HTTPS client")
}

impl OciFetcher {
    /// A fetcher with the given options.
    pub fn new(opts: FetchOptions) -> Self {
        Self {
            opts: Arc::new(opts),
            plain_http: Arc::default(),
            clients: Arc::default(),
            realms_ok: Arc::default(),
        }
    }

    fn client(
        &self,
        registry: &str,
        plain_http: bool,
        insecure: bool,
        auth: &RegistryAuth,
    ) -> Client {
        let key = format!(
            "{registry}\0{plain_http}\0{insecure}\0{}",
            auth_fingerprint(auth)
        );
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(&key) {
            return c.clone();
        }
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        let c = Self::new_client(registry, plain_http, insecure);
        clients.insert(key, c.clone());
        c
    }

    fn new_client(registry: &str, plain_http: bool, insecure: bool) -> Client {
        Client::new(ClientConfig {
            protocol: if plain_http {
                ClientProtocol::HttpsExcept(vec![registry.to_owned()])
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: insecure,
            ..ClientConfig::default()
        })
    }

    /// Reads the manifest of `url` (`oci://host/repo[:tag][@sha256:...]`) and picks the module layer.
    pub async fn prepare(
        &self,
        url: &str,
        secret: Option<&PullSecret>,
    ) -> Result<Prepared, FetchError> {
        let target = url.strip_prefix("oci://").unwrap_or(url);
        let reference: Reference = target.parse().map_err(|e| FetchError::InvalidUrl {
            url: url.to_owned(),
            reason: format!("{e}"),
        })?;
        let registry = reference.resolve_registry().to_owned();
        self.check_ssrf(reference.registry(), url).await?;
        let default_secret;
        let secret = match (secret, &self.opts.docker_config) {
            (Some(s), _) => Some(s),
            (None, Some(path)) => match std::fs::read(path) {
                Ok(bytes) => {
                    default_secret = PullSecret(bytes);
                    Some(&default_secret)
                }
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "no default docker config; pulling anonymously");
                    None
                }
            },
            (None, None) => None,
        };
        let auth = match secret {
            Some(s) => s.auth_for(reference.registry(), url)?,
            None => RegistryAuth::Anonymous,
        };
        let insecure = self.opts.insecure_registries.contains(reference.registry());
        let known_plain = self
            .plain_http
            .lock()
            .ok()
            .and_then(|m| m.get(&registry).copied());
        let accept = [
            OCI_MANIFEST,
            DOCKER_MANIFEST,
            OCI_INDEX,
            DOCKER_MANIFEST_LIST,
        ];

        // HTTPS first, then plain HTTP as Istio (go-containerregistry) does: for the registries
        // `name.Registry.Scheme()` allows, for listed insecure ones, and for any registry that
        // answered the HTTPS request in plain HTTP (`PrepareFetch`'s "server gave HTTP
        // response" retry). TLS verification stays governed by the insecure list alone.
        let may_fall_back = insecure || plain_http_allowed(reference.registry());
        let attempts: &[bool] = if known_plain == Some(true) {
            &[true]
        } else {
            &[false, true]
        };
        let mut errors = Vec::new();
        let mut found = None;
        for &plain in attempts {
            // A refused realm is final; a failed probe is left to the pull to report.
            self.check_realm(&registry, plain, insecure, url).await?;
            let client = self.client(&registry, plain, insecure, &auth);
            match client.pull_manifest_raw(&reference, &auth, &accept).await {
                Ok((body, digest)) => {
                    if let Ok(mut m) = self.plain_http.lock() {
                        m.insert(registry.clone(), plain);
                    }
                    found = Some((client, body, digest));
                    break;
                }
                Err(e) => {
                    let chain = error_chain(&e);
                    // Only a transport failure (e.g. TLS to a plain-HTTP registry) is worth
                    // retrying over plain HTTP; the registry answered otherwise.
                    let retry =
                        matches!(e, oci_client::errors::OciDistributionError::RequestError(_))
                            && (may_fall_back || answered_in_plain_http(&chain));
                    errors.push(format!("{}: {chain}", if plain { "http" } else { "https" }));
                    if !retry {
                        break;
                    }
                }
            }
        }
        let Some((client, body, mut digest)) = found else {
            return Err(FetchError::Manifest {
                url: url.to_owned(),
                reason: errors.join("; "),
            });
        };
        let manifest_err = |reason: String| FetchError::Manifest {
            url: url.to_owned(),
            reason,
        };
        let mut manifest: RawManifest = serde_json::from_slice(&body)
            .map_err(|e| manifest_err(format!("invalid manifest JSON: {e}")))?;
        let mut reference = reference;
        if !manifest.manifests.is_empty()
            || manifest.media_type == OCI_INDEX
            || manifest.media_type == DOCKER_MANIFEST_LIST
        {
            // An index: take the Wasm platform entry, else linux/amd64, else the first.
            let entry = manifest
                .manifests
                .iter()
                .find(|m| {
                    m.platform.as_ref().is_some_and(|p| {
                        p.architecture == "wasm" || p.os == "wasip1" || p.os == "wasi"
                    })
                })
                .or_else(|| {
                    manifest.manifests.iter().find(|m| {
                        m.platform
                            .as_ref()
                            .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
                    })
                })
                .or_else(|| manifest.manifests.first())
                .ok_or_else(|| manifest_err("empty image index".into()))?;
            reference = Reference::with_digest(
                reference.registry().to_owned(),
                reference.repository().to_owned(),
                entry.digest.clone(),
            );
            let (body, d) = client
                .pull_manifest_raw(&reference, &auth, &accept[..2])
                .await
                .map_err(|e| manifest_err(error_chain(&e)))?;
            manifest = serde_json::from_slice(&body)
                .map_err(|e| manifest_err(format!("invalid manifest JSON: {e}")))?;
            digest = d;
        }
        let (format, layer) = match pick_format(&manifest) {
            Ok((format, layer)) => (format, Ok(layer)),
            Err(reason) => (ImageFormat::Invalid, Err(reason)),
        };
        let digest = digest
            .strip_prefix("sha256:")
            .unwrap_or(&digest)
            .to_ascii_lowercase();
        Ok(Prepared {
            client,
            reference,
            url: url.to_owned(),
            layer,
            format,
            digest,
        })
    }

    /// Istio's `ssrfProtectionTransport`: refuses a registry whose bearer-token realm points at
    /// a local, private, link-local or metadata address (the pull would follow it). Probed once
    /// per registry and protocol.
    async fn check_realm(
        &self,
        registry: &str,
        plain: bool,
        insecure: bool,
        url: &str,
    ) -> Result<(), FetchError> {
        let key = format!("{registry}\0{plain}");
        if self
            .realms_ok
            .lock()
            .map(|s| s.contains(&key))
            .unwrap_or(false)
        {
            return Ok(());
        }
        let scheme = if plain { "http" } else { "https" };
        let probe = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(insecure)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(10))
            .dns_resolver(super::ssrf::GuardedResolver {
                extra: Arc::new(self.opts.blocked_networks.clone()),
            })
            .build()
            .map_err(|e| FetchError::Client(e.to_string()))?;
        let Ok(resp) = probe.get(format!("{scheme}://{registry}/v2/")).send().await else {
            return Ok(());
        };
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if let Some(realm) = bearer_realm(&challenge)
            && realm_is_blocked(&realm, &self.opts.blocked_networks)
        {
            return Err(FetchError::BlockedRealm {
                url: url.to_owned(),
                realm,
            });
        }
        if let Ok(mut s) = self.realms_ok.lock() {
            s.insert(key);
        }
        Ok(())
    }

    /// Refuses registries at link-local, cloud metadata or blocked addresses (Istio's SSRF guard).
    async fn check_ssrf(&self, registry: &str, url: &str) -> Result<(), FetchError> {
        let (host, port) = match registry.rsplit_once(':') {
            Some((h, _)) if !h.ends_with(']') && h.contains(':') => (registry, 443), // bare IPv6
            Some((h, p)) => (h, p.parse().unwrap_or(443)),
            None => (registry, 443),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<std::net::IpAddr> = match host.parse() {
            Ok(ip) => vec![ip],
            Err(_) => match tokio::net::lookup_host((host, port)).await {
                Ok(a) => a.map(|a| a.ip()).collect(),
                // Resolution errors surface as transport errors of the pull itself.
                Err(_) => vec![],
            },
        };
        match addrs
            .into_iter()
            .find(|ip| super::ssrf::is_blocked(*ip, &self.opts.blocked_networks))
        {
            Some(addr) => Err(FetchError::BlockedAddress {
                url: url.to_owned(),
                addr,
            }),
            None => Ok(()),
        }
    }

    /// Downloads the module layer of a prepared image (verifying its digest) and unpacks it.
    pub async fn fetch_module(&self, prepared: Prepared) -> Result<Module, FetchError> {
        self.fetch_module_with_progress(prepared, None).await
    }

    /// [`OciFetcher::fetch_module`], reporting the layer download to `progress`.
    pub async fn fetch_module_with_progress(
        &self,
        prepared: Prepared,
        progress: Option<&super::Progress>,
    ) -> Result<Module, FetchError> {
        use futures::StreamExt;
        let max = self.opts.max_module_size;
        let url = prepared.url.as_str();
        let layer = prepared
            .layer
            .clone()
            .map_err(|reason| FetchError::InvalidImage {
                url: url.to_owned(),
                reason,
            })?;
        if layer.size > 0 && layer.size as u64 > max {
            return Err(FetchError::TooLarge {
                url: url.to_owned(),
                max,
            });
        }
        let blob_err = |reason: String| FetchError::Blob {
            url: url.to_owned(),
            digest: layer.digest.clone(),
            reason,
        };
        let mut stream = prepared
            .client
            .pull_blob_stream(&prepared.reference, layer.digest.as_str())
            .await
            .map_err(|e| blob_err(error_chain(&e)))?;
        if stream.content_length.is_some_and(|l| l > max) {
            return Err(FetchError::TooLarge {
                url: url.to_owned(),
                max,
            });
        }
        // The stream checks the layer digest as it ends.
        let mut out: Vec<u8> =
            Vec::with_capacity(stream.content_length.unwrap_or(0).min(max) as usize);
        while let Some(chunk) = stream.stream.next().await {
            let chunk = chunk.map_err(|e| blob_err(error_chain(&e)))?;
            if (out.len() + chunk.len()) as u64 > max {
                return Err(FetchError::TooLarge {
                    url: url.to_owned(),
                    max,
                });
            }
            out.extend_from_slice(&chunk);
            if let Some(p) = progress {
                p(out.len() as u64, stream.content_length);
            }
        }
        match prepared.format {
            ImageFormat::Docker | ImageFormat::OciImage => {
                // gunzip, untar and hash off the async workers.
                let u = url.to_owned();
                tokio::task::spawn_blocking(move || {
                    use sha2::Digest;
                    let bytes = unbox::plugin_wasm_from_layer(&out, max, &u)?;
                    let sha = hex::encode(sha2::Sha256::digest(&bytes));
                    Ok(Module {
                        bytes,
                        sha256: Some(sha),
                    })
                })
                .await
                .unwrap_or_else(|e| {
                    Err(FetchError::Unpack {
                        url: url.to_owned(),
                        reason: e.to_string(),
                    })
                })
            }
            ImageFormat::WasmArtifact | ImageFormat::CncfWasm | ImageFormat::Invalid => {
                let sha = layer
                    .digest
                    .strip_prefix("sha256:")
                    .map(str::to_ascii_lowercase);
                Ok(Module {
                    bytes: out,
                    sha256: sha,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(json: &str) -> PullSecret {
        PullSecret(json.as_bytes().to_vec())
    }

    #[test]
    fn pull_secret_forms() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        let s = secret(&format!(
            r#"{{"auths":{{"https://127.0.0.1:5000/v1/":{{"auth":"{b64}"}}}}}}"#
        ));
        assert_eq!(
            s.auth_for("127.0.0.1:5000", "u").unwrap(),
            RegistryAuth::Basic("alice".into(), "s3cret".into())
        );
        assert_eq!(
            s.auth_for("other.io", "u").unwrap(),
            RegistryAuth::Anonymous
        );
        let s = secret(r#"{"auths":{"reg.io":{"username":"bob","password":"pw"}}}"#);
        assert_eq!(
            s.auth_for("reg.io", "u").unwrap(),
            RegistryAuth::Basic("bob".into(), "pw".into())
        );
        let s = secret(r#"{"auths":{"index.docker.io":{"registrytoken":"tok"}}}"#);
        assert_eq!(
            s.auth_for("docker.io", "u").unwrap(),
            RegistryAuth::Bearer("tok".into())
        );
        assert!(secret("null").auth_for("reg.io", "u").is_err());
        assert!(secret("{not json").auth_for("reg.io", "u").is_err());
        assert_eq!(format!("{:?}", secret("x")), "PullSecret(<redacted>)");
    }

    #[test]
    fn bearer_realms_to_local_or_metadata_addresses_are_refused() {
        let r = bearer_realm(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#,
        );
        assert_eq!(r.as_deref(), Some("https://auth.docker.io/token"));
        assert_eq!(bearer_realm(r#"Basic realm="wasm-registry""#), None);
        assert!(!realm_is_blocked("https://auth.docker.io/token", &[]));
        for bad in [
            "http://169.254.169.254/latest",
            "http://127.0.0.1:8080/token",
            "http://10.1.2.3/token",
            "http://localhost/token",
            "http://metadata.google.internal/x",
            "file:///etc/passwd",
            "http://[::1]/t",
        ] {
            assert!(realm_is_blocked(bad, &[]), "{bad}");
        }
    }

    #[test]
    fn registries_go_containerregistry_reaches_over_plain_http() {
        for yes in [
            "127.0.0.1:5000",
            "localhost:5000",
            "10.1.2.3:5000",
            "172.16.0.9",
            "192.168.1.1:443",
            "registry.local",
            "registry.localhost:5000",
            "[::1]:5000",
        ] {
            assert!(plain_http_allowed(yes), "{yes}");
        }
        for no in [
            "localhost",
            "ghcr.io",
            "8.8.8.8:5000",
            "172.32.0.1",
            "127.0.0.2:5000",
            "local.example.com",
        ] {
            assert!(!plain_http_allowed(no), "{no}");
        }
    }
}

//! The on-disk Wasm module cache, as Istio's `pkg/wasm/cache.go`, with what Istio lacks:
//! single flight per module, an index that survives a restart, and expiry that never
//! removes a module a proxy still uses (istio#42154).
//!
//! Files live at `<dir>/<hex(sha256(module name))>/<checksum>.wasm`; the module name is the
//! OCI repository without tag or digest (`oci://host/repo`) or the full HTTP URL.

pub(crate) mod index;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use crate::fetch::{
    FetchError, FetchOptions, HttpFetcher, OciFetcher, PullSecret, is_wasm_binary, redact_url,
};
use crate::metrics::{FetchResult, Metrics};
use index::{ChecksumRecord, IndexFile, ModuleRecord, write_atomic};

/// Istio's `DefaultPurgeInterval`.
pub const DEFAULT_PURGE_INTERVAL: Duration = Duration::from_secs(3600);
/// Istio's `DefaultModuleExpiry`.
pub const DEFAULT_MODULE_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// `ISTIO_META_WASM_IMAGE_PULL_POLICY` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Unset: IfNotPresent, except `oci://…:latest` which behaves as Always.
    #[default]
    Unspecified,
    /// Reuse what the URL last resolved to.
    IfNotPresent,
    /// Pull again whenever the resource version of the ECDS resource changes.
    Always,
}

impl PullPolicy {
    /// Parses Istio's names (`UNSPECIFIED_POLICY`, `IfNotPresent`, `Always`); unknown is unset.
    pub fn parse(s: &str) -> Self {
        match s {
            "IfNotPresent" => Self::IfNotPresent,
            "Always" => Self::Always,
            _ => Self::Unspecified,
        }
    }
}

/// Cache settings.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Directory of module files and `index.json`.
    pub dir: PathBuf,
    /// How often expired modules are looked for.
    pub purge_interval: Duration,
    /// A module unused for this long is removed (unless a proxy still uses it).
    pub module_expiry: Duration,
    /// Fetcher settings.
    pub fetch: FetchOptions,
}

impl CacheOptions {
    /// Istio's defaults in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            purge_interval: DEFAULT_PURGE_INTERVAL,
            module_expiry: DEFAULT_MODULE_EXPIRY,
            fetch: FetchOptions::default(),
        }
    }
}

/// Per-lookup options, from the ECDS resource.
#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    /// Expected sha256 (hex); for OCI the manifest digest.
    pub checksum: Option<String>,
    /// ECDS resource name asking for the module.
    pub resource_name: String,
    /// `ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION`.
    pub resource_version: String,
    /// Deadline of the whole fetch.
    pub timeout: Duration,
    /// Docker config JSON for OCI auth.
    pub pull_secret: Option<PullSecret>,
    /// Pull policy.
    pub pull_policy: PullPolicy,
}

/// Why a module could not be served. Messages name the url and the reason.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    #[error(
        "unsupported Wasm module downloading URL scheme in {url} (want oci://, http:// or https://)"
    )]
    UnsupportedScheme { url: String },
    #[error("invalid Wasm module url {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("module downloaded from {url} has checksum {actual}, which does not match: {expected}")]
    ChecksumMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("invalid sha256 {checksum:?} for {url}: want 64 hex digits")]
    InvalidChecksum { url: String, checksum: String },
    #[error("fetching {url} timed out after {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("cannot store the module from {url} in {path}: {reason}")]
    Store {
        url: String,
        path: PathBuf,
        reason: String,
    },
    #[error("the fetch task for {url} failed: {reason}")]
    Task { url: String, reason: String },
}

/// A module in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleKey {
    /// `oci://host/repo` or the full HTTP URL.
    pub name: String,
    /// Istio checksum (manifest digest for OCI).
    pub checksum: String,
}

#[derive(Debug, Clone)]
struct Entry {
    path: PathBuf,
    file_sha256: String,
    last_used: SystemTime,
    urls: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct State {
    modules: HashMap<ModuleKey, Entry>,
    checksums: HashMap<String, ChecksumRecord>,
    in_use: HashMap<String, ModuleKey>,
}

#[derive(Debug, Clone)]
struct Fetched {
    key: ModuleKey,
    path: PathBuf,
}

type Flight = Shared<BoxFuture<'static, Result<Fetched, CacheError>>>;

struct Inner {
    opts: CacheOptions,
    state: Mutex<State>,
    flights: Mutex<HashMap<String, Flight>>,
    save_lock: Mutex<()>,
    http: HttpFetcher,
    oci: OciFetcher,
    metrics: Arc<Metrics>,
}

/// The module cache. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct ModuleCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ModuleCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleCache")
            .field("dir", &self.inner.opts.dir)
            .finish()
    }
}

/// A URL split as the cache needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ParsedUrl {
    scheme: Scheme,
    /// Module name (cache key part).
    name: String,
    /// `@sha256:<hex>` of an OCI URL.
    digest: Option<String>,
    /// OCI tag, if any.
    tag: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Oci,
    Http,
}

fn parse_url(url: &str) -> Result<ParsedUrl, CacheError> {
    if let Some(rest) = url.strip_prefix("oci://") {
        let (path, digest) = match rest.split_once('@') {
            Some((p, d)) => {
                let hex = d
                    .strip_prefix("sha256:")
                    .ok_or_else(|| CacheError::InvalidUrl {
                        url: redact_url(url).into_owned(),
                        reason: format!("digest {d} is not sha256:<hex>"),
                    })?;
                (p, Some(hex.to_ascii_lowercase()))
            }
            None => (rest, None),
        };
        let last_slash = path.rfind('/').ok_or_else(|| CacheError::InvalidUrl {
            url: redact_url(url).into_owned(),
            reason: "an OCI url needs host/repository".into(),
        })?;
        let (repo, tag) = match path[last_slash..].rfind(':') {
            Some(i) => (
                &path[..last_slash + i],
                Some(path[last_slash + i + 1..].to_owned()),
            ),
            None => (path, None),
        };
        if repo.len() <= last_slash + 1 {
            return Err(CacheError::InvalidUrl {
                url: redact_url(url).into_owned(),
                reason: "empty repository".into(),
            });
        }
        return Ok(ParsedUrl {
            scheme: Scheme::Oci,
            name: format!("oci://{repo}"),
            digest,
            tag,
        });
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(ParsedUrl {
            scheme: Scheme::Http,
            name: url.to_owned(),
            digest: None,
            tag: None,
        });
    }
    Err(CacheError::UnsupportedScheme {
        url: redact_url(url).into_owned(),
    })
}

/// Istio's `shouldIgnoreResourceVersion`: only Always and unset-with-`:latest` re-pull on a
/// resource version change.
fn ignores_resource_version(policy: PullPolicy, parsed: &ParsedUrl) -> bool {
    match policy {
        PullPolicy::Always => false,
        PullPolicy::IfNotPresent => true,
        PullPolicy::Unspecified => {
            !(parsed.scheme == Scheme::Oci && parsed.tag.as_deref() == Some("latest"))
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ModuleCache {
    /// Opens the cache in `opts.dir`, reloading the index of a previous run. Modules whose
    /// file is missing or no longer matches its recorded sha256 are dropped.
    pub fn open(opts: CacheOptions, metrics: Arc<Metrics>) -> Result<Self, CacheError> {
        let store_err = |reason: String| CacheError::Store {
            url: String::new(),
            path: opts.dir.clone(),
            reason,
        };
        std::fs::create_dir_all(&opts.dir).map_err(|e| store_err(e.to_string()))?;
        let http = HttpFetcher::new(opts.fetch.clone())?;
        let oci = OciFetcher::new(opts.fetch.clone());
        let mut state = State::default();
        match IndexFile::load(&opts.dir) {
            Ok(Some(index)) => {
                for m in index.modules {
                    let key = ModuleKey {
                        name: m.name.clone(),
                        checksum: m.checksum.clone(),
                    };
                    let path = module_path(&opts.dir, &key);
                    match std::fs::read(&path) {
                        Ok(bytes)
                            if sha256_hex(&bytes) == m.file_sha256 && is_wasm_binary(&bytes) =>
                        {
                            state.modules.insert(
                                key,
                                Entry {
                                    path,
                                    file_sha256: m.file_sha256,
                                    last_used: UNIX_EPOCH + Duration::from_secs(m.last_used),
                                    urls: m.urls.into_iter().collect(),
                                },
                            );
                        }
                        _ => {
                            warn!(module = %m.name, checksum = %m.checksum, path = %path.display(),
                                "cached module missing or corrupt, dropped from the index");
                            let _ = std::fs::remove_file(&path);
                        }
                    }
                }
                state.checksums = index.checksums;
                state.in_use = index
                    .in_use
                    .into_iter()
                    .map(|(r, (name, checksum))| (r, ModuleKey { name, checksum }))
                    .filter(|(_, k)| state.modules.contains_key(k))
                    .collect();
            }
            Ok(None) => {}
            Err(e) => {
                warn!(dir = %opts.dir.display(), error = %e, "cannot read the cache index, starting empty")
            }
        }
        metrics.set_cache_entries(state.modules.len());
        info!(dir = %opts.dir.display(), modules = state.modules.len(), "wasm module cache opened");
        Ok(Self {
            inner: Arc::new(Inner {
                opts,
                state: Mutex::new(state),
                flights: Mutex::default(),
                save_lock: Mutex::default(),
                http,
                oci,
                metrics,
            }),
        })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.inner.opts.dir
    }

    /// The metrics this cache reports to.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent maps behind; keep serving.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns the local path of the module at `url`, fetching, verifying and storing it
    /// if needed. Concurrent calls for the same module share one fetch.
    pub async fn get(&self, url: &str, opts: &GetOptions) -> Result<PathBuf, CacheError> {
        let parsed = parse_url(url)?;
        let expected = opts
            .checksum
            .clone()
            .filter(|c| !c.is_empty())
            .map(|c| c.to_ascii_lowercase());
        for c in expected.iter().chain(parsed.digest.iter()) {
            if c.len() != 64 || !c.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(CacheError::InvalidChecksum {
                    url: redact_url(url).into_owned(),
                    checksum: c.clone(),
                });
            }
        }
        if let (Some(e), Some(d)) = (&expected, &parsed.digest)
            && e != d
        {
            return Err(CacheError::ChecksumMismatch {
                url: redact_url(url).into_owned(),
                expected: e.clone(),
                actual: d.clone(),
            });
        }
        let ignore_rv = ignores_resource_version(opts.pull_policy, &parsed);
        let mut checksum = expected.clone().or_else(|| parsed.digest.clone());
        {
            let mut st = self.lock();
            if checksum.is_none()
                && let Some(rec) = st.checksums.get_mut(url)
            {
                let seen = rec.resource_versions.get(&opts.resource_name);
                if ignore_rv || seen == Some(&opts.resource_version) {
                    checksum = Some(rec.checksum.clone());
                }
                rec.resource_versions
                    .insert(opts.resource_name.clone(), opts.resource_version.clone());
            }
            if let Some(c) = &checksum {
                let key = ModuleKey {
                    name: parsed.name.clone(),
                    checksum: c.clone(),
                };
                if let Some(e) = st.modules.get_mut(&key) {
                    e.last_used = SystemTime::now();
                    let path = e.path.clone();
                    let changed =
                        st.in_use.insert(opts.resource_name.clone(), key.clone()) != Some(key);
                    drop(st);
                    self.inner.metrics.cache_lookup(true);
                    if changed {
                        self.save();
                    }
                    debug!(url = %redact_url(url), path = %path.display(), "wasm module cache hit");
                    return Ok(path);
                }
            }
        }
        self.inner.metrics.cache_lookup(false);

        let fetched = self
            .fetch_shared(url, parsed.clone(), checksum, opts)
            .await?;
        {
            let mut st = self.lock();
            if parsed.digest.is_none() {
                let rec = st.checksums.entry(url.to_owned()).or_default();
                rec.checksum = fetched.key.checksum.clone();
                rec.resource_versions
                    .insert(opts.resource_name.clone(), opts.resource_version.clone());
            }
            if let Some(e) = st.modules.get_mut(&fetched.key) {
                e.last_used = SystemTime::now();
                e.urls.insert(url.to_owned());
            }
            st.in_use
                .insert(opts.resource_name.clone(), fetched.key.clone());
        }
        self.save();
        Ok(fetched.path)
    }

    async fn fetch_shared(
        &self,
        url: &str,
        parsed: ParsedUrl,
        checksum: Option<String>,
        opts: &GetOptions,
    ) -> Result<Fetched, CacheError> {
        let secret_id = opts
            .pull_secret
            .as_ref()
            .map(|s| sha256_hex(&s.0))
            .unwrap_or_default();
        let flight_key = format!("{url}\n{}\n{secret_id}", checksum.as_deref().unwrap_or(""));
        let flight = {
            let mut flights = self.inner.flights.lock().unwrap_or_else(|e| e.into_inner());
            match flights.get(&flight_key) {
                Some(f) => {
                    debug!(url = %redact_url(url), "joining an in-flight fetch");
                    f.clone()
                }
                None => {
                    let this = self.clone();
                    let (url_s, key_s, secret) =
                        (url.to_owned(), flight_key.clone(), opts.pull_secret.clone());
                    let task = tokio::spawn(async move {
                        let r = this
                            .fetch_and_store(&url_s, &parsed, checksum, secret.as_ref())
                            .await;
                        this.inner
                            .flights
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&key_s);
                        r
                    });
                    let url_t = redact_url(url).into_owned();
                    let f: Flight = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(CacheError::Task {
                                url: url_t,
                                reason: e.to_string(),
                            })
                        })
                    }
                    .boxed()
                    .shared();
                    flights.insert(flight_key, f.clone());
                    f
                }
            }
        };
        match tokio::time::timeout(opts.timeout.max(Duration::from_millis(1)), flight).await {
            Ok(r) => r,
            Err(_) => Err(CacheError::Timeout {
                url: redact_url(url).into_owned(),
                timeout: opts.timeout,
            }),
        }
    }

    fn existing(&self, key: &ModuleKey) -> Option<Fetched> {
        let st = self.lock();
        st.modules.get(key).map(|e| Fetched {
            key: key.clone(),
            path: e.path.clone(),
        })
    }

    async fn fetch_and_store(
        &self,
        url: &str,
        parsed: &ParsedUrl,
        expected: Option<String>,
        secret: Option<&PullSecret>,
    ) -> Result<Fetched, CacheError> {
        let m = &self.inner.metrics;
        let mismatch = |actual: &str| {
            expected
                .as_deref()
                .filter(|e| *e != actual)
                .map(|e| CacheError::ChecksumMismatch {
                    url: redact_url(url).into_owned(),
                    expected: e.to_owned(),
                    actual: actual.to_owned(),
                })
        };
        let (bytes, checksum, file_sha256) = match parsed.scheme {
            Scheme::Http => {
                let bytes = self
                    .inner
                    .http
                    .fetch(url)
                    .await
                    .inspect_err(|_| m.remote_fetch(FetchResult::DownloadFailure))?;
                let (bytes, actual) = tokio::task::spawn_blocking(move || {
                    let sha = sha256_hex(&bytes);
                    (bytes, sha)
                })
                .await
                .map_err(|e| CacheError::Task {
                    url: redact_url(url).into_owned(),
                    reason: e.to_string(),
                })?;
                if let Some(e) = mismatch(&actual) {
                    m.remote_fetch(FetchResult::ChecksumMismatched);
                    return Err(e);
                }
                (bytes, actual.clone(), Some(actual))
            }
            Scheme::Oci => {
                let prepared = self
                    .inner
                    .oci
                    .prepare(url, secret)
                    .await
                    .inspect_err(|_| m.remote_fetch(FetchResult::ManifestFailure))?;
                if let Some(e) = mismatch(&prepared.digest) {
                    m.remote_fetch(FetchResult::ChecksumMismatched);
                    return Err(e);
                }
                let actual = prepared.digest.clone();
                let key = ModuleKey {
                    name: parsed.name.clone(),
                    checksum: actual.clone(),
                };
                if let Some(hit) = self.existing(&key) {
                    // The tag moved to (or still points at) an image we already have.
                    m.remote_fetch(FetchResult::Success);
                    return Ok(hit);
                }
                let module = self
                    .inner
                    .oci
                    .fetch_module(prepared)
                    .await
                    .inspect_err(|_| m.remote_fetch(FetchResult::DownloadFailure))?;
                (module.bytes, actual, module.sha256)
            }
        };
        if !is_wasm_binary(&bytes) {
            m.remote_fetch(FetchResult::FetchFailure);
            return Err(FetchError::NotWasm {
                url: redact_url(url).into_owned(),
            }
            .into());
        }
        let key = ModuleKey {
            name: parsed.name.clone(),
            checksum,
        };
        if let Some(hit) = self.existing(&key) {
            m.remote_fetch(FetchResult::Success);
            return Ok(hit);
        }
        let path = module_path(&self.inner.opts.dir, &key);
        let file_sha256 = file_sha256.unwrap_or_else(|| sha256_hex(&bytes));
        let (p, len) = (path.clone(), bytes.len());
        tokio::task::spawn_blocking(move || write_atomic(&p, &bytes))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(|reason| CacheError::Store {
                url: redact_url(url).into_owned(),
                path: path.clone(),
                reason,
            })?;
        let entries = {
            let mut st = self.lock();
            st.modules.insert(
                key.clone(),
                Entry {
                    path: path.clone(),
                    file_sha256,
                    last_used: SystemTime::now(),
                    urls: BTreeSet::from([url.to_owned()]),
                },
            );
            st.modules.len()
        };
        m.set_cache_entries(entries);
        m.remote_fetch(FetchResult::Success);
        info!(url = %redact_url(url), checksum = %key.checksum, bytes = len, path = %path.display(), "wasm module fetched and cached");
        Ok(Fetched { key, path })
    }

    /// Forgets that `resource_name` uses a module (its config now points elsewhere).
    pub fn release(&self, resource_name: &str) {
        let removed = self.lock().in_use.remove(resource_name).is_some();
        if removed {
            self.save();
        }
    }

    /// Modules referenced by some ECDS resource (never purged).
    pub fn in_use(&self) -> Vec<ModuleKey> {
        let st = self.lock();
        let mut v: Vec<ModuleKey> = st
            .in_use
            .values()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        v.sort();
        v
    }

    /// Cached modules.
    pub fn modules(&self) -> Vec<ModuleKey> {
        let mut v: Vec<ModuleKey> = self.lock().modules.keys().cloned().collect();
        v.sort();
        v
    }

    /// Removes modules unused since `now - module_expiry` that no resource still uses.
    /// Returns the removed modules.
    pub fn purge_expired(&self, now: SystemTime) -> Vec<ModuleKey> {
        let expiry = self.inner.opts.module_expiry;
        let (removed, entries) = {
            let mut st = self.lock();
            let used: BTreeSet<ModuleKey> = st.in_use.values().cloned().collect();
            let expired: Vec<ModuleKey> = st
                .modules
                .iter()
                .filter(|(k, e)| {
                    !used.contains(*k) && now.duration_since(e.last_used).is_ok_and(|d| d >= expiry)
                })
                .map(|(k, _)| k.clone())
                .collect();
            for k in &expired {
                if let Some(e) = st.modules.remove(k) {
                    if let Err(err) = std::fs::remove_file(&e.path) {
                        warn!(path = %e.path.display(), error = %err, "cannot remove expired module");
                    }
                    for u in &e.urls {
                        if st
                            .checksums
                            .get(u)
                            .is_some_and(|c| c.checksum == k.checksum)
                        {
                            st.checksums.remove(u);
                        }
                    }
                    info!(module = %redact_url(&k.name), checksum = %k.checksum, "expired wasm module removed");
                }
            }
            (expired, st.modules.len())
        };
        self.inner.metrics.set_cache_entries(entries);
        if !removed.is_empty() {
            self.save();
        }
        removed
    }

    /// Runs [`Self::purge_expired`] every purge interval until the task is aborted.
    pub fn spawn_purger(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(this.inner.opts.purge_interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                this.purge_expired(SystemTime::now());
            }
        })
    }

    /// Writes the index. Serialized so an older snapshot never overwrites a newer one.
    fn save(&self) {
        let _guard = self
            .inner
            .save_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let index = {
            let st = self.lock();
            IndexFile {
                version: 1,
                modules: st
                    .modules
                    .iter()
                    .map(|(k, e)| ModuleRecord {
                        name: k.name.clone(),
                        checksum: k.checksum.clone(),
                        file_sha256: e.file_sha256.clone(),
                        last_used: unix(e.last_used),
                        urls: e.urls.iter().cloned().collect(),
                    })
                    .collect(),
                checksums: st.checksums.clone(),
                in_use: st
                    .in_use
                    .iter()
                    .map(|(r, k)| (r.clone(), (k.name.clone(), k.checksum.clone())))
                    .collect(),
            }
        };
        if let Err(e) = index.save(&self.inner.opts.dir) {
            warn!(dir = %self.inner.opts.dir.display(), error = %e, "cannot write the cache index");
        }
    }
}

fn module_path(dir: &Path, key: &ModuleKey) -> PathBuf {
    dir.join(sha256_hex(key.name.as_bytes()))
        .join(format!("{}.wasm", key.checksum))
}

#[cfg(test)]
mod tests;

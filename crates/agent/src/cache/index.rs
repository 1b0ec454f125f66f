//! The on-disk index of the module cache: what `index.json` holds, written atomically so it
//! survives an agent restart (Istio keeps it only in memory).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A cached module as persisted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ModuleRecord {
    /// Module name: `oci://host/repo` (tag and digest stripped) or the full HTTP URL.
    pub(crate) name: String,
    /// Istio checksum: the manifest digest for OCI, the sha256 of the module for HTTP.
    pub(crate) checksum: String,
    /// sha256 of the file content, checked when the index is loaded.
    pub(crate) file_sha256: String,
    /// Unix seconds of the last lookup or fetch.
    pub(crate) last_used: u64,
    /// Full URLs that resolved to this module.
    pub(crate) urls: Vec<String>,
}

/// What a tagged URL last resolved to, and the resource versions seen per ECDS resource.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ChecksumRecord {
    pub(crate) checksum: String,
    pub(crate) resource_versions: BTreeMap<String, String>,
}

/// The whole index file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct IndexFile {
    pub(crate) version: u32,
    pub(crate) modules: Vec<ModuleRecord>,
    pub(crate) checksums: HashMap<String, ChecksumRecord>,
    /// ECDS resource name → (module name, checksum) it currently points the proxy at.
    pub(crate) in_use: HashMap<String, (String, String)>,
}

pub(crate) const INDEX_FILE: &str = "index.json";

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp: PathBuf = dir.join(format!(".{name}.{}.{}.tmp", std::process::id(), unique()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl IndexFile {
    pub(crate) fn load(dir: &Path) -> std::io::Result<Option<Self>> {
        match std::fs::read(dir.join(INDEX_FILE)) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn save(&self, dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_atomic(&dir.join(INDEX_FILE), &bytes)
    }
}

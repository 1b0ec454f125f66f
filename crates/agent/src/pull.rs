//! One-off module download (`wasmesh plugin pull`): the agent's fetchers and verification rules
//! without the cache. For OCI the checksum is the manifest digest, for HTTP the sha256 of the
//! unpacked module, as in the cache and in Istio.

use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::cache::index::write_atomic;
use crate::fetch::{
    FetchError, FetchOptions, HttpFetcher, OciFetcher, Progress, is_wasm_binary, redact_url,
};

/// Why a module could not be pulled or written. Messages name the url (or file) and the reason.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(
        "unsupported Wasm module url {url} (want oci://, http:// or https://; a WasmPlugin without a scheme means oci://)"
    )]
    UnsupportedScheme { url: String },
    #[error("invalid sha256 {checksum:?}: want 64 hex digits")]
    InvalidChecksum { checksum: String },
    #[error("checksum mismatch for {url}: expected sha256 {expected}, but its {what} is {actual}")]
    ChecksumMismatch {
        url: String,
        /// What was compared: the image manifest digest (OCI) or the module's sha256 (HTTP).
        what: &'static str,
        expected: String,
        actual: String,
    },
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("cannot write the module to {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// A downloaded and verified module.
#[derive(Debug)]
pub struct Pulled {
    /// The module bytes.
    pub bytes: Vec<u8>,
    /// What a WasmPlugin's `sha256` must hold: the manifest digest for OCI, the module's sha256
    /// for HTTP (hex, no `sha256:`).
    pub checksum: String,
    /// sha256 of `bytes` (hex).
    pub file_sha256: String,
}

/// `sha256` as a WasmPlugin holds it (64 hex digits, optionally `sha256:`), lowercased.
pub fn parse_checksum(checksum: &str) -> Result<String, PullError> {
    let hex = checksum.strip_prefix("sha256:").unwrap_or(checksum);
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(PullError::InvalidChecksum {
            checksum: checksum.to_owned(),
        });
    }
    Ok(hex.to_ascii_lowercase())
}

/// Downloads the module at `url` (`oci://…` or `http(s)://…`), checks it is Wasm and, when
/// `expected` is set, that its checksum matches (an OCI image is rejected before its layer is
/// downloaded). `progress` follows the module download.
pub async fn pull(
    url: &str,
    expected: Option<&str>,
    opts: FetchOptions,
    progress: Option<&Progress>,
) -> Result<Pulled, PullError> {
    let expected = expected.map(parse_checksum).transpose()?;
    let mismatch = |what: &'static str, actual: &str| -> Result<(), PullError> {
        match &expected {
            Some(e) if e != actual => Err(PullError::ChecksumMismatch {
                url: redact_url(url).into_owned(),
                what,
                expected: e.clone(),
                actual: actual.to_owned(),
            }),
            _ => Ok(()),
        }
    };
    let (bytes, checksum, file_sha256) = if url.starts_with("oci://") {
        let oci = OciFetcher::new(opts);
        let prepared = oci.prepare(url, None).await?;
        mismatch("image manifest digest", &prepared.digest)?;
        let checksum = prepared.digest.clone();
        let module = oci.fetch_module_with_progress(prepared, progress).await?;
        (module.bytes, checksum, module.sha256)
    } else if url.starts_with("http://") || url.starts_with("https://") {
        let bytes = HttpFetcher::new(opts)?
            .fetch_with_progress(url, progress)
            .await?;
        let sha = hex::encode(sha2::Sha256::digest(&bytes));
        mismatch("module sha256", &sha)?;
        (bytes, sha.clone(), Some(sha))
    } else {
        return Err(PullError::UnsupportedScheme {
            url: redact_url(url).into_owned(),
        });
    };
    if !is_wasm_binary(&bytes) {
        return Err(FetchError::NotWasm {
            url: redact_url(url).into_owned(),
        }
        .into());
    }
    let file_sha256 = file_sha256.unwrap_or_else(|| hex::encode(sha2::Sha256::digest(&bytes)));
    Ok(Pulled {
        bytes,
        checksum,
        file_sha256,
    })
}

/// Writes `bytes` to `path` atomically (temporary file in the same directory, fsync, rename):
/// a reader never sees a partial module.
pub fn write_module(path: &Path, bytes: &[u8]) -> Result<(), PullError> {
    write_atomic(path, bytes).map_err(|e| PullError::Write {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_64_hex_digits_with_optional_prefix() {
        let hex = "AB".repeat(32);
        assert_eq!(parse_checksum(&hex).unwrap(), "ab".repeat(32));
        assert_eq!(
            parse_checksum(&format!("sha256:{hex}")).unwrap(),
            "ab".repeat(32)
        );
        assert!(parse_checksum("abc").is_err());
        assert!(parse_checksum(&"zz".repeat(32)).is_err());
    }

    #[tokio::test]
    async fn unsupported_schemes_are_refused() {
        let err = pull("file:///x.wasm", None, FetchOptions::default(), None)
            .await
            .unwrap_err();
        assert!(matches!(err, PullError::UnsupportedScheme { .. }), "{err}");
    }

    #[test]
    fn modules_are_written_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.wasm");
        write_module(&p, b"\0asm\x01\0\0\0").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"\0asm\x01\0\0\0");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

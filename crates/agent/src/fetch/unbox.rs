//! Unpacking of fetched bodies: gzip and tar wrappers around a Wasm module.

use std::io::Read;

use flate2::read::GzDecoder;

use super::{FetchError, is_wasm_binary};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Nested wrappers accepted (e.g. a tar inside a gzip); more is refused as a bomb.
const MAX_NESTING: usize = 4;

fn is_tar(bytes: &[u8]) -> bool {
    bytes.len() > 262 && &bytes[257..262] == b"ustar"
}

fn gunzip(bytes: &[u8], max: u64, url: &str) -> Result<Vec<u8>, FetchError> {
    let mut out = Vec::new();
    GzDecoder::new(bytes)
        .take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| FetchError::Unpack {
            url: url.to_owned(),
            reason: format!("gunzip: {e}"),
        })?;
    if out.len() as u64 > max {
        return Err(FetchError::TooLarge {
            url: url.to_owned(),
            max,
        });
    }
    Ok(out)
}

/// Reads the tar entry selected by `pick` (given the entry path); `None` if no entry matched.
fn tar_entry(
    bytes: &[u8],
    max: u64,
    url: &str,
    pick: impl Fn(&std::path::Path) -> bool,
) -> Result<Option<Vec<u8>>, FetchError> {
    let unpack = |e: std::io::Error| FetchError::Unpack {
        url: url.to_owned(),
        reason: format!("tar: {e}"),
    };
    let mut archive = tar::Archive::new(bytes);
    for entry in archive.entries().map_err(unpack)? {
        let entry = entry.map_err(unpack)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(unpack)?.into_owned();
        if !pick(&path) {
            continue;
        }
        if entry.size() > max {
            return Err(FetchError::TooLarge {
                url: url.to_owned(),
                max,
            });
        }
        let mut out = Vec::new();
        entry.take(max + 1).read_to_end(&mut out).map_err(unpack)?;
        return Ok(Some(out));
    }
    Ok(None)
}

/// Istio's `unboxIfPossible`: peels gzip and tar (first file) wrappers until a Wasm module
/// appears; returns the bytes as they are when no wrapper is recognised.
pub(crate) fn unbox_if_possible(
    mut bytes: Vec<u8>,
    max: u64,
    url: &str,
) -> Result<Vec<u8>, FetchError> {
    for _ in 0..MAX_NESTING {
        if is_wasm_binary(&bytes) {
            return Ok(bytes);
        }
        if bytes.starts_with(&GZIP_MAGIC) {
            bytes = gunzip(&bytes, max, url)?;
        } else if is_tar(&bytes) {
            match tar_entry(&bytes, max, url, |_| true)? {
                Some(inner) => bytes = inner,
                None => {
                    return Err(FetchError::Unpack {
                        url: url.to_owned(),
                        reason: "empty tar archive".into(),
                    });
                }
            }
        } else {
            return Ok(bytes);
        }
    }
    Ok(bytes)
}

/// Extracts `plugin.wasm` (any directory) from a `tar+gzip` image layer, as Istio's
/// Docker and OCI image formats.
pub(crate) fn plugin_wasm_from_layer(
    layer: &[u8],
    max: u64,
    url: &str,
) -> Result<Vec<u8>, FetchError> {
    let tar = if layer.starts_with(&GZIP_MAGIC) {
        gunzip(layer, max, url)?
    } else {
        layer.to_vec()
    };
    tar_entry(&tar, max, url, |p| {
        p.file_name().is_some_and(|n| n == "plugin.wasm")
    })?
    .ok_or_else(|| FetchError::Unpack {
        url: url.to_owned(),
        reason: "plugin.wasm not found in the archive".into(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flate2::{Compression, write::GzEncoder};
    use std::io::Write;

    pub(crate) fn module() -> Vec<u8> {
        let mut m = b"\0asm\x01\0\0\0".to_vec();
        m.extend_from_slice(&[0u8; 24]);
        m
    }

    pub(crate) fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    pub(crate) fn tar_of(name: &str, b: &[u8]) -> Vec<u8> {
        let mut t = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(b.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        t.append_data(&mut h, name, b).unwrap();
        t.into_inner().unwrap()
    }

    #[test]
    fn unboxes_gzip_tar_and_nesting() {
        let m = module();
        assert_eq!(unbox_if_possible(m.clone(), 1 << 20, "u").unwrap(), m);
        assert_eq!(unbox_if_possible(gzip(&m), 1 << 20, "u").unwrap(), m);
        assert_eq!(
            unbox_if_possible(tar_of("x.wasm", &m), 1 << 20, "u").unwrap(),
            m
        );
        assert_eq!(
            unbox_if_possible(gzip(&tar_of("a/b.wasm", &m)), 1 << 20, "u").unwrap(),
            m
        );
        // Unknown content is returned as is; validity is checked by the caller.
        assert_eq!(
            unbox_if_possible(b"hello".to_vec(), 1 << 20, "u").unwrap(),
            b"hello"
        );
    }

    #[test]
    fn gzip_bomb_is_refused() {
        let big = vec![0u8; 1 << 20];
        let err = unbox_if_possible(gzip(&big), 1000, "http://x/m").unwrap_err();
        assert!(
            matches!(err, FetchError::TooLarge { max: 1000, .. }),
            "{err}"
        );
    }

    #[test]
    fn plugin_wasm_is_found_by_basename() {
        let m = module();
        let mut t = tar::Builder::new(Vec::new());
        for (name, body) in [("README", &b"readme"[..]), ("./plugin.wasm", &m[..])] {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_cksum();
            t.append_data(&mut h, name, body).unwrap();
        }
        let layer = gzip(&t.into_inner().unwrap());
        assert_eq!(plugin_wasm_from_layer(&layer, 1 << 20, "u").unwrap(), m);
        let err =
            plugin_wasm_from_layer(&gzip(&tar_of("other.wasm", &m)), 1 << 20, "u").unwrap_err();
        assert!(err.to_string().contains("plugin.wasm not found"), "{err}");
    }
}

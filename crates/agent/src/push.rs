//! Publishing a module to an OCI registry (`wasmesh plugin push`) as the Wasm OCI artifact Istio
//! pulls: an OCI manifest whose config is `application/vnd.module.wasm.config.v1+json` and whose
//! layers are the module (`application/vnd.module.wasm.content.layer.v1+wasm`) and an empty
//! runtime config. Istio's `extractOCIArtifactImage` wants exactly two layers, so a single-layer
//! artifact (which our agent takes) would be refused by istio-agent.

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::fetch::is_wasm_binary;
use crate::fetch::oci::{ISTIO_WASM_LAYER, OCI_MANIFEST};

/// Media type of the artifact's config (and of its runtime-config layer).
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.module.wasm.config.v1+json";

/// Why a push failed. Messages name the image and the reason.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("invalid image reference {url}: {reason} (want oci://registry/repository:tag)")]
    InvalidUrl { url: String, reason: String },
    #[error("refusing to push: the module does not start with the Wasm magic \\0asm")]
    NotWasm,
    #[error("cannot push to {url}: {reason}")]
    Registry { url: String, reason: String },
}

/// How to reach the registry.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Accept any TLS certificate and fall back to plain HTTP (a local or test registry).
    pub insecure: bool,
    /// Basic credentials (user, password); anonymous otherwise.
    pub credentials: Option<(String, String)>,
}

/// A pushed image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The manifest digest, `sha256:<hex>`: what a WasmPlugin's `sha256` takes (without the
    /// prefix) and what `oci://registry/repository@sha256:…` pins.
    pub manifest_digest: String,
    /// Digest of the module layer, `sha256:<hex>` (the module file's sha256).
    pub layer_digest: String,
}

/// The manifest and blobs of the Istio Wasm artifact for `module`.
fn artifact(module: &[u8]) -> (Vec<ImageLayer>, Config, OciImageManifest) {
    let layers = vec![
        ImageLayer::new(module.to_vec(), ISTIO_WASM_LAYER.to_owned(), None),
        ImageLayer::new(b"{}".to_vec(), WASM_CONFIG_MEDIA_TYPE.to_owned(), None),
    ];
    let config = Config::new(b"{}".to_vec(), WASM_CONFIG_MEDIA_TYPE.to_owned(), None);
    let mut manifest = OciImageManifest::build(&layers, &config, None);
    // Istio switches on the manifest's mediaType: it must be present.
    manifest.media_type = Some(OCI_MANIFEST.to_owned());
    (layers, config, manifest)
}

/// Pushes `module` to `url` (`oci://registry/repository[:tag]`, `oci://` optional) and returns
/// the digests the registry now serves.
pub async fn push(module: &[u8], url: &str, opts: &PushOptions) -> Result<Pushed, PushError> {
    if !is_wasm_binary(module) {
        return Err(PushError::NotWasm);
    }
    let target = url.strip_prefix("oci://").unwrap_or(url);
    let reference: Reference = target.parse().map_err(|e| PushError::InvalidUrl {
        url: url.to_owned(),
        reason: format!("{e}"),
    })?;
    if reference.digest().is_some() {
        return Err(PushError::InvalidUrl {
            url: url.to_owned(),
            reason: "a push target takes a tag, not a digest".into(),
        });
    }
    let auth = match &opts.credentials {
        Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
        None => RegistryAuth::Anonymous,
    };
    let registry = reference.resolve_registry().to_owned();
    let (layers, config, manifest) = artifact(module);
    let layer_digest = manifest
        .layers
        .first()
        .map(|l| l.digest.clone())
        .unwrap_or_default();
    // Insecure: HTTPS without verification first, plain HTTP if the transport fails.
    let attempts: &[bool] = if opts.insecure {
        &[false, true]
    } else {
        &[false]
    };
    let mut errors = Vec::new();
    for &plain in attempts {
        let client = Client::new(ClientConfig {
            protocol: if plain {
                ClientProtocol::HttpsExcept(vec![registry.clone()])
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: opts.insecure,
            ..ClientConfig::default()
        });
        let pushed = client
            .push(
                &reference,
                &layers,
                config.clone(),
                &auth,
                Some(manifest.clone()),
            )
            .await;
        let result = match pushed {
            Ok(_) => client.fetch_manifest_digest(&reference, &auth).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(manifest_digest) => {
                tracing::info!(url = %url, digest = %manifest_digest, "wasm module pushed");
                return Ok(Pushed {
                    manifest_digest,
                    layer_digest,
                });
            }
            Err(e) => {
                let transport = matches!(e, OciDistributionError::RequestError(_));
                errors.push(format!(
                    "{}: {}",
                    if plain { "http" } else { "https" },
                    crate::fetch::http::error_chain(&e)
                ));
                if !transport {
                    break;
                }
            }
        }
    }
    Err(PushError::Registry {
        url: url.to_owned(),
        reason: errors.join("; "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_is_istio_shaped() {
        let module = b"\0asm\x01\0\0\0".to_vec();
        let (layers, config, manifest) = artifact(&module);
        assert_eq!(manifest.media_type.as_deref(), Some(OCI_MANIFEST));
        assert_eq!(manifest.config.media_type, WASM_CONFIG_MEDIA_TYPE);
        assert_eq!(config.media_type, WASM_CONFIG_MEDIA_TYPE);
        let types: Vec<&str> = manifest
            .layers
            .iter()
            .map(|l| l.media_type.as_str())
            .collect();
        assert_eq!(types, [ISTIO_WASM_LAYER, WASM_CONFIG_MEDIA_TYPE]);
        assert_eq!(layers[0].data.as_ref(), module.as_slice());
    }

    #[tokio::test]
    async fn non_wasm_and_digest_targets_are_refused() {
        let o = PushOptions::default();
        assert!(matches!(
            push(b"hello", "oci://r.io/p:v1", &o).await,
            Err(PushError::NotWasm)
        ));
        let m = b"\0asm\x01\0\0\0";
        let err = push(m, &format!("oci://r.io/p@sha256:{}", "a".repeat(64)), &o)
            .await
            .unwrap_err();
        assert!(matches!(err, PushError::InvalidUrl { .. }), "{err}");
    }
}

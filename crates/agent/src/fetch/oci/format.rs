//! Which layer of an image holds the module: Istio's format rules (`pkg/wasm/imagefetcher.go`)
//! and their messages, plus the layouts we accept on top.

use super::{
    CNCF_WASM_LAYER, DOCKER_LAYER, DOCKER_MANIFEST, Descriptor, ISTIO_WASM_LAYER, ImageFormat,
    OCI_LAYER_TAR_GZIP, RawManifest,
};

/// Istio's `extractDockerImage`, `extractOCIStandardImage` and `extractOCIArtifactImage`, at the
/// media-type level and with their messages. On top of Istio, as documented in the README
/// ("More OCI layouts"): a one-layer Istio Wasm artifact (higress#4528) and the CNCF Wasm
/// artifact.
pub(super) fn pick_format(m: &RawManifest) -> Result<(ImageFormat, Descriptor), String> {
    if m.media_type == DOCKER_MANIFEST {
        let last = m
            .layers
            .last()
            .ok_or("could not extract Wasm file from the image as Docker container number of layers must be greater than zero")?;
        return if last.media_type == DOCKER_LAYER {
            Ok((ImageFormat::Docker, last.clone()))
        } else {
            Err(format!(
                "could not extract Wasm file from the image as Docker container invalid media type {} (expect {DOCKER_LAYER})",
                last.media_type
            ))
        };
    }
    let compat = match m.layers.last() {
        None => "number of layers must be greater than zero".to_owned(),
        Some(l) if l.media_type == OCI_LAYER_TAR_GZIP => {
            return Ok((ImageFormat::OciImage, l.clone()));
        }
        Some(l) => format!(
            "invalid media type {} (expect {OCI_LAYER_TAR_GZIP})",
            l.media_type
        ),
    };
    let wasm = m.layers.iter().find(|l| l.media_type == ISTIO_WASM_LAYER);
    let artifact = match (m.layers.len(), wasm) {
        (1 | 2, Some(l)) => return Ok((ImageFormat::WasmArtifact, l.clone())),
        (2, None) => format!("could not find the layer of type {ISTIO_WASM_LAYER}"),
        (n, _) => format!("number of layers must be 2 but got {n}"),
    };
    if let Some(l) = m.layers.iter().find(|l| l.media_type == CNCF_WASM_LAYER) {
        return Ok((ImageFormat::CncfWasm, l.clone()));
    }
    // go-multierror's format, as Istio prints it.
    Err(format!(
        "the given image is in invalid format as an OCI image: 2 errors occurred:\n\t* could not parse as compat variant: {compat}\n\t* could not parse as oci variant: {artifact}"
    ))
}

#[cfg(test)]
mod tests {
    use super::super::{OCI_LAYER_TAR, OCI_MANIFEST};
    use super::*;

    fn manifest(media_type: &str, layers: &[&str]) -> RawManifest {
        RawManifest {
            media_type: media_type.into(),
            layers: layers
                .iter()
                .map(|t| Descriptor {
                    media_type: (*t).into(),
                    digest: format!("sha256:{t}"),
                    size: 1,
                })
                .collect(),
            manifests: vec![],
        }
    }

    #[test]
    fn formats_in_istio_order() {
        let f = |m: RawManifest| pick_format(&m).map(|(f, l)| (f, l.media_type));
        assert_eq!(
            f(manifest(DOCKER_MANIFEST, &[DOCKER_LAYER, DOCKER_LAYER]))
                .unwrap()
                .0,
            ImageFormat::Docker
        );
        assert_eq!(
            f(manifest(DOCKER_MANIFEST, &[ISTIO_WASM_LAYER])).unwrap_err(),
            format!(
                "could not extract Wasm file from the image as Docker container invalid media type {ISTIO_WASM_LAYER} (expect {DOCKER_LAYER})"
            )
        );
        assert_eq!(
            f(manifest(
                OCI_MANIFEST,
                &[ISTIO_WASM_LAYER, OCI_LAYER_TAR_GZIP]
            ))
            .unwrap()
            .0,
            ImageFormat::OciImage
        );
        assert_eq!(
            f(manifest(OCI_MANIFEST, &["x", ISTIO_WASM_LAYER]))
                .unwrap()
                .0,
            ImageFormat::WasmArtifact
        );
        // Single-layer artifact (rejected by Istio, higress#4528) and the CNCF artifact.
        assert_eq!(
            f(manifest(OCI_MANIFEST, &[ISTIO_WASM_LAYER])).unwrap().0,
            ImageFormat::WasmArtifact
        );
        assert_eq!(
            f(manifest("", &[CNCF_WASM_LAYER])).unwrap().0,
            ImageFormat::CncfWasm
        );
        // Istio's rules and messages for the rest.
        let err = f(manifest(OCI_MANIFEST, &[OCI_LAYER_TAR])).unwrap_err();
        assert_eq!(
            err,
            "the given image is in invalid format as an OCI image: 2 errors occurred:\n\
             \t* could not parse as compat variant: invalid media type application/vnd.oci.image.layer.v1.tar (expect application/vnd.oci.image.layer.v1.tar+gzip)\n\
             \t* could not parse as oci variant: number of layers must be 2 but got 1"
        );
        let three = f(manifest(OCI_MANIFEST, &["a", ISTIO_WASM_LAYER, "b"])).unwrap_err();
        assert!(
            three.ends_with("number of layers must be 2 but got 3"),
            "{three}"
        );
        let no_wasm = f(manifest(OCI_MANIFEST, &["a", "b"])).unwrap_err();
        assert!(
            no_wasm.ends_with(&format!(
                "could not find the layer of type {ISTIO_WASM_LAYER}"
            )),
            "{no_wasm}"
        );
        let empty = f(manifest(OCI_MANIFEST, &[])).unwrap_err();
        assert!(
            empty.contains("compat variant: number of layers must be greater than zero"),
            "{empty}"
        );
    }
}

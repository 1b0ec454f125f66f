//! OCI fetches against a real docker-registry.

use std::sync::Arc;
use std::time::Duration;

use wasmesh_agent::cache::{CacheError, CacheOptions, GetOptions, ModuleCache, PullPolicy};
use wasmesh_agent::fetch::{FetchError, InsecureRegistries, PullSecret};
use wasmesh_agent::metrics::{FetchResult, Metrics};

use crate::registry::{self, ALL_FORMATS, Format, Options, Registry, module};

fn cache(dir: &std::path::Path, insecure: &str) -> ModuleCache {
    let mut o = CacheOptions::new(dir);
    o.fetch.insecure_registries = InsecureRegistries::parse(insecure);
    ModuleCache::open(o, Arc::new(Metrics::default())).expect("cache opens")
}

fn opts(resource: &str, rv: &str) -> GetOptions {
    GetOptions {
        resource_name: resource.into(),
        resource_version: rv.into(),
        timeout: Duration::from_secs(20),
        ..GetOptions::default()
    }
}

#[tokio::test]
async fn every_wasm_image_format_is_pulled_from_a_real_registry() -> anyhow::Result<()> {
    let reg = Registry::start(Options {
        tls: false,
        auth: false,
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let cache = cache(dir.path(), &reg.host);
    for (i, format) in ALL_FORMATS.into_iter().enumerate() {
        let m = module(i as u8);
        let repo = format!("plugins/{format:?}").to_lowercase();
        let digest = reg.push(&repo, "v1", format, &m).await?;
        // By tag, with the manifest digest as sha256 (Istio's rule for OCI).
        let mut o = opts(&format!("r{i}"), "1");
        o.checksum = Some(digest.clone());
        let path = cache
            .get(&reg.url(&repo, "v1"), &o)
            .await
            .map_err(|e| anyhow::anyhow!("{format:?}: {e}"))?;
        assert_eq!(std::fs::read(&path)?, m, "{format:?}");
        assert!(
            path.to_string_lossy().ends_with(&format!("{digest}.wasm")),
            "{format:?}: {}",
            path.display()
        );
        // By digest: same module, no new download.
        let by_digest = format!("oci://{}/{repo}@sha256:{digest}", reg.host);
        assert_eq!(
            cache.get(&by_digest, &opts(&format!("d{i}"), "1")).await?,
            path
        );
    }
    assert_eq!(
        cache.metrics().remote_fetch_count(FetchResult::Success),
        ALL_FORMATS.len() as u64
    );
    Ok(())
}

#[tokio::test]
async fn wrong_sha256_is_an_error_naming_both_digests() -> anyhow::Result<()> {
    let reg = Registry::start(Options {
        tls: false,
        auth: false,
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let cache = cache(dir.path(), &reg.host);
    let digest = reg
        .push("p/sha", "v1", Format::WasmArtifact, &module(1))
        .await?;
    let mut o = opts("r", "1");
    let wrong = registry::sha256(&module(1)); // the module's sha, not the manifest digest
    o.checksum = Some(wrong.clone());
    let err = cache.get(&reg.url("p/sha", "v1"), &o).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CacheError::ChecksumMismatch { .. }), "{msg}");
    assert!(
        msg.contains(&wrong) && msg.contains(&digest) && msg.contains("p/sha"),
        "{msg}"
    );
    assert!(
        cache.modules().is_empty(),
        "a module that failed verification is never stored"
    );
    Ok(())
}

#[tokio::test]
async fn a_blob_that_is_not_wasm_is_refused() -> anyhow::Result<()> {
    let reg = Registry::start(Options {
        tls: false,
        auth: false,
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let cache = cache(dir.path(), &reg.host);
    reg.push(
        "p/text",
        "v1",
        Format::WasmArtifact,
        b"#!/bin/sh\necho not wasm\n",
    )
    .await?;
    let err = cache
        .get(&reg.url("p/text", "v1"), &opts("r", "1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CacheError::Fetch(FetchError::NotWasm { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("p/text"), "{err}");
    // An image without any Wasm layer.
    reg.push_image(
        "p/json",
        "v1",
        wasmesh_agent::fetch::oci::OCI_MANIFEST,
        ("application/json", b"{}"),
        &[("application/json", b"{}".to_vec())],
    )
    .await?;
    let err = cache
        .get(&reg.url("p/json", "v1"), &opts("r", "1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CacheError::Fetch(FetchError::InvalidImage { .. })),
        "{err}"
    );
    assert!(
        err.to_string().starts_with(
            "could not fetch Wasm binary: the given image is in invalid format as an OCI image"
        ),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn a_plain_http_registry_on_loopback_needs_no_insecure_listing() -> anyhow::Result<()> {
    // go-containerregistry (Istio) falls back to plain HTTP for 127.0.0.1, localhost:<port>
    // and RFC 1918 registries without WASM_INSECURE_REGISTRIES.
    let reg = Registry::start(Options {
        tls: false,
        auth: false,
    })
    .await?;
    let digest = reg
        .push("p/insecure", "v1", Format::Cncf, &module(2))
        .await?;
    let dir = tempfile::tempdir()?;
    let mut o = opts("r", "1");
    o.checksum = Some(digest);
    let p = cache(dir.path(), "")
        .get(&reg.url("p/insecure", "v1"), &o)
        .await?;
    assert_eq!(std::fs::read(p)?, module(2));
    // `wasmesh plugin pull` without --insecure.
    let pulled = wasmesh_agent::pull::pull(
        &reg.url("p/insecure", "v1"),
        None,
        wasmesh_agent::fetch::FetchOptions::default(),
        None,
    )
    .await?;
    assert_eq!(pulled.bytes, module(2));
    Ok(())
}

/// Forwards TCP connections from `127.0.0.2:<free port>` to `to`: a registry name that
/// go-containerregistry would reach over HTTPS only. Returns `host:port`.
async fn forward_from_127_0_0_2(to: String) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let to = to.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    Ok(addr.to_string())
}

#[tokio::test]
async fn any_registry_that_answers_https_in_plain_http_is_retried_over_http() -> anyhow::Result<()>
{
    // Istio's PrepareFetch retries with name.Insecure on "server gave HTTP response", whatever
    // WASM_INSECURE_REGISTRIES says.
    let reg = Registry::start(Options {
        tls: false,
        auth: false,
    })
    .await?;
    reg.push("p/plain", "v1", Format::WasmArtifact, &module(12))
        .await?;
    let host = forward_from_127_0_0_2(reg.host.clone()).await?;
    assert!(!wasmesh_agent::fetch::oci::plain_http_allowed(&host));
    let dir = tempfile::tempdir()?;
    let cache = cache(dir.path(), "");
    let url = format!("oci://{host}/p/plain:v1");
    let p = cache.get(&url, &opts("r", "1")).await?;
    assert_eq!(std::fs::read(p)?, module(12));
    assert_eq!(cache.metrics().remote_fetch_count(FetchResult::Success), 1);
    Ok(())
}

#[tokio::test]
async fn a_tls_failure_other_than_a_plain_http_answer_is_not_retried_over_http()
-> anyhow::Result<()> {
    // A TLS registry behind a name Istio reaches over HTTPS only: the certificate error is
    // final; only the insecure list turns verification off.
    let reg = Registry::start(Options {
        tls: true,
        auth: false,
    })
    .await?;
    reg.push("p/tls2", "v1", Format::WasmArtifact, &module(13))
        .await?;
    let host = forward_from_127_0_0_2(reg.host.clone()).await?;
    let url = format!("oci://{host}/p/tls2:v1");
    let dir = tempfile::tempdir()?;
    let err = cache(dir.path(), "")
        .get(&url, &opts("r", "1"))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");
    assert!(!msg.contains("http: "), "no plain HTTP try: {msg}");
    let dir = tempfile::tempdir()?;
    let p = cache(dir.path(), &host).get(&url, &opts("r", "1")).await?;
    assert_eq!(std::fs::read(p)?, module(13));
    Ok(())
}

#[tokio::test]
async fn tls_registry_with_a_self_signed_cert_only_when_listed() -> anyhow::Result<()> {
    let reg = Registry::start(Options {
        tls: true,
        auth: false,
    })
    .await?;
    reg.push("p/tls", "v1", Format::OciImage, &module(3))
        .await?;
    let dir = tempfile::tempdir()?;
    let err = cache(dir.path(), "")
        .get(&reg.url("p/tls", "v1"), &opts("r", "1"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    let dir = tempfile::tempdir()?;
    let p = cache(dir.path(), &reg.host)
        .get(&reg.url("p/tls", "v1"), &opts("r", "1"))
        .await?;
    assert_eq!(std::fs::read(p)?, module(3));
    Ok(())
}

#[tokio::test]
async fn htpasswd_registry_needs_the_pull_secret_and_never_logs_it() -> anyhow::Result<()> {
    let reg = Registry::start(Options {
        tls: true,
        auth: true,
    })
    .await?;
    reg.push("p/private", "v1", Format::Docker, &module(4))
        .await?;
    let url = reg.url("p/private", "v1");
    let dir = tempfile::tempdir()?;
    let cache = cache(dir.path(), &reg.host);
    // Anonymous.
    let err = cache.get(&url, &opts("r", "1")).await.unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("not authorized"),
        "{err}"
    );
    // Bad credentials.
    let mut o = opts("r", "1");
    o.pull_secret = Some(PullSecret(
        reg.docker_config(registry::USER, "wrong-password-123"),
    ));
    let err = cache.get(&url, &o).await.unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("not authorized"),
        "{err}"
    );
    assert!(
        !err.to_string().contains("wrong-password-123"),
        "the password leaked: {err}"
    );
    // Good credentials.
    o.pull_secret = Some(PullSecret(
        reg.docker_config(registry::USER, registry::PASSWORD),
    ));
    let p = cache.get(&url, &o).await?;
    assert_eq!(std::fs::read(p)?, module(4));
    assert!(!format!("{o:?}").contains(registry::PASSWORD));
    // Without a pull secret, the default docker config (Istio's default keychain) is used.
    let cfg = dir.path().join("config.json");
    std::fs::write(&cfg, reg.docker_config(registry::USER, registry::PASSWORD))?;
    let mut co = CacheOptions::new(dir.path().join("other-cache"));
    co.fetch.insecure_registries = InsecureRegistries::parse(&reg.host);
    co.fetch.docker_config = Some(cfg);
    let cache = ModuleCache::open(co, Arc::new(Metrics::default()))?;
    let p = cache.get(&url, &opts("r", "1")).await?;
    assert_eq!(std::fs::read(p)?, module(4));
    Ok(())
}

#[tokio::test]
async fn latest_tag_is_pulled_again_on_a_new_resource_version() -> anyhow::Result<()> {
    let reg = Registry::start(Options {
        tls: false,
        auth: false,
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let cache = cache(dir.path(), &reg.host);
    let url = reg.url("p/moving", "latest");
    reg.push("p/moving", "latest", Format::WasmArtifact, &module(5))
        .await?;
    let p1 = cache.get(&url, &opts("r", "1")).await?;
    reg.push("p/moving", "latest", Format::WasmArtifact, &module(6))
        .await?;
    // Same resource version: the cached module.
    assert_eq!(cache.get(&url, &opts("r", "1")).await?, p1);
    // New resource version: :latest behaves as Always.
    let p2 = cache.get(&url, &opts("r", "2")).await?;
    assert_eq!(std::fs::read(&p2)?, module(6));
    // A tagged (non-latest) URL with IfNotPresent keeps the first pull.
    let v1 = reg.url("p/moving", "v1");
    reg.push("p/moving", "v1", Format::WasmArtifact, &module(7))
        .await?;
    let mut o = opts("s", "1");
    o.pull_policy = PullPolicy::IfNotPresent;
    let q1 = cache.get(&v1, &o).await?;
    reg.push("p/moving", "v1", Format::WasmArtifact, &module(8))
        .await?;
    o.resource_version = "2".into();
    assert_eq!(cache.get(&v1, &o).await?, q1);
    Ok(())
}

#[tokio::test]
async fn a_registry_sending_clients_to_a_metadata_token_realm_is_refused() -> anyhow::Result<()> {
    let reg = Registry::start_token_realm("http://169.254.169.254/latest/token").await?;
    let dir = tempfile::tempdir()?;
    let cache = cache(dir.path(), &reg.host);
    let err = cache
        .get(&reg.url("p/x", "v1"), &opts("r", "1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CacheError::Fetch(FetchError::BlockedRealm { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("169.254.169.254"), "{err}");
    Ok(())
}

/// An uncompressed tar holding `name`.
fn tar_of(name: &str, content: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut t = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    t.append_data(&mut h, name, content)?;
    Ok(t.into_inner()?)
}

/// Istio's `TestWasmCache` "fetch invalid oci" and "fetch oci with wrong digest" cases
/// (`pkg/wasm/cache_test.go`), against a real registry.
#[tokio::test]
async fn istio_fetch_invalid_oci_cases() -> anyhow::Result<()> {
    use wasmesh_agent::fetch::oci::{DOCKER_LAYER, DOCKER_MANIFEST, OCI_LAYER_TAR, OCI_MANIFEST};
    let reg = Registry::start(Options {
        tls: false,
        auth: false,
    })
    .await?;
    // setupOCIRegistry: one uncompressed OCI layer with `not-wasm.txt`, OCI manifest.
    let invalid_digest = reg
        .push_image(
            "test/invalid",
            "latest",
            OCI_MANIFEST,
            ("application/vnd.oci.image.config.v1+json", b"{}"),
            &[(OCI_LAYER_TAR, tar_of("not-wasm.txt", b"a")?)],
        )
        .await?;
    let valid_digest = reg
        .push("test/valid/docker", "v0.1.0", Format::Docker, &module(30))
        .await?;
    let dir = tempfile::tempdir()?;
    let cache = cache(dir.path(), "");
    let m = cache.metrics().clone();
    let invalid_url = format!("oci://{}/test/invalid", reg.host);

    // "fetch invalid oci": the right digest, then the format is rejected (download_failure).
    let mut o = opts("namespace.resource", "0");
    o.checksum = Some(invalid_digest.clone());
    let err = cache.get(&invalid_url, &o).await.unwrap_err();
    assert!(
        matches!(err, CacheError::Fetch(FetchError::InvalidImage { .. })),
        "{err}"
    );
    let want = "could not fetch Wasm binary: the given image is in invalid format as an OCI image: 2 errors occurred:
\t* could not parse as compat variant: invalid media type application/vnd.oci.image.layer.v1.tar (expect application/vnd.oci.image.layer.v1.tar+gzip)
\t* could not parse as oci variant: number of layers must be 2 but got 1";
    assert!(err.to_string().starts_with(want), "{err}");
    assert_eq!(m.remote_fetch_count(FetchResult::DownloadFailure), 1);
    assert_eq!(m.remote_fetch_count(FetchResult::ManifestFailure), 0);

    // The same image with a wrong sha256: the checksum is compared first.
    o.checksum = Some(registry::sha256(b"something else"));
    let err = cache.get(&invalid_url, &o).await.unwrap_err();
    assert!(matches!(err, CacheError::ChecksumMismatch { .. }), "{err}");
    assert_eq!(m.remote_fetch_count(FetchResult::ChecksumMismatched), 1);
    assert_eq!(m.remote_fetch_count(FetchResult::DownloadFailure), 1);

    // "fetch oci with wrong digest" on a valid Docker image.
    let valid_url = reg.url("test/valid/docker", "v0.1.0");
    o.checksum = Some(registry::sha256(b"wrongdigest"));
    let err = cache.get(&valid_url, &o).await.unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "module downloaded from {valid_url} has checksum {valid_digest}, which does not match:"
        )),
        "{err}"
    );

    // A Docker manifest whose last layer is not the Docker layer type.
    reg.push_image(
        "test/docker-bad-layer",
        "v1",
        DOCKER_MANIFEST,
        ("application/vnd.docker.container.image.v1+json", b"{}"),
        &[(OCI_LAYER_TAR, tar_of("plugin.wasm", &module(31))?)],
    )
    .await?;
    let err = cache
        .get(
            &reg.url("test/docker-bad-layer", "v1"),
            &opts("namespace.resource", "0"),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "could not fetch Wasm binary: could not extract Wasm file from the image as Docker container invalid media type {OCI_LAYER_TAR} (expect {DOCKER_LAYER})"
        )
    );
    // A Wasm artifact with three layers (higress#4014).
    reg.push_image(
        "test/three-layers",
        "v1",
        OCI_MANIFEST,
        ("application/vnd.module.wasm.config.v1+json", b"{}"),
        &[
            ("application/json", b"{}".to_vec()),
            (wasmesh_agent::fetch::oci::ISTIO_WASM_LAYER, module(32)),
            ("application/json", b"[]".to_vec()),
        ],
    )
    .await?;
    let err = cache
        .get(
            &reg.url("test/three-layers", "v1"),
            &opts("namespace.resource", "0"),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .ends_with("could not parse as oci variant: number of layers must be 2 but got 3"),
        "{err}"
    );
    assert_eq!(m.remote_fetch_count(FetchResult::DownloadFailure), 3);
    assert!(cache.modules().is_empty(), "nothing invalid is stored");
    Ok(())
}

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
        err.to_string().contains("no supported Wasm format"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn plain_http_registries_need_to_be_listed_as_insecure() -> anyhow::Result<()> {
    let reg = Registry::start(Options {
        tls: false,
        auth: false,
    })
    .await?;
    reg.push("p/insecure", "v1", Format::Cncf, &module(2))
        .await?;
    let dir = tempfile::tempdir()?;
    let err = cache(dir.path(), "")
        .get(&reg.url("p/insecure", "v1"), &opts("r", "1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CacheError::Fetch(FetchError::Manifest { .. })),
        "{err}"
    );
    let dir = tempfile::tempdir()?;
    let p = cache(dir.path(), "*")
        .get(&reg.url("p/insecure", "v1"), &opts("r", "1"))
        .await?;
    assert_eq!(std::fs::read(p)?, module(2));
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

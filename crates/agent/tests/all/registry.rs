//! A real OCI registry (test-support's `docker-registry` launcher) with optional htpasswd auth
//! and TLS, and a small pusher for the Wasm image formats.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sha2::Digest;

pub(crate) const USER: &str = "wasm-puller";
pub(crate) const PASSWORD: &str = "s3cret-pa55word";

pub(crate) struct Registry {
    _process: test_support::registry::Registry,
    pub(crate) host: String,
    pub(crate) tls: bool,
    pub(crate) auth: bool,
    client: reqwest::Client,
}

pub(crate) struct Options {
    pub(crate) tls: bool,
    pub(crate) auth: bool,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(crate) fn sha256(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

impl Registry {
    pub(crate) async fn start(opts: Options) -> anyhow::Result<Self> {
        Self::start_on(free_port()?, opts).await
    }

    pub(crate) async fn start_on(port: u16, opts: Options) -> anyhow::Result<Self> {
        Self::start_inner(port, opts, None).await
    }

    /// A TLS registry with token auth whose bearer realm is `realm`.
    pub(crate) async fn start_token_realm(realm: &str) -> anyhow::Result<Self> {
        Self::start_inner(
            free_port()?,
            Options {
                tls: true,
                auth: false,
            },
            Some(realm),
        )
        .await
    }

    async fn start_inner(
        port: u16,
        opts: Options,
        token_realm: Option<&str>,
    ) -> anyhow::Result<Self> {
        let process = test_support::registry::Registry::launch(test_support::registry::Options {
            port: Some(port),
            tls: opts.tls,
            htpasswd: opts.auth.then(|| (USER.to_owned(), PASSWORD.to_owned())),
            token_realm: token_realm.map(str::to_owned),
        })
        .await?;
        let client = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .build()?;
        let reg = Self {
            host: process.host.clone(),
            _process: process,
            tls: opts.tls,
            auth: opts.auth,
            client,
        };
        reg.wait_ready().await?;
        Ok(reg)
    }

    fn base(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.host
        )
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = self.client.get(format!("{}/v2/", self.base())).send().await
                && (r.status().as_u16() == 200 || r.status().as_u16() == 401)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("docker-registry on {} did not become ready", self.host);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn req(&self, b: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if self.auth {
            b.basic_auth(USER, Some(PASSWORD))
        } else {
            b
        }
    }

    async fn push_blob(&self, repo: &str, data: &[u8]) -> anyhow::Result<String> {
        let digest = format!("sha256:{}", sha256(data));
        let r = self
            .req(
                self.client
                    .post(format!("{}/v2/{repo}/blobs/uploads/", self.base())),
            )
            .send()
            .await?;
        if r.status().as_u16() != 202 {
            bail!("blob upload start: {}", r.status());
        }
        let loc = r
            .headers()
            .get("location")
            .context("no upload location")?
            .to_str()?
            .to_owned();
        let loc = if loc.starts_with("http") {
            loc
        } else {
            format!("{}{loc}", self.base())
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = self
            .req(self.client.put(format!("{loc}{sep}digest={digest}")))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await?;
        if !r.status().is_success() {
            bail!(
                "blob upload: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        Ok(digest)
    }

    /// Pushes a manifest with the given config and layers; returns the manifest digest (hex).
    pub(crate) async fn push_image(
        &self,
        repo: &str,
        tag: &str,
        manifest_type: &str,
        config: (&str, &[u8]),
        layers: &[(&str, Vec<u8>)],
    ) -> anyhow::Result<String> {
        let config_digest = self.push_blob(repo, config.1).await?;
        let mut descs = Vec::new();
        for (mt, data) in layers {
            let d = self.push_blob(repo, data).await?;
            descs.push(serde_json::json!({"mediaType": mt, "digest": d, "size": data.len()}));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config.0, "digest": config_digest, "size": config.1.len()},
            "layers": descs,
        });
        let body = serde_json::to_vec(&manifest)?;
        let r = self
            .req(
                self.client
                    .put(format!("{}/v2/{repo}/manifests/{tag}", self.base())),
            )
            .header("content-type", manifest_type)
            .body(body.clone())
            .send()
            .await?;
        if !r.status().is_success() {
            bail!(
                "manifest push: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        Ok(sha256(&body))
    }

    /// Pushes `module` in `format`; returns the manifest digest (hex).
    pub(crate) async fn push(
        &self,
        repo: &str,
        tag: &str,
        format: Format,
        module: &[u8],
    ) -> anyhow::Result<String> {
        use wasmesh_agent::fetch::oci::*;
        match format {
            Format::Docker => {
                let layer = plugin_layer(module)?;
                let base = plugin_layer(b"base layer")?;
                self.push_image(
                    repo,
                    tag,
                    DOCKER_MANIFEST,
                    ("application/vnd.docker.container.image.v1+json", b"{}"),
                    &[(DOCKER_LAYER, base), (DOCKER_LAYER, layer)],
                )
                .await
            }
            Format::OciImage => {
                let layer = plugin_layer(module)?;
                self.push_image(
                    repo,
                    tag,
                    OCI_MANIFEST,
                    ("application/vnd.oci.image.config.v1+json", b"{}"),
                    &[(OCI_LAYER_TAR_GZIP, layer)],
                )
                .await
            }
            Format::WasmArtifact => {
                self.push_image(
                    repo,
                    tag,
                    OCI_MANIFEST,
                    ("application/vnd.module.wasm.config.v1+json", b"{}"),
                    &[
                        (ISTIO_WASM_LAYER, module.to_vec()),
                        (
                            "application/vnd.module.wasm.runtime.config.v1+json",
                            b"{}".to_vec(),
                        ),
                    ],
                )
                .await
            }
            Format::SingleLayerArtifact => {
                self.push_image(
                    repo,
                    tag,
                    OCI_MANIFEST,
                    ("application/vnd.module.wasm.config.v1+json", b"{}"),
                    &[(ISTIO_WASM_LAYER, module.to_vec())],
                )
                .await
            }
            Format::Cncf => {
                self.push_image(
                    repo,
                    tag,
                    OCI_MANIFEST,
                    (
                        "application/vnd.wasm.config.v0+json",
                        b"{\"architecture\":\"wasm\",\"os\":\"wasip1\"}",
                    ),
                    &[(CNCF_WASM_LAYER, module.to_vec())],
                )
                .await
            }
        }
    }

    pub(crate) fn url(&self, repo: &str, tag: &str) -> String {
        format!("oci://{}/{repo}:{tag}", self.host)
    }

    /// A docker config JSON for this registry.
    pub(crate) fn docker_config(&self, user: &str, password: &str) -> Vec<u8> {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        serde_json::to_vec(&serde_json::json!({"auths": {self.host.clone(): {"auth": auth}}}))
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Docker,
    OciImage,
    WasmArtifact,
    SingleLayerArtifact,
    Cncf,
}

pub(crate) const ALL_FORMATS: [Format; 5] = [
    Format::Docker,
    Format::OciImage,
    Format::WasmArtifact,
    Format::SingleLayerArtifact,
    Format::Cncf,
];

/// A `tar+gzip` layer holding `plugin.wasm`.
fn plugin_layer(module: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    let mut t = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(module.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    t.append_data(&mut h, "plugin.wasm", module)?;
    let tar = t.into_inner()?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar)?;
    Ok(gz.finish()?)
}

/// A small valid module, distinct per seed (a custom section carries the seed).
pub(crate) fn module(seed: u8) -> Vec<u8> {
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    m.extend_from_slice(&[0x00, 0x06, 0x04, b's', b'e', b'e', b'd', seed]);
    m
}

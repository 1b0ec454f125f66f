//! A real OCI registry for tests: `docker-registry` (apt package, installed by `.ci/run`) on a
//! free loopback port, plain HTTP, filesystem storage in a temporary directory, optionally
//! behind htpasswd basic auth. Fails loudly when the binary is missing. Stops when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Where the apt package installs the registry.
pub const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";

/// A running registry.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    /// `127.0.0.1:<port>`, as it goes into an image reference.
    pub host: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// An anonymous registry.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(None).await
    }

    /// A registry that wants basic auth with `(user, password)` (htpasswd, bcrypt).
    pub async fn start_with_auth(user: &str, password: &str) -> anyhow::Result<Self> {
        Self::start_with(Some((user, password))).await
    }

    async fn start_with(auth: Option<(&str, &str)>) -> anyhow::Result<Self> {
        if !Path::new(DOCKER_REGISTRY).exists() {
            bail!(
                "{DOCKER_REGISTRY} is missing: install the docker-registry apt package (.ci/run does)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = tempfile::tempdir()?;
        let host = format!("127.0.0.1:{port}");
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .context("cannot run htpasswd (apache2-utils)")?;
            if !out.status.success() {
                bail!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let p = dir.path().join("htpasswd");
            std::fs::write(&p, out.stdout)?;
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: test-registry\n    path: {}\n",
                p.display()
            ));
        }
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, cfg)?;
        let child = Command::new(DOCKER_REGISTRY)
            .arg("serve")
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start docker-registry")?;
        let mut reg = Self {
            child,
            host,
            _dir: dir,
        };
        // Ready once it accepts connections (it binds after loading its config).
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(&reg.host).await.is_err() {
            if let Some(status) = reg.child.try_wait()? {
                bail!("docker-registry exited with {status} before listening");
            }
            if Instant::now() > deadline {
                bail!("docker-registry on {} did not start listening", reg.host);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(reg)
    }

    /// `oci://<host>/<repo>:<tag>`.
    pub fn url(&self, repo: &str, tag: &str) -> String {
        format!("oci://{}/{repo}:{tag}", self.host)
    }
}

//! A real OCI registry for tests: `docker-registry` (apt package, installed by `.ci/run`) on a
//! free loopback port with filesystem storage in a temporary directory; optionally TLS (a
//! self-signed certificate for 127.0.0.1 made with `openssl`), htpasswd basic auth, or token
//! auth with a given realm. Fails loudly when a binary is missing. Stops when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Where the apt package installs the registry.
pub const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";

/// How to start the registry.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Port on 127.0.0.1; a free one when unset.
    pub port: Option<u16>,
    /// Serve HTTPS with a self-signed certificate.
    pub tls: bool,
    /// Basic auth (user, password), checked against an htpasswd file (bcrypt).
    pub htpasswd: Option<(String, String)>,
    /// Token auth whose bearer realm is this URL (needs `tls`: the certificate signs tokens).
    pub token_realm: Option<String>,
}

/// A running registry.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    /// `127.0.0.1:<port>`, as it goes into an image reference.
    pub host: String,
    /// Whether it serves HTTPS.
    pub tls: bool,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<Vec<u8>> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

impl Registry {
    /// An anonymous plain-HTTP registry.
    pub async fn start() -> anyhow::Result<Self> {
        Self::launch(Options::default()).await
    }

    /// A plain-HTTP registry that wants basic auth with `user` and `password`.
    pub async fn start_with_auth(user: &str, password: &str) -> anyhow::Result<Self> {
        Self::launch(Options {
            htpasswd: Some((user.to_owned(), password.to_owned())),
            ..Options::default()
        })
        .await
    }

    /// A registry as `opts` says.
    pub async fn launch(opts: Options) -> anyhow::Result<Self> {
        if !Path::new(DOCKER_REGISTRY).exists() {
            bail!(
                "{DOCKER_REGISTRY} is missing: install the docker-registry apt package (.ci/run does)"
            );
        }
        let port = match opts.port {
            Some(p) => p,
            None => std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port(),
        };
        let dir = tempfile::tempdir()?;
        let host = format!("127.0.0.1:{port}");
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
            dir.path().join("data").display()
        );
        let mut cert = None;
        if opts.tls {
            let (c, k) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            run(Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=127.0.0.1",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                ])
                .arg("-keyout")
                .arg(&k)
                .arg("-out")
                .arg(&c)
                .stderr(Stdio::piped()))?;
            cfg.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                c.display(),
                k.display()
            ));
            cert = Some(c);
        }
        if let Some(realm) = &opts.token_realm {
            let Some(c) = &cert else {
                bail!("a token realm needs tls (the certificate signs the tokens)");
            };
            cfg.push_str(&format!(
                "auth:\n  token:\n    realm: {realm}\n    service: wasm-registry\n    issuer: test\n    rootcertbundle: {}\n",
                c.display()
            ));
        }
        if let Some((user, password)) = &opts.htpasswd {
            let htpasswd = run(Command::new("htpasswd").args(["-Bbn", user, password]))
                .context("htpasswd comes with apache2-utils")?;
            let p = dir.path().join("htpasswd");
            std::fs::write(&p, htpasswd)?;
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: wasm-registry\n    path: {}\n",
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
            tls: opts.tls,
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

    /// `https://<host>` or `http://<host>`.
    pub fn base(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.host
        )
    }
}

//! `wasmesh plugin inspect|test`: look inside a module and try it with no proxy.
//! `wasmesh plugin push|pull`: publish to and fetch from OCI registries (and HTTP), through the
//! agent's library (`wasmesh_agent::push`, `wasmesh_agent::pull`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use wasm_host::trial::{self, TrialInput};
use wasm_host::{HeaderMap, HttpCallResponse, Plugin, PluginConfig, Runtime, RuntimeConfig};

#[derive(Subcommand)]
pub(crate) enum PluginCommand {
    /// Show a module's ABI version, exports, imports, size and sha256.
    Inspect {
        /// The .wasm file.
        file: PathBuf,
    },
    /// Run a plugin against a sample request and print what it did: header and body edits,
    /// local reply, callouts, logs, metrics. No proxy needed.
    Test(Box<TestArgs>),
    /// Push a module to an OCI registry as the Wasm artifact Istio pulls; prints the manifest
    /// digest (a WasmPlugin's `sha256` for this image).
    Push(PushArgs),
    /// Fetch a module (oci:// or http(s)://) as the agent does, verify it, write it atomically.
    Pull(PullArgs),
}

#[derive(Args)]
pub(crate) struct PushArgs {
    /// The .wasm file.
    file: PathBuf,
    /// Target image: oci://REGISTRY/REPOSITORY:TAG.
    image: String,
    /// Accept any TLS certificate and fall back to plain HTTP (local registries).
    #[arg(long)]
    insecure: bool,
    /// Registry user name (the password is read from stdin).
    #[arg(long, env = "WASMESH_REGISTRY_USERNAME", requires = "password_stdin")]
    username: Option<String>,
    /// Read the registry password from the first line of stdin.
    #[arg(long, requires = "username")]
    password_stdin: bool,
}

#[derive(Args)]
pub(crate) struct PullArgs {
    /// oci://REGISTRY/REPOSITORY[:TAG|@sha256:DIGEST] or http(s)://…
    url: String,
    /// Where to write the module (atomically).
    #[arg(short, long)]
    output: PathBuf,
    /// Expected checksum, as a WasmPlugin's `sha256`: the manifest digest for OCI, the module's
    /// sha256 for HTTP.
    #[arg(long)]
    sha256: Option<String>,
    /// Accept any TLS certificate. (For OCI, registries on loopback or private addresses, and
    /// any registry that answers HTTPS in plain HTTP, are reached over plain HTTP anyway, as
    /// istio-agent does.)
    #[arg(long)]
    insecure: bool,
}

#[derive(Args)]
pub(crate) struct TestArgs {
    /// The .wasm file.
    file: PathBuf,
    /// Plugin configuration (what `on_configure` reads), usually JSON.
    #[arg(long, default_value = "")]
    config: String,
    /// VM configuration (what `on_vm_start` reads).
    #[arg(long, default_value = "")]
    vm_config: String,
    /// Root id (`pluginName` in a WasmPlugin).
    #[arg(long, default_value = "")]
    root_id: String,
    /// The request line: "METHOD PATH".
    #[arg(long, default_value = "GET /")]
    request: String,
    /// Request header, "name: value" (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Request authority.
    #[arg(long, default_value = "example.com")]
    authority: String,
    /// Request body.
    #[arg(long)]
    body: Option<String>,
    /// Upstream response status.
    #[arg(long, default_value_t = 200)]
    response_status: u16,
    /// Upstream response header, "name: value" (repeatable).
    #[arg(long = "response-header")]
    response_headers: Vec<String>,
    /// Upstream response body.
    #[arg(long)]
    response_body: Option<String>,
    /// Status answered to HTTP callouts; 0 makes them fail (reset).
    #[arg(long, default_value_t = 200)]
    callout_status: u16,
}

fn split_header(h: &str) -> anyhow::Result<(&str, &str)> {
    let (k, v) = h
        .split_once(':')
        .with_context(|| format!("header {h:?} is not \"name: value\""))?;
    Ok((k.trim(), v.trim()))
}

fn load(rt: &Runtime, file: &PathBuf) -> anyhow::Result<wasm_host::CompiledModule> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    rt.compile(&bytes)
        .with_context(|| format!("{} is not a usable proxy-wasm module", file.display()))
}

pub(crate) fn run(cmd: PluginCommand) -> anyhow::Result<()> {
    // Push and pull need no Wasm runtime.
    let cmd = match cmd {
        PluginCommand::Push(a) => return push(a),
        PluginCommand::Pull(a) => return pull(a),
        local => local,
    };
    let rt = Runtime::new(RuntimeConfig {
        pooling: false,
        ..Default::default()
    })?;
    match cmd {
        PluginCommand::Inspect { file } => {
            let m = load(&rt, &file)?;
            println!("file:        {}", file.display());
            println!("size:        {} bytes", m.size());
            println!("sha256:      {}", m.sha256());
            println!("abi:         {}", m.abi());
            println!("exports:     {}", m.exports().join(", "));
            println!("imports:     {}", m.imports().join(", "));
        }
        PluginCommand::Test(a) => {
            let a = *a;
            let module = load(&rt, &a.file)?;
            let (method, path) = a
                .request
                .split_once(' ')
                .unwrap_or(("GET", a.request.as_str()));
            let mut req = HeaderMap::from_entries([
                (":authority", a.authority.as_str()),
                (":path", path.trim()),
                (":method", method.trim()),
                (":scheme", "http"),
            ]);
            for h in &a.headers {
                let (k, v) = split_header(h)?;
                req.add(k.as_bytes(), v.as_bytes());
            }
            let mut resp = HeaderMap::from_entries([(":status", a.response_status.to_string())]);
            for h in &a.response_headers {
                let (k, v) = split_header(h)?;
                resp.add(k.as_bytes(), v.as_bytes());
            }
            let input = TrialInput {
                request_headers: req,
                request_body: a.body.map(String::into_bytes),
                response_headers: resp,
                response_body: a.response_body.map(String::into_bytes),
                callout_response: (a.callout_status != 0).then(|| HttpCallResponse {
                    headers: HeaderMap::from_entries([(":status", a.callout_status.to_string())]),
                    ..Default::default()
                }),
            };
            let name = a
                .file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let config = PluginConfig {
                name: name.clone(),
                root_id: a.root_id,
                vm_id: name,
                vm_configuration: a.vm_config.into_bytes(),
                configuration: a.config.into_bytes(),
                ..Default::default()
            };
            let plugin: Arc<Plugin> = Plugin::new(&rt, module, config);
            let report = trial::run(&plugin, &input);
            print!("{report}");
            if report.failure.is_some() {
                bail!("the plugin failed");
            }
        }
        PluginCommand::Push(_) | PluginCommand::Pull(_) => {
            unreachable!("push and pull return before the runtime starts")
        }
    }
    Ok(())
}

fn tokio_rt() -> anyhow::Result<tokio::runtime::Runtime> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn push(a: PushArgs) -> anyhow::Result<()> {
    use wasmesh_agent::push::{PushOptions, push};
    let module =
        std::fs::read(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
    let credentials = match a.username {
        Some(user) => {
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .context("cannot read the password from stdin")?;
            let password = password.trim_end_matches(['\n', '\r']).to_owned();
            if password.is_empty() {
                bail!("--password-stdin: stdin held no password");
            }
            Some((user, password))
        }
        None => None,
    };
    let opts = PushOptions {
        insecure: a.insecure,
        credentials,
    };
    let pushed = tokio_rt()?.block_on(push(&module, &a.image, &opts))?;
    eprintln!(
        "pushed {} ({} bytes, layer {})",
        a.image,
        module.len(),
        pushed.layer_digest
    );
    println!("{}", pushed.manifest_digest);
    Ok(())
}

fn pull(a: PullArgs) -> anyhow::Result<()> {
    use wasmesh_agent::fetch::{FetchOptions, InsecureRegistries};
    let mut opts = FetchOptions::default();
    if a.insecure {
        opts.insecure_registries = InsecureRegistries::parse("*");
    }
    let bar = indicatif::ProgressBar::no_length().with_style(
        indicatif::ProgressStyle::with_template(
            "{bytes}/{total_bytes} {wide_bar} {bytes_per_sec} {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let progress = {
        let bar = bar.clone();
        move |done: u64, total: Option<u64>| {
            if let Some(t) = total {
                bar.set_length(t);
            }
            bar.set_position(done);
        }
    };
    let pulled = tokio_rt()?.block_on(wasmesh_agent::pull::pull(
        &a.url,
        a.sha256.as_deref(),
        opts,
        Some(&progress),
    ));
    bar.finish_and_clear();
    let pulled = pulled?;
    wasmesh_agent::pull::write_module(&a.output, &pulled.bytes)?;
    println!("file:        {}", a.output.display());
    println!("size:        {} bytes", pulled.bytes.len());
    println!("sha256:      {}", pulled.file_sha256);
    if a.url.starts_with("oci://") {
        println!("digest:      sha256:{}", pulled.checksum);
    }
    Ok(())
}

//! `wasmesh plugin inspect|test`: look inside a module and try it with no proxy.

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
    }
    Ok(())
}

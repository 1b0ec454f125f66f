//! The `wasmesh` binary: clap subcommands and logging set-up, nothing else.

use clap::{Parser, Subcommand};

/// Opts this process out of transparent huge pages. With THP, a 2 MiB page is resident as soon
/// as one byte of it is touched: the allocator's arena showed 76 MiB of `AnonHugePages` after a
/// load test (RSS 121 MiB, `/proc/PID/smaps`). Small pages keep RSS to what is used, at no
/// measurable throughput cost (bench/proxy.md).
#[allow(unsafe_code, reason = "one prctl(2) call with constant arguments")]
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Returns the calling thread's free allocator pages to the OS now (after a large structure,
/// such as the Envoy descriptor pool, was dropped, or when a proxy worker has no connection
/// left) instead of when that thread next allocates.
#[allow(
    unsafe_code,
    reason = "an FFI call into the allocator with no arguments to uphold"
)]
pub(crate) fn return_free_memory() {
    // SAFETY: mi_collect only walks the allocator's own structures.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// mimalloc instead of glibc malloc: the proxy's per-request allocations (header maps, body
/// chunks, futures) were ~17 % of a worker's CPU under load with glibc (perf, header plugin);
/// Envoy likewise links tcmalloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod agent_cmd;
mod control_plane_cmd;
mod envoy_log;
mod plugin_cmd;
mod proxy_cmd;
mod status_cmd;
mod up_cmd;

#[derive(Parser)]
#[command(
    name = "wasmesh",
    version,
    about = "Extend a service mesh with proxy-wasm plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the version.
    Version,
    /// Serve WasmPlugin (and routing) config from a directory to proxies over ADS.
    ControlPlane(control_plane_cmd::ControlPlaneArgs),
    /// Validate Istio YAML files offline (the control plane's own validation).
    Validate(control_plane_cmd::ValidateArgs),
    /// istio-agent's Wasm role: proxy ADS between a proxy and the control plane, fetching,
    /// verifying and caching remote Wasm modules (OCI, HTTP) for ECDS.
    Agent(agent_cmd::AgentArgs),
    /// The data plane: an Envoy-compatible proxy running proxy-wasm filters from an Envoy v3
    /// bootstrap (`-c FILE`), like `envoy -c`.
    Proxy(proxy_cmd::ProxyArgs),
    /// Work with plugin modules: inspect, test against a sample request.
    #[command(subcommand)]
    Plugin(plugin_cmd::PluginCommand),
    /// Start the whole system on this machine with example plugins: control plane, agent,
    /// gateway proxy, demo upstream and module source. Prints what to curl and what to edit.
    Up(up_cmd::UpArgs),
    /// Show the control plane's view: connected proxies, what each acked or rejected (NACK
    /// with its error), config files with errors.
    Status(status_cmd::StatusArgs),
    /// Internal: compile a Wasm module read on stdin, write the precompiled artifact to stdout
    /// (the proxy runs this in a child process).
    #[command(hide = true)]
    CompileWasm(CompileWasmArgs),
}

#[derive(clap::Args)]
struct CompileWasmArgs {
    /// The engine's Wasm stack limit (must match the proxy's).
    #[arg(long)]
    max_stack_bytes: usize,
    /// Most heap the compiler may use (RLIMIT_DATA); a module that needs more fails.
    #[arg(long)]
    max_memory_bytes: Option<u64>,
}

/// Memory a compiler process may use: far above what real plugins need (tens of MiB for a
/// multi-megabyte Go module), low enough that a hostile module fails its compile instead of
/// pushing the machine into the OOM killer.
const COMPILE_MEMORY_LIMIT: u64 = 2 << 30;

/// Caps this process's heap (`RLIMIT_DATA`: private writable mappings, which is where the
/// allocator and the compiler's code buffers live). Allocation past it fails, and the process
/// aborts.
#[allow(unsafe_code, reason = "one setrlimit(2) call with a stack value")]
fn limit_heap(bytes: u64) {
    #[cfg(target_os = "linux")]
    {
        let lim = libc::rlimit {
            rlim_cur: bytes,
            rlim_max: bytes,
        };
        // SAFETY: setrlimit reads the struct we pass and nothing else.
        unsafe {
            libc::setrlimit(libc::RLIMIT_DATA, &lim);
        }
    }
}

/// The proxy's compiler: a child process of this executable (`wasmesh compile-wasm`), so
/// Cranelift's code and heap never stay resident in the proxy and a module that crashes or
/// hangs the compiler does not take the proxy down. In process if our path is unknown.
pub(crate) fn use_compiler_process() {
    match std::env::current_exe() {
        Ok(program) => wasmesh_proxy::wasm_filter::set_compiler(wasm_host::Compiler::Command {
            program,
            args: vec![
                "compile-wasm".into(),
                "--max-memory-bytes".into(),
                COMPILE_MEMORY_LIMIT.to_string(),
            ],
        }),
        Err(e) => {
            tracing::warn!(error = %e, "cannot find our own executable; compiling Wasm modules in process")
        }
    }
}

fn main() -> anyhow::Result<()> {
    no_transparent_huge_pages();
    wasmesh_xds::on_descriptor_release(return_free_memory);
    let cli = Cli::parse_from(proxy_cmd::envoy_argv(std::env::args_os().collect()));
    // The compiler child reports on stderr itself; logging there (wasmtime logs a lot at
    // debug) would only fill the pipe its parent reads the reason from.
    match &cli.command {
        Command::CompileWasm(_) => {}
        Command::Proxy(args) => init_logging(
            args.log_level.as_deref(),
            args.log_path.as_deref(),
            Some(envoy_log::EnvoyFormat::new(
                args.log_format().unwrap_or(envoy_log::ENVOY_DEFAULT),
            )),
        ),
        _ => init_logging(None, None, None),
    }
    match cli.command {
        Command::Version => println!("wasmesh {}", env!("CARGO_PKG_VERSION")),
        Command::ControlPlane(args) => control_plane_cmd::control_plane(args)?,
        Command::Validate(args) => control_plane_cmd::validate(args)?,
        Command::Agent(args) => agent_cmd::agent(args)?,
        Command::Plugin(cmd) => plugin_cmd::run(cmd)?,
        Command::Up(args) => up_cmd::up(args)?,
        Command::Proxy(args) => proxy_cmd::proxy(args)?,
        Command::Status(args) => status_cmd::status(args)?,
        Command::CompileWasm(args) => std::process::exit({
            if let Some(n) = args.max_memory_bytes {
                limit_heap(n);
            }
            wasm_host::compile_worker(
                args.max_stack_bytes,
                std::io::stdin().lock(),
                std::io::stdout().lock(),
                std::io::stderr().lock(),
            )
        }),
    }
    Ok(())
}

/// `RUST_LOG`-style filter, to stderr; without `RUST_LOG`, the level given as Envoy's `-l`
/// (`warning` is `warn`, `critical` is `error`), else `info`. The proxy's lines are in Envoy's
/// format (`envoy`), the other commands' in `tracing`'s.
fn init_logging(
    level: Option<&str>,
    path: Option<&std::path::Path>,
    envoy: Option<envoy_log::EnvoyFormat>,
) {
    let level = match level {
        Some("warning") => "warn",
        Some("critical") => "error",
        Some(l) => l,
        None => "info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let file = path.and_then(|p| {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            Ok(f) => Some(std::sync::Mutex::new(f)),
            Err(e) => {
                eprintln!(
                    "cannot open --log-path {}: {e}; logging to stderr",
                    p.display()
                );
                None
            }
        }
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match (file, envoy) {
        (Some(f), Some(e)) => builder.event_format(e).with_writer(f).try_init(),
        (None, Some(e)) => builder
            .event_format(e)
            .with_writer(std::io::stderr)
            .try_init(),
        (Some(f), None) => builder.with_ansi(false).with_writer(f).try_init(),
        (None, None) => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .try_init(),
    };
}

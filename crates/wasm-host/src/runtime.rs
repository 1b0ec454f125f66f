//! One wasmtime engine per process: compiles modules once (cached in memory by sha256 and
//! precompiled on disk), links the proxy-wasm imports once, and drives epoch deadlines.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module, OptLevel};

use crate::abi::AbiVersion;
use crate::compiler::{self, Compiler, Outcome};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::shared::{Shared, SharedLimits};
use crate::state::VmState;

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where precompiled modules are kept across restarts; `None` keeps them in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Use the pooling instance allocator (fast instantiation; reserves address space).
    pub pooling: bool,
    /// Most VMs alive at once with pooling.
    pub max_instances: u32,
    /// Wasm stack limit per VM.
    pub max_stack_bytes: usize,
    /// Granularity of CPU deadlines.
    pub epoch_tick: Duration,
    /// Limits on shared data and queues.
    pub shared: SharedLimits,
    /// Where modules are compiled.
    pub compiler: Compiler,
    /// Longest a compiler process may take on one module.
    pub compile_timeout: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            pooling: true,
            max_instances: 1000,
            max_stack_bytes: 512 << 10,
            epoch_tick: Duration::from_millis(5),
            shared: SharedLimits::default(),
            compiler: Compiler::InProcess,
            compile_timeout: Duration::from_secs(60),
        }
    }
}

/// Where a module's machine code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Compiled in this process.
    InProcess,
    /// Compiled by a compiler process ([`Compiler::Command`]).
    CompilerProcess,
    /// Loaded from the precompiled-module cache directory.
    DiskCache,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::InProcess => "in process",
            Origin::CompilerProcess => "compiler process",
            Origin::DiskCache => "disk cache",
        }
    }
}

/// A compiled module: shared by every VM of every plugin that uses the same bytes.
#[derive(Clone)]
pub struct CompiledModule {
    pub(crate) module: Module,
    pub(crate) pre: InstancePre<VmState>,
    sha256: Arc<str>,
    abi: AbiVersion,
    size: usize,
    origin: Origin,
}

impl CompiledModule {
    /// Hex sha256 of the module bytes.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The ABI version the module declares.
    pub fn abi(&self) -> AbiVersion {
        self.abi
    }

    /// Size of the module bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Where its machine code came from.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// Export names.
    pub fn exports(&self) -> Vec<String> {
        self.module
            .exports()
            .map(|e| e.name().to_string())
            .collect()
    }

    /// Imports as `module.name`.
    pub fn imports(&self) -> Vec<String> {
        self.module
            .imports()
            .map(|i| format!("{}.{}", i.module(), i.name()))
            .collect()
    }
}

pub(crate) struct RuntimeInner {
    pub(crate) engine: Engine,
    linker: Linker<VmState>,
    modules: Mutex<HashMap<String, CompiledModule>>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) metrics: Arc<Metrics>,
    cache_dir: Option<PathBuf>,
    engine_hash: String,
    compiler: Compiler,
    compile_timeout: Duration,
    max_stack_bytes: usize,
    pub(crate) epoch_tick: Duration,
    stop: Arc<AtomicBool>,
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The process-wide Wasm runtime. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<RuntimeInner>,
}

pub(crate) fn engine_config(cfg: &RuntimeConfig, pooling: bool) -> Config {
    let mut c = Config::new();
    c.epoch_interruption(true)
        .max_wasm_stack(cfg.max_stack_bytes)
        .cranelift_opt_level(OptLevel::Speed)
        .parallel_compilation(true)
        .memory_init_cow(true);
    if pooling {
        let mut p = wasmtime::PoolingAllocationConfig::default();
        p.total_core_instances(cfg.max_instances)
            .total_memories(cfg.max_instances)
            .total_tables(cfg.max_instances)
            .max_unused_warm_slots(64);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(p));
    }
    c
}

impl Runtime {
    /// Builds the engine (falling back to on-demand allocation if the pool cannot be reserved)
    /// and starts the epoch ticker thread.
    pub fn new(cfg: RuntimeConfig) -> Result<Self, Error> {
        let engine = match Engine::new(&engine_config(&cfg, cfg.pooling)) {
            Ok(e) => e,
            Err(err) if cfg.pooling => {
                tracing::warn!(error = %err, "pooling allocator unavailable; using on-demand allocation");
                Engine::new(&engine_config(&cfg, false))
                    .map_err(|e| Error::Engine(e.to_string()))?
            }
            Err(err) => return Err(Error::Engine(err.to_string())),
        };
        let mut linker = Linker::new(&engine);
        crate::imports::define(&mut linker).map_err(|e| Error::Engine(e.to_string()))?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let engine_hash = format!("{:016x}", h.finish());
        let stop = Arc::new(AtomicBool::new(false));
        {
            let weak = engine.weak();
            let stop = stop.clone();
            let tick = cfg.epoch_tick;
            std::thread::Builder::new()
                .name("wasm-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        match weak.upgrade() {
                            Some(e) => e.increment_epoch(),
                            None => break,
                        }
                    }
                })
                .map_err(|e| Error::Engine(format!("cannot start epoch thread: {e}")))?;
        }
        if let Some(dir) = &cfg.cache_dir {
            std::fs::create_dir_all(dir).map_err(|source| Error::Cache {
                path: dir.display().to_string(),
                source,
            })?;
        }
        Ok(Self {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                modules: Mutex::new(HashMap::new()),
                shared: Shared::new(cfg.shared),
                metrics: Metrics::new(),
                cache_dir: cfg.cache_dir,
                engine_hash,
                compiler: cfg.compiler,
                compile_timeout: cfg.compile_timeout,
                max_stack_bytes: cfg.max_stack_bytes,
                epoch_tick: cfg.epoch_tick,
                stop,
            }),
        })
    }

    /// Plugin metrics of the whole process.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Shared data and queues of the whole process.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// Compiles `bytes` (or finds it compiled, in memory or on disk), checks its ABI version and
    /// links the imports. Never runs guest code.
    pub fn compile(&self, bytes: &[u8]) -> Result<CompiledModule, Error> {
        let sha = hex::encode(Sha256::digest(bytes));
        if let Some(m) = self.lock_modules().get(&sha) {
            return Ok(m.clone());
        }
        if bytes.len() < 8 || &bytes[0..4] != b"\0asm" {
            return Err(Error::InvalidModule(
                "missing the \\0asm magic number".into(),
            ));
        }
        let started = std::time::Instant::now();
        let (module, origin) = self.load_or_compile(&sha, bytes)?;
        tracing::info!(
            module = %format_args!("sha256:{sha}"),
            size = bytes.len(),
            by = origin.as_str(),
            ms = started.elapsed().as_millis() as u64,
            "compiled Wasm module"
        );
        let names: Vec<&str> = module.exports().map(|e| e.name()).collect();
        let abi = AbiVersion::detect(names.iter().copied())?;
        if module.get_export("memory").is_none() {
            return Err(Error::NoMemory);
        }
        if module.get_export("proxy_on_memory_allocate").is_none()
            && module.get_export("malloc").is_none()
        {
            return Err(Error::NoAllocator);
        }
        let pre = self
            .inner
            .linker
            .instantiate_pre(&module)
            .map_err(|e| Error::Link {
                plugin: format!("module sha256:{sha}"),
                reason: format!("{e:#}"),
            })?;
        let compiled = CompiledModule {
            module,
            pre,
            sha256: sha.clone().into(),
            abi,
            size: bytes.len(),
            origin,
        };
        self.lock_modules().insert(sha, compiled.clone());
        Ok(compiled)
    }

    /// Drops the in-memory entry of a module no plugin uses any more.
    pub fn forget(&self, sha256: &str) {
        self.lock_modules().remove(sha256);
    }

    fn lock_modules(&self) -> std::sync::MutexGuard<'_, HashMap<String, CompiledModule>> {
        self.inner.modules.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn load_or_compile(&self, sha: &str, bytes: &[u8]) -> Result<(Module, Origin), Error> {
        let engine = &self.inner.engine;
        let Some(dir) = &self.inner.cache_dir else {
            return self.compile_module(bytes).map(|(m, _, o)| (m, o));
        };
        let path = dir.join(format!("{sha}-{}.cwasm", self.inner.engine_hash));
        if path.exists() {
            match deserialize_own_artifact(engine, &path) {
                Ok(m) => return Ok((m, Origin::DiskCache)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "discarding bad precompiled module")
                }
            }
        }
        let (module, artifact, origin) = self.compile_module(bytes)?;
        let artifact = match artifact {
            Some(a) => Ok(a),
            None => module.serialize(),
        };
        match artifact {
            Ok(art) => {
                let tmp = dir.join(format!(".{sha}.{}.tmp", std::process::id()));
                let res = std::fs::write(&tmp, &art).and_then(|_| std::fs::rename(&tmp, &path));
                if let Err(e) = res {
                    tracing::warn!(path = %path.display(), error = %e, "cannot cache precompiled module");
                    let _ = std::fs::remove_file(&tmp);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot serialize module"),
        }
        Ok((module, origin))
    }

    /// Compiles with the configured [`Compiler`]; gives the artifact too when a compiler
    /// process made it. A compiler process that cannot be started, or whose artifact this
    /// engine refuses, falls back to compiling here (with a warning); one that crashes or runs
    /// out of time on the module fails the module.
    fn compile_module(&self, bytes: &[u8]) -> Result<(Module, Option<Vec<u8>>, Origin), Error> {
        let engine = &self.inner.engine;
        let in_process = || {
            Module::new(engine, bytes)
                .map(|m| (m, None, Origin::InProcess))
                .map_err(|e| Error::InvalidModule(format!("{e:#}")))
        };
        let Compiler::Command { program, args } = &self.inner.compiler else {
            return in_process();
        };
        let timeout = self.inner.compile_timeout;
        match compiler::run(program, args, self.inner.max_stack_bytes, bytes, timeout) {
            Outcome::Artifact(art) => match compiler::deserialize(engine, &art) {
                Ok(m) => Ok((m, Some(art), Origin::CompilerProcess)),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "compiler process gave an unusable artifact; compiling in process");
                    in_process()
                }
            },
            Outcome::Invalid(e) => Err(e),
            Outcome::Unavailable(reason) => {
                tracing::warn!(%reason, "compiler process unavailable; compiling in process");
                in_process()
            }
            Outcome::Failed(reason) => Err(Error::Compiler(reason)),
        }
    }
}

/// Loads a precompiled artifact from our cache directory.
#[allow(unsafe_code, reason = "loading our own precompiled artifact")]
fn deserialize_own_artifact(engine: &Engine, path: &std::path::Path) -> wasmtime::Result<Module> {
    // Read into memory rather than `deserialize_file`: an mmap of the file would SIGBUS the
    // whole process if something truncated the file while the module is in use.
    let bytes = std::fs::read(path)?;
    // SAFETY: the file was written by `Module::serialize` of an engine with the same
    // compatibility hash (it is part of the name), into our own cache directory, by an
    // atomic rename, so it is a complete artifact we produced.
    unsafe { Module::deserialize(engine, bytes) }
}

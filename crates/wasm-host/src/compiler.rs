//! Where modules are compiled: in this process, or in a short-lived child process that hands
//! back the precompiled artifact.
//!
//! Compiling in a child keeps Cranelift out of the proxy: its code pages (~8 MiB of our binary's
//! text) and its working heap are never resident in the long-lived process, and a module that
//! makes the compiler crash, loop or eat memory takes down the child, not the proxy that keeps
//! serving with its last good config. The child is bounded in time
//! ([`RuntimeConfig::compile_timeout`]).
//!
//! Protocol (see [`compile_worker`]): the module bytes on the child's stdin; exit 0 with the
//! artifact of `Module::serialize` on stdout, or exit 2 with the reason the module is invalid on
//! stderr. Anything else is a failure of the compiler process.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wasmtime::{Engine, Module};

use crate::error::Error;
use crate::runtime::{RuntimeConfig, engine_config};

/// Where [`crate::Runtime::compile`] compiles modules.
#[derive(Debug, Clone, Default)]
pub enum Compiler {
    /// In this process.
    #[default]
    InProcess,
    /// In a child process: `program args... --max-stack-bytes N` runs [`compile_worker`]
    /// (`wasmesh compile-wasm`).
    Command { program: PathBuf, args: Vec<String> },
}

/// Exit code of a worker that found the module invalid.
const EXIT_INVALID: i32 = 2;

/// The child's side: reads a module from `input`, compiles it with the engine settings of
/// `max_stack_bytes` (the rest are fixed), and writes the artifact to `output`. Returns the
/// process exit code (0, or 2 with the reason written to `errors`).
pub fn compile_worker(
    max_stack_bytes: usize,
    mut input: impl Read,
    mut output: impl Write,
    mut errors: impl Write,
) -> i32 {
    let mut bytes = Vec::new();
    if let Err(e) = input.read_to_end(&mut bytes) {
        let _ = writeln!(errors, "cannot read the module: {e}");
        return 1;
    }
    let cfg = RuntimeConfig {
        max_stack_bytes,
        ..Default::default()
    };
    let engine = match Engine::new(&engine_config(&cfg, false)) {
        Ok(e) => e,
        Err(e) => {
            let _ = writeln!(errors, "wasm engine: {e:#}");
            return 1;
        }
    };
    match engine.precompile_module(&bytes) {
        Ok(art) => match output.write_all(&art).and_then(|()| output.flush()) {
            Ok(()) => 0,
            Err(e) => {
                let _ = writeln!(errors, "cannot write the artifact: {e}");
                1
            }
        },
        Err(e) => {
            let _ = write!(errors, "{e:#}");
            EXIT_INVALID
        }
    }
}

/// What the parent got from a compiler process.
pub(crate) enum Outcome {
    /// The precompiled artifact.
    Artifact(Vec<u8>),
    /// The module is not valid WebAssembly.
    Invalid(Error),
    /// The compiler process could not be started: the reason.
    Unavailable(String),
    /// The compiler process crashed or ran out of time on this module: the reason.
    Failed(String),
}

/// Runs `program args...` on `bytes` and waits at most `timeout`.
pub(crate) fn run(
    program: &PathBuf,
    args: &[String],
    max_stack_bytes: usize,
    bytes: &[u8],
    timeout: Duration,
) -> Outcome {
    let child = Command::new(program)
        .args(args)
        .arg("--max-stack-bytes")
        .arg(max_stack_bytes.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Outcome::Unavailable(format!("cannot start {}: {e}", program.display())),
    };
    let (Some(mut stdin), Some(mut stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let _ = child.kill();
        let _ = child.wait();
        return Outcome::Unavailable("compiler process has no pipes".into());
    };
    let input = bytes.to_vec();
    // Each pipe on its own thread so that a child that writes before reading all of its input
    // cannot deadlock us.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    // Read to the end (a child blocked on a full pipe would hang); keep the first 64 KiB.
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let mut stderr = stderr;
        let _ = (&mut stderr).take(64 << 10).read_to_end(&mut v);
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!(
                    "compiler process killed after {} ms",
                    timeout.as_millis()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => break Err(format!("cannot wait for the compiler process: {e}")),
        }
    };
    let _ = writer.join();
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    let reason = String::from_utf8_lossy(&err).trim().to_string();
    match status {
        Err(e) => Outcome::Failed(e),
        Ok(s) if s.success() => Outcome::Artifact(out),
        Ok(s) if s.code() == Some(EXIT_INVALID) => Outcome::Invalid(Error::InvalidModule(reason)),
        Ok(s) => Outcome::Failed(format!("compiler process failed ({s}): {reason}")),
    }
}

/// Loads an artifact our own compiler process produced.
#[allow(
    unsafe_code,
    reason = "loading an artifact our own compiler process produced"
)]
pub(crate) fn deserialize(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Module> {
    // SAFETY: the bytes come from `Engine::precompile_module` run by the compiler program the
    // embedder configured (our own executable), read whole from its stdout after it exited 0;
    // wasmtime checks the header and engine compatibility before using them.
    unsafe { Module::deserialize(engine, artifact) }
}

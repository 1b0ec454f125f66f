//! The `wasmesh` binary: clap subcommands and logging set-up, nothing else.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "wasmesh", version, about = "Extend a service mesh with proxy-wasm plugins")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the version.
    Version,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => println!("wasmesh {}", env!("CARGO_PKG_VERSION")),
    }
    Ok(())
}

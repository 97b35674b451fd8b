//! `cim-cuda`: the `cim` commands on the GPU.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "cim-cuda", version, about = "Corrupted Image Modeling on an NVIDIA GPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Describe the GPU that `cim-cuda` would use.
    Info {
        /// Device ordinal.
        #[arg(long, default_value_t = 0)]
        device: usize,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Info { device } => match cim_cuda::probe(device) {
            Ok(info) => {
                println!("{info}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

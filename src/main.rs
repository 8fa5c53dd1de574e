//! The `virtsnapfs` command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use virtsnapfs::cache::{MetadataCache, DEFAULT_CACHE_BYTES};
use virtsnapfs::image::{open_chain, ChainSpec, Format};

#[derive(Parser)]
#[command(
    name = "virtsnapfs",
    version,
    about = "libvirt/KVM snapshots as directories"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show how virtsnapfs reads an image and its backing chain.
    Inspect {
        image: PathBuf,
        /// Format of IMAGE (raw or qcow2); probed when absent.
        #[arg(short = 'f', long)]
        format: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write the guest-visible bytes of an image (or one of its internal snapshots) as raw.
    Cat {
        image: PathBuf,
        #[arg(short = 'f', long)]
        format: Option<String>,
        /// Read this internal snapshot (name or id) instead of the current state.
        #[arg(short = 's', long)]
        snapshot: Option<String>,
    },
}

fn parse_format(name: Option<&str>) -> Result<Option<Format>, String> {
    match name {
        None => Ok(None),
        Some(n) => Format::from_name(n)
            .map(Some)
            .ok_or_else(|| format!("unknown format '{n}' (use raw or qcow2)")),
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let cache = Arc::new(MetadataCache::new(DEFAULT_CACHE_BYTES));
    match cli.command {
        Command::Inspect {
            image,
            format,
            json,
        } => {
            let spec = ChainSpec::from_image(image, parse_format(format.as_deref())?);
            let chain = open_chain(&spec, cache).map_err(|e| e.to_string())?;
            let text = if json {
                let v = virtsnapfs::inspect::to_json(&chain).map_err(|e| e.to_string())?;
                serde_json::to_string_pretty(&v).map_err(|e| e.to_string())? + "\n"
            } else {
                virtsnapfs::inspect::to_text(&chain).map_err(|e| e.to_string())?
            };
            std::io::stdout()
                .write_all(text.as_bytes())
                .map_err(|e| e.to_string())
        }
        Command::Cat {
            image,
            format,
            snapshot,
        } => {
            let mut spec = ChainSpec::from_image(image, parse_format(format.as_deref())?);
            spec.snapshot = snapshot;
            let chain = open_chain(&spec, cache).map_err(|e| e.to_string())?;
            let mut out = std::io::stdout().lock();
            let mut buf = vec![0u8; 4 << 20];
            let mut offset = 0u64;
            loop {
                let n = chain.read_at(&mut buf, offset).map_err(|e| e.to_string())?;
                if n == 0 {
                    return Ok(());
                }
                out.write_all(&buf[..n]).map_err(|e| e.to_string())?;
                offset += n as u64;
            }
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("virtsnapfs: {e}");
            ExitCode::FAILURE
        }
    }
}

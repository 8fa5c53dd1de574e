//! The `virtsnapfs` command line: mount (the default), `inspect` and `cat`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use virtsnapfs::cache::{MetadataCache, DEFAULT_CACHE_BYTES};
use virtsnapfs::image::{open_chain, ChainSpec, Format};
use virtsnapfs::mount::{self, MountRequest};

#[derive(Parser)]
#[command(
    name = "virtsnapfs",
    version,
    about = "Mount libvirt/KVM domains and their snapshots as directories",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// libvirt URI (default: LIBVIRT_DEFAULT_URI, else libvirt's built-in default).
    #[arg(short = 'c', long = "connect", value_name = "URI")]
    connect: Option<String>,
    /// Stay in the foreground (default: detach once mounted).
    #[arg(short = 'f', long)]
    foreground: bool,
    /// Mount options, comma-separated: FUSE's (allow_other, auto_unmount, …) and ours
    /// (connect=, disk_mode=, uid=, gid=, refresh=, cache_size=, threads=, log_file=).
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Write log lines to this file (default when detached as root: /var/log/virtsnapfs.log).
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// [SOURCE] MOUNTPOINT: SOURCE (as mount.fuse3 passes it) may be a libvirt URI.
    #[arg(value_name = "MOUNTPOINT", required = true, num_args = 1..=2)]
    paths: Vec<String>,
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

fn run_command(command: Command) -> Result<(), String> {
    let cache = Arc::new(MetadataCache::new(DEFAULT_CACHE_BYTES));
    match command {
        Command::Inspect {
            image,
            format,
            json,
        } => {
            let spec = ChainSpec::from_image(image, Format::parse_optional(format.as_deref())?);
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
            let mut spec = ChainSpec::from_image(image, Format::parse_optional(format.as_deref())?);
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

fn init_logging(default_level: &str, file: Option<&PathBuf>) -> Result<(), String> {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level));
    if let Some(path) = file {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
        builder.target(env_logger::Target::Pipe(Box::new(f)));
    }
    builder.init();
    Ok(())
}

fn run(cli: Cli) -> Result<(), String> {
    if let Some(command) = cli.command {
        init_logging("warn", None)?;
        return run_command(command);
    }
    // Only the process that mounts logs (the detaching parent reports through its status).
    if cli.foreground {
        init_logging("info", cli.log_file.as_ref())?;
    }
    let mut paths = cli.paths;
    let mountpoint = PathBuf::from(paths.pop().ok_or("a mount point is required")?);
    mount::run(MountRequest {
        connect: cli.connect,
        foreground: cli.foreground,
        options: cli.options,
        source: paths.pop(),
        mountpoint,
        log_file: cli.log_file,
    })
}

fn main() -> ExitCode {
    virtsnapfs::sys::limit_malloc_arenas();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("virtsnapfs: {e}");
            ExitCode::FAILURE
        }
    }
}

//! Command-line verbs. `anyhow` lives here only.

mod cache;
mod demo;
mod install;
mod mount;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use spackfs::buildcache::projection::DEFAULT_PROJECTION;
use spackfs::catalog::{Catalog, TrustPolicy};
use spackfs::config::MirrorConfig;
use spackfs::fs::ReadMode;
use spackfs::install::Limits;
use spackfs::store::Bound;

#[derive(Parser)]
#[command(
    name = "spackfs",
    version,
    about = "Serve a Spack binary build cache as installed prefixes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the packages a mirror offers.
    Ls {
        #[command(flatten)]
        mirror: MirrorArgs,
        /// Install root used to show each package's prefix.
        #[arg(long, default_value = "/user-environment")]
        root: String,
        #[arg(long, default_value = DEFAULT_PROJECTION)]
        projection: String,
    },
    /// Install packages and their link/run dependencies, like `spack buildcache install`.
    Install {
        #[command(flatten)]
        mirror: MirrorArgs,
        /// Install root (the new store root).
        #[arg(long)]
        root: PathBuf,
        #[arg(long, default_value = DEFAULT_PROJECTION)]
        projection: String,
        /// Packages installed in parallel (default: number of cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// Refuse tarballs that inflate past this size (e.g. 64GiB, 500MB).
        #[arg(long, default_value = "64GiB")]
        max_unpacked_size: bytesize::ByteSize,
        /// `name`, `name@version` or `/hashprefix`.
        #[arg(required = true)]
        specs: Vec<String>,
    },
    /// Mount a mirror: every package appears installed under MOUNTPOINT, fetched on first
    /// touch. Runs in the foreground; SIGTERM or SIGINT unmounts and exits.
    Mount {
        #[command(flatten)]
        mirror: MirrorArgs,
        /// Where the packages appear (the install root they are relocated for).
        mountpoint: PathBuf,
        /// Cache of ready prefixes (default /var/cache/spackfs as root, else
        /// $XDG_CACHE_HOME/spackfs).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Bound of the cache: bytes with units (`20GiB`) or a percentage of its file
        /// system (`25%`). Least recently used prefixes are evicted past it.
        #[arg(long)]
        cache_size: Option<String>,
        #[arg(long, default_value = DEFAULT_PROJECTION)]
        projection: String,
        /// FUSE event-loop threads.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// How file reads are served: kernel passthrough when allowed, or daemon pread.
        #[arg(long, value_enum, default_value_t = ReadModeArg::Passthrough)]
        read_mode: ReadModeArg,
        /// Seconds before a failed package is tried again (doubling on each failure).
        #[arg(long, default_value_t = 5)]
        retry_after: u64,
        #[arg(long, default_value = "64GiB")]
        max_unpacked_size: bytesize::ByteSize,
    },
    /// Inspect and manage the cache of ready prefixes (works with or without a mount).
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
        /// The cache directory (default as for `mount`).
        #[arg(long, global = true)]
        cache_dir: Option<PathBuf>,
    },
    /// Build an example mirror, mount it, and run the relocated binary from the mount.
    Demo {
        /// Keep the demo's files in this directory instead of a temporary one.
        #[arg(long)]
        workdir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// One line per cached prefix: key, package, size, last use, pinned, install root.
    Ls,
    /// Evict least recently used prefixes not in use until the cache holds at most SIZE
    /// (default: evict every prefix not in use).
    Gc {
        #[arg(long)]
        to: Option<String>,
    },
    /// Recheck every prefix against the digests recorded at publish; remove and report
    /// damaged ones (exit status 1 if any).
    Verify {
        /// Only check sizes and change times, not contents.
        #[arg(long)]
        quick: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReadModeArg {
    Passthrough,
    Pread,
}

#[derive(Args, Clone)]
struct MirrorArgs {
    /// The mirror: a `file://` URL, a path, or a Spack/Stackinator `mirrors.yaml`.
    mirror: String,
    /// Trust this key file (armored or binary; repeatable).
    #[arg(long = "key")]
    keys: Vec<PathBuf>,
    /// Trust every key file in this directory (repeatable).
    #[arg(long)]
    keyring: Vec<PathBuf>,
    /// Do not check signatures.
    #[arg(long, conflicts_with_all = ["keys", "keyring"])]
    unsigned: bool,
}

impl MirrorArgs {
    /// The mirror to read: the argument itself (a URL or a mirror directory), or the first
    /// binary mirror of a Spack/Stackinator `mirrors.yaml`; trust flags apply on top.
    /// `root` is the install root (for Stackinator's `mount_specific`).
    fn config(&self, root: &str) -> Result<MirrorConfig> {
        let path = std::path::Path::new(&self.mirror);
        let mut cfg = if path.is_file() {
            let mirrors = spackfs::config::load(path, root)?;
            let mut mirrors = mirrors.into_iter();
            let first = mirrors
                .next()
                .with_context(|| format!("{} lists no binary mirror", path.display()))?;
            let rest: Vec<String> = mirrors.map(|m| format!("{} ({})", m.name, m.url)).collect();
            if !rest.is_empty() {
                tracing::warn!(
                    "{} lists several binary mirrors; spackfs reads the first, {} ({}), and not yet {}",
                    path.display(),
                    first.name,
                    first.url,
                    rest.join(", ")
                );
            }
            first
        } else {
            MirrorConfig {
                name: self.mirror.clone(),
                url: self.mirror.clone(),
                signed: true,
                ..Default::default()
            }
        };
        if self.unsigned {
            cfg.signed = false;
        }
        cfg.key_files.extend(self.keys.iter().cloned());
        cfg.keyring_dirs.extend(self.keyring.iter().cloned());
        Ok(cfg)
    }
}

/// Open the catalog of a mirror with its trust policy.
pub(crate) async fn open_catalog(cfg: &MirrorConfig) -> Result<Catalog> {
    let trust = if cfg.signed {
        let ring = cfg.keyring()?;
        if ring.is_empty() {
            tracing::warn!(
                "mirror {} requires signatures but no key is trusted (use --key, --keyring or --unsigned)",
                cfg.url
            );
        }
        TrustPolicy::Require(ring)
    } else {
        TrustPolicy::Unsigned
    };
    let store = spackfs::transport::open(&cfg.url)?;
    Ok(Catalog::open(store, trust).await?)
}

pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SPACKFS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Ls {
            mirror,
            root,
            projection,
        } => install::ls(&mirror.config(&root)?, &root, &projection).await,
        Command::Install {
            mirror,
            root,
            projection,
            jobs,
            max_unpacked_size,
            specs,
        } => {
            let jobs =
                jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
            let limits = Limits {
                max_unpacked: max_unpacked_size.as_u64(),
            };
            let summary = install::install(
                &mirror.config(&std::path::absolute(&root)?.to_string_lossy())?,
                &root,
                &projection,
                jobs,
                limits,
                &specs,
            )
            .await?;
            println!("{summary}");
            Ok(if summary.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Mount {
            mirror,
            mountpoint,
            cache_dir,
            cache_size,
            projection,
            threads,
            read_mode,
            retry_after,
            max_unpacked_size,
        } => {
            let cache_dir = cache_dir.unwrap_or_else(mount::default_cache_dir);
            let bound = match cache_size {
                Some(s) => Some(Bound::new(
                    spackfs::store::parse_size(&s, &cache_dir).map_err(anyhow::Error::msg)?,
                )),
                None => None,
            };
            let opts = mount::MountArgs {
                bound,
                cache_dir,
                projection,
                threads,
                read_mode: match read_mode {
                    ReadModeArg::Passthrough => ReadMode::Passthrough,
                    ReadModeArg::Pread => ReadMode::Pread,
                },
                retry_after: std::time::Duration::from_secs(retry_after),
                limits: Limits {
                    max_unpacked: max_unpacked_size.as_u64(),
                },
            };
            let cfg = mirror.config(&std::path::absolute(&mountpoint)?.to_string_lossy())?;
            let mounted = mount::mount(&cfg, &mountpoint, &opts).await?;
            mounted.wait_for_signal().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cache { command, cache_dir } => {
            cache::run(command, &cache_dir.unwrap_or_else(mount::default_cache_dir))
        }
        Command::Demo { workdir } => demo::run(workdir).await,
    }
}

//! Command-line verbs. `anyhow` lives here only.

mod demo;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use spackfs::buildcache::projection::{Projection, DEFAULT_PROJECTION};
use spackfs::buildcache::spec::short_hash;
use spackfs::catalog::live::LiveCatalog;
use spackfs::catalog::materialise::{self, Outcome, Target};
use spackfs::catalog::{Catalog, TrustPolicy};
use spackfs::config::MirrorConfig;
use spackfs::fs::{ReadMode, SpackFs};
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
        } => ls(&mirror.config(&root)?, &root, &projection).await,
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
            let summary = install(
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
            let cache_dir = cache_dir.unwrap_or_else(default_cache_dir);
            let bound = match cache_size {
                Some(s) => Some(Bound::new(
                    spackfs::store::parse_size(&s, &cache_dir).map_err(anyhow::Error::msg)?,
                )),
                None => None,
            };
            let opts = MountArgs {
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
            let mounted = mount(&cfg, &mountpoint, &opts).await?;
            mounted.wait_for_signal().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cache { command, cache_dir } => {
            cache(command, &cache_dir.unwrap_or_else(default_cache_dir))
        }
        Command::Demo { workdir } => demo::run(workdir).await,
    }
}

fn cache(command: CacheCommand, dir: &std::path::Path) -> Result<ExitCode> {
    let store = spackfs::store::Store::open(dir, None)?;
    let human = |b: u64| bytesize::ByteSize::b(b).to_string();
    match command {
        CacheCommand::Ls => {
            let now = std::time::SystemTime::now();
            for l in store.list() {
                let ago = now.duration_since(l.last_use).unwrap_or_default().as_secs();
                println!(
                    "{}  {}  {}  last use {}s ago  {}  root {}",
                    l.meta.key,
                    l.meta.package,
                    human(l.meta.size),
                    ago,
                    if l.pinned { "pinned" } else { "unpinned" },
                    l.meta.root
                );
            }
            println!("total {}", human(store.total_size()));
            Ok(ExitCode::SUCCESS)
        }
        CacheCommand::Gc { to } => {
            let target = match to {
                Some(t) => spackfs::store::parse_size(&t, dir).map_err(anyhow::Error::msg)?,
                None => 0,
            };
            let evicted = store.gc(target)?;
            for m in &evicted {
                println!("evicted {}  {}  {}", m.key, m.package, human(m.size));
            }
            println!(
                "evicted {} prefix(es); the cache now holds {}",
                evicted.len(),
                human(store.total_size())
            );
            Ok(ExitCode::SUCCESS)
        }
        CacheCommand::Verify { quick } => {
            let bad = store.verify(!quick)?;
            for (m, why) in &bad {
                println!("damaged {}  {}: {why} (removed)", m.key, m.package);
            }
            println!(
                "{} prefix(es) checked, {} damaged",
                store.list().len() + bad.len(),
                bad.len()
            );
            Ok(if bad.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

async fn ls(cfg: &MirrorConfig, root: &str, projection: &str) -> Result<ExitCode> {
    let catalog = open_catalog(cfg).await?;
    let projection = Projection::new(projection)?;
    let mut rows = Vec::new();
    for e in catalog.available() {
        let node = &e.node;
        let (prefix, size, signer) = match catalog.meta(node).await {
            Ok(m) => (
                Catalog::prefix_of(root, &projection, node, Some(&m.dag))?,
                m.tarball_size
                    .map(|s| bytesize::ByteSize::b(s).to_string())
                    .unwrap_or_else(|| "?".into()),
                m.signer.unwrap_or_else(|| "unsigned".into()),
            ),
            Err(err) => (
                Catalog::prefix_of(root, &projection, node, None)?,
                "?".into(),
                format!("UNTRUSTED ({err})"),
            ),
        };
        rows.push([
            node.name.clone(),
            node.version.clone(),
            short_hash(&node.hash).to_string(),
            prefix.display().to_string(),
            size,
            signer,
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        println!(
            "{:w0$}  {:w1$}  {:w2$}  {:w3$}  {:>w4$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4]
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What an install run did.
pub(crate) struct Summary {
    pub installed: Vec<(String, PathBuf, materialise::Timings)>,
    pub present: usize,
    pub failed: usize,
    pub unpacked_bytes: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "installed {} package(s), {} already present, {} failed",
            self.installed.len(),
            self.present,
            self.failed
        )
    }
}

pub(crate) async fn install(
    cfg: &MirrorConfig,
    root: &std::path::Path,
    projection: &str,
    jobs: usize,
    limits: Limits,
    specs: &[String],
) -> Result<Summary> {
    let catalog = Arc::new(open_catalog(cfg).await?);
    let projection = Projection::new(projection)?;
    std::fs::create_dir_all(root).with_context(|| format!("creating root {}", root.display()))?;
    let root = std::path::absolute(root)?;
    let root_str = root
        .to_str()
        .context("install root is not UTF-8")?
        .trim_end_matches('/')
        .to_string();
    if root_str.is_empty() {
        bail!("the install root cannot be /");
    }
    let mut requested = Vec::new();
    for s in specs {
        requested.extend(catalog.resolve(s)?.into_iter().map(|e| e.node.clone()));
    }
    let closure = catalog.closure(&requested).await?;
    for (pkg, parent, why) in &closure.skipped {
        match parent {
            Some(p) => tracing::warn!("skipping {pkg} (needed by {p}): {why}"),
            None => tracing::warn!("skipping {pkg}: {why}"),
        }
    }
    let mut failed = closure.failed.len();
    for (_, e) in &closure.failed {
        tracing::error!("{e}");
    }
    let nodes: Vec<_> = closure
        .order
        .iter()
        .map(|h| closure.nodes[h].clone())
        .collect();
    let target = Target {
        root: root_str,
        projection,
        limits,
    };
    let results = materialise::install_many(catalog.clone(), nodes, target, jobs).await;
    let mut summary = Summary {
        installed: Vec::new(),
        present: 0,
        failed: 0,
        unpacked_bytes: 0,
    };
    for (node, r) in results {
        match r {
            Ok(Outcome::Installed {
                prefix,
                unpacked_bytes,
                timings,
                ..
            }) => {
                summary.unpacked_bytes += unpacked_bytes;
                summary.installed.push((node.display(), prefix, timings));
            }
            Ok(Outcome::AlreadyInstalled { prefix }) => {
                tracing::info!(
                    "{}: already installed at {}",
                    node.display(),
                    prefix.display()
                );
                summary.present += 1;
            }
            Err(e) => {
                tracing::error!("{e:#}");
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    tracing::debug!("  caused by: {s}");
                    src = s.source();
                }
                failed += 1;
            }
        }
    }
    summary.failed = failed;
    if !summary.installed.is_empty() || summary.present > 0 {
        materialise::install_sbang(&root)
            .with_context(|| format!("installing {}/bin/sbang", root.display()))?;
    }
    Ok(summary)
}

/// Mount options beyond the mirror.
pub(crate) struct MountArgs {
    pub cache_dir: PathBuf,
    pub bound: Option<Bound>,
    pub projection: String,
    pub threads: usize,
    pub read_mode: ReadMode,
    pub retry_after: std::time::Duration,
    pub limits: Limits,
}

/// `/var/cache/spackfs` for root, else `$XDG_CACHE_HOME/spackfs` (or `~/.cache/spackfs`).
fn default_cache_dir() -> PathBuf {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/cache/spackfs");
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("spackfs")
}

/// A running mount.
pub(crate) struct Mounted {
    session: Option<fuser::BackgroundSession>,
    path: PathBuf,
    pub live: Arc<LiveCatalog>,
}

impl Mounted {
    /// Wait for SIGTERM/SIGINT (or an unmount from outside), then unmount cleanly.
    pub async fn wait_for_signal(mut self) -> Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: unmounting {}", self.path.display()); break; }
                _ = int.recv() => { tracing::info!("SIGINT: unmounting {}", self.path.display()); break; }
                _ = tick.tick() => {
                    if self.session.as_ref().is_some_and(|s| s.guard.is_finished()) {
                        tracing::info!("{} was unmounted", self.path.display());
                        if let Some(s) = self.session.take() { let _ = s.join(); }
                        return Ok(());
                    }
                }
            }
        }
        self.unmount()
    }

    /// Unmount and wait for the FUSE threads.
    pub fn unmount(mut self) -> Result<()> {
        if let Some(s) = self.session.take() {
            if let Err(e) = s.umount_and_join() {
                if e.raw_os_error() != Some(libc::EBUSY) {
                    return Err(e).with_context(|| format!("unmounting {}", self.path.display()));
                }
                // Someone still uses the mount (a shell's cwd): detach it so that nothing is
                // left mounted; its users get ENOTCONN once we exit.
                tracing::warn!("{} is busy: detaching it lazily", self.path.display());
                spackfs::fs::mount::unmount(&self.path)
                    .with_context(|| format!("detaching {}", self.path.display()))?;
            }
        }
        Ok(())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = s.umount_and_join();
        }
    }
}

/// Mount a mirror at `mountpoint`.
pub(crate) async fn mount(
    cfg: &MirrorConfig,
    mountpoint: &std::path::Path,
    opts: &MountArgs,
) -> Result<Mounted> {
    let path = spackfs::fs::mount::prepare_mountpoint(mountpoint)?;
    let root = path
        .to_str()
        .context("mount point is not UTF-8")?
        .trim_end_matches('/')
        .to_string();
    let store = Arc::new(spackfs::store::Store::open(&opts.cache_dir, opts.bound)?);
    let kept = store.index_path(spackfs::transport::open(&cfg.url)?.url());
    let catalog = match open_catalog(cfg).await {
        Ok(c) => {
            // Keep the last good index, for mounts while the mirror is unreachable.
            let tmp = kept.with_extension("tmp");
            if std::fs::write(&tmp, c.index_json()).is_ok() {
                let _ = std::fs::rename(&tmp, &kept);
            }
            c
        }
        Err(e) => match std::fs::read(&kept) {
            Ok(index) => {
                tracing::warn!(
                    "{e:#}; mounting from the index kept at {}: cached packages work, others fail",
                    kept.display()
                );
                Catalog::offline(spackfs::transport::open(&cfg.url)?, &index)?
            }
            Err(_) => return Err(e),
        },
    };
    let catalog = Arc::new(catalog);
    let target = Target {
        root,
        projection: Projection::new(&opts.projection)?,
        limits: opts.limits,
    };
    let live = Arc::new(LiveCatalog::new(catalog, target, store, opts.retry_after));
    tracing::info!(
        "mounting {} ({} packages) at {}, cache {}",
        live.mirror(),
        live.packages().len(),
        path.display(),
        opts.cache_dir.display()
    );
    live.watch_evictions();
    let fs = SpackFs::new(
        live.clone(),
        tokio::runtime::Handle::current(),
        opts.read_mode,
    );
    // The fs moves into the session: keep what eviction needs first.
    let forgetter = fs.forgetter();
    let session = spackfs::fs::mount::spawn(fs, &path, opts.threads)?;
    live.set_invalidator(forgetter.with_notifier(session.notifier()));
    Ok(Mounted {
        session: Some(session),
        path,
        live,
    })
}

//! Command-line verbs. `anyhow` lives here only.

mod cache;
mod copy;
mod daemon;
mod demo;
mod helper;
mod install;
mod mount;
mod prefetch;
mod progress;

use std::fs::File;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use spackfs::buildcache::projection::DEFAULT_PROJECTION;
use spackfs::catalog::{Catalog, TrustPolicy};
use spackfs::config::{MirrorConfig, Support};
use spackfs::control::lifecycle::Lifecycle;
use spackfs::fs::mount::Access;
use spackfs::fs::ReadMode;
use spackfs::install::Limits;
use spackfs::mirror::set::{MirrorSet, MAX_MIRRORS};
use spackfs::mirror::{Backoff, Mirror};
use spackfs::store::Bound;
use spackfs::transport::RemoteOptions;

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
    /// List the packages the mirrors offer.
    Ls {
        /// Mirrors: `file://` URLs, paths, `http(s)://` URLs or mirrors.yaml files, in order.
        #[arg(required = true)]
        mirrors: Vec<String>,
        #[command(flatten)]
        trust: TrustArgs,
        #[command(flatten)]
        remote: RemoteArgs,
        /// Install root used to show each package's prefix.
        #[arg(long, default_value = "/user-environment")]
        root: String,
        #[arg(long, default_value = DEFAULT_PROJECTION)]
        projection: String,
        /// Also fetch and verify every package's metadata (one request per package) to show
        /// its tarball size and signer, or why it is not trusted. Without it the listing
        /// comes from the verified index alone.
        #[arg(short, long)]
        long: bool,
    },
    /// Install packages and their link/run dependencies, like `spack buildcache install`.
    Install {
        /// The mirror: a `file://` URL, a path, an `http(s)://` URL or a mirrors.yaml.
        mirror: String,
        /// More mirrors, tried after MIRROR in this order (repeatable).
        #[arg(long = "mirror", value_name = "MIRROR")]
        more_mirrors: Vec<String>,
        #[command(flatten)]
        trust: TrustArgs,
        #[command(flatten)]
        remote: RemoteArgs,
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
    /// Mount mirrors: every package appears installed under MOUNTPOINT, fetched on first
    /// touch from the first mirror that serves it. Runs in the foreground (the systemd
    /// mode: `Type=notify` is told READY=1 once the mount answers); SIGTERM or SIGINT
    /// unmounts and exits, and so does an unmount from outside (`umount MOUNTPOINT`).
    ///
    /// As a mount helper (`mount -t fuse.spackfs SRC MOUNTPOINT -o OPTS`, through
    /// mount.fuse3, which runs `spackfs SRC MOUNTPOINT -o OPTS`) spackfs daemonises once the
    /// mount answers. OPTS are this command's flags with `_` for `-` (`cache_dir=D`,
    /// `key=F` (repeatable), `unsigned`, `allow_other`…), plus `config=FILE` (mirrors, SRC
    /// then being a label), `log=FILE` and `log_level=FILTER`; `ro` and mount(8)'s generic
    /// options are accepted, `rw` and unknown options are errors. The daemon logs to
    /// `log=FILE`, else to the journal when /run/systemd/journal/socket exists, else to
    /// `<cache dir>/spackfs.log`.
    Mount {
        /// Mirrors, in order: `file://` URLs, paths, `http(s)://` URLs or mirrors.yaml files.
        #[arg(required = true, num_args = 1..)]
        mirrors: Vec<String>,
        /// Where the packages appear (the install root they are relocated for).
        mountpoint: PathBuf,
        #[command(flatten)]
        trust: TrustArgs,
        #[command(flatten)]
        remote: RemoteArgs,
        /// Cache of ready prefixes (default /var/cache/spackfs as root, else
        /// $XDG_CACHE_HOME/spackfs).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Bound of the cache: bytes with units (`20GiB`) or a percentage of its file
        /// system (`25%`). Least recently used prefixes are evicted past it.
        #[arg(long)]
        cache_size: Option<String>,
        /// A prefix used more recently than this is not evicted (the bound is overshot
        /// instead, and logged), so that a process between its lookup and its open, or
        /// loading libraries, never loses its files, e.g. `10s`.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        cache_grace: Duration,
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
        /// How often the mirrors' indexes are checked for new packages (one conditional
        /// request each when nothing changed), e.g. `10m`, `30s`.
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        index_ttl: Duration,
        #[arg(long, default_value = "64GiB")]
        max_unpacked_size: bytesize::ByteSize,
        /// Serve Prometheus metrics at http://HOST:PORT/metrics (e.g. `127.0.0.1:9400`).
        #[arg(long, value_name = "HOST:PORT")]
        metrics_addr: Option<String>,
        /// Let every user use the mount (the default as root; other users need
        /// `user_allow_other` in /etc/fuse.conf).
        #[arg(long, conflicts_with = "allow_root")]
        allow_other: bool,
        /// Let root use the mount besides the mounting user.
        #[arg(long)]
        allow_root: bool,
    },
    /// Show what a running mount is doing: mirrors and their health, packages by state,
    /// cache use, hits and misses, bytes fetched, recent errors. Asks the mount's daemon
    /// (only the mount's owner and root may).
    Status {
        mountpoint: PathBuf,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Warm a running mount: make packages and their link/run dependencies ready, so that
    /// a job's first touch costs nothing. Any user who can read the mount may.
    Prefetch {
        mountpoint: PathBuf,
        /// `name`, `name@version` or `/hashprefix`.
        #[arg(required_unless_present = "from")]
        specs: Vec<String>,
        /// Also every package of a Spack environment's lock file (`spack.lock`).
        #[arg(long, value_name = "SPACK_LOCK")]
        from: Option<PathBuf>,
        /// Packages made ready at once.
        #[arg(long, default_value_t = 8)]
        jobs: usize,
    },
    /// Work with mirrors themselves.
    Mirror {
        #[command(subcommand)]
        command: MirrorCommand,
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
enum MirrorCommand {
    /// Copy packages and their link/run dependencies from MIRROR into DEST, byte for byte
    /// and verified (signatures, sha256) as they are copied, with the mirror's index and
    /// public keys: DEST is then a file:// mirror for spackfs and Spack (air-gapped
    /// seeding). Running it again copies only what is missing.
    Copy {
        /// The mirror: a `file://` URL, a path, an `http(s)://` or `s3://` URL, or a
        /// mirrors.yaml listing one mirror.
        mirror: String,
        /// The directory to copy into (created if needed).
        dest: PathBuf,
        /// `name`, `name@version` or `/hashprefix`.
        #[arg(required_unless_present = "from")]
        specs: Vec<String>,
        /// Copy the packages of this Spack environment lock file (its `concrete_specs`).
        #[arg(long, value_name = "SPACK_LOCK")]
        from: Option<PathBuf>,
        #[command(flatten)]
        trust: TrustArgs,
        #[command(flatten)]
        remote: RemoteArgs,
        /// Packages copied at a time.
        #[arg(long, default_value_t = 4)]
        jobs: usize,
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

/// How manifests are trusted.
#[derive(Args, Clone)]
struct TrustArgs {
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

/// How remote mirrors are reached.
#[derive(Args, Clone)]
pub(crate) struct RemoteArgs {
    /// Time to connect to a mirror (TCP and TLS), e.g. `5s`.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// A transfer slower than this many bytes per second over --low-speed-time counts as
    /// a timeout (0: never).
    #[arg(long, default_value_t = 1024)]
    low_speed_limit: u64,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    low_speed_time: Duration,
    /// Retries of a transient error (connect error, timeout, 5xx) before a mirror is left.
    #[arg(long, default_value_t = 1)]
    retries: usize,
    /// Extra CA certificates (PEM) trusted for https:// mirrors, besides the system's.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// A failing mirror is skipped for this long (doubling up to 5 minutes), e.g. `5s`.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    mirror_backoff: Duration,
}

impl RemoteArgs {
    fn options(&self) -> RemoteOptions {
        RemoteOptions {
            connect_timeout: self.connect_timeout,
            low_speed_limit: self.low_speed_limit,
            low_speed_time: self.low_speed_time,
            retries: self.retries,
            ca_file: self.ca_file.clone(),
            ..RemoteOptions::default()
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff {
            initial: self.mirror_backoff,
            max: Backoff::default().max.max(self.mirror_backoff),
        }
    }
}

/// A duration: `10m`, `30s`, `1h 30m`, or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.trim().parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 30s, 10m)"))
}

/// The mirrors named on the command line, in order: URLs and paths as they are, each
/// mirrors.yaml as the binary mirrors it lists; trust flags apply on top. Mirrors of a kind
/// this version cannot read are skipped with a warning naming where they were configured.
/// `root` is the install root (for Stackinator's `mount_specific`).
fn mirror_configs(args: &[String], trust: &TrustArgs, root: &str) -> Result<Vec<MirrorConfig>> {
    let mut out = Vec::new();
    for arg in args {
        let path = std::path::Path::new(arg);
        let found = if !arg.contains("://") && path.is_file() {
            let mirrors = spackfs::config::load(path, root)?;
            if mirrors.is_empty() {
                bail!("{} lists no binary mirror", path.display());
            }
            mirrors
        } else {
            vec![MirrorConfig::from_url(arg)]
        };
        for cfg in found {
            match cfg.support() {
                Support::Supported => out.push(cfg),
                Support::NotYet(what) => tracing::warn!(
                    "{}: {what} are not supported yet: skipping {}",
                    cfg.origin,
                    cfg.url
                ),
            }
        }
    }
    if out.is_empty() {
        bail!("no mirror that spackfs can read among {}", args.join(", "));
    }
    if out.len() > MAX_MIRRORS {
        bail!(
            "{} mirrors configured: at most {MAX_MIRRORS} are supported",
            out.len()
        );
    }
    for cfg in &mut out {
        if trust.unsigned {
            cfg.signed = false;
        }
        cfg.key_files.extend(trust.keys.iter().cloned());
        cfg.keyring_dirs.extend(trust.keyring.iter().cloned());
    }
    Ok(out)
}

/// The mirror set of a configuration: each mirror's transport and trust policy.
pub(crate) fn mirror_set(
    cfgs: &[MirrorConfig],
    opts: &RemoteOptions,
    backoff: Backoff,
    absent_ttl: Duration,
) -> Result<MirrorSet> {
    let mut mirrors = Vec::new();
    for cfg in cfgs {
        let is_oci = cfg.url.starts_with("oci://") || cfg.url.starts_with("oci+http://");
        if is_oci && cfg.signed {
            let shown = spackfs::transport::display_url(&cfg.url);
            let place = if cfg.origin.contains(&shown) {
                cfg.origin.clone()
            } else {
                format!("{} ({shown})", cfg.origin)
            };
            bail!("{place}: {}", spackfs::mirror::oci::UNSIGNED_ONLY);
        }
        let trust = if cfg.signed {
            let ring = cfg
                .keyring()
                .with_context(|| format!("trusted keys of {}", cfg.origin))?;
            if ring.is_empty() {
                tracing::warn!(
                    "mirror {} requires signatures but no key is trusted (use --key, --keyring or --unsigned)",
                    spackfs::transport::display_url(&cfg.url)
                );
            }
            TrustPolicy::Require(ring)
        } else {
            TrustPolicy::Unsigned
        };
        let store = spackfs::transport::open_with(&cfg.url, opts, &access(cfg)?)
            .with_context(|| format!("opening {}", cfg.origin))?;
        mirrors.push(Mirror::new(&cfg.name, store, trust, backoff, absent_ttl));
    }
    Ok(MirrorSet::new(mirrors))
}

/// The credentials of a mirror, read from the environment variables its configuration
/// names. A pair with an unset or empty half counts as absent (as in Spack), with a
/// warning naming the variable.
fn access(cfg: &MirrorConfig) -> Result<spackfs::transport::Access> {
    let c = &cfg.connection;
    let access_key = match &c.access_pair {
        None => None,
        Some(pair) => match (pair.id.resolve(), pair.secret.resolve()) {
            (Some(id), Some(secret)) => Some((id, secret)),
            _ => {
                tracing::warn!(
                    "{}: access_pair: {} unset or empty: no credentials are sent",
                    cfg.origin,
                    [&pair.id, &pair.secret]
                        .iter()
                        .filter(|c| c.resolve().is_none())
                        .map(|c| match c {
                            spackfs::config::Credential::Variable(v) => format!("variable {v}"),
                            spackfs::config::Credential::Literal(_) => "the literal id".into(),
                        })
                        .collect::<Vec<_>>()
                        .join(" and ")
                );
                None
            }
        },
    };
    let session_token = match (&c.access_token_variable, &c.access_token) {
        (Some(var), _) => std::env::var(var).ok().filter(|v| !v.is_empty()),
        (None, Some(literal)) => Some(literal.clone()),
        (None, None) => None,
    };
    Ok(spackfs::transport::Access {
        access_key,
        session_token,
        profile: c.profile.clone(),
        endpoint_url: c.endpoint_url.clone(),
    })
}

/// Open the catalog of the mirrors (for `ls` and `install`): mirrors that cannot be read
/// are reported; with none readable, the (first) error is the command's.
pub(crate) async fn open_catalog(cfgs: &[MirrorConfig], remote: &RemoteArgs) -> Result<Catalog> {
    let set = mirror_set(
        cfgs,
        &remote.options(),
        remote.backoff(),
        Duration::from_secs(600),
    )?;
    let (catalog, failed) = Catalog::open(set).await;
    if failed.len() == cfgs.len() {
        let (_, first) = failed.into_iter().next().expect("a mirror");
        return Err(first.into());
    }
    for (i, e) in failed {
        tracing::warn!("{}: {e}; its packages are not listed", cfgs[i].origin);
    }
    Ok(catalog)
}

pub fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(call) = helper::detect(&argv) {
        return helper_main(&call);
    }
    if let Err(e) = init_logging(&helper::LogSink::Stderr, None, None) {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    execute(Cli::parse(), Lifecycle::new(None))
}

/// `spackfs SRC MOUNTPOINT -o OPTS` (from mount.fuse3): check the options, fork before any
/// thread exists, mount in the detached child; the parent exits once the mount answers.
fn helper_main(call: &helper::HelperCall) -> ExitCode {
    let checked = call.translate().and_then(|t| {
        let cli = Cli::try_parse_from(&t.argv).map_err(|e| {
            let shown = e.render().to_string();
            let first = shown.lines().next().unwrap_or_default();
            anyhow::anyhow!(
                "in the mount options: {}",
                first.strip_prefix("error: ").unwrap_or(first)
            )
        })?;
        Ok((t, cli))
    });
    let (t, cli) = match checked {
        Ok(c) => c,
        Err(e) => {
            eprintln!("spackfs: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let log_file = match &t.log {
        helper::LogSink::File(p) => {
            let opened = p
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| File::options().create(true).append(true).open(p));
            match opened {
                Ok(f) => Some((p.clone(), f)),
                Err(e) => {
                    eprintln!("spackfs: log file {}: {e}", p.display());
                    return ExitCode::FAILURE;
                }
            }
        }
        _ => None,
    };
    let stderr_to = match &log_file {
        Some((p, f)) => match f.try_clone() {
            Ok(f) => Some((p.clone(), f)),
            Err(e) => {
                eprintln!("spackfs: log file {}: {e}", p.display());
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let report = match daemon::fork(daemon::READY_TIMEOUT, stderr_to) {
        Ok(daemon::Forked::Parent(code)) => return code,
        Ok(daemon::Forked::Child(report)) => report,
        Err(e) => {
            eprintln!("spackfs: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let lifecycle = Lifecycle::new(Some(Box::new(report)));
    let file = log_file.map(|(_, f)| f);
    if let Err(e) = init_logging(&t.log, file, t.log_level.as_deref()) {
        lifecycle.failed(&format!("{e:#}"));
        return ExitCode::FAILURE;
    }
    tracing::info!(
        "mount helper: daemon pid {} for {}",
        std::process::id(),
        std::path::Path::new(&call.mountpoint).display()
    );
    execute(cli, lifecycle)
}

/// The default log filter: info, less fuser's "Unmount failed", which it warns whenever the
/// mount was already unmounted from outside (`umount`, `fusermount3 -u`), which is how
/// admins stop a mount; this program logs the unmount itself.
const DEFAULT_LOG: &str = "info,fuser::mnt=error";

/// Set up `tracing` for `sink` (`file`: the opened log file of a `File` sink); `level`
/// overrides `SPACKFS_LOG`.
fn init_logging(sink: &helper::LogSink, file: Option<File>, level: Option<&str>) -> Result<()> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = || match level.filter(|l| !l.is_empty()) {
        Some(l) => {
            tracing_subscriber::EnvFilter::try_new(l).with_context(|| format!("log filter {l:?}"))
        }
        None => Ok(tracing_subscriber::EnvFilter::try_from_env("SPACKFS_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG))),
    };
    match (sink, file) {
        (helper::LogSink::File(_), Some(f)) => {
            tracing_subscriber::fmt()
                .with_env_filter(filter()?)
                .with_writer(std::sync::Mutex::new(f))
                .with_ansi(false)
                .with_target(false)
                .init();
        }
        (helper::LogSink::Journald, _) => {
            let layer = tracing_journald::layer()
                .context("connecting to the journal (/run/systemd/journal/socket)")?
                .with_syslog_identifier("spackfs".into());
            tracing_subscriber::registry()
                .with(filter()?)
                .with(layer)
                .init();
        }
        _ => {
            tracing_subscriber::fmt()
                .with_env_filter(filter()?)
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_target(false)
                .init();
        }
    }
    Ok(())
}

/// Run one verb on a new runtime; a failure is reported to `lifecycle` (the helper's
/// parent) too.
fn execute(cli: Cli, lifecycle: Lifecycle) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let msg = format!("tokio runtime: {e}");
            lifecycle.failed(&msg);
            eprintln!("error: {msg}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli, &lifecycle)) {
        Ok(code) => code,
        Err(e) => {
            let msg = format!("{e:#}");
            if lifecycle.is_daemon() {
                tracing::error!("{msg}");
            }
            lifecycle.failed(&msg);
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, lifecycle: &Lifecycle) -> Result<ExitCode> {
    match cli.command {
        Command::Ls {
            mirrors,
            trust,
            remote,
            root,
            projection,
            long,
        } => {
            let cfgs = mirror_configs(&mirrors, &trust, &root)?;
            install::ls(&cfgs, &remote, &root, &projection, long).await
        }
        Command::Install {
            mirror,
            more_mirrors,
            trust,
            remote,
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
            let mut all = vec![mirror];
            all.extend(more_mirrors);
            let cfgs =
                mirror_configs(&all, &trust, &std::path::absolute(&root)?.to_string_lossy())?;
            let summary =
                install::install(&cfgs, &remote, &root, &projection, jobs, limits, &specs).await?;
            println!("{summary}");
            Ok(if summary.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Mount {
            mirrors,
            mountpoint,
            trust,
            remote,
            cache_dir,
            cache_size,
            cache_grace,
            projection,
            threads,
            read_mode,
            retry_after,
            index_ttl,
            max_unpacked_size,
            metrics_addr,
            allow_other,
            allow_root,
        } => {
            let cache_dir = cache_dir.unwrap_or_else(mount::default_cache_dir);
            let bound = match cache_size {
                Some(s) => Some(Bound {
                    grace: cache_grace,
                    ..Bound::new(
                        spackfs::store::parse_size(&s, &cache_dir).map_err(anyhow::Error::msg)?,
                    )
                }),
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
                retry_after: Duration::from_secs(retry_after),
                limits: Limits {
                    max_unpacked: max_unpacked_size.as_u64(),
                },
                remote: remote.options(),
                backoff: remote.backoff(),
                index_ttl,
                metrics_addr,
                access: if allow_other {
                    Access::Other
                } else if allow_root {
                    Access::Root
                } else {
                    Access::Default
                },
            };
            let cfgs = mirror_configs(
                &mirrors,
                &trust,
                &std::path::absolute(&mountpoint)?.to_string_lossy(),
            )?;
            let signals = mount::Signals::install()?;
            let mounted = mount::mount(&cfgs, &mountpoint, &opts).await?;
            mounted.wait_answering(mount::ANSWER_TIMEOUT).await?;
            lifecycle.ready(&format!(
                "serving {} packages from {} mirror{} at {}",
                mounted
                    .live
                    .packages()
                    .iter()
                    .filter(|p| p.is_listed())
                    .count(),
                cfgs.len(),
                if cfgs.len() == 1 { "" } else { "s" },
                mounted.path().display()
            ));
            mounted.wait_for_signal(signals, lifecycle).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { mountpoint, json } => {
            let status = spackfs::control::socket::status(&mountpoint).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Prefetch {
            mountpoint,
            specs,
            from,
            jobs,
        } => prefetch::run(&mountpoint, &specs, from.as_deref(), jobs).await,
        Command::Mirror {
            command:
                MirrorCommand::Copy {
                    mirror,
                    dest,
                    specs,
                    from,
                    trust,
                    remote,
                    jobs,
                },
        } => {
            let cfgs = mirror_configs(&[mirror], &trust, "/user-environment")?;
            copy::copy(&cfgs, &remote, &dest, &specs, from.as_deref(), jobs).await
        }
        Command::Cache { command, cache_dir } => {
            cache::run(command, &cache_dir.unwrap_or_else(mount::default_cache_dir))
        }
        Command::Demo { workdir } => demo::run(workdir).await,
    }
}

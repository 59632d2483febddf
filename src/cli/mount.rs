//! `spackfs mount`: the mount's set-up (cache, kept index, live catalog, FUSE session),
//! the check that it answers, its signal handling, watchdog pings and its clean unmount.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};

use spackfs::buildcache::projection::Projection;
use spackfs::catalog::live::LiveCatalog;
use spackfs::catalog::materialise::Target;
use spackfs::catalog::Catalog;
use spackfs::config::MirrorConfig;
use spackfs::fs::mount::Access;
use spackfs::fs::{ReadMode, SpackFs};
use spackfs::install::Limits;
use spackfs::mirror::{Backoff, FailureClass};
use spackfs::store::Bound;
use spackfs::transport::RemoteOptions;

/// Mount options beyond the mirror.
pub(crate) struct MountArgs {
    pub cache_dir: PathBuf,
    pub bound: Option<Bound>,
    pub projection: String,
    pub threads: usize,
    pub read_mode: ReadMode,
    pub retry_after: std::time::Duration,
    pub limits: Limits,
    pub remote: RemoteOptions,
    pub backoff: Backoff,
    pub index_ttl: std::time::Duration,
    /// Serve Prometheus metrics here (`HOST:PORT`).
    pub metrics_addr: Option<String>,
    pub access: Access,
}

/// How long a new mount may take to answer the kernel.
pub(crate) const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Ask the kernel whether the mount at `path` answers, from a thread of its own (a hung
/// session blocks that thread, never the runtime): `None` when no answer within `timeout`.
async fn probe(
    path: PathBuf,
    timeout: std::time::Duration,
    wait: bool,
) -> Option<Result<(), spackfs::fs::mount::MountError>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let r = if wait {
            spackfs::fs::mount::wait_until_answers(&path, timeout)
        } else {
            spackfs::fs::mount::answers(&path).map_err(|e| {
                spackfs::fs::mount::MountError::NotAnswering {
                    path: path.clone(),
                    waited: std::time::Duration::ZERO,
                    last: e.to_string(),
                }
            })
        };
        let _ = tx.send(r);
    });
    // The thread's own bound plus a margin: a statfs stuck in the kernel ends the wait.
    tokio::time::timeout(timeout + std::time::Duration::from_secs(1), rx)
        .await
        .ok()
        .and_then(Result::ok)
}

/// `/var/cache/spackfs` for root, else `$XDG_CACHE_HOME/spackfs` (or `~/.cache/spackfs`).
pub(crate) fn default_cache_dir() -> PathBuf {
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

/// SIGTERM and SIGINT, caught from before the mount appears.
pub(crate) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

/// A running mount.
pub(crate) struct Mounted {
    session: Option<fuser::BackgroundSession>,
    path: PathBuf,
    pub live: Arc<LiveCatalog>,
}

impl Mounted {
    /// The mount point.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Wait until the mount answers through the kernel (statfs shows FUSE, its root lists).
    pub async fn wait_answering(&self, timeout: std::time::Duration) -> Result<()> {
        match probe(self.path.clone(), timeout, true).await {
            Some(r) => Ok(r?),
            None => anyhow::bail!(
                "the mount at {} does not answer after {timeout:?}",
                self.path.display()
            ),
        }
    }

    /// Wait for SIGTERM/SIGINT (or an unmount from outside), then unmount cleanly. The
    /// handlers are installed before the mount appears, so that a signal sent as soon as
    /// it serves is not lost (or fatal). While the session lives and answers, `WATCHDOG=1`
    /// goes to systemd at the interval it asked for; `STOPPING=1` before unmounting.
    pub async fn wait_for_signal(
        mut self,
        signals: Signals,
        lifecycle: &spackfs::control::lifecycle::Lifecycle,
    ) -> Result<()> {
        let Signals { mut term, mut int } = signals;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
        let watchdog_every = lifecycle.watchdog_interval();
        let mut watchdog =
            tokio::time::interval(watchdog_every.unwrap_or(std::time::Duration::from_secs(3600)));
        if let Some(d) = watchdog_every {
            tracing::info!("systemd watchdog: pinging every {d:?}");
        }
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: unmounting {}", self.path.display()); break; }
                _ = int.recv() => { tracing::info!("SIGINT: unmounting {}", self.path.display()); break; }
                _ = tick.tick() => {
                    if self.session.as_ref().is_some_and(|s| s.guard.is_finished()) {
                        lifecycle.stopping(&format!("{} was unmounted", self.path.display()));
                        tracing::info!("{} was unmounted", self.path.display());
                        if let Some(s) = self.session.take() { let _ = s.join(); }
                        return Ok(());
                    }
                }
                _ = watchdog.tick(), if watchdog_every.is_some() => {
                    let alive = self.session.as_ref().is_some_and(|s| !s.guard.is_finished());
                    let every = watchdog_every.unwrap_or_default();
                    if alive && matches!(probe(self.path.clone(), every / 2, false).await, Some(Ok(()))) {
                        lifecycle.watchdog();
                    } else if alive {
                        tracing::warn!("{} does not answer: no watchdog ping", self.path.display());
                    }
                }
            }
        }
        lifecycle.stopping(&format!("unmounting {}", self.path.display()));
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

/// Mount the mirrors `cfgs` (in order) at `mountpoint`.
pub(crate) async fn mount(
    cfgs: &[MirrorConfig],
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
    let set = super::mirror_set(cfgs, &opts.remote, opts.backoff, opts.index_ttl)?;
    for m in set.mirrors() {
        // The specs of the indexes, for the database at the mount's root and the kept
        // indexes: on the cache's disk, not in memory.
        m.keep_specs_in(store.root().join("index"));
    }
    let (catalog, failed) = Catalog::open(set).await;
    let mut listed_any = failed.len() < cfgs.len();
    let mut first_error = None;
    for (i, e) in failed {
        let url = catalog.set().mirrors()[i].url().to_string();
        let kept = store.index_path(&url);
        // Only an unreachable mirror is listed from its kept index: one whose index fails
        // verification lists nothing.
        let index = match e.class() {
            FailureClass::Endpoint => std::fs::File::open(&kept)
                .ok()
                .map(|f| std::io::BufReader::with_capacity(1 << 20, f)),
            _ => None,
        };
        match index.map(|json| catalog.adopt_kept(i, json)) {
            Some(Ok(n)) => {
                listed_any = true;
                tracing::warn!(
                    "{}: {e}; listing its {n} packages from the index kept at {}: cached packages work, others are fetched once it answers",
                    cfgs[i].origin,
                    kept.display()
                );
            }
            other => {
                if let Some(Err(ke)) = other {
                    tracing::warn!("the index kept at {} is unreadable: {ke}", kept.display());
                }
                tracing::warn!(
                    "{}: {e}; nothing is listed from it until it answers (checked every {})",
                    cfgs[i].origin,
                    humantime::format_duration(opts.index_ttl)
                );
                first_error.get_or_insert(e);
            }
        }
    }
    if !listed_any {
        return Err(first_error.expect("a failed mirror").into());
    }
    let catalog = Arc::new(catalog);
    let target = Target::new(root, Projection::new(&opts.projection)?, opts.limits).with_digests();
    let live = Arc::new(LiveCatalog::new(catalog, target, store, opts.retry_after));
    live.keep_indexes_in_background();
    tracing::info!(
        "mounting {} ({} packages) at {}, cache {}",
        live.catalog().describe(),
        live.packages().iter().filter(|p| p.is_listed()).count(),
        path.display(),
        opts.cache_dir.display()
    );
    live.watch_evictions();
    let fs = SpackFs::new(
        live.clone(),
        tokio::runtime::Handle::current(),
        opts.read_mode,
    );
    // The fs moves into the session: keep what the observer and the control side need.
    let parts = fs.observer_parts();
    let core = fs.core();
    // The control socket and the metrics endpoint (before the mount appears, so that a
    // port in use fails the mount cleanly) are named after the canonical mount point,
    // which is what `spackfs status` and mountinfo see.
    let canonical = spackfs::control::socket::canonical_mount_point(&path).unwrap_or(path.clone());
    if let Some(addr) = &opts.metrics_addr {
        spackfs::control::metrics::serve(addr, &canonical, live.clone(), core.clone()).await?;
    }
    if let Err(e) = spackfs::control::socket::serve(&canonical, live.clone(), core) {
        tracing::warn!("{e}: `spackfs status` will not reach this mount");
    }
    let session = spackfs::fs::mount::spawn(fs, &path, opts.threads, opts.access)?;
    live.set_observer(parts.with_kernel(Box::new(spackfs::fs::fuse::Notifier::new(
        session.notifier(),
    ))));
    live.start_refresh(opts.index_ttl);
    Ok(Mounted {
        session: Some(session),
        path,
        live,
    })
}

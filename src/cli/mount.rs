//! `spackfs mount`: the mount's set-up (cache, kept index, live catalog, FUSE session),
//! its signal handling and its clean unmount.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};

use spackfs::buildcache::projection::Projection;
use spackfs::catalog::live::LiveCatalog;
use spackfs::catalog::materialise::Target;
use spackfs::catalog::Catalog;
use spackfs::config::MirrorConfig;
use spackfs::fs::{ReadMode, SpackFs};
use spackfs::install::Limits;
use spackfs::store::Bound;

use super::open_catalog;

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

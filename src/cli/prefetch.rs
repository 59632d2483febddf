//! `spackfs prefetch MOUNTPOINT SPEC... | --from spack.lock`: warm a running mount. The
//! packages are found in the mount's own Spack database (`.spack-db/index.json`), closed
//! over their link/run dependencies, and made ready by opening each prefix through the
//! mount, as a first touch would: it works for every user who can read the mount, and the
//! daemon does the fetching. A package that fails is named with the reason the mount gives
//! (`user.spackfs.error`).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use spackfs::buildcache::lockfile;
use spackfs::buildcache::spec::SpecNode;

use super::progress::Progress;

/// A package of the mount: its node and its prefix.
struct Installed {
    node: SpecNode,
    path: PathBuf,
}

/// The packages of the mount at `mount`, by hash, from its Spack database.
fn installed(mount: &Path) -> Result<BTreeMap<String, Installed>> {
    let db = mount.join(".spack-db/index.json");
    let raw = std::fs::read(&db).with_context(|| {
        format!(
            "reading {} (is {} a spackfs mount?)",
            db.display(),
            mount.display()
        )
    })?;
    let v: serde_json::Value =
        serde_json::from_slice(&raw).with_context(|| format!("parsing {}", db.display()))?;
    let installs = v
        .pointer("/database/installs")
        .and_then(|i| i.as_object())
        .with_context(|| format!("{} holds no database.installs", db.display()))?;
    let mut out = BTreeMap::new();
    for (hash, rec) in installs {
        let what = format!("{} (record {hash})", db.display());
        let spec = rec.get("spec").context("a record without spec")?;
        let node = SpecNode::from_json(spec, &what)?;
        let path = rec
            .get("path")
            .and_then(|p| p.as_str())
            .with_context(|| format!("{what}: no path"))?;
        out.insert(
            hash.clone(),
            Installed {
                node,
                path: PathBuf::from(path),
            },
        );
    }
    Ok(out)
}

/// The hashes `specs` and the lock file name, with their link/run closure in the mount.
fn select(
    all: &BTreeMap<String, Installed>,
    specs: &[String],
    lock: Option<&Path>,
    mount: &Path,
) -> Result<Vec<String>> {
    let mut wanted: Vec<String> = Vec::new();
    for spec in specs {
        let hits: Vec<&String> = all
            .iter()
            .filter(|(_, p)| p.node.answers_to(spec))
            .map(|(h, _)| h)
            .collect();
        match hits.len() {
            0 => bail!(
                "{spec}: no such package in the mount at {}",
                mount.display()
            ),
            n if n > 1 && spec.trim().starts_with('/') => bail!(
                "{spec} is ambiguous in the mount at {}: {}",
                mount.display(),
                hits.iter()
                    .map(|h| all[*h].node.display())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => wanted.extend(hits.into_iter().cloned()),
        }
    }
    if let Some(lock) = lock {
        let text = std::fs::read(lock).with_context(|| format!("reading {}", lock.display()))?;
        let specs = lockfile::lock_hashes(&text, &lock.display().to_string())?;
        let missing: Vec<&String> = specs.all.iter().filter(|h| !all.contains_key(*h)).collect();
        if !missing.is_empty() {
            tracing::warn!(
                "{}: {} of its packages are not in the mount at {} (not prefetched): {}",
                lock.display(),
                missing.len(),
                mount.display(),
                missing
                    .iter()
                    .map(|h| h.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        wanted.extend(specs.all.into_iter().filter(|h| all.contains_key(h)));
    }
    // The link/run closure, in the mount.
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    while let Some(h) = wanted.pop() {
        if !seen.insert(h.clone()) {
            continue;
        }
        if let Some(p) = all.get(&h) {
            for d in &p.node.deps {
                if (d.is("link") || d.is("run")) && all.contains_key(&*d.hash) {
                    wanted.push(d.hash.to_string());
                }
            }
            order.push(h);
        }
    }
    Ok(order)
}

/// Make one prefix ready through the mount: open it as a directory, as a first touch does.
/// The error is the mount's reason when it gives one.
fn touch(prefix: &Path) -> Result<(), String> {
    match std::fs::read_dir(prefix) {
        Ok(_) => Ok(()),
        Err(e) => {
            let why = xattr::get(prefix, "user.spackfs.error")
                .ok()
                .flatten()
                .map(|b| String::from_utf8_lossy(&b).into_owned());
            Err(match why {
                Some(w) => format!("{e}: {w}"),
                None => e.to_string(),
            })
        }
    }
}

pub(crate) async fn run(
    mount: &Path,
    specs: &[String],
    lock: Option<&Path>,
    jobs: usize,
) -> Result<ExitCode> {
    let all = installed(mount)?;
    let order = select(&all, specs, lock, mount)?;
    if order.is_empty() {
        bail!("nothing to prefetch");
    }
    let progress = Arc::new(Progress::new("prefetching", order.len()));
    let sem = Arc::new(tokio::sync::Semaphore::new(jobs.max(1)));
    let all = Arc::new(all);
    let mut tasks = Vec::new();
    for h in order {
        let (all, sem, progress) = (all.clone(), sem.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.expect("semaphore open");
            let p = &all[&h];
            let what = p.node.display();
            progress.working(&what);
            let prefix = p.path.clone();
            let r = tokio::task::spawn_blocking(move || touch(&prefix))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            match &r {
                Ok(()) => progress.done(&what, &p.path.display().to_string()),
                Err(why) => progress.failed(&what, why),
            }
            (what, r)
        }));
    }
    let mut failed = Vec::new();
    let mut ready = 0;
    for t in tasks {
        match t.await.context("a prefetch task")? {
            (_, Ok(())) => ready += 1,
            (what, Err(why)) => failed.push(format!("{what} ({why})")),
        }
    }
    progress.finish();
    println!(
        "{ready} package(s) ready, {} failed, in {:.1}s",
        failed.len(),
        progress.elapsed().as_secs_f64()
    );
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: not ready: {}", failed.join("; "));
        Ok(ExitCode::FAILURE)
    }
}

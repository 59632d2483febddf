//! `spackfs mirror copy`: the command-line edge of copying packages (and their link/run
//! closure) from a mirror into a directory that then serves as a `file://` mirror, for
//! air-gapped sites. Resolves the specs (or a `spack.lock`), runs a few package copies at a
//! time ([`spackfs::mirror::copy`] does the verified copying), shows progress (a bar on a
//! terminal, one line per package otherwise) and a summary, and fails naming every package
//! that could not be copied.

use std::collections::HashSet;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bytesize::ByteSize;
use futures::StreamExt;

use spackfs::buildcache::lockfile;
use spackfs::buildcache::spec::SpecNode;
use spackfs::config::MirrorConfig;
use spackfs::mirror::copy::{self, Dest, Progress, Tally};

use super::{open_catalog, RemoteArgs};

/// Where copy progress goes: a bar on a terminal, plain lines otherwise.
struct Display {
    bar: Option<indicatif::ProgressBar>,
}

impl Display {
    fn new(total_bytes: u64, packages: usize) -> Self {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = indicatif::ProgressBar::new(total_bytes);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                )
                .expect("a valid template"),
            );
            bar.set_message(format!("0/{packages} packages"));
            bar
        });
        Display { bar }
    }

    /// One line (above the bar, when there is one).
    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn packages_done(&self, done: usize, of: usize) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{done}/{of} packages"));
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Progress for Display {
    fn bytes(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }
}

/// The packages a lock file asks for: each `concrete_specs` entry some index lists as in
/// the build cache. A root the mirror lacks is a failure; another entry it lacks (a build
/// dependency, an external) is skipped with a warning.
fn lock_nodes(
    catalog: &spackfs::catalog::Catalog,
    file: &Path,
    failed: &mut Vec<String>,
) -> Result<Vec<Arc<SpecNode>>> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let lock = lockfile::lock_hashes(&bytes, &file.display().to_string())?;
    let roots: HashSet<&str> = lock.roots.iter().map(String::as_str).collect();
    let ns = catalog.namespace();
    let mut out = Vec::new();
    for hash in &lock.all {
        match ns.entry(hash) {
            Some(e) if e.in_buildcache && !e.node.is_external() => {
                out.push(Arc::new(e.node.spec()?))
            }
            found => {
                let what = found.map_or_else(|| format!("/{hash}"), |e| e.node.display());
                let why = match found {
                    Some(e) if e.node.is_external() => "external",
                    Some(e) if e.lacking != 0 => "its metadata is not in the mirror",
                    Some(_) => "the index lists it as not in the build cache",
                    None => "not in the mirror's index",
                };
                if roots.contains(hash.as_str()) {
                    tracing::error!("{what} (a root of {}): {why}", file.display());
                    failed.push(what);
                } else {
                    tracing::warn!("skipping {what} (in {}): {why}", file.display());
                }
            }
        }
    }
    Ok(out)
}

pub(crate) async fn copy(
    cfgs: &[MirrorConfig],
    remote: &RemoteArgs,
    dest: &Path,
    specs: &[String],
    from: Option<&Path>,
    jobs: usize,
) -> Result<ExitCode> {
    let start = Instant::now();
    if cfgs.len() != 1 {
        bail!(
            "mirror copy reads one mirror, but {} are configured ({}): name one of them",
            cfgs.len(),
            cfgs.iter()
                .map(|c| spackfs::transport::display_url(&c.url))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let url = &cfgs[0].url;
    if url.starts_with("oci://") || url.starts_with("oci+http://") {
        return Err(copy::CopyError::Oci {
            mirror: spackfs::transport::display_url(url),
        }
        .into());
    }
    let catalog = open_catalog(cfgs, remote).await?;
    let mirror = catalog.set().mirrors()[0].clone();
    copy::check_source(&mirror)?;
    let mut failed: Vec<String> = Vec::new();
    let mut requested = Vec::new();
    if let Some(file) = from {
        requested.extend(lock_nodes(&catalog, file, &mut failed)?);
    }
    for s in specs {
        match catalog.resolve(s) {
            Ok(found) => {
                for e in found {
                    match e.node.spec() {
                        Ok(node) => requested.push(Arc::new(node)),
                        Err(err) => {
                            tracing::error!("{err}");
                            failed.push(e.node.display());
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!("{e}");
                failed.push(s.clone());
            }
        }
    }
    let closure = catalog.closure(&requested).await;
    for (pkg, parent, why) in &closure.skipped {
        match parent {
            Some(p) => tracing::warn!("skipping {pkg} (needed by {p}): {why}"),
            None => tracing::warn!("skipping {pkg}: {why}"),
        }
    }
    for (node, e) in &closure.failed {
        tracing::error!("{e}");
        failed.push(node.display());
    }
    let nodes: Vec<Arc<SpecNode>> = closure
        .order
        .iter()
        .map(|h| closure.nodes[h].clone())
        .collect();
    let dest = Dest::new(dest)?;
    // The closure read every package's metadata: its tarball sizes are known.
    let mut total = 0;
    for n in &nodes {
        if let Ok(m) = catalog.meta(n).await {
            total += m.tarball_size.unwrap_or(0);
        }
    }
    let display = Display::new(total, nodes.len());
    let ns = catalog.namespace();
    let mut results = futures::stream::iter(nodes.iter().map(|node| {
        let (mirror, dest, display, compiler) =
            (&mirror, &dest, &display, ns.compiler_of_node(node));
        async move {
            let r = copy::copy_package(
                mirror,
                dest,
                node,
                compiler.as_ref(),
                Some(display as &dyn Progress),
            )
            .await;
            (node, r)
        }
    }))
    .buffer_unordered(jobs.max(1));
    let mut tally = Tally::default();
    let (mut copied, mut present) = (0, 0);
    while let Some((node, r)) = results.next().await {
        match r {
            Ok(t) => {
                if t.files_written == 0 {
                    present += 1;
                    display.line(&format!(
                        "{}: already in {}",
                        node.display(),
                        dest.root().display()
                    ));
                } else {
                    copied += 1;
                    display.line(&format!(
                        "{}: copied {} file(s), {}",
                        node.display(),
                        t.files_written,
                        ByteSize::b(t.bytes_written)
                    ));
                }
                tally.merge(t);
            }
            Err(e) => {
                display.line(&format!("{}: FAILED: {e}", node.display()));
                failed.push(node.display());
            }
        }
        display.packages_done(copied + present + failed.len(), nodes.len());
    }
    drop(results);
    display.finish();
    // The index and keys last: a copy in progress has none of its own yet.
    let (indexes, t) = copy::copy_index(&mirror, &dest).await?;
    tally.merge(t);
    if indexes.is_empty() {
        tracing::warn!("mirror {} has no index: none copied", mirror.url());
    }
    let (keys, t) = copy::copy_keys(&mirror, &dest).await?;
    tally.merge(t);
    eprintln!(
        "{copied} package(s) copied, {present} already present, {} failed; {} written ({} file(s)), {} already in place; indexes: {}; keys: {}; in {:.1?}",
        failed.len(),
        ByteSize::b(tally.bytes_written),
        tally.files_written,
        ByteSize::b(tally.bytes_present),
        if indexes.is_empty() { "none".to_string() } else { indexes.join(", ") },
        if keys.is_empty() { "none".to_string() } else { keys.into_iter().collect::<Vec<_>>().join(", ") },
        start.elapsed()
    );
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: not copied: {}", failed.join(", "));
        Ok(ExitCode::FAILURE)
    }
}

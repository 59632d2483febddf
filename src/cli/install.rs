//! `spackfs ls` and `spackfs install`: what a mirror offers, and eager installs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use futures::StreamExt;

use spackfs::buildcache::projection::Projection;
use spackfs::buildcache::spec::short_hash;
use spackfs::catalog::materialise::{self, Outcome, Target};
use spackfs::catalog::Catalog;
use spackfs::config::MirrorConfig;
use spackfs::install::Limits;

use super::progress::Progress;
use super::{open_catalog, RemoteArgs};

pub(crate) async fn ls(
    cfgs: &[MirrorConfig],
    remote: &RemoteArgs,
    root: &str,
    projection: &str,
    long: bool,
) -> Result<ExitCode> {
    let catalog = open_catalog(cfgs, remote).await?;
    let projection = Projection::new(projection)?;
    let ns = catalog.namespace();
    let several = catalog.set().len() > 1;
    let root = root.trim_end_matches('/');
    let mut rows = Vec::new();
    let mut missing = 0;
    if !long {
        return ls_index(&ns, &projection, root);
    }
    // Every package's verified metadata (size, signer), 16 requests at a time. Packages
    // the index lists but the mirror lacks (a partial copy) are shown as missing.
    let metas: Vec<_> = futures::stream::iter(ns.indexed().map(|e| {
        let catalog = &catalog;
        async move {
            let meta = match (e.in_buildcache, e.node.spec()) {
                (false, _) => None,
                (true, Ok(node)) => Some(catalog.meta(&node).await.map_err(|e| e.to_string())),
                (true, Err(err)) => Some(Err(err.to_string())),
            };
            (e, meta)
        }
    }))
    .buffered(16)
    .collect()
    .await;
    for (e, meta) in metas {
        let node = &e.node;
        let placed =
            || -> Result<String> { Ok(format!("{root}/{}", place(&ns, &projection, node)?)) };
        let Some(meta) = meta else {
            missing += 1;
            let mut row = vec![
                node.name().to_string(),
                node.version().to_string(),
                short_hash(node.hash()).to_string(),
                placed()?,
                "-".into(),
                MISSING.into(),
            ];
            if several {
                row.push(String::new());
            }
            rows.push(row);
            continue;
        };
        let (prefix, size, signer, mirror) = match meta.map(|m| m.into_inner()) {
            Ok(m) => (
                Catalog::prefix_of(root, &projection, m.node(), Some(&m.dag))?
                    .display()
                    .to_string(),
                m.tarball_size
                    .map(|s| bytesize::ByteSize::b(s).to_string())
                    .unwrap_or_else(|| "?".into()),
                m.signer.unwrap_or_else(|| "unsigned".into()),
                m.mirror,
            ),
            Err(err) => (
                placed()?,
                "?".into(),
                format!("UNTRUSTED ({err})"),
                String::new(),
            ),
        };
        let mut row = vec![
            node.name().to_string(),
            node.version().to_string(),
            short_hash(node.hash()).to_string(),
            prefix,
            size,
            signer,
        ];
        if several {
            row.push(mirror);
        }
        rows.push(row);
    }
    print_table(&rows)?;
    note_missing(missing, rows.len());
    Ok(ExitCode::SUCCESS)
}

/// `spackfs ls` from the verified index alone: name, version, hash and prefix of every
/// indexed package, the prefix placed as a mount places it (the compiler, for
/// `{compiler.*}`, looked up in the index). Two passes over the namespace (the column
/// widths, then the lines): no table of the whole listing is held.
fn ls_index(
    ns: &spackfs::catalog::Namespace,
    projection: &Projection,
    root: &str,
) -> Result<ExitCode> {
    use std::io::Write;
    let placed = |node| place(ns, projection, node);
    let (mut name_w, mut version_w, mut prefix_w) = (0, 0, 0);
    let (mut listed, mut missing) = (0, 0);
    for e in ns.indexed() {
        let n = &e.node;
        name_w = name_w.max(n.name().len());
        version_w = version_w.max(n.version().len());
        prefix_w = prefix_w.max(root.len() + 1 + placed(n)?.len());
    }
    let hash_w = ns
        .indexed()
        .map(|e| short_hash(e.node.hash()).len())
        .max()
        .unwrap_or(0);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut line = String::new();
    for e in ns.indexed() {
        let n = &e.node;
        listed += 1;
        line.clear();
        let prefix = format!("{root}/{}", placed(n)?);
        use std::fmt::Write as _;
        let _ = write!(
            line,
            "{:name_w$}  {:version_w$}  {:hash_w$}  ",
            n.name(),
            n.version(),
            short_hash(n.hash())
        );
        if e.in_buildcache {
            line.push_str(&prefix);
        } else {
            missing += 1;
            let _ = write!(line, "{prefix:prefix_w$}  {MISSING}");
        }
        match writeln!(out, "{}", line.trim_end()) {
            // The reader went away (`spackfs ls | head`): nothing more to print.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
            r => r?,
        }
    }
    match out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
        r => r?,
    }
    drop(out);
    note_missing(missing, listed);
    Ok(ExitCode::SUCCESS)
}

/// Where a mount places `node` (relative to its root): the compiler, for `{compiler.*}`,
/// looked up in the index.
fn place(
    ns: &spackfs::catalog::Namespace,
    projection: &Projection,
    node: &spackfs::buildcache::table::PackageRef,
) -> Result<String> {
    let compiler = match projection.uses_compiler() {
        true => ns.compiler_of(node),
        false => None,
    };
    Ok(projection.format_with(node.ident(), compiler.as_ref())?)
}

/// The line under a listing that has packages the mirror lacks.
fn note_missing(missing: usize, listed: usize) {
    if missing > 0 {
        println!(
            "{MISSING}: {missing} of {listed} indexed package(s): the index lists them, but the mirror does not hold their metadata (a partial copy?)"
        );
    }
}

/// How `spackfs ls` marks a package that a (partial) copy of a mirror lacks.
const MISSING: &str = "MISSING";

/// Print rows as aligned columns (the fifth, a size, right-aligned; each row's last cell
/// unpadded; rows may be shorter than others), through one buffered writer.
fn print_table(rows: &[Vec<String>]) -> std::io::Result<()> {
    use std::io::Write;
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut line = String::new();
    for r in rows {
        line.clear();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else if i == 4 {
                line.push_str(&format!("{cell:>w$}  ", w = widths[i]));
            } else {
                line.push_str(&format!("{cell:w$}  ", w = widths[i]));
            }
        }
        match writeln!(out, "{}", line.trim_end()) {
            // The reader went away (`spackfs ls | head`): nothing more to print.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            r => r?,
        }
    }
    match out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
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
    cfgs: &[MirrorConfig],
    remote: &RemoteArgs,
    root: &std::path::Path,
    projection: &str,
    jobs: usize,
    limits: Limits,
    specs: &[String],
) -> Result<Summary> {
    let catalog = Arc::new(open_catalog(cfgs, remote).await?);
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
        for e in catalog.resolve(s)? {
            requested.push(Arc::new(e.node.spec()?));
        }
    }
    let closure = catalog.closure(&requested).await;
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
    // Largest first: the longest pipeline starts at once and the small ones fill the
    // other slots around it (otherwise the biggest package, started last, is all the
    // install waits for at the end).
    let mut order = closure.order.clone();
    order.sort_by_key(|h| std::cmp::Reverse(closure.sizes.get(h).copied().unwrap_or(0)));
    let nodes: Vec<_> = order.iter().map(|h| closure.nodes[h].clone()).collect();
    let target = Target::new(root_str, projection, limits);
    let progress = Arc::new(Progress::new("installing", nodes.len()));
    let shown = progress.clone();
    let report: materialise::Report = Arc::new(move |node, outcome| match outcome {
        None => shown.working(&node.display()),
        Some(Ok(Outcome::Installed {
            prefix, timings, ..
        })) => shown.done(
            &node.display(),
            &format!("installed at {}  ({timings})", prefix.display()),
        ),
        Some(Ok(Outcome::AlreadyInstalled { prefix })) => shown.done(
            &node.display(),
            &format!("already installed at {}", prefix.display()),
        ),
        Some(Err(e)) => shown.failed(&node.display(), &e.to_string()),
    });
    let results = materialise::install_many(catalog.clone(), nodes, target, jobs, report).await;
    progress.finish();
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
            Ok(Outcome::AlreadyInstalled { .. }) => summary.present += 1,
            Err(e) => {
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

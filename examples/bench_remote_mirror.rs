//! Generates the small-files mirror of `bench/remote`: an unsigned v3 mirror, built for a
//! padded build root, of one package, `smallfiles`, for the time to first output of a
//! package of many small files fetched over HTTP:
//!
//! * `share/smallfiles/dNN/fNNNN.txt`: 3,000 text files of 1 to 8 KB (uniformly
//!   distributed, 50 per directory); one in ten names the prefix (text relocation);
//! * `bin/hello`: a `#!/bin/sh` script that prints one line, `hello from PREFIX`.
//!
//! ```text
//! cargo run --release --example bench_remote_mirror -- OUTDIR [--files N] [--padding L]
//! ```
//!
//! The output is deterministic (fixed seed). The mirror is written to `OUTDIR/mirror`;
//! `OUTDIR/build` is scratch space, removed at the end.

#[allow(dead_code)] // the helpers the other generators use and this one does not
mod common;

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;

use common::{inflated_len, set_mode, words, write, Rng};
use spackfs::writer::{padded_root, MirrorWriter, NodeDef};

const STORE: &str = "/opt/bench-remote-store";
const SEED: u64 = 0x5eed_4e30_7e20_2025;
const FILES_PER_DIR: usize = 50;
const MIN_BYTES: u64 = 1024;
const MAX_BYTES: u64 = 8 * 1024;

/// Generates the small-files mirror of `bench/remote` (one package of many small files and
/// a `bin/hello` script) for a padded build root, written to OUTDIR/mirror (OUTDIR/build is
/// scratch space, removed at the end).
#[derive(Parser)]
#[command(name = "bench_remote_mirror")]
struct Args {
    /// Output directory
    #[arg(value_name = "OUTDIR", value_parser = common::absolute_dir)]
    out: std::path::PathBuf,
    /// Number of small files (1 to 8 KB each)
    #[arg(long, value_name = "N", default_value_t = 3000)]
    files: usize,
    /// Length, in characters, the build root is padded to
    #[arg(long, value_name = "L", default_value_t = 256)]
    padding: usize,
}

/// A text file of exactly `size` bytes: lines of words, ending in a newline.
fn text_of(rng: &mut Rng, size: usize, note: Option<&str>) -> String {
    let mut s = String::with_capacity(size + 128);
    if let Some(n) = note {
        s.push_str(n);
    }
    while s.len() < size {
        let n = 4 + rng.below(10) as usize;
        s.push_str(&words(rng, n));
        s.push('\n');
    }
    s.truncate(size - 1);
    s.push('\n');
    s
}

/// The package tree in `dir`; returns (files, payload bytes).
fn build_tree(dir: &Path, prefix: &str, files: usize) -> Result<(usize, u64)> {
    let mut rng = Rng(SEED);
    let mut bytes = 0;
    for k in 0..files {
        let size = (MIN_BYTES + rng.below(MAX_BYTES - MIN_BYTES + 1)) as usize;
        let note = format!("installed in {prefix}/share/smallfiles\n");
        let text = text_of(&mut rng, size, (k % 10 == 0).then_some(note.as_str()));
        bytes += write(
            &dir.join(format!(
                "share/smallfiles/d{:02}/f{k:04}.txt",
                k / FILES_PER_DIR
            )),
            text,
        )?;
    }
    let hello = dir.join("bin/hello");
    bytes += write(&hello, format!("#!/bin/sh\necho \"hello from {prefix}\"\n"))?;
    set_mode(&hello, 0o755)?;
    write(&dir.join(".spack/spec.json"), "{}")?;
    Ok((files + 1, bytes))
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.files == 0 {
        bail!("--files must be positive");
    }
    let start = Instant::now();
    let buildpath = padded_root(STORE, args.padding);
    let mirror_dir = args.out.join("mirror");
    let build = args.out.join("build");
    for d in [&mirror_dir, &build] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| d.display().to_string())?;
        }
    }
    println!(
        "==> generating smallfiles ({} files of {}-{} bytes + bin/hello) for build root {STORE} padded to {} characters",
        args.files,
        MIN_BYTES,
        MAX_BYTES,
        buildpath.len()
    );
    let def = NodeDef::new("smallfiles", "1.0");
    let node = def.to_json();
    let hash = node["hash"].as_str().unwrap_or_default().to_string();
    let prefix = format!("{buildpath}/linux-x86_64/smallfiles-1.0-{hash}");
    let dir = build.join("smallfiles");
    let (files, payload) = build_tree(&dir, &prefix, args.files)?;

    let mut writer = MirrorWriter::new(&mirror_dir, None)?;
    let rec = writer
        .add_package(
            &[node],
            &dir,
            &buildpath,
            &prefix,
            &[(hash.clone(), prefix.clone())],
        )
        .context("packing smallfiles")?;
    writer.finish()?;
    let inflated = inflated_len(&mirror_dir.join(rec.path()))?;
    std::fs::remove_dir_all(&build)?;
    println!(
        "==> wrote {}: smallfiles, {files} files, {:.1} MB payload, {:.1} MB unpacked (tar), {:.2} MB compressed ({:.2}x), in {:.1} s",
        mirror_dir.display(),
        payload as f64 / 1e6,
        inflated as f64 / 1e6,
        rec.content_length as f64 / 1e6,
        inflated as f64 / rec.content_length as f64,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

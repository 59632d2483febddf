//! Generates the mirror of `bench/read` and `bench/first-touch`: an unsigned v3 mirror built
//! for a padded build root, with
//!
//! * `bigfile`: one large file, `share/big.dat` (1 GiB by default) of pseudo-random,
//!   incompressible bytes (its tarball is about as large), for sequential read throughput;
//! * `manyfiles`: 10,000 small text files in a few hundred directories
//!   (`share/manyfiles/gNN/dNN/fNNN.txt`, 40 per directory; one in ten names the prefix), for
//!   `stat` walks;
//! * `app` and its ten link dependencies `dep0` .. `dep9`: every `depK` is a gcc-compiled
//!   `lib/libdepK.so` made a few MB large by a non-loaded section of semi-compressible bytes
//!   (with old-prefix C strings in it); `bin/app` is linked against all ten with `DT_RPATH`
//!   naming their `lib` directories, so running it from a cold mount needs 11 packages. It
//!   prints one line (`app: 10 libraries loaded, ...`) and its prefix.
//!
//! ```text
//! cargo run --release --example bench_read_mirror -- OUTDIR [--big-mib N] [--small-files K]
//!     [--deps D] [--dep-mb M] [--padding L]
//! ```
//!
//! The output is deterministic (fixed seed). The mirror is written to `OUTDIR/mirror`;
//! `OUTDIR/build` is scratch space, removed at the end. Package trees are removed as soon as
//! they are packed, so the peak space is about twice the big file (tree and tarball).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::Value;

use common::{add_benchdata_section, bulk_data, inflated_len, run, words, write, Rng};
use spackfs::writer::{padded_root, MirrorWriter, NodeDef};

const STORE: &str = "/opt/bench-read-store";
const SEED: u64 = 0x5eed_0f2e_ad20_2025;
/// Small files per directory of `manyfiles`, and leaf directories per group directory.
const FILES_PER_DIR: usize = 40;
const DIRS_PER_GROUP: usize = 10;

/// Generates the mirror of `bench/read` and `bench/first-touch` (bigfile, manyfiles, app and
/// its link dependencies) for a padded build root, written to OUTDIR/mirror (OUTDIR/build is
/// scratch space, removed at the end).
#[derive(Parser)]
#[command(name = "bench_read_mirror")]
struct Args {
    /// Output directory
    #[arg(value_name = "OUTDIR", value_parser = common::absolute_dir)]
    out: PathBuf,
    /// Size of bigfile's share/big.dat, in MiB
    #[arg(long, value_name = "N", default_value_t = 1024)]
    big_mib: u64,
    /// Number of small files in manyfiles
    #[arg(long, value_name = "K", default_value_t = 10_000)]
    small_files: usize,
    /// Number of link dependencies of app (dep0, dep1, ...)
    #[arg(long, value_name = "D", default_value_t = 10)]
    deps: usize,
    /// Approximate size of each dependency's library, in MB (10^6 bytes)
    #[arg(long, value_name = "M", default_value_t = 4.0)]
    dep_mb: f64,
    /// Length, in characters, the build root is padded to
    #[arg(long, value_name = "L", default_value_t = 256)]
    padding: usize,
}

fn parse_args() -> Result<Args> {
    let args = Args::parse();
    if args.big_mib == 0 || args.small_files == 0 || args.deps == 0 || args.dep_mb < 0.0 {
        bail!("--big-mib, --small-files and --deps must be positive, --dep-mb not negative");
    }
    Ok(args)
}

/// One package: its spec node and its build-time prefix.
struct Pkg {
    name: String,
    hash: String,
    node: Value,
    prefix: String,
}

impl Pkg {
    fn new(def: NodeDef, buildpath: &str) -> Pkg {
        let node = def.to_json();
        let hash = node["hash"].as_str().unwrap_or_default().to_string();
        let prefix = format!(
            "{buildpath}/linux-x86_64/{}-{}-{hash}",
            def.name, def.version
        );
        Pkg {
            name: def.name,
            hash,
            node,
            prefix,
        }
    }
}

/// A fresh package tree at `build/<name>` with its `.spack/spec.json`.
fn fresh_tree(build: &Path, name: &str) -> Result<PathBuf> {
    let dir = build.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    write(&dir.join(".spack/spec.json"), "{}")?;
    Ok(dir)
}

/// `bigfile`: `share/big.dat` of `mib` MiB of splitmix64 output (incompressible).
fn build_bigfile(p: &Pkg, build: &Path, mib: u64) -> Result<(PathBuf, u64)> {
    let dir = fresh_tree(build, &p.name)?;
    let bytes = write(
        &dir.join("share/README"),
        format!(
            "One large file of pseudo-random bytes, installed in {}\n",
            p.prefix
        ),
    )?;
    let path = dir.join("share/big.dat");
    let mut f = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(&path).with_context(|| path.display().to_string())?,
    );
    let mut rng = Rng(SEED ^ 0x0b16_f11e);
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for w in chunk.chunks_exact_mut(8) {
            w.copy_from_slice(&rng.next().to_le_bytes());
        }
        f.write_all(&chunk)?;
    }
    f.flush()?;
    Ok((dir, bytes + (mib << 20)))
}

/// `manyfiles`: `n` small text files, `FILES_PER_DIR` per leaf directory.
fn build_manyfiles(p: &Pkg, build: &Path, n: usize) -> Result<(PathBuf, u64)> {
    let dir = fresh_tree(build, &p.name)?;
    let mut rng = Rng(SEED ^ 0x03a2_7f11);
    let mut bytes = 0;
    for k in 0..n {
        let leaf = k / FILES_PER_DIR;
        let (group, sub) = (leaf / DIRS_PER_GROUP, leaf % DIRS_PER_GROUP);
        let mut text = String::new();
        for _ in 0..2 + rng.below(20) {
            text.push_str(&words(&mut rng, 10));
            text.push('\n');
        }
        if k % 10 == 0 {
            text.push_str(&format!("installed in {}/share/manyfiles\n", p.prefix));
        }
        bytes += write(
            &dir.join(format!(
                "share/manyfiles/g{group:02}/d{sub:02}/f{:03}.txt",
                k % FILES_PER_DIR
            )),
            text,
        )?;
    }
    Ok((dir, bytes))
}

/// `depK`: `lib/libdepK.so` with `depK_value()`, padded to about `mb` MB by a non-loaded
/// section of bulk bytes.
fn build_dep(p: &Pkg, k: usize, build: &Path, mb: f64) -> Result<(PathBuf, u64)> {
    let dir = fresh_tree(build, &p.name)?;
    let src = build.join("src").join(&p.name);
    std::fs::create_dir_all(&src)?;
    std::fs::create_dir_all(dir.join("lib"))?;
    let c = format!(
        "#include <string.h>\n#define PREFIX \"{prefix}\"\nconst char *{n}_prefix(void) {{ return PREFIX; }}\nunsigned long {n}_value(void) {{\n  unsigned long v = strlen(PREFIX) + {k};\n  for (int i = 0; i < 64; i++) v = v * 6364136223846793005ul + 1442695040888963407ul;\n  return v;\n}}\n",
        prefix = p.prefix,
        n = p.name
    );
    std::fs::write(src.join("lib.c"), c)?;
    let so_name = format!("lib{}.so", p.name);
    let so = dir.join("lib").join(&so_name);
    run(Command::new("gcc")
        .current_dir(&src)
        .args(["-shared", "-fPIC", "-O1", "-g0", "lib.c", "-o"])
        .arg(&so)
        .arg(format!("-Wl,-soname,{so_name}")))?;
    let elf = std::fs::metadata(&so)?.len();
    let bulk = ((mb * 1e6) as u64).saturating_sub(elf) as usize;
    if bulk > 0 {
        let mut rng = Rng(SEED ^ (k as u64 + 1).wrapping_mul(0x1000_0000_01b3));
        let data_file = src.join("bulk.bin");
        let prefixes = std::slice::from_ref(&p.prefix);
        std::fs::write(&data_file, bulk_data(&mut rng, bulk, prefixes))?;
        add_benchdata_section(&so, &data_file)?;
    }
    write(
        &dir.join(format!("lib/pkgconfig/{}.pc", p.name)),
        format!(
            "prefix={}\nlibdir=${{prefix}}/lib\nName: {}\nVersion: 1.0\nLibs: -L${{libdir}} -l{}\n",
            p.prefix, p.name, p.name
        ),
    )?;
    let bytes = std::fs::metadata(&so)?.len();
    Ok((dir, bytes))
}

/// `app`: `bin/app`, linked against every dependency, `DT_RPATH` naming their `lib`
/// directories.
fn build_app(p: &Pkg, deps: &[Pkg], build: &Path) -> Result<(PathBuf, u64)> {
    let dir = fresh_tree(build, &p.name)?;
    let src = build.join("src").join(&p.name);
    std::fs::create_dir_all(&src)?;
    std::fs::create_dir_all(dir.join("bin"))?;
    let mut c = String::from("#include <stdio.h>\n");
    for d in deps {
        c.push_str(&format!("unsigned long {}_value(void);\n", d.name));
    }
    c.push_str(&format!(
        "#define PREFIX \"{}\"\nint main(void) {{\n  unsigned long v = 0;\n",
        p.prefix
    ));
    for d in deps {
        c.push_str(&format!("  v ^= {}_value();\n", d.name));
    }
    c.push_str(&format!(
        "  printf(\"app: {} libraries loaded, checksum %016lx\\n\", v);\n  fflush(stdout);\n  printf(\"app prefix: %s\\n\", PREFIX);\n  return 0;\n}}\n",
        deps.len()
    ));
    std::fs::write(src.join("main.c"), c)?;
    let exe = dir.join("bin/app");
    let rpath = deps
        .iter()
        .map(|d| format!("{}/lib", d.prefix))
        .collect::<Vec<_>>()
        .join(":");
    let mut cc = Command::new("gcc");
    cc.current_dir(&src)
        .args(["-O1", "-g0", "main.c", "-o"])
        .arg(&exe)
        .arg(format!("-Wl,-rpath,{rpath}"))
        .arg("-Wl,--disable-new-dtags");
    for d in deps {
        cc.arg("-L").arg(build.join(&d.name).join("lib"));
        cc.arg(format!("-l{}", d.name));
    }
    run(&mut cc)?;
    let bytes = std::fs::metadata(&exe)?.len();
    Ok((dir, bytes))
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let start = Instant::now();
    let buildpath = padded_root(STORE, args.padding);
    let mirror_dir = args.out.join("mirror");
    let build = args.out.join("build");
    for d in [&mirror_dir, &build] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| d.display().to_string())?;
        }
    }
    std::fs::create_dir_all(&build)?;
    println!(
        "==> generating bigfile ({} MiB), manyfiles ({} files), app + {} deps (~{} MB each) for build root {STORE} padded to {} characters",
        args.big_mib,
        args.small_files,
        args.deps,
        args.dep_mb,
        buildpath.len()
    );

    let deps: Vec<Pkg> = (0..args.deps)
        .map(|k| Pkg::new(NodeDef::new(&format!("dep{k}"), "1.0"), &buildpath))
        .collect();
    let app = Pkg::new(
        deps.iter().fold(NodeDef::new("app", "1.0"), |def, d| {
            def.dep(&d.name, &d.hash, &["build", "link"])
        }),
        &buildpath,
    );
    let big = Pkg::new(NodeDef::new("bigfile", "1.0"), &buildpath);
    let many = Pkg::new(NodeDef::new("manyfiles", "1.0"), &buildpath);

    let mut writer = MirrorWriter::new(&mirror_dir, None)?;
    let mut total_compressed = 0;
    let mut pack = |p: &Pkg, closure: &[&Pkg], dir: PathBuf, payload: u64| -> Result<()> {
        let t = Instant::now();
        let mut nodes = vec![p.node.clone()];
        nodes.extend(closure.iter().map(|d| d.node.clone()));
        let mut set = vec![(p.hash.clone(), p.prefix.clone())];
        set.extend(closure.iter().map(|d| (d.hash.clone(), d.prefix.clone())));
        let rec = writer
            .add_package(&nodes, &dir, &buildpath, &p.prefix, &set)
            .with_context(|| format!("packing {}", p.name))?;
        std::fs::remove_dir_all(&dir)?;
        let inflated = inflated_len(&mirror_dir.join(rec.path()))?;
        total_compressed += rec.content_length;
        println!(
            "  {:<10} {:>2} deps  {:>8.1} MB payload  {:>8.1} MB unpacked  {:>8.1} MB compressed  ({:.2}x, packed in {:.1} s)",
            p.name,
            closure.len(),
            payload as f64 / 1e6,
            inflated as f64 / 1e6,
            rec.content_length as f64 / 1e6,
            inflated as f64 / rec.content_length as f64,
            t.elapsed().as_secs_f64()
        );
        Ok(())
    };

    // The app links against the dependency trees: pack those after the app is built.
    let dep_trees = deps
        .iter()
        .enumerate()
        .map(|(k, d)| build_dep(d, k, &build, args.dep_mb))
        .collect::<Result<Vec<_>>>()?;
    let (app_dir, app_bytes) = build_app(&app, &deps, &build)?;
    for (d, (dir, bytes)) in deps.iter().zip(dep_trees) {
        pack(d, &[], dir, bytes)?;
    }
    pack(&app, &deps.iter().collect::<Vec<_>>(), app_dir, app_bytes)?;
    let (dir, bytes) = build_manyfiles(&many, &build, args.small_files)?;
    pack(&many, &[], dir, bytes)?;
    let (dir, bytes) = build_bigfile(&big, &build, args.big_mib)?;
    pack(&big, &[], dir, bytes)?;
    writer.finish()?;
    std::fs::remove_dir_all(&build)?;
    println!(
        "==> wrote {}: {} packages, {:.1} MB compressed, in {:.1} s",
        mirror_dir.display(),
        args.deps + 3,
        total_compressed as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

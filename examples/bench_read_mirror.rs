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

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use spackfs::writer::{padded_root, MirrorWriter, NodeDef};

const USAGE: &str = "usage: bench_read_mirror OUTDIR [--big-mib N] [--small-files K] [--deps D] [--dep-mb M] [--padding L]";
const STORE: &str = "/opt/bench-read-store";
const SEED: u64 = 0x5eed_0f2e_ad20_2025;
/// Small files per directory of `manyfiles`, and leaf directories per group directory.
const FILES_PER_DIR: usize = 40;
const DIRS_PER_GROUP: usize = 10;

struct Args {
    out: PathBuf,
    big_mib: u64,
    small_files: usize,
    deps: usize,
    dep_mb: f64,
    padding: usize,
}

fn parse_args() -> Result<Args> {
    let mut out = None;
    let mut args = Args {
        out: PathBuf::new(),
        big_mib: 1024,
        small_files: 10_000,
        deps: 10,
        dep_mb: 4.0,
        padding: 256,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = |name: &str| -> Result<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it.next().with_context(|| format!("{name} needs a value")),
            }
        };
        match key.as_str() {
            "--big-mib" => args.big_mib = value(&key)?.parse().context("--big-mib")?,
            "--small-files" => args.small_files = value(&key)?.parse().context("--small-files")?,
            "--deps" => args.deps = value(&key)?.parse().context("--deps")?,
            "--dep-mb" => args.dep_mb = value(&key)?.parse().context("--dep-mb")?,
            "--padding" => args.padding = value(&key)?.parse().context("--padding")?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            s if s.starts_with('-') => bail!("unknown option {s}\n{USAGE}"),
            _ if out.is_none() => out = Some(PathBuf::from(&a)),
            _ => bail!("unexpected argument {a}\n{USAGE}"),
        }
    }
    args.out = out.context(USAGE)?;
    if args.big_mib == 0 || args.small_files == 0 || args.deps == 0 || args.dep_mb < 0.0 {
        bail!("--big-mib, --small-files and --deps must be positive, --dep-mb not negative");
    }
    Ok(args)
}

/// splitmix64: small, fast and deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
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

const WORDS: &[&str] = &[
    "buffer", "config", "stream", "vector", "matrix", "handle", "status", "option", "result",
    "thread", "kernel", "solver", "domain", "engine", "cache", "parse", "layout", "region",
    "record", "policy", "device", "signal", "factor", "sparse", "dense", "index", "block",
];

fn words(rng: &mut Rng, n: usize) -> String {
    (0..n)
        .map(|_| WORDS[rng.below(WORDS.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

/// Semi-compressible bytes (gzip -6 ratio about 3.5×): back-references into the last 32 KB
/// mixed with short literal runs, with an old-prefix C string about every 256 KiB.
fn bulk_data(rng: &mut Rng, n: usize, prefix: &str) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(n + 64);
    let vocab: Vec<u8> = (0..24).map(|_| rng.next() as u8).collect();
    while out.len() < n {
        let r = rng.next();
        let pos = out.len();
        if pos > 4096 && r % 100 < 30 {
            let len = 8 + ((r >> 8) % 56) as usize;
            let dist = 1 + ((r >> 16) % pos.min(32_000) as u64) as usize;
            for k in 0..len {
                let b = out[pos - dist + k];
                out.push(b);
            }
        } else {
            for _ in 0..1 + (r >> 8) % 8 {
                let x = rng.next();
                out.push(if x & 1 != 0 {
                    vocab[((x >> 8) % 24) as usize]
                } else {
                    (x >> 16) as u8
                });
            }
        }
    }
    out.truncate(n);
    let mut off = 4096;
    let mut k = 0;
    while off + 1024 < n {
        let cstr = format!("\0{prefix}/share/blob-{k:05}.dat\0");
        out[off..off + cstr.len()].copy_from_slice(cstr.as_bytes());
        off += 192 * 1024 + rng.below(128 * 1024) as usize;
        k += 1;
    }
    out
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}):\n{}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn write(path: &Path, data: impl AsRef<[u8]>) -> Result<u64> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| parent.display().to_string())?;
    }
    std::fs::write(path, data.as_ref()).with_context(|| path.display().to_string())?;
    Ok(data.as_ref().len() as u64)
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
        std::fs::write(&data_file, bulk_data(&mut rng, bulk, &p.prefix))?;
        run(Command::new("objcopy")
            .arg("--add-section")
            .arg(format!(".benchdata={}", data_file.display()))
            .args(["--set-section-flags", ".benchdata=noload,readonly"])
            .arg(&so))?;
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

fn inflated_len(blob: &Path) -> Result<u64> {
    let f = std::fs::File::open(blob)?;
    let mut d = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(f));
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0;
    loop {
        match d.read(&mut buf)? {
            0 => return Ok(n),
            k => n += k as u64,
        }
    }
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

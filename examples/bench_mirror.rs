//! Generates the benchmark mirror for `bench/install`: an unsigned v3 mirror of compiled
//! packages built for a padded build root, large enough (500+ MB unpacked by default) to
//! measure install throughput.
//!
//! ```text
//! cargo run --release --example bench_mirror -- OUTDIR [--packages N] [--mb-per-package M]
//!     [--small-files K] [--padding L]
//! ```
//!
//! Each package `bench-pkgNN` has a shared library and an executable compiled with gcc for
//! its padded prefix (the prefix in C strings, the own and dependency `lib` directories in
//! `DT_RPATH`), made large by a non-loaded `.benchdata` section of semi-compressible
//! pseudo-random bytes (gzip ratio about 3.5×) with old-prefix C strings embedded; text files
//! and scripts naming the prefixes; a relative, an absolute and a hard link; and hundreds of
//! small headers and documents. Packages link to earlier ones (chains of up to six, all on
//! `bench-pkg00`), so the relocation maps hold several prefixes. The output is deterministic
//! (fixed seed). The mirror is written to `OUTDIR/mirror`; `OUTDIR/build` is scratch space,
//! removed at the end.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::Value;

use common::{
    add_benchdata_section, bulk_data, inflated_len, run, set_mode, words, write, Rng, WORDS,
};
use spackfs::writer::{padded_root, MirrorWriter, NodeDef};

const STORE: &str = "/opt/bench-store";
const SEED: u64 = 0x5eed_5bac_cf50_2024;
/// Packages in one dependency chain; each chain also depends on package 0.
const CHAIN: usize = 6;

/// Generates the benchmark mirror for `bench/install`: compiled packages for a padded build
/// root, written to OUTDIR/mirror (OUTDIR/build is scratch space, removed at the end).
#[derive(Parser)]
#[command(name = "bench_mirror")]
struct Args {
    /// Output directory
    #[arg(value_name = "OUTDIR", value_parser = common::absolute_dir)]
    out: PathBuf,
    /// Number of packages
    #[arg(long, value_name = "N", default_value_t = 24)]
    packages: usize,
    /// Approximate payload of each package, in MB (10^6 bytes)
    #[arg(long, value_name = "M", default_value_t = 22.0)]
    mb_per_package: f64,
    /// Small files (headers and documents) per package
    #[arg(long, value_name = "K", default_value_t = 400)]
    small_files: usize,
    /// Length, in characters, the build root is padded to
    #[arg(long, value_name = "L", default_value_t = 256)]
    padding: usize,
}

fn parse_args() -> Result<Args> {
    let args = Args::parse();
    if args.packages == 0 || args.mb_per_package <= 0.0 {
        bail!("--packages and --mb-per-package must be positive");
    }
    Ok(args)
}

/// One package of the benchmark.
struct Pkg {
    name: String,
    ident: String,
    version: String,
    hash: String,
    node: Value,
    prefix: String,
    /// Direct link dependencies (indices of earlier packages).
    deps: Vec<usize>,
    /// Link closure without the package itself, breadth first.
    closure: Vec<usize>,
}

fn direct_deps(i: usize) -> Vec<usize> {
    let mut d = Vec::new();
    if i > 0 && !i.is_multiple_of(CHAIN) {
        d.push(i - 1);
    }
    if i > 1 && !(i - 1).is_multiple_of(CHAIN) {
        d.push(0);
    }
    if i == CHAIN {
        // one more diamond for variety
        d.push(2);
    }
    d.sort_unstable();
    d.dedup();
    d
}

fn plan(n: usize, buildpath: &str) -> Vec<Pkg> {
    let mut pkgs: Vec<Pkg> = Vec::with_capacity(n);
    for i in 0..n {
        let deps = direct_deps(i);
        let mut closure = Vec::new();
        let mut seen = BTreeSet::new();
        let mut queue: std::collections::VecDeque<usize> = deps.iter().copied().collect();
        while let Some(d) = queue.pop_front() {
            if seen.insert(d) {
                closure.push(d);
                queue.extend(pkgs[d].deps.iter().copied());
            }
        }
        let name = format!("bench-pkg{i:02}");
        let version = format!("1.{}.{}", i % 4, i % 3);
        let mut def = NodeDef::new(&name, &version);
        for &d in &deps {
            def = def.dep(&pkgs[d].name, &pkgs[d].hash, &["build", "link"]);
        }
        let node = def.to_json();
        let hash = node["hash"].as_str().unwrap_or_default().to_string();
        let prefix = format!("{buildpath}/linux-x86_64/{name}-{version}-{hash}");
        pkgs.push(Pkg {
            ident: name.replace('-', "_"),
            name,
            version,
            hash,
            node,
            prefix,
            deps,
            closure,
        });
    }
    pkgs
}

fn header_text(rng: &mut Rng, p: &Pkg, k: usize, deps: &[&Pkg]) -> String {
    let guard = format!("{}_H_{k:04}", p.ident.to_uppercase());
    let mut s = format!(
        "/* {} -- {} */\n#ifndef {guard}\n#define {guard}\n",
        p.name,
        words(rng, 6)
    );
    if k.is_multiple_of(8) {
        s.push_str(&format!(
            "#define {}_INSTALL_PREFIX \"{}\"\n",
            p.ident.to_uppercase(),
            p.prefix
        ));
        for d in deps {
            s.push_str(&format!(
                "#define {}_INCLUDE_DIR \"{}/include\"\n",
                d.ident.to_uppercase(),
                d.prefix
            ));
        }
    }
    for j in 0..4 + rng.below(40) {
        match rng.below(3) {
            0 => s.push_str(&format!(
                "#define {}_{}_{k}_{j} 0x{:08x}\n",
                p.ident.to_uppercase(),
                rng.pick(WORDS).to_uppercase(),
                rng.next() as u32
            )),
            1 => s.push_str(&format!(
                "extern int {}_{}_{k}_{j}(const struct {}_{} *in, double scale, int flags);\n",
                p.ident,
                rng.pick(WORDS),
                p.ident,
                rng.pick(WORDS)
            )),
            _ => s.push_str(&format!("/* {} */\n", words(rng, 8))),
        }
    }
    s.push_str(&format!("#endif /* {guard} */\n"));
    s
}

fn lib_source(p: &Pkg, deps: &[&Pkg], rng: &mut Rng) -> String {
    let id = &p.ident;
    let mut s = String::from("#include <stdio.h>\n#include <string.h>\n");
    for d in deps {
        s.push_str(&format!("unsigned long {}_value(void);\n", d.ident));
    }
    s.push_str(&format!(
        "#define PREFIX \"{}\"\nconst char *{id}_prefix(void) {{ return PREFIX; }}\nconst char *{id}_datadir(void) {{ return PREFIX \"/share/{}\"; }}\n",
        p.prefix, p.name
    ));
    s.push_str(&format!(
        "const char *{id}_dep_libdirs[] = {{ PREFIX \"/lib\", {} 0 }};\n",
        deps.iter()
            .map(|d| format!("\"{}/lib\",", d.prefix))
            .collect::<String>()
    ));
    let nfun = 120;
    for f in 0..nfun {
        let (a, b, c) = (rng.next() as u32 | 1, rng.next() as u32, rng.below(13) + 1);
        s.push_str(&format!(
            "unsigned long {id}_f{f}(unsigned long x) {{ unsigned long y = x * {a}u + {b}u; for (int i = 0; i < (int)(x % 7); i++) y = (y << {c}) ^ (y >> 3) ^ {f}u; return y; }}\n"
        ));
    }
    s.push_str(&format!(
        "unsigned long {id}_value(void) {{\n  unsigned long v = strlen(PREFIX);\n"
    ));
    for f in 0..nfun {
        s.push_str(&format!("  v = {id}_f{f}(v);\n"));
    }
    for d in deps {
        s.push_str(&format!("  v ^= {}_value();\n", d.ident));
    }
    s.push_str("  return v;\n}\n");
    s
}

fn main_source(p: &Pkg) -> String {
    let id = &p.ident;
    format!(
        r#"#include <stdio.h>
const char *{id}_prefix(void);
const char *{id}_datadir(void);
unsigned long {id}_value(void);
int main(void) {{
    printf("{name} prefix: %s\n", {id}_prefix());
    printf("{name} datadir: %s\n", {id}_datadir());
    printf("{name} value: %lu\n", {id}_value());
    return 0;
}}
"#,
        name = p.name
    )
}

/// Add a non-loaded section of `size` bulk bytes to the ELF file at `path`.
fn add_bulk_section(path: &Path, size: usize, rng: &mut Rng, strings: &[String]) -> Result<()> {
    if size == 0 {
        return Ok(());
    }
    let data_file = path.with_extension("benchdata");
    std::fs::write(&data_file, bulk_data(rng, size, strings))?;
    add_benchdata_section(path, &data_file)?;
    std::fs::remove_file(&data_file)?;
    Ok(())
}

/// Build the installed tree of package `i` in `build/<name>`; returns its payload bytes.
fn build_package(
    pkgs: &[Pkg],
    i: usize,
    build: &Path,
    args: &Args,
    buildpath: &str,
) -> Result<u64> {
    let p = &pkgs[i];
    let mut rng = Rng(SEED ^ (i as u64).wrapping_mul(0x1000_0000_01b3));
    let dir = build.join(&p.name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let deps: Vec<&Pkg> = p.deps.iter().map(|&d| &pkgs[d]).collect();
    let closure: Vec<&Pkg> = p.closure.iter().map(|&d| &pkgs[d]).collect();
    let mut bytes = 0;

    // Sources and compilation.
    let src = build.join("src").join(&p.name);
    std::fs::create_dir_all(&src)?;
    std::fs::create_dir_all(dir.join("lib"))?;
    std::fs::create_dir_all(dir.join("bin"))?;
    std::fs::write(src.join("lib.c"), lib_source(p, &deps, &mut rng))?;
    std::fs::write(src.join("main.c"), main_source(p))?;
    let rpath = std::iter::once(p)
        .chain(closure.iter().copied())
        .map(|q| format!("{}/lib", q.prefix))
        .collect::<Vec<_>>()
        .join(":");
    let rpath_link = closure
        .iter()
        .map(|q| build.join(&q.name).join("lib").display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let so_name = format!("lib{}.so", p.name);
    let so = dir.join("lib").join(&so_name);
    let mut cc = Command::new("gcc");
    cc.current_dir(&src)
        .args(["-shared", "-fPIC", "-O1", "-g0", "lib.c", "-o"])
        .arg(&so)
        .arg(format!("-Wl,-soname,{so_name}"))
        .arg(format!("-Wl,-rpath,{rpath}"))
        .arg("-Wl,--disable-new-dtags");
    for d in &deps {
        cc.arg("-L").arg(build.join(&d.name).join("lib"));
        cc.arg(format!("-l{}", d.name));
    }
    if !rpath_link.is_empty() {
        cc.arg(format!("-Wl,-rpath-link,{rpath_link}"));
    }
    run(&mut cc)?;
    let exe = dir.join("bin").join(&p.name);
    let mut cc = Command::new("gcc");
    cc.current_dir(&src)
        .args(["-O1", "-g0", "main.c", "-o"])
        .arg(&exe)
        .arg("-L")
        .arg(dir.join("lib"))
        .arg(format!("-l{}", p.name))
        .arg(format!("-Wl,-rpath,{rpath}"))
        .arg("-Wl,--disable-new-dtags");
    if !rpath_link.is_empty() {
        cc.arg(format!("-Wl,-rpath-link,{rpath_link}"));
    }
    run(&mut cc)?;

    // Text files, scripts and links naming the prefixes.
    let pc = format!(
        "prefix={}\nexec_prefix=${{prefix}}\nlibdir=${{prefix}}/lib\nincludedir=${{prefix}}/include\n\nName: {}\nDescription: {}\nVersion: {}\nRequires: {}\nLibs: -L${{libdir}} -Wl,-rpath,${{libdir}} -l{}\nCflags: -I${{includedir}}/{}\n",
        p.prefix,
        p.name,
        words(&mut rng, 5),
        p.version,
        deps.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", "),
        p.name,
        p.name
    );
    bytes += write(&dir.join(format!("lib/pkgconfig/{}.pc", p.name)), pc)?;
    let mut cmake = format!(
        "set({}_PREFIX \"{}\")\nset({}_LIBRARY \"{}/lib/{so_name}\")\n",
        p.ident.to_uppercase(),
        p.prefix,
        p.ident.to_uppercase(),
        p.prefix
    );
    for d in &closure {
        cmake.push_str(&format!(
            "find_dependency({} PATHS \"{}/lib/cmake/{}\")\n",
            d.name, d.prefix, d.name
        ));
    }
    bytes += write(
        &dir.join(format!("lib/cmake/{0}/{0}Config.cmake", p.name)),
        cmake,
    )?;
    let la = format!(
        "# {so_name}.la - a libtool library file\ndlname='{so_name}'\nlibrary_names='{so_name}'\ndependency_libs='{}'\nlibdir='{}/lib'\n",
        deps.iter()
            .map(|d| format!("{}/lib/lib{}.la", d.prefix, d.name))
            .collect::<Vec<_>>()
            .join(" "),
        p.prefix
    );
    bytes += write(&dir.join(format!("lib/lib{}.la", p.name)), la)?;
    let script = dir.join(format!("bin/{}-config", p.name));
    bytes += write(
        &script,
        format!(
            "#!/bin/sh\n# {}\nprefix={}\ncase \"$1\" in\n  --prefix) echo \"$prefix\" ;;\n  --libs) echo \"-L$prefix/lib -l{}\" ;;\n  --deps) echo \"{}\" ;;\n  *) exec {}/bin/{} \"$@\" ;;\nesac\n",
            words(&mut rng, 6),
            p.prefix,
            p.name,
            closure.iter().map(|d| d.prefix.as_str()).collect::<Vec<_>>().join(" "),
            p.prefix,
            p.name
        ),
    )?;
    set_mode(&script, 0o755)?;
    let sbang_script = dir.join(format!("bin/{}-report", p.name));
    let sbang = spackfs::writer::sbang_install_path(buildpath);
    bytes += write(
        &sbang_script,
        format!(
            "#!/bin/sh {sbang}\n#!{}/bin/{}-config --prefix\n# {}\n",
            p.prefix,
            p.name,
            words(&mut rng, 8)
        ),
    )?;
    set_mode(&sbang_script, 0o755)?;
    std::os::unix::fs::symlink(&so_name, dir.join(format!("lib/{so_name}.1")))?;
    std::os::unix::fs::symlink(
        format!("{}/bin/{}", p.prefix, p.name),
        dir.join(format!("bin/{}-abs", p.name)),
    )?;
    std::fs::hard_link(&script, dir.join(format!("bin/{}-config-hl", p.name)))?;

    // Many small files: headers (one in eight names prefixes) and documents.
    let n_docs = args.small_files / 10;
    let n_headers = args.small_files - n_docs;
    for k in 0..n_headers {
        let sub = if k % 50 == 0 { "" } else { "detail/" };
        let text = header_text(&mut rng, p, k, &deps);
        bytes += write(
            &dir.join(format!("include/{}/{sub}h{k:04}.h", p.name)),
            text,
        )?;
    }
    for k in 0..n_docs {
        let mut text = String::new();
        for _ in 0..5 + rng.below(40) {
            text.push_str(&words(&mut rng, 12));
            text.push('\n');
        }
        if k % 5 == 0 {
            text.push_str(&format!("Installed in {}/share/doc\n", p.prefix));
        }
        bytes += write(
            &dir.join(format!("share/doc/{}/page{k:03}.txt", p.name)),
            text,
        )?;
    }
    write(&dir.join(".spack/spec.json"), "{}")?;

    // Bulk: 80% in the library, 20% in the executable.
    let target = (args.mb_per_package * 1e6) as u64;
    let elf = std::fs::metadata(&so)?.len() + std::fs::metadata(&exe)?.len();
    let bulk = target.saturating_sub(bytes + elf) as usize;
    let strings: Vec<String> = std::iter::once(p)
        .chain(closure.iter().copied())
        .map(|q| q.prefix.clone())
        .collect();
    add_bulk_section(&so, bulk * 4 / 5, &mut rng, &strings)?;
    add_bulk_section(&exe, bulk - bulk * 4 / 5, &mut rng, &strings)?;
    bytes += std::fs::metadata(&so)?.len() + std::fs::metadata(&exe)?.len();
    Ok(bytes)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let start = Instant::now();
    let buildpath = padded_root(STORE, args.padding);
    let pkgs = plan(args.packages, &buildpath);
    let mirror_dir = args.out.join("mirror");
    let build = args.out.join("build");
    for d in [&mirror_dir, &build] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| d.display().to_string())?;
        }
    }
    std::fs::create_dir_all(&build)?;
    println!(
        "==> generating {} packages of ~{} MB for build root {STORE} padded to {} characters",
        args.packages,
        args.mb_per_package,
        buildpath.len()
    );
    let mut writer = MirrorWriter::new(&mirror_dir, None)?;
    let (mut payload, mut compressed, mut tar_bytes, mut files) = (0u64, 0u64, 0u64, 0usize);
    // Two stages: one thread compiles and writes package trees, this one packs them.
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = mpsc::sync_channel::<Result<(usize, u64)>>(1);
        let (pkgs_ref, build_ref, args_ref, bp) = (&pkgs, &build, &args, buildpath.as_str());
        scope.spawn(move || {
            for i in 0..pkgs_ref.len() {
                let r = build_package(pkgs_ref, i, build_ref, args_ref, bp)
                    .with_context(|| format!("building {}", pkgs_ref[i].name))
                    .map(|b| (i, b));
                let failed = r.is_err();
                if tx.send(r).is_err() || failed {
                    return;
                }
            }
        });
        for msg in rx {
            let (i, bytes) = msg?;
            let p = &pkgs[i];
            let mut nodes = vec![p.node.clone()];
            nodes.extend(p.closure.iter().map(|&d| pkgs[d].node.clone()));
            let mut set = vec![(p.hash.clone(), p.prefix.clone())];
            set.extend(
                p.closure
                    .iter()
                    .map(|&d| (pkgs[d].hash.clone(), pkgs[d].prefix.clone())),
            );
            let dir = build.join(&p.name);
            files += count_files(&dir)?;
            let rec = writer.add_package(&nodes, &dir, &buildpath, &p.prefix, &set)?;
            let inflated = inflated_len(&mirror_dir.join(rec.path()))?;
            println!(
                "  {:<12} {:>4} deps  {:>7.1} MB unpacked  {:>6.1} MB compressed  ({:.1}x)",
                p.name,
                p.closure.len(),
                inflated as f64 / 1e6,
                rec.content_length as f64 / 1e6,
                inflated as f64 / rec.content_length as f64
            );
            payload += bytes;
            compressed += rec.content_length;
            tar_bytes += inflated;
        }
        Ok(())
    })?;
    writer.finish()?;
    std::fs::remove_dir_all(&build)?;
    println!(
        "==> wrote {}: {} packages, {} files, {:.1} MB unpacked (tar; {:.1} MB of file payload), {:.1} MB compressed, in {:.1} s",
        mirror_dir.display(),
        args.packages,
        files,
        tar_bytes as f64 / 1e6,
        payload as f64 / 1e6,
        compressed as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn count_files(dir: &Path) -> Result<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            n += count_files(&e.path())?;
        } else {
            n += 1;
        }
    }
    Ok(n)
}

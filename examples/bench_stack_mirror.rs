//! Generates the "stack" mirror of `bench/first-touch` and `bench/install`: an unsigned v3
//! mirror shaped like a real Spack-built Python 3.11 stack, built for a padded build root —
//! one big package of thousands of small files and four small ones it links against:
//!
//! * `gcc-runtime`: `lib/libstdc++.so.6.0.32`, `libgfortran.so.5.0.0`, `libgomp.so.1.0.0`,
//!   `libquadmath.so.0.0.0`, `libatomic.so.1.2.0` (gcc-compiled stand-ins, with their soname
//!   links) and two documents;
//! * `zlib`, `bzip2`, `xz` (each depends on `gcc-runtime`): a shared library (`libz.so.1`,
//!   `libbz2.so.1.0`, `liblzma.so.5`) with its soname and development links, headers, a
//!   pkg-config file naming the prefix, manual pages; `bzip2` and `xz` also compiled tools
//!   linked against their library, shell scripts and tool links; `xz` documents and message
//!   catalogues;
//! * `python` 3.11 (depends on all four): `lib/python3.11/` of thousands of small `.py` files
//!   (`--py-files`) in nested package directories (stdlib-like: `asyncio`, `email`,
//!   `encodings`, `test/...`, ...) plus test data files; a few dozen compiled extension
//!   modules in `lib-dynload` (`_bz2`, `_lzma` and `zlib` linked against the dependencies);
//!   one big `lib/libpython3.11.so.1.0` made large by a non-loaded `.benchdata` section of
//!   semi-compressible bytes with old-prefix C strings in it (it takes whatever the other
//!   files leave of `--python-mb`); headers; the two bundled `ensurepip` wheels
//!   (incompressible); text files naming the prefix, which land in the text relocation list
//!   (`_sysconfigdata_*.py`, `config-3.11-*/Makefile`, pkg-config files, `python3.11-config`,
//!   sbang'd `pip3`/`pydoc3`/`idle3`/`2to3` scripts and a handful of modules in the tree);
//!   and `bin/python3.11` (with `bin/python3` linking to it), compiled with gcc, linked
//!   against libpython and the four dependencies' libraries with `DT_RPATH` naming their
//!   `lib` directories. Run, it prints `python3: 5 libraries loaded, checksum ...` and then
//!   `python3 prefix: PREFIX` from a compiled-in C string that relocation rewrites.
//!
//! With the defaults the five tarballs inflate to about 127 MB with about 3,700 entries,
//! `python` holding about 80 % of the bytes (`--small-mb` is shared by the four small
//! packages: 45 % `gcc-runtime`, 25 % `xz`, 15 % each `bzip2` and `zlib`).
//!
//! ```text
//! cargo run --release --example bench_stack_mirror -- OUTDIR [--python-mb 100] [--py-files 3020]
//!     [--extensions 40] [--small-mb 27] [--padding 256]
//! ```
//!
//! The output is deterministic (fixed seed). The mirror is written to `OUTDIR/mirror`;
//! `OUTDIR/build` is scratch space, removed at the end.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::Value;

use common::{
    add_benchdata_section, bulk_data, inflated_len, run, set_mode, words, write, Rng, WORDS,
};
use spackfs::writer::{padded_root, sbang_install_path, MirrorWriter, NodeDef};

const STORE: &str = "/opt/bench-stack-store";
const SEED: u64 = 0x5eed_57ac_c0de_2025;
/// Python's library directory name and the suffix of its extension modules.
const PYLIB: &str = "lib/python3.11";
const EXT_SUFFIX: &str = ".cpython-311-x86_64-linux-gnu.so";
const PLATLIB: &str = "config-3.11-x86_64-linux-gnu";

/// Package directories of `lib/python3.11` (`""`: the top level) and their relative share of
/// the `.py` files, roughly as in CPython 3.11's installed `Lib/`.
const PY_DIRS: &[(&str, u32)] = &[
    ("", 190),
    ("asyncio", 33),
    ("collections", 2),
    ("concurrent", 1),
    ("concurrent/futures", 4),
    ("ctypes", 6),
    ("ctypes/macholib", 4),
    ("ctypes/test", 52),
    ("curses", 5),
    ("dbm", 4),
    ("distutils", 30),
    ("distutils/command", 22),
    ("distutils/tests", 38),
    ("email", 22),
    ("email/mime", 8),
    ("encodings", 123),
    ("ensurepip", 3),
    ("html", 3),
    ("http", 6),
    ("idlelib", 66),
    ("idlelib/idle_test", 62),
    ("importlib", 8),
    ("importlib/metadata", 7),
    ("importlib/resources", 9),
    ("json", 5),
    ("lib2to3", 10),
    ("lib2to3/fixes", 52),
    ("lib2to3/pgen2", 8),
    ("lib2to3/tests", 22),
    ("lib2to3/tests/data", 12),
    ("logging", 3),
    ("multiprocessing", 22),
    ("multiprocessing/dummy", 2),
    ("pydoc_data", 2),
    ("re", 5),
    ("sqlite3", 3),
    ("sqlite3/test", 10),
    ("test", 460),
    ("test/libregrtest", 15),
    ("test/support", 20),
    ("test/test_asyncio", 52),
    ("test/test_email", 20),
    ("test/test_import", 5),
    ("test/test_import/data", 12),
    ("test/test_importlib", 40),
    ("test/test_importlib/builtin", 4),
    ("test/test_importlib/extension", 6),
    ("test/test_importlib/frozen", 4),
    ("test/test_importlib/import_", 10),
    ("test/test_importlib/resources", 12),
    ("test/test_importlib/source", 6),
    ("test/test_json", 16),
    ("test/test_tomllib", 6),
    ("test/test_tools", 12),
    ("test/test_warnings", 4),
    ("test/test_zoneinfo", 4),
    ("test/tracedmodules", 2),
    ("test/typinganndata", 4),
    ("tkinter", 14),
    ("tkinter/test", 8),
    ("tkinter/test/test_tkinter", 18),
    ("tkinter/test/test_ttk", 8),
    ("tomllib", 4),
    ("turtledemo", 20),
    ("unittest", 14),
    ("unittest/test", 24),
    ("unittest/test/testmock", 12),
    ("urllib", 6),
    ("venv", 2),
    ("wsgiref", 7),
    ("xml", 1),
    ("xml/dom", 8),
    ("xml/etree", 5),
    ("xml/parsers", 2),
    ("xml/sax", 6),
    ("xmlrpc", 3),
    ("zoneinfo", 4),
];

/// Test data directories of `lib/python3.11`: (directory, file extension, files, largest
/// size in bytes, text?). Binary files are incompressible bytes.
const DATA_DIRS: &[(&str, &str, usize, usize, bool)] = &[
    ("test/decimaltestdata", "decTest", 40, 90_000, true),
    ("test/cjkencodings", "txt", 30, 12_000, false),
    ("test/xmltestdata", "xml", 20, 8_000, true),
    ("test/audiodata", "wav", 10, 60_000, false),
    ("idlelib/Icons", "gif", 20, 4_000, false),
    ("lib2to3", "txt", 2, 9_000, true),
];

/// Extension modules of `lib-dynload`, in the order `--extensions` takes them.
#[rustfmt::skip]
const EXTENSIONS: &[&str] = &[
    "zlib", "_bz2", "_lzma", "_asyncio", "_bisect", "_blake2", "_codecs_cn", "_codecs_hk",
    "_codecs_iso2022", "_codecs_jp", "_codecs_kr", "_codecs_tw", "_contextvars", "_crypt",
    "_csv", "_ctypes", "_datetime", "_decimal", "_elementtree", "_hashlib", "_heapq", "_json",
    "_lsprof", "_md5", "_multibytecodec", "_multiprocessing", "_opcode", "_pickle",
    "_posixshmem", "_posixsubprocess", "_queue", "_random", "_sha1", "_sha256", "_sha3",
    "_sha512", "_socket", "_statistics", "_struct", "_uuid", "array", "audioop", "binascii",
    "cmath", "fcntl", "grp", "math", "mmap", "pyexpat", "resource", "select", "syslog",
    "termios", "unicodedata", "_testcapi", "_testbuffer", "_testinternalcapi", "_xxtestfuzz",
];

/// Generates the "stack" mirror of `bench/first-touch` and `bench/install` (gcc-runtime,
/// zlib, bzip2, xz and a Python 3.11 of thousands of small files) for a padded build root,
/// written to OUTDIR/mirror (OUTDIR/build is scratch space, removed at the end).
#[derive(Parser)]
#[command(name = "bench_stack_mirror")]
struct Args {
    /// Output directory
    #[arg(value_name = "OUTDIR", value_parser = common::absolute_dir)]
    out: PathBuf,
    /// Unpacked size of python (its inflated tarball), in MB (10^6 bytes)
    #[arg(long, value_name = "MB", default_value_t = 100.0)]
    python_mb: f64,
    /// Number of .py files in python's lib/python3.11 tree
    #[arg(long, value_name = "N", default_value_t = 3020)]
    py_files: usize,
    /// Number of compiled extension modules in lib/python3.11/lib-dynload
    #[arg(long, value_name = "N", default_value_t = 40)]
    extensions: usize,
    /// Unpacked size of gcc-runtime, zlib, bzip2 and xz together, in MB
    #[arg(long, value_name = "MB", default_value_t = 27.0)]
    small_mb: f64,
    /// Length, in characters, the build root is padded to
    #[arg(long, value_name = "L", default_value_t = 256)]
    padding: usize,
}

fn parse_args() -> Result<Args> {
    let args = Args::parse();
    if args.python_mb <= 0.0 || args.small_mb <= 0.0 || args.py_files < PY_DIRS.len() {
        bail!(
            "--python-mb and --small-mb must be positive, --py-files at least {}",
            PY_DIRS.len()
        );
    }
    if args.extensions < 3 || args.extensions > EXTENSIONS.len() {
        bail!("--extensions must be between 3 and {}", EXTENSIONS.len());
    }
    Ok(args)
}

/// One package: its spec node, its build-time prefix and its link dependencies.
struct Pkg {
    name: String,
    hash: String,
    node: Value,
    prefix: String,
    /// Indices of the link dependencies (the whole closure: the stack is two levels deep).
    deps: Vec<usize>,
}

/// The five packages, dependencies first: gcc-runtime, zlib, bzip2, xz, python.
fn plan(buildpath: &str) -> Vec<Pkg> {
    let mut pkgs: Vec<Pkg> = Vec::new();
    for (name, version, deps) in [
        ("gcc-runtime", "13.2.0", vec![]),
        ("zlib", "1.3.1", vec![0]),
        ("bzip2", "1.0.8", vec![0]),
        ("xz", "5.4.6", vec![0]),
        ("python", "3.11.9", vec![3, 2, 1, 0]),
    ] {
        let def = deps.iter().fold(NodeDef::new(name, version), |def, &d| {
            def.dep(&pkgs[d].name, &pkgs[d].hash, &["build", "link"])
        });
        let node = def.to_json();
        let hash = node["hash"].as_str().unwrap_or_default().to_string();
        let prefix = format!("{buildpath}/linux-x86_64/{name}-{version}-{hash}");
        pkgs.push(Pkg {
            name: name.to_string(),
            hash,
            node,
            prefix,
            deps,
        });
    }
    pkgs
}

/// A package tree being written at `build/<name>`.
struct Tree {
    dir: PathBuf,
    /// Where its C sources are compiled (`build/src/<name>`).
    src: PathBuf,
}

impl Tree {
    /// A fresh tree with its `.spack/spec.json`.
    fn new(build: &Path, name: &str) -> Result<Tree> {
        let dir = build.join(name);
        let src = build.join("src").join(name);
        for d in [&dir, &src] {
            if d.exists() {
                std::fs::remove_dir_all(d)?;
            }
            std::fs::create_dir_all(d)?;
        }
        write(&dir.join(".spack/spec.json"), "{}")?;
        Ok(Tree { dir, src })
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn file(&self, rel: &str, data: impl AsRef<[u8]>) -> Result<()> {
        write(&self.path(rel), data).map(drop)
    }

    /// An executable file.
    fn script(&self, rel: &str, text: &str) -> Result<()> {
        self.file(rel, text)?;
        set_mode(&self.path(rel), 0o755)
    }

    /// A symbolic link at `rel` to `target`.
    fn link(&self, rel: &str, target: &str) -> Result<()> {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().expect("a parent"))?;
        std::os::unix::fs::symlink(target, &p).with_context(|| p.display().to_string())
    }

    /// Compile the C `source` into `rel`: a shared library when `soname` is given, else an
    /// executable; linked against the shared libraries `libs` (paths: each becomes a
    /// `DT_NEEDED` of its soname), with `DT_RPATH` naming `rpath`.
    fn cc(
        &self,
        rel: &str,
        source: &str,
        soname: Option<&str>,
        libs: &[PathBuf],
        rpath: &[String],
    ) -> Result<PathBuf> {
        let out = self.path(rel);
        std::fs::create_dir_all(out.parent().expect("a parent"))?;
        let stem = rel.replace('/', "_");
        let c = format!("{stem}.c");
        std::fs::write(self.src.join(&c), source)?;
        let mut cmd = Command::new("gcc");
        cmd.current_dir(&self.src).args(["-O1", "-g0"]);
        if let Some(soname) = soname {
            cmd.args(["-shared", "-fPIC"])
                .arg(format!("-Wl,-soname,{soname}"));
        }
        cmd.arg(&c).arg("-o").arg(&out).args(libs);
        if !rpath.is_empty() {
            cmd.arg(format!("-Wl,-rpath,{}", rpath.join(":")))
                .arg("-Wl,--disable-new-dtags");
        }
        run(&mut cmd)?;
        Ok(out)
    }

    /// Make the ELF file `rel` about `bytes` larger: a non-loaded `.benchdata` section of
    /// bulk bytes with old-prefix C strings (`prefixes`) in it.
    fn pad(&self, rel: &str, bytes: u64, rng: &mut Rng, prefixes: &[String]) -> Result<()> {
        if bytes < 64 {
            return Ok(());
        }
        let data_file = self
            .src
            .join(format!("{}.benchdata", rel.replace('/', "_")));
        std::fs::write(&data_file, bulk_data(rng, bytes as usize, prefixes))?;
        add_benchdata_section(&self.path(rel), &data_file)?;
        std::fs::remove_file(&data_file)?;
        Ok(())
    }
}

/// Entries (files, links, directories) of a tree, its file bytes, and the length of the
/// tar stream `MirrorWriter::add_package` writes for it at `prefix`: GNU headers of 512
/// bytes, a long-name record before every member whose name or link target is 100 bytes
/// or more, data padded to 512 bytes, the prefix's parent directories, the buildinfo file
/// (estimated) and the two closing blocks.
struct Stats {
    entries: usize,
    file_bytes: u64,
    tar_len: u64,
}

fn stats(dir: &Path, prefix: &str) -> Result<Stats> {
    fn blocks(n: u64) -> u64 {
        n.div_ceil(512) * 512
    }
    fn member(name_len: usize, link_len: usize, data: u64) -> u64 {
        let long = |n: usize| {
            if n >= 100 {
                512 + blocks(n as u64 + 1)
            } else {
                0
            }
        };
        512 + long(name_len) + long(link_len) + blocks(data)
    }
    fn rec(dir: &Path, name: &str, inodes: &mut BTreeSet<u64>, s: &mut Stats) -> Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let m = std::fs::symlink_metadata(e.path())?;
            let child = format!("{name}/{}", e.file_name().to_string_lossy());
            s.entries += 1;
            if m.is_dir() {
                s.tar_len += member(child.len() + 1, 0, 0);
                rec(&e.path(), &child, inodes, s)?;
            } else if m.file_type().is_symlink() {
                let target = std::fs::read_link(e.path())?;
                s.tar_len += member(child.len(), target.as_os_str().len(), 0);
            } else if m.nlink() > 1 && !inodes.insert(m.ino()) {
                s.tar_len += member(child.len(), child.len(), 0);
            } else {
                s.file_bytes += m.len();
                s.tar_len += member(child.len(), 0, m.len());
            }
        }
        Ok(())
    }
    let member_prefix = prefix.trim_start_matches('/');
    let mut s = Stats {
        entries: 0,
        file_bytes: 0,
        tar_len: 1024 + member(member_prefix.len() + 40, 0, 8 * 1024),
    };
    let mut parent = String::new();
    for comp in member_prefix.split('/') {
        if !parent.is_empty() {
            parent.push('/');
        }
        parent.push_str(comp);
        s.tar_len += member(parent.len() + 1, 0, 0);
    }
    rec(dir, member_prefix, &mut BTreeSet::new(), &mut s)?;
    Ok(s)
}

/// A C identifier for a library name (`stdc++` → `stdcxx`).
fn ident(s: &str) -> String {
    s.replace('+', "x")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Source of a shared library exporting `<id>_prefix()` (a C string naming a directory of
/// the prefix, which binary relocation rewrites) and `<id>_value()`.
fn lib_source(id: &str, prefix: &str, subdir: &str, k: u64) -> String {
    format!(
        "#include <string.h>\n#define PREFIX \"{prefix}\"\nconst char *{id}_prefix(void) {{ return PREFIX \"{subdir}\"; }}\nunsigned long {id}_value(void) {{\n  unsigned long v = strlen(PREFIX) + {k};\n  for (int i = 0; i < 64; i++) v = v * 6364136223846793005ul + 1442695040888963407ul;\n  return v;\n}}\n"
    )
}

/// Source of a command-line tool of a small package: calls its library.
fn tool_source(tool: &str, id: &str) -> String {
    format!(
        "#include <stdio.h>\nunsigned long {id}_value(void);\nconst char *{id}_prefix(void);\nint main(void) {{\n  printf(\"{tool}: %016lx %s\\n\", {id}_value(), {id}_prefix());\n  return 0;\n}}\n"
    )
}

/// A C header of about `size` bytes.
fn header_text(rng: &mut Rng, guard: &str, size: usize) -> String {
    let guard = ident(guard).to_uppercase();
    let mut s = format!(
        "/* {} */\n#ifndef {guard}\n#define {guard}\n\n",
        words(rng, 8)
    );
    while s.len() < size {
        match rng.below(4) {
            0 => s.push_str(&format!(
                "#define {guard}_{}_{} 0x{:08x}\n",
                rng.pick(WORDS).to_uppercase(),
                rng.below(1000),
                rng.next() as u32
            )),
            1 => s.push_str(&format!(
                "PyAPI_FUNC(int) Py{}_{}{}(PyObject *{}, Py_ssize_t {}, int flags);\n",
                capitalise(rng.pick(WORDS)),
                capitalise(rng.pick(WORDS)),
                capitalise(rng.pick(WORDS)),
                rng.pick(WORDS),
                rng.pick(WORDS)
            )),
            2 => s.push_str(&format!(
                "typedef struct {{\n    PyObject_HEAD\n    Py_ssize_t {};\n    PyObject *{};\n}} Py{}Object;\n\n",
                rng.pick(WORDS),
                rng.pick(WORDS),
                capitalise(rng.pick(WORDS))
            )),
            _ => s.push_str(&format!("/* {} */\n", words(rng, 10))),
        }
    }
    s.push_str(&format!("\n#endif /* !{guard} */\n"));
    s
}

/// `w` with its first letter in upper case.
fn capitalise(w: impl AsRef<str>) -> String {
    let mut c = w.as_ref().chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

/// A size drawn log-uniformly between `lo` and `hi` bytes.
fn log_uniform(rng: &mut Rng, lo: usize, hi: usize) -> usize {
    let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
    (lo as f64 * (hi as f64 / lo as f64).powf(u)) as usize
}

/// `n` incompressible bytes (splitmix64 output).
fn random_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..n.div_ceil(8))
        .flat_map(|_| rng.next().to_le_bytes())
        .collect();
    v.truncate(n);
    v
}

/// A Python module of about `size` bytes: a docstring, imports, classes with methods,
/// functions and constants, made of `WORDS`, this module's own identifiers and numbers.
fn py_module(rng: &mut Rng, module: &str, size: usize) -> String {
    let own: Vec<String> = (0..12)
        .map(|_| {
            (0..4 + rng.below(6))
                .map(|_| (b'a' + rng.below(26) as u8) as char)
                .collect()
        })
        .collect();
    let name = |rng: &mut Rng| -> String {
        if rng.below(4) == 0 {
            rng.pick(&own).clone()
        } else {
            format!("{}_{}", rng.pick(WORDS), rng.pick(WORDS))
        }
    };
    let mut s = format!(
        "\"\"\"{module}: {}.\n\n{}.\n\"\"\"\n\nimport os\nimport sys\nfrom . import {}\n\n__all__ = [\"{}\", \"{}\"]\n\n",
        words(rng, 6),
        words(rng, 14),
        name(rng),
        name(rng),
        name(rng)
    );
    while s.len() < size {
        match rng.below(5) {
            0 | 1 => {
                s.push_str(&format!(
                    "\nclass {}{}({}):\n    \"\"\"{}.\"\"\"\n\n",
                    capitalise(rng.pick(WORDS)),
                    capitalise(name(rng)),
                    if rng.below(2) == 0 {
                        "object"
                    } else {
                        "Exception"
                    },
                    words(rng, 9)
                ));
                for _ in 0..1 + rng.below(5) {
                    let (a, b, c) = (name(rng), name(rng), name(rng));
                    s.push_str(&format!(
                        "    def {a}(self, {b}, {c}=None):\n        if {c} is None:\n            {c} = self._{b}\n        return {c}.{}({b}, {})\n\n",
                        name(rng),
                        rng.below(4096)
                    ));
                }
            }
            2 => {
                let (f, a) = (name(rng), name(rng));
                s.push_str(&format!(
                    "\ndef {f}({a}, *args, **kwargs):\n    \"\"\"{}.\"\"\"\n    for {} in {a}:\n        if {} > {}:\n            yield {}({a}, *args)\n    raise ValueError(\"{}: %r\" % ({a},))\n\n",
                    words(rng, 12),
                    name(rng),
                    name(rng),
                    rng.below(100_000),
                    name(rng),
                    words(rng, 4)
                ));
            }
            3 => s.push_str(&format!(
                "{} = 0x{:x}\n{} = \"{}\"\n",
                name(rng).to_uppercase(),
                rng.next() as u32,
                name(rng).to_uppercase(),
                words(rng, 3)
            )),
            _ => s.push_str(&format!("# {}\n", words(rng, 11))),
        }
    }
    s
}

/// A build configuration variable: an upper-case name and up to `max_words` words.
fn config_var(rng: &mut Rng, max_words: u64) -> (String, String) {
    let key = format!("{}_{}", rng.pick(WORDS), rng.pick(WORDS)).to_uppercase();
    let n = 1 + rng.below(max_words) as usize;
    (key, words(rng, n))
}

/// The sbang'd shebang Spack writes for a long interpreter path, then the script.
fn sbang_script(buildpath: &str, interpreter: &str, body: &str) -> String {
    format!(
        "#!/bin/sh {}\n#!{interpreter}\n{body}",
        sbang_install_path(buildpath)
    )
}

/// Small packages' shares of `--small-mb`.
fn small_share(name: &str) -> f64 {
    match name {
        "gcc-runtime" => 0.45,
        "xz" => 0.25,
        _ => 0.15,
    }
}

/// The relocation prefixes of package `i`: its own, then its dependencies'.
fn prefixes(pkgs: &[Pkg], i: usize) -> Vec<String> {
    std::iter::once(i)
        .chain(pkgs[i].deps.iter().copied())
        .map(|k| pkgs[k].prefix.clone())
        .collect()
}

/// Fill the tree to `target` unpacked bytes: what its tar stream lacks is spread over the
/// ELF files `bulk` by weight.
fn fill(
    t: &Tree,
    p: &Pkg,
    target: u64,
    bulk: &[(&str, f64)],
    rng: &mut Rng,
    pfx: &[String],
) -> Result<()> {
    let missing = target.saturating_sub(stats(&t.dir, &p.prefix)?.tar_len);
    let total: f64 = bulk.iter().map(|(_, w)| w).sum();
    for (rel, w) in bulk {
        t.pad(rel, (missing as f64 * w / total) as u64, rng, pfx)?;
    }
    Ok(())
}

/// `gcc-runtime`: five runtime libraries with their soname links, and two documents.
fn build_gcc_runtime(pkgs: &[Pkg], build: &Path, target: u64) -> Result<Tree> {
    let p = &pkgs[0];
    let t = Tree::new(build, &p.name)?;
    let mut rng = Rng(SEED ^ 0x6cc0);
    let rpath = vec![format!("{}/lib", p.prefix)];
    let libs = [
        ("stdc++", "6", "6.0.32", 0.45),
        ("gfortran", "5", "5.0.0", 0.28),
        ("gomp", "1", "1.0.0", 0.1),
        ("quadmath", "0", "0.0.0", 0.1),
        ("atomic", "1", "1.2.0", 0.07),
    ];
    let mut bulk = Vec::new();
    for (k, (lib, major, full, w)) in libs.iter().enumerate() {
        let soname = format!("lib{lib}.so.{major}");
        let file = format!("lib/lib{lib}.so.{full}");
        let src = lib_source(&ident(lib), &p.prefix, "/lib", k as u64);
        t.cc(&file, &src, Some(&soname), &[], &rpath)?;
        t.link(&format!("lib/{soname}"), &format!("lib{lib}.so.{full}"))?;
        bulk.push((file, *w));
    }
    t.file(
        "share/doc/gcc-runtime/COPYING.RUNTIME",
        format!(
            "GCC RUNTIME LIBRARY EXCEPTION\n\n{}\n",
            words(&mut rng, 600)
        ),
    )?;
    t.file(
        "share/doc/gcc-runtime/README",
        format!("Runtime libraries of gcc, installed in {}/lib\n", p.prefix),
    )?;
    let bulk: Vec<(&str, f64)> = bulk.iter().map(|(f, w)| (f.as_str(), *w)).collect();
    fill(&t, p, target, &bulk, &mut rng, &prefixes(pkgs, 0))?;
    Ok(t)
}

/// The shared library of `zlib`, `bzip2` or `xz`: `lib/lib<lib>.so.<full>` with soname
/// `lib<lib>.so.<major>`, its soname and development links, and a pkg-config file.
fn small_lib(
    t: &Tree,
    pkgs: &[Pkg],
    i: usize,
    lib: &str,
    major: &str,
    full: &str,
) -> Result<String> {
    let p = &pkgs[i];
    let rpath = vec![
        format!("{}/lib", p.prefix),
        format!("{}/lib", pkgs[0].prefix),
    ];
    let file = format!("lib/lib{lib}.so.{full}");
    let soname = format!("lib{lib}.so.{major}");
    t.cc(
        &file,
        &lib_source(&ident(lib), &p.prefix, "/lib", i as u64),
        Some(&soname),
        &[],
        &rpath,
    )?;
    t.link(&format!("lib/{soname}"), &format!("lib{lib}.so.{full}"))?;
    t.link(&format!("lib/lib{lib}.so"), &format!("lib{lib}.so.{full}"))?;
    let pc = if lib == "lzma" { "liblzma" } else { &p.name };
    t.file(
        &format!("lib/pkgconfig/{pc}.pc"),
        format!(
            "prefix={}\nexec_prefix=${{prefix}}\nlibdir=${{exec_prefix}}/lib\nincludedir=${{prefix}}/include\n\nName: {}\nDescription: {} compression library\nVersion: {}\n\nLibs: -L${{libdir}} -l{lib}\nCflags: -I${{includedir}}\n",
            p.prefix,
            p.name,
            p.name,
            p.node["version"].as_str().unwrap_or_default()
        ),
    )?;
    Ok(file)
}

/// A manual page of about `size` bytes.
fn man_page(rng: &mut Rng, name: &str, size: usize) -> String {
    let mut s = format!(
        ".TH {} 1\n.SH NAME\n{name} \\- {}\n",
        name.to_uppercase(),
        words(rng, 6)
    );
    while s.len() < size {
        s.push_str(&format!(".PP\n{}\n", words(rng, 40)));
    }
    s
}

/// `zlib`: `libz.so.1`, a static archive, two headers, pkg-config and a manual page.
fn build_zlib(pkgs: &[Pkg], build: &Path, target: u64) -> Result<Tree> {
    let i = 1;
    let t = Tree::new(build, &pkgs[i].name)?;
    let mut rng = Rng(SEED ^ 0x2118);
    let so = small_lib(&t, pkgs, i, "z", "1", "1.3.1")?;
    t.file("include/zlib.h", header_text(&mut rng, "zlib.h", 97_000))?;
    t.file("include/zconf.h", header_text(&mut rng, "zconf.h", 16_000))?;
    let mut ar = b"!<arch>\n".to_vec();
    ar.extend(bulk_data(&mut rng, 150_000, &[]));
    t.file("lib/libz.a", ar)?;
    t.file("share/man/man3/zlib.3", man_page(&mut rng, "zlib", 8_000))?;
    fill(
        &t,
        &pkgs[i],
        target,
        &[(&so, 1.0)],
        &mut rng,
        &prefixes(pkgs, i),
    )?;
    Ok(t)
}

/// `bzip2`: `libbz2.so.1.0`, two tools, shell scripts and their links, a header, manuals.
fn build_bzip2(pkgs: &[Pkg], build: &Path, target: u64) -> Result<Tree> {
    let i = 2;
    let p = &pkgs[i];
    let t = Tree::new(build, &p.name)?;
    let mut rng = Rng(SEED ^ 0xb212);
    let so = small_lib(&t, pkgs, i, "bz2", "1.0", "1.0.8")?;
    t.link("lib/libbz2.so.1", "libbz2.so.1.0.8")?;
    let rpath = vec![
        format!("{}/lib", p.prefix),
        format!("{}/lib", pkgs[0].prefix),
    ];
    for tool in ["bzip2", "bzip2recover"] {
        t.cc(
            &format!("bin/{tool}"),
            &tool_source(tool, "bz2"),
            None,
            &[t.path(&so)],
            &rpath,
        )?;
    }
    for l in ["bunzip2", "bzcat"] {
        t.link(&format!("bin/{l}"), "bzip2")?;
    }
    for (script, links) in [
        ("bzdiff", &["bzcmp"][..]),
        ("bzgrep", &["bzegrep", "bzfgrep"]),
        ("bzmore", &["bzless"]),
    ] {
        t.script(
            &format!("bin/{script}"),
            &format!(
                "#!/bin/sh\n# {}\nexec bzip2 -cdfq \"$@\"\n",
                words(&mut rng, 30)
            ),
        )?;
        for l in links {
            t.link(&format!("bin/{l}"), script)?;
        }
        t.file(
            &format!("share/man/man1/{script}.1"),
            man_page(&mut rng, script, 3_000),
        )?;
    }
    t.file("include/bzlib.h", header_text(&mut rng, "bzlib.h", 6_300))?;
    t.file(
        "share/man/man1/bzip2.1",
        man_page(&mut rng, "bzip2", 18_000),
    )?;
    fill(
        &t,
        p,
        target,
        &[(&so, 0.8), ("bin/bzip2", 0.2)],
        &mut rng,
        &prefixes(pkgs, i),
    )?;
    Ok(t)
}

/// `xz`: `liblzma.so.5`, four tools and their links, scripts, headers, a libtool file,
/// documents, manuals and message catalogues.
fn build_xz(pkgs: &[Pkg], build: &Path, target: u64) -> Result<Tree> {
    let i = 3;
    let p = &pkgs[i];
    let t = Tree::new(build, &p.name)?;
    let mut rng = Rng(SEED ^ 0x0c5a);
    let so = small_lib(&t, pkgs, i, "lzma", "5", "5.4.6")?;
    t.file(
        "lib/liblzma.la",
        format!(
            "# liblzma.la - a libtool library file\ndlname='liblzma.so.5'\nlibrary_names='liblzma.so.5.4.6 liblzma.so.5 liblzma.so'\nold_library=''\ndependency_libs=' -L{}/lib'\nlibdir='{}/lib'\n",
            pkgs[0].prefix, p.prefix
        ),
    )?;
    let rpath = vec![
        format!("{}/lib", p.prefix),
        format!("{}/lib", pkgs[0].prefix),
    ];
    for tool in ["xz", "xzdec", "lzmadec", "lzmainfo"] {
        t.cc(
            &format!("bin/{tool}"),
            &tool_source(tool, "lzma"),
            None,
            &[t.path(&so)],
            &rpath,
        )?;
        t.file(
            &format!("share/man/man1/{tool}.1"),
            man_page(&mut rng, tool, 6_000),
        )?;
    }
    for l in ["unxz", "xzcat", "lzma", "unlzma", "lzcat"] {
        t.link(&format!("bin/{l}"), "xz")?;
    }
    for (script, links) in [
        ("xzdiff", &["xzcmp", "lzdiff", "lzcmp"][..]),
        (
            "xzgrep",
            &["xzegrep", "xzfgrep", "lzgrep", "lzegrep", "lzfgrep"],
        ),
        ("xzless", &["lzless"]),
        ("xzmore", &["lzmore"]),
    ] {
        t.script(
            &format!("bin/{script}"),
            &format!(
                "#!/bin/sh\n# {}\nxz='{}/bin/xz'\nexec \"$xz\" -cdfq \"$@\"\n",
                words(&mut rng, 60),
                p.prefix
            ),
        )?;
        for l in links {
            t.link(&format!("bin/{l}"), script)?;
        }
    }
    t.file("include/lzma.h", header_text(&mut rng, "lzma.h", 9_000))?;
    for h in [
        "base",
        "bcj",
        "block",
        "check",
        "container",
        "delta",
        "filter",
        "hardware",
        "index",
        "index_hash",
        "lzma12",
        "stream_flags",
        "version",
        "vli",
    ] {
        let size = log_uniform(&mut rng, 2_000, 40_000);
        t.file(
            &format!("include/lzma/{h}.h"),
            header_text(&mut rng, h, size),
        )?;
    }
    for d in [
        "AUTHORS",
        "COPYING",
        "NEWS",
        "README",
        "THANKS",
        "TODO",
        "faq.txt",
        "history.txt",
        "lzma-file-format.txt",
        "xz-file-format.txt",
        "examples/01_compress_easy.c",
        "examples/02_decompress.c",
        "examples/03_compress_custom.c",
        "examples/Makefile",
    ] {
        let n = log_uniform(&mut rng, 100, 6_000);
        t.file(&format!("share/doc/xz/{d}"), words(&mut rng, n))?;
    }
    for lang in [
        "ca", "cs", "da", "de", "eo", "es", "fi", "fr", "hr", "hu", "it", "ko", "pl", "pt",
        "pt_BR", "ro", "sr", "sv", "tr", "uk", "vi", "zh_CN", "zh_TW",
    ] {
        let n = log_uniform(&mut rng, 20_000, 60_000);
        let mut mo = 0x9504_12deu32.to_le_bytes().to_vec();
        mo.extend(bulk_data(&mut rng, n, &[]));
        t.file(&format!("share/locale/{lang}/LC_MESSAGES/xz.mo"), mo)?;
    }
    fill(
        &t,
        p,
        target,
        &[(&so, 0.7), ("bin/xz", 0.3)],
        &mut rng,
        &prefixes(pkgs, i),
    )?;
    Ok(t)
}

/// `python`: see the module documentation.
fn build_python(pkgs: &[Pkg], build: &Path, args: &Args, buildpath: &str) -> Result<Tree> {
    let i = 4;
    let p = &pkgs[i];
    let t = Tree::new(build, &p.name)?;
    let mut rng = Rng(SEED ^ 0x0b7e);
    let pfx = prefixes(pkgs, i);
    let dep_tree = |name: &str| build.join(name);
    let python = format!("{}/bin/python3.11", p.prefix);
    let rpath: Vec<String> = pfx.iter().map(|q| format!("{q}/lib")).collect();

    // libpython (padded at the end to what the rest leaves), libpython3.so and the
    // executable, linked against libpython and one library of every dependency.
    let libpython = "lib/libpython3.11.so.1.0";
    t.cc(
        libpython,
        &lib_source("libpython", &p.prefix, "/lib/python3.11", 3),
        Some("libpython3.11.so.1.0"),
        &[],
        &rpath,
    )?;
    t.link("lib/libpython3.11.so", "libpython3.11.so.1.0")?;
    t.cc(
        "lib/libpython3.so",
        "int Py_LimitedAbiMarker(void) { return 3; }\n",
        Some("libpython3.so"),
        &[t.path(libpython)],
        &rpath,
    )?;
    let linked = [
        ("libpython", t.path(libpython)),
        ("z", dep_tree("zlib").join("lib/libz.so.1.3.1")),
        ("bz2", dep_tree("bzip2").join("lib/libbz2.so.1.0.8")),
        ("lzma", dep_tree("xz").join("lib/liblzma.so.5.4.6")),
        (
            "atomic",
            dep_tree("gcc-runtime").join("lib/libatomic.so.1.2.0"),
        ),
    ];
    let mut c = String::from("#include <stdio.h>\n");
    for (id, _) in &linked {
        c.push_str(&format!("unsigned long {id}_value(void);\n"));
    }
    c.push_str(&format!(
        "#define PREFIX \"{}\"\nint main(void) {{\n  unsigned long v = 0;\n",
        p.prefix
    ));
    for (id, _) in &linked {
        c.push_str(&format!("  v ^= {id}_value();\n"));
    }
    c.push_str(&format!(
        "  printf(\"python3: {} libraries loaded, checksum %016lx\\n\", v);\n  fflush(stdout);\n  printf(\"python3 prefix: %s\\n\", PREFIX);\n  return 0;\n}}\n",
        linked.len()
    ));
    let libs: Vec<PathBuf> = linked.iter().map(|(_, l)| l.clone()).collect();
    t.cc("bin/python3.11", &c, None, &libs, &rpath)?;
    t.link("bin/python3", "python3.11")?;
    t.link("bin/python", "python3.11")?;

    // Scripts naming the interpreter (sbang'd, as Spack does for long shebangs) and the
    // prefix.
    for (script, module, link) in [
        ("pip3.11", "pip", "pip3"),
        ("pydoc3.11", "pydoc", "pydoc3"),
        ("idle3.11", "idlelib.pyshell", "idle3"),
        ("2to3-3.11", "lib2to3.main", "2to3"),
    ] {
        let body = format!(
            "import sys\nfrom {module} import main\nif __name__ == '__main__':\n    sys.exit(main())\n"
        );
        t.script(
            &format!("bin/{script}"),
            &sbang_script(buildpath, &python, &body),
        )?;
        t.link(&format!("bin/{link}"), script)?;
    }
    t.script(
        "bin/python3.11-config",
        &format!(
            "#!/bin/sh\n# {}\nprefix=\"{}\"\nexec_prefix=\"$prefix\"\nincludedir=\"$prefix/include\"\nLIBS=\"-lpthread -ldl -lutil -lm\"\nLDFLAGS=\"{}\"\ncase \"$1\" in\n  --prefix) echo \"$prefix\" ;;\n  --includes) echo \"-I$includedir/python3.11\" ;;\n  --ldflags) echo \"-L$prefix/lib $LDFLAGS $LIBS\" ;;\nesac\n",
            words(&mut rng, 10),
            p.prefix,
            pfx[1..].iter().map(|q| format!("-L{q}/lib -Wl,-rpath,{q}/lib")).collect::<Vec<_>>().join(" ")
        ),
    )?;
    t.link("bin/python3-config", "python3.11-config")?;

    // Headers.
    for (sub, n) in [("", 60), ("cpython/", 40), ("internal/", 80)] {
        for k in 0..n {
            let name = format!(
                "{}{}{k}.h",
                if sub.is_empty() { "py" } else { "pycore_" },
                rng.pick(WORDS)
            );
            let size = log_uniform(&mut rng, 600, 30_000);
            t.file(
                &format!("include/python3.11/{sub}{name}"),
                header_text(&mut rng, &name, size),
            )?;
        }
    }
    t.file(
        "include/python3.11/pyconfig.h",
        header_text(&mut rng, "pyconfig.h", 50_000),
    )?;

    // pkg-config, the manual page.
    for pc in ["python-3.11", "python-3.11-embed"] {
        t.file(
            &format!("lib/pkgconfig/{pc}.pc"),
            format!("prefix={}\nexec_prefix=${{prefix}}\nlibdir=${{exec_prefix}}/lib\nincludedir=${{prefix}}/include\n\nName: Python\nDescription: Build a C extension for Python\nVersion: 3.11\nLibs: -L${{libdir}} {}\nCflags: -I${{includedir}}/python3.11\n", p.prefix, if pc.ends_with("embed") { "-lpython3.11" } else { "" }),
        )?;
    }
    t.link("lib/pkgconfig/python3.pc", "python-3.11.pc")?;
    t.link("lib/pkgconfig/python3-embed.pc", "python-3.11-embed.pc")?;
    t.file(
        "share/man/man1/python3.11.1",
        man_page(&mut rng, "python", 20_000),
    )?;
    t.link("share/man/man1/python3.1", "python3.11.1")?;

    // The .py tree: every package directory gets its share (at least its __init__.py).
    let counts = shares(
        &PY_DIRS.iter().map(|(_, w)| *w).collect::<Vec<_>>(),
        args.py_files.saturating_sub(PY_DIRS.len()),
    );
    let mut k_file = 0usize;
    for ((dir, _), extra) in PY_DIRS.iter().zip(counts) {
        let base = if dir.is_empty() {
            PYLIB.to_string()
        } else {
            format!("{PYLIB}/{dir}")
        };
        let mut names = BTreeSet::new();
        let leaf = dir.rsplit('/').next().unwrap_or_default();
        for j in 0..=extra {
            let file = if j == 0 && !dir.is_empty() {
                "__init__.py".to_string()
            } else {
                let stem = if leaf.starts_with("test") || leaf.ends_with("tests") {
                    format!("test_{}_{}", rng.pick(WORDS), rng.pick(WORDS))
                } else {
                    format!("{}{}", rng.pick(WORDS), rng.pick(WORDS))
                };
                let mut name = format!("{stem}.py");
                let mut n = 2;
                while names.contains(&name) {
                    name = format!("{stem}{n}.py");
                    n += 1;
                }
                name
            };
            names.insert(file.clone());
            let size = log_uniform(&mut rng, 200, 40_000);
            let module = format!("{}.{}", dir.replace('/', "."), file.trim_end_matches(".py"));
            let mut text = py_module(&mut rng, &module, size);
            // A handful name the prefix: a shebang, or a path in the text.
            match k_file % 600 {
                17 => text.insert_str(0, &format!("#!{python}\n")),
                317 => text.push_str(&format!("\n_INSTALL_PREFIX = \"{}\"\n", p.prefix)),
                _ => {}
            }
            k_file += 1;
            t.file(&format!("{base}/{file}"), text)?;
        }
    }
    // Test data.
    for (dir, ext, n, max, text) in DATA_DIRS {
        for k in 0..*n {
            let size = log_uniform(&mut rng, 200, *max);
            let data = if *text {
                words(&mut rng, size / 7).into_bytes()
            } else {
                random_bytes(&mut rng, size)
            };
            t.file(
                &format!("{PYLIB}/{dir}/{}{k:02}.{ext}", rng.pick(WORDS)),
                data,
            )?;
        }
    }
    for (whl, size) in [
        ("pip-24.0-py3-none-any.whl", 2_110_000),
        ("setuptools-65.5.0-py3-none-any.whl", 1_232_000),
    ] {
        t.file(
            &format!("{PYLIB}/ensurepip/_bundled/{whl}"),
            random_bytes(&mut rng, size),
        )?;
    }
    t.file(&format!("{PYLIB}/site-packages/README.txt"), "This directory exists so that 3rd party packages can be installed\nhere.  Read the source for site.py for more details.\n")?;

    // Files naming the prefix and the dependencies: the build configuration.
    let mut sysconfig = String::from(
        "# system configuration generated and used by the sysconfig module\nbuild_time_vars = {\n",
    );
    for (k, key) in [
        "prefix",
        "exec_prefix",
        "BINDIR",
        "LIBDIR",
        "INCLUDEDIR",
        "CONFINCLUDEDIR",
        "LIBPL",
        "DESTSHARED",
        "BINLIBDEST",
        "LIBDEST",
        "MANDIR",
        "SCRIPTDIR",
    ]
    .iter()
    .enumerate()
    {
        sysconfig.push_str(&format!(
            " '{key}': '{}{}',\n",
            p.prefix,
            [
                "",
                "",
                "/bin",
                "/lib",
                "/include",
                "/include",
                "/lib/python3.11/config-3.11-x86_64-linux-gnu",
                "/lib/python3.11/lib-dynload",
                "/lib/python3.11",
                "/lib/python3.11",
                "/share/man",
                "/lib"
            ][k]
        ));
    }
    let flags = pfx[1..]
        .iter()
        .map(|q| format!("-I{q}/include"))
        .collect::<Vec<_>>()
        .join(" ");
    let ldflags = pfx[1..]
        .iter()
        .map(|q| format!("-L{q}/lib -Wl,-rpath,{q}/lib"))
        .collect::<Vec<_>>()
        .join(" ");
    sysconfig.push_str(&format!(" 'CPPFLAGS': '-I. -I./Include {flags}',\n 'LDFLAGS': '{ldflags}',\n 'CONFIG_ARGS': \"'--prefix={}' '--enable-shared' '--with-system-expat' '--without-ensurepip'\",\n", p.prefix));
    while sysconfig.len() < 48_000 {
        let (key, value) = config_var(&mut rng, 8);
        sysconfig.push_str(&format!(" '{key}': '{value}',\n"));
    }
    sysconfig.push_str("}\n");
    t.file(
        &format!("{PYLIB}/_sysconfigdata__linux_x86_64-linux-gnu.py"),
        sysconfig,
    )?;
    let mut makefile = format!("# Generated automatically from Makefile.pre by makesetup.\nprefix=\t\t{}\nexec_prefix=\t${{prefix}}\nCPPFLAGS=\t-I. -I$(srcdir)/Include {flags}\nLDFLAGS=\t{ldflags}\n", p.prefix);
    while makefile.len() < 90_000 {
        let (key, value) = config_var(&mut rng, 12);
        makefile.push_str(&format!("{key}=\t{value}\n"));
    }
    let cfg = format!("{PYLIB}/{PLATLIB}");
    t.file(&format!("{cfg}/Makefile"), makefile)?;
    for (f, n) in [
        ("Setup", 12_000),
        ("Setup.bootstrap", 1_500),
        ("Setup.local", 50),
        ("Setup.stdlib", 7_000),
        ("config.c", 3_000),
        ("config.c.in", 1_700),
        ("makesetup", 9_000),
    ] {
        t.file(&format!("{cfg}/{f}"), words(&mut rng, n / 7))?;
    }
    t.script(
        &format!("{cfg}/install-sh"),
        &format!("#!/bin/sh\n# {}\n", words(&mut rng, 1_500)),
    )?;
    t.script(
        &format!("{cfg}/python-config.py"),
        &sbang_script(
            buildpath,
            &python,
            &format!(
                "# -*- python -*-\nimport sys\nimport sysconfig\n# {}\n",
                words(&mut rng, 600)
            ),
        ),
    )?;
    t.link(&format!("{cfg}/libpython3.11.so"), "../../libpython3.11.so")?;

    // Extension modules: `DT_RPATH` naming python's and every dependency's `lib`, as the
    // compiler wrapper does; `_bz2`, `_lzma` and `zlib` linked against their library.
    for (k, ext) in EXTENSIONS[..args.extensions].iter().enumerate() {
        let rel = format!("{PYLIB}/lib-dynload/{ext}{EXT_SUFFIX}");
        let id = ident(ext);
        let (libs, call) = match *ext {
            "zlib" => (
                vec![dep_tree("zlib").join("lib/libz.so.1.3.1")],
                "z_value()",
            ),
            "_bz2" => (
                vec![dep_tree("bzip2").join("lib/libbz2.so.1.0.8")],
                "bz2_value()",
            ),
            "_lzma" => (
                vec![dep_tree("xz").join("lib/liblzma.so.5.4.6")],
                "lzma_value()",
            ),
            _ => (vec![], "0ul"),
        };
        let decl = if libs.is_empty() {
            String::new()
        } else {
            format!("unsigned long {};\n", call.replace("()", "(void)"))
        };
        let src = format!(
            "{decl}const char *{id}_origin(void) {{ return \"{}/{PYLIB}/lib-dynload\"; }}\nunsigned long {id}_state(void) {{ return {call} + {k}ul; }}\nvoid *PyInit_{id}(void) {{ return (void *)0; }}\n",
            p.prefix
        );
        t.cc(
            &rel,
            &src,
            Some(&format!("{ext}{EXT_SUFFIX}")),
            &libs,
            &rpath,
        )?;
        let size = log_uniform(&mut rng, 16_000, 1_200_000) as u64;
        let elf = std::fs::metadata(t.path(&rel))?.len();
        t.pad(&rel, size.saturating_sub(elf), &mut rng, &pfx)?;
    }

    fill(
        &t,
        p,
        (args.python_mb * 1e6) as u64,
        &[(libpython, 1.0)],
        &mut rng,
        &pfx,
    )?;
    Ok(t)
}

/// `n` split over `weights` in proportion (largest remainders get the rest).
fn shares(weights: &[u32], n: usize) -> Vec<usize> {
    let total: u64 = weights.iter().map(|&w| w as u64).sum();
    let mut out: Vec<usize> = weights
        .iter()
        .map(|&w| (n as u64 * w as u64 / total) as usize)
        .collect();
    let mut rest: Vec<(u64, usize)> = weights
        .iter()
        .enumerate()
        .map(|(k, &w)| ((n as u64 * w as u64) % total, k))
        .collect();
    rest.sort_by(|a, b| b.cmp(a));
    let missing = n - out.iter().sum::<usize>();
    for &(_, k) in rest.iter().take(missing) {
        out[k] += 1;
    }
    out
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let start = Instant::now();
    let buildpath = padded_root(STORE, args.padding);
    let pkgs = plan(&buildpath);
    let mirror_dir = args.out.join("mirror");
    let build = args.out.join("build");
    for d in [&mirror_dir, &build] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| d.display().to_string())?;
        }
    }
    std::fs::create_dir_all(&build)?;
    println!(
        "==> generating a python 3.11 stack (python ~{} MB, {} .py files, {} extensions; gcc-runtime, zlib, bzip2, xz ~{} MB together) for build root {STORE} padded to {} characters",
        args.python_mb,
        args.py_files,
        args.extensions,
        args.small_mb,
        buildpath.len()
    );

    // Python links against the dependency trees: pack everything once it is built.
    let small = |name: &str| (args.small_mb * small_share(name) * 1e6) as u64;
    let trees = vec![
        build_gcc_runtime(&pkgs, &build, small("gcc-runtime")).context("building gcc-runtime")?,
        build_zlib(&pkgs, &build, small("zlib")).context("building zlib")?,
        build_bzip2(&pkgs, &build, small("bzip2")).context("building bzip2")?,
        build_xz(&pkgs, &build, small("xz")).context("building xz")?,
        build_python(&pkgs, &build, &args, &buildpath).context("building python")?,
    ];

    let mut writer = MirrorWriter::new(&mirror_dir, None)?;
    let (mut entries, mut unpacked, mut compressed, mut python_unpacked) = (0, 0, 0, 0);
    for (i, (p, t)) in pkgs.iter().zip(&trees).enumerate() {
        let packed = Instant::now();
        let s = stats(&t.dir, &p.prefix)?;
        let mut nodes = vec![p.node.clone()];
        nodes.extend(p.deps.iter().map(|&d| pkgs[d].node.clone()));
        let set: Vec<(String, String)> = std::iter::once(i)
            .chain(p.deps.iter().copied())
            .map(|k| (pkgs[k].hash.clone(), pkgs[k].prefix.clone()))
            .collect();
        let rec = writer
            .add_package(&nodes, &t.dir, &buildpath, &p.prefix, &set)
            .with_context(|| format!("packing {}", p.name))?;
        let inflated = inflated_len(&mirror_dir.join(rec.path()))?;
        println!(
            "  {:<12} {} deps  {:>5} entries  {:>7.1} MB of files  {:>7.1} MB unpacked  {:>6.1} MB compressed  ({:.2}x, packed in {:.1} s)",
            p.name,
            p.deps.len(),
            s.entries + 1,
            s.file_bytes as f64 / 1e6,
            inflated as f64 / 1e6,
            rec.content_length as f64 / 1e6,
            inflated as f64 / rec.content_length as f64,
            packed.elapsed().as_secs_f64()
        );
        entries += s.entries + 1; // + .spack/binary_distribution
        unpacked += inflated;
        compressed += rec.content_length;
        if p.name == "python" {
            python_unpacked = inflated;
        }
    }
    writer.finish()?;
    std::fs::remove_dir_all(&build)?;
    println!(
        "==> wrote {}: {} packages, {} entries, {:.1} MB unpacked (python {:.0} %), {:.1} MB compressed, in {:.1} s",
        mirror_dir.display(),
        pkgs.len(),
        entries,
        unpacked as f64 / 1e6,
        100.0 * python_unpacked as f64 / unpacked as f64,
        compressed as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

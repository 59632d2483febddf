//! Generates the mirror of `bench/index`: an unsigned v3 mirror whose index lists N
//! packages, records shaped like the ones Spack writes (full `arch.target` objects with
//! their feature lists, `parameters`, `package_hash`, `annotations`, about 10 dependency
//! edges each with `deptypes` and `virtuals`), plus the real fixture packages of
//! `spack-v3-unsigned` (manifests and blobs copied byte for byte) so that a program can run
//! from a mount of it.
//!
//! ```text
//! cargo run --release --example bench_index_mirror -- OUTDIR --packages N
//!     [--deps 10] [--fixture ../shared/fixtures/spack-v3-unsigned/mirror]
//! ```
//!
//! The generated packages have empty spec manifests (the mirror holds them, as a real one
//! does: a partial copy's listing finds them) and no tarballs: they can be listed, looked
//! up and stat'ed, not materialised. Most of them share one target (`zen3`), so that one
//! directory of the projection holds most packages. The output is deterministic (fixed
//! seed). The index is streamed to disk while it is hashed: nothing of size N is held.

// Shared with the other generators; this one needs only its generator and path parser.
#[allow(dead_code)]
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::{json, Value};
use sha2::Digest;

use common::Rng;
use spackfs::buildcache::checksum::Sha256;
use spackfs::buildcache::layout;
use spackfs::buildcache::manifest::{BlobRecord, Manifest, MEDIA_INDEX};

const SEED: u64 = 0x1de5_5ca1_e202_6120;

#[derive(Parser)]
#[command(name = "bench_index_mirror")]
struct Args {
    /// Output directory (the mirror is written to OUTDIR/mirror)
    #[arg(value_name = "OUTDIR", value_parser = common::absolute_dir)]
    out: PathBuf,
    /// Packages in the index (besides the fixture's)
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    packages: usize,
    /// Dependency edges per package, on average
    #[arg(long, default_value_t = 10)]
    deps: usize,
    /// A Spack v3 mirror whose packages are added as they are (manifests, blobs, index
    /// records)
    #[arg(long)]
    fixture: Option<PathBuf>,
    /// Instead of generating: read this index blob with serde_json into a minimal struct
    /// (the floor of `bench/index`) and print the time it took
    #[arg(long, value_name = "BLOB")]
    floor: Option<PathBuf>,
}

/// The floor's minimal record: what listing and lookup need.
#[derive(serde::Deserialize)]
struct FloorDb {
    database: FloorInner,
}
#[derive(serde::Deserialize)]
struct FloorInner {
    installs: std::collections::HashMap<String, FloorRecord>,
}
#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct FloorRecord {
    spec: FloorSpec,
    #[serde(default)]
    in_buildcache: bool,
}
#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct FloorSpec {
    name: String,
    #[serde(default)]
    version: String,
    hash: String,
    #[serde(default)]
    dependencies: Vec<FloorDep>,
}
#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct FloorDep {
    hash: String,
}

/// The floor: the whole file read, then parsed into [`FloorDb`].
fn floor(blob: &Path) -> Result<()> {
    let t = std::time::Instant::now();
    let bytes = std::fs::read(blob).with_context(|| format!("reading {}", blob.display()))?;
    let db: FloorDb = serde_json::from_slice(&bytes)?;
    println!(
        "{} records in {:.3} s",
        db.database.installs.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

const FEATURES: &[&str] = &[
    "abm",
    "aes",
    "avx",
    "avx2",
    "bmi1",
    "bmi2",
    "clflushopt",
    "clwb",
    "clzero",
    "cx16",
    "f16c",
    "fma",
    "fsgsbase",
    "lahf_lm",
    "mmx",
    "movbe",
    "pclmulqdq",
    "pku",
    "popcnt",
    "rdseed",
    "sse",
    "sse2",
    "sse3",
    "sse4_1",
    "sse4_2",
    "sse4a",
    "ssse3",
    "vaes",
    "vpclmulqdq",
    "xsave",
    "xsavec",
    "xsaveopt",
];

const STEMS: &[&str] = &[
    "py", "lib", "r", "perl", "hdf", "net", "open", "boost", "mpi", "fft", "blas", "zlib", "xz",
    "curl", "ssl", "cmake", "ninja", "llvm", "gcc", "cuda", "hip", "kokkos", "petsc", "trilinos",
];
const TAILS: &[&str] = &[
    "core", "utils", "tools", "io", "net", "math", "xml", "json", "yaml", "grid", "mesh", "solver",
    "plot", "cli", "test", "base", "extra", "data", "ml", "vis",
];

/// A DAG hash: 32 characters of Spack's base32 alphabet.
fn hash(rng: &mut Rng) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    (0..32)
        .map(|_| ALPHABET[rng.below(32) as usize] as char)
        .collect()
}

fn target(rng: &mut Rng) -> Value {
    match rng.below(10) {
        0 => json!("x86_64"),
        1 => json!({"name": "icelake", "vendor": "GenuineIntel", "features": FEATURES,
            "generation": 0, "parents": ["cascadelake", "cannonlake"], "cpupart": ""}),
        _ => json!({"name": "zen3", "vendor": "AuthenticAMD", "features": FEATURES,
            "generation": 0, "parents": ["zen2"], "cpupart": ""}),
    }
}

/// Writes into `inner` while hashing and counting.
struct Hashing<W> {
    inner: W,
    hasher: sha2::Sha256,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::create_dir_all(path.parent().expect("a parent"))?;
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}

/// The fixture mirror's index records (as JSON text keyed by hash), after copying its
/// manifests and blobs into `mirror`.
fn copy_fixture(fixture: &Path, mirror: &Path) -> Result<Vec<(String, String)>> {
    let mut records = Vec::new();
    for dir in ["v3/manifests/spec", "blobs"] {
        for e in walk(&fixture.join(dir))? {
            let rel = e.strip_prefix(fixture)?;
            let dest = mirror.join(rel);
            std::fs::create_dir_all(dest.parent().expect("a parent"))?;
            std::fs::copy(&e, &dest).with_context(|| format!("copying {}", e.display()))?;
        }
    }
    let manifest = std::fs::read(fixture.join(layout::V3_INDEX_MANIFEST))?;
    let man = Manifest::parse(&manifest, "fixture index manifest")?;
    let blob = std::fs::read(fixture.join(man.data[0].path()))?;
    let db: Value = serde_json::from_slice(&blob)?;
    for (h, rec) in db["database"]["installs"].as_object().context("installs")? {
        records.push((h.clone(), rec.to_string()));
    }
    Ok(records)
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(walk(&p)?);
        } else {
            out.push(p);
        }
    }
    Ok(out)
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(blob) = &args.floor {
        return floor(blob);
    }
    let mirror = args.out.join("mirror");
    if mirror.exists() {
        std::fs::remove_dir_all(&mirror)?;
    }
    std::fs::create_dir_all(mirror.join("v3"))?;
    write_file(
        &mirror.join("v3/layout.json"),
        br#"{"signing": "gpg"}"#.as_slice(),
    )?;
    let fixture_records = match &args.fixture {
        Some(f) => copy_fixture(f, &mirror)?,
        None => Vec::new(),
    };
    let mut rng = Rng(SEED);
    // Compilers (externals, not in the build cache) that every package depends on.
    let compilers: Vec<(String, String)> = ["12.2.0", "13.3.0", "14.2.0"]
        .iter()
        .map(|v| (hash(&mut rng), v.to_string()))
        .collect();
    let tmp = mirror.join("index.tmp");
    let mut out = Hashing {
        inner: std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?),
        hasher: sha2::Sha256::new(),
        len: 0,
    };
    out.write_all(br#"{"database":{"version":"8","installs":{"#)?;
    let mut first = true;
    let mut sep = |out: &mut Hashing<_>| -> std::io::Result<()> {
        if !std::mem::take(&mut first) {
            out.write_all(b",")?;
        }
        Ok(())
    };
    for (h, v) in &compilers {
        sep(&mut out)?;
        let rec = json!({"spec": {"name": "gcc", "version": v,
            "arch": {"platform": "linux", "platform_os": "debian12", "target": "x86_64"},
            "namespace": "builtin",
            "parameters": {"binutils": true, "build_system": "autotools", "languages": ["c", "c++"],
                "cflags": [], "cppflags": [], "cxxflags": [], "fflags": [], "ldflags": [], "ldlibs": []},
            "external": {"path": "/usr", "module": null,
                "extra_attributes": {"compilers": {"c": "/usr/bin/gcc", "cxx": "/usr/bin/g++"}}},
            "package_hash": "sq2qewt5rjmqirp4bsnxoyvguqjnbt55znzhwsohq5t23lpkymaa====",
            "annotations": {"original_specfile_version": 5}, "hash": h},
            "ref_count": 1, "in_buildcache": false});
        write!(out, "{}:", json!(h))?;
        serde_json::to_writer(&mut out, &rec)?;
    }
    for (h, rec) in &fixture_records {
        sep(&mut out)?;
        write!(out, "{}:{rec}", json!(h))?;
    }
    let mut made: Vec<(String, String)> = Vec::with_capacity(args.packages);
    let spec_dir = mirror.join(layout::V3_SPEC_DIR);
    for i in 0..args.packages {
        let name = format!("{}-{}{}", rng.pick(STEMS), rng.pick(TAILS), rng.below(100));
        let version = format!("{}.{}.{}", rng.below(5), rng.below(20), i % 7);
        let h = hash(&mut rng);
        let ndeps = if made.is_empty() {
            0
        } else {
            (rng.below(2 * args.deps as u64) as usize).min(made.len())
        };
        let (ch, cv) = rng.pick(&compilers);
        let mut deps = vec![json!({"name": "gcc", "hash": ch,
            "parameters": {"deptypes": ["build"], "virtuals": ["c", "cxx"]}})];
        let _ = cv;
        for _ in 0..ndeps {
            let (dn, dh) = &made[rng.below(made.len() as u64) as usize];
            let deptypes = match rng.below(4) {
                0 => json!(["build"]),
                1 => json!(["build", "link"]),
                2 => json!(["run"]),
                _ => json!(["build", "link", "run"]),
            };
            deps.push(
                json!({"name": dn, "hash": dh, "parameters": {"deptypes": deptypes, "virtuals": []}}),
            );
        }
        let rec = json!({"spec": {"name": name, "version": version,
            "arch": {"platform": "linux", "platform_os": "debian12", "target": target(&mut rng)},
            "namespace": "builtin",
            "parameters": {"build_system": "cmake", "build_type": "Release", "ipo": false,
                "shared": rng.below(2) == 0, "generator": "make",
                "cflags": [], "cppflags": [], "cxxflags": [], "fflags": [], "ldflags": [], "ldlibs": []},
            "package_hash": format!("{}{}====", hash(&mut rng), &hash(&mut rng)[..20]),
            "dependencies": deps,
            "annotations": {"original_specfile_version": 5}, "hash": h},
            "ref_count": rng.below(5), "in_buildcache": true});
        sep(&mut out)?;
        write!(out, "{}:", json!(h))?;
        serde_json::to_writer(&mut out, &rec)?;
        // The spec manifest exists (empty: never fetched by the benchmark).
        let manifest = spec_dir.join(
            layout::v3_spec_manifest(&name, &version, &h)?
                .strip_prefix(layout::V3_SPEC_DIR)
                .expect("under the spec dir"),
        );
        std::fs::File::create(&manifest)
            .or_else(|_| {
                std::fs::create_dir_all(manifest.parent().expect("a parent"))?;
                std::fs::File::create(&manifest)
            })
            .with_context(|| format!("creating {}", manifest.display()))?;
        made.push((name, h));
    }
    out.write_all(b"}}}")?;
    out.flush()?;
    let len = out.len;
    let sum = Sha256::parse(&hex::encode(out.hasher.finalize())).expect("a sha256");
    let rec = BlobRecord {
        content_length: len,
        media_type: MEDIA_INDEX.to_string(),
        compression: "none".into(),
        checksum_algorithm: "sha256".into(),
        checksum: sum,
    };
    let blob = mirror.join(rec.path());
    std::fs::create_dir_all(blob.parent().expect("a parent"))?;
    std::fs::rename(&tmp, &blob)?;
    let manifest = serde_json::to_vec(&Manifest {
        version: 3,
        data: vec![rec],
    })?;
    write_file(&mirror.join(layout::V3_INDEX_MANIFEST), &manifest)?;
    println!(
        "{}: {} packages ({} from the fixture), index {:.1} MB",
        mirror.display(),
        args.packages + fixture_records.len() + compilers.len(),
        fixture_records.len(),
        len as f64 / 1e6
    );
    Ok(())
}

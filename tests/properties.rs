//! Property tests of every parser of hostile input (issue 9, item 10): the v3 manifest and
//! its clearsigned wrapper, spec JSON, the index database, `binary_distribution`, the tar
//! stream, relocation (text, binary, ELF through the public entry point), `mirrors.yaml`,
//! projections and layout names.
//!
//! Each target feeds arbitrary inputs, generated ones (from a small grammar of the format)
//! and mutated valid ones (the real manifests, spec blobs, index blobs, tarballs, their
//! `binary_distribution` files, text files and ELF files from `../shared/fixtures`, edited
//! byte-wise, tree-wise or header-wise by `common::mutate`). Every input must parse or be
//! refused with an error naming the object; nothing may panic; and the heap a parse holds at
//! once must stay within a fixed allowance plus a small multiple of the input's size, so that
//! no length field (nor alias, nor extension header) makes it allocate without bound. The text
//! and binary relocation rules are compared with independent references
//! (`common::reference`, `common::binary_reference`).
//!
//! Without `SPACKFS_FUZZ_SECONDS` (plain `cargo test`, CI) each target runs a fixed number
//! of cases from a fixed seed. With it (`scripts/fuzz.sh SECONDS`) each target loops with fresh
//! seeds for about that long and prints `fuzz: <target>: <N> cases, ...`; a failure prints the
//! minimised input and fails the test. `SPACKFS_FUZZ_SEED` replays a run.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fmt::Write as _;
use std::io::{Read, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::Union;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use serde_json::{json, Value};

use common::mutate::{self, ByteOp, Sample, TarOp, TreeOp};
use common::reference::{self, Map};
use spackfs::buildcache::buildinfo::BuildInfo;
use spackfs::buildcache::checksum::Sha256;
use spackfs::buildcache::manifest::{self, Manifest};
use spackfs::buildcache::projection::Projection;
use spackfs::buildcache::spec::{SpecDag, SpecNode};
use spackfs::buildcache::{index, layout, sanitize_component};
use spackfs::install::extract::{check_name, extract, MemberKind};
use spackfs::install::relocate::binary::{relocate_binary, BinaryError};
use spackfs::install::relocate::map::RelocationMap;
use spackfs::install::relocate::relocate;
use spackfs::install::relocate::text::relocate_text;
use spackfs::install::Limits;

/// The name every parsed object gets; each error must start with it.
const WHAT: &str = "fuzz-object";

/// Heap a parse may hold at once: this much, plus `HEAP_FACTOR` times its input.
const HEAP_BASE: u64 = 8 << 20;
const HEAP_FACTOR: u64 = 64;

// ---------------------------------------------------------------------------------------
// Heap accounting: a global allocator that counts, per thread, the bytes held and the most
// held at once.

mod heap {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static CURRENT: Cell<i64> = const { Cell::new(0) };
        static PEAK: Cell<i64> = const { Cell::new(0) };
    }

    /// A single request above this is refused (the process aborts naming its size): no
    /// input here may make anything ask for that much.
    const REFUSE: usize = 16 << 30;

    pub struct Counting;

    fn add(n: i64) {
        let _ = CURRENT.try_with(|c| {
            let v = c.get() + n;
            c.set(v);
            let _ = PEAK.try_with(|p| {
                if v > p.get() {
                    p.set(v)
                }
            });
        });
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            if l.size() > REFUSE {
                return std::ptr::null_mut();
            }
            let p = unsafe { System.alloc(l) };
            if !p.is_null() {
                add(l.size() as i64);
            }
            p
        }

        unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
            if l.size() > REFUSE {
                return std::ptr::null_mut();
            }
            let p = unsafe { System.alloc_zeroed(l) };
            if !p.is_null() {
                add(l.size() as i64);
            }
            p
        }

        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            unsafe { System.dealloc(p, l) };
            add(-(l.size() as i64));
        }

        unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
            if new > REFUSE {
                return std::ptr::null_mut();
            }
            let q = unsafe { System.realloc(p, l, new) };
            if !q.is_null() {
                add(new as i64 - l.size() as i64);
            }
            q
        }
    }

    /// Run `f`; also return the most heap this thread held at once during it, beyond what it
    /// held before.
    pub fn peak_of<T>(f: impl FnOnce() -> T) -> (T, u64) {
        let base = CURRENT.with(Cell::get);
        PEAK.with(|p| p.set(base));
        let out = f();
        let peak = PEAK.with(Cell::get);
        (out, (peak - base).max(0) as u64)
    }
}

#[global_allocator]
static HEAP: heap::Counting = heap::Counting;

/// Run `f` (a parse of an input of `input` bytes) and check the heap it held.
fn bounded<T>(input: usize, f: impl FnOnce() -> T) -> Result<T, String> {
    bounded_by(HEAP_BASE + HEAP_FACTOR * input as u64, input, f)
}

fn bounded_by<T>(limit: u64, input: usize, f: impl FnOnce() -> T) -> Result<T, String> {
    let (out, peak) = heap::peak_of(f);
    if peak > limit {
        return Err(format!(
            "held {peak} bytes of heap at once for an input of {input} bytes (allowed: {limit})"
        ));
    }
    Ok(out)
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// An error message that names the object and says something.
fn clear(msg: &str) -> Result<(), String> {
    ensure!(
        msg.starts_with(WHAT) && msg.len() > WHAT.len() + 3,
        "unclear error (it must start with the object's name {WHAT:?}): {msg:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The runner: fixed cases (CI) or loops until the time is up (scripts/fuzz.sh).

thread_local! {
    static ACCEPTED: Cell<u64> = const { Cell::new(0) };
    static IN_CASE: Cell<bool> = const { Cell::new(false) };
    static PANIC_AT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Count the case as one whose input the parser under test accepted (reported by fuzz.sh,
/// to show how deep the inputs reach).
fn accepted() {
    ACCEPTED.with(|a| a.set(a.get() + 1));
}

/// Panics inside a case are recorded (with their location) instead of printed.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_CASE.with(Cell::get) {
                let at = info.location().map(|l| l.to_string()).unwrap_or_default();
                let payload = info.payload();
                let msg = payload
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("(no message)");
                PANIC_AT.with(|p| *p.borrow_mut() = Some(format!("panicked at {at}: {msg}")));
            } else {
                default(info);
            }
        }));
    });
}

fn one_case(test: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    IN_CASE.with(|c| c.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(test));
    IN_CASE.with(|c| c.set(false));
    match r {
        Ok(r) => r,
        Err(_) => Err(PANIC_AT
            .with(|p| p.borrow_mut().take())
            .unwrap_or_else(|| "panicked".into())),
    }
}

/// A case slower than this is reported (fuzz mode): a parse this slow on a small input is a
/// denial of service.
const SLOW: Duration = Duration::from_secs(1);
/// In fuzz mode, a case slower than this fails.
const TOO_SLOW: Duration = Duration::from_secs(20);

fn fuzz_seconds() -> Option<f64> {
    let s = std::env::var("SPACKFS_FUZZ_SECONDS").ok()?;
    Some(
        s.parse()
            .unwrap_or_else(|_| panic!("SPACKFS_FUZZ_SECONDS={s:?} is not a number of seconds")),
    )
}

fn rng(name: &str, seed: u64, batch: u64) -> TestRng {
    let h = blake3::hash(format!("{name}/{seed}/{batch}").as_bytes());
    TestRng::from_seed(RngAlgorithm::ChaCha, h.as_bytes())
}

/// Written to the stderr handle directly, which libtest does not capture.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Run the property `test` on inputs from `strategy`: `ci_cases` cases from a fixed seed, or
/// batches with fresh seeds until `SPACKFS_FUZZ_SECONDS` have passed. On a thread of its
/// own: the value trees of nested strategies take much stack in the debug profile.
fn check<S: Strategy>(
    name: &'static str,
    ci_cases: u32,
    strategy: impl FnOnce() -> S + Send,
    test: impl Fn(&S::Value) -> Result<(), String> + Send,
) {
    std::thread::scope(|scope| {
        let t = std::thread::Builder::new()
            .name(name.into())
            .stack_size(256 << 20)
            .spawn_scoped(scope, || check_here(name, ci_cases, strategy(), test))
            .expect("test thread");
        if let Err(panic) = t.join() {
            std::panic::resume_unwind(panic);
        }
    });
}

fn check_here<S: Strategy>(
    name: &'static str,
    ci_cases: u32,
    strategy: S,
    test: impl Fn(&S::Value) -> Result<(), String>,
) {
    quiet_panics();
    let counted = Cell::new(0u64);
    let failing = Cell::new(false);
    let slowest: RefCell<(Duration, String)> = RefCell::new((Duration::ZERO, String::new()));
    let fuzz = fuzz_seconds();
    let started = Instant::now();
    let deadline = fuzz.map(|secs| started + Duration::from_secs_f64(secs));
    let case = |v: S::Value| -> Result<(), TestCaseError> {
        // Past the time, the rest of a batch is skipped (but not the shrinking of a failure).
        if !failing.get() && deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(());
        }
        if !failing.get() {
            counted.set(counted.get() + 1);
        }
        let t = Instant::now();
        let mut r = one_case(|| test(&v));
        let took = t.elapsed();
        if fuzz.is_some() && took > TOO_SLOW && r.is_ok() {
            r = Err(format!("took {:.1} s", took.as_secs_f64()));
        }
        if took > SLOW && took > slowest.borrow().0 {
            *slowest.borrow_mut() = (took, format!("{v:?}"));
        }
        r.map_err(|m| {
            failing.set(true);
            TestCaseError::fail(m)
        })
    };
    let config = |cases: u32, shrink_ms: u32| Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2048,
        max_shrink_time: shrink_ms,
        max_local_rejects: 100_000,
        max_global_rejects: 100_000,
        ..Config::default()
    };
    let seed: u64 = match (fuzz, std::env::var("SPACKFS_FUZZ_SEED")) {
        (None, _) => 0,
        (Some(_), Ok(s)) => s.parse().expect("SPACKFS_FUZZ_SEED is a number"),
        (Some(_), Err(_)) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    };
    let outcome = match deadline {
        None => TestRunner::new_with_rng(config(ci_cases, 30_000), rng(name, seed, 0))
            .run(&strategy, case),
        Some(deadline) => {
            // Batches of about a second each, so that slow targets keep to the time too.
            let (mut batch, mut size) = (0, 4u32);
            loop {
                let t = Instant::now();
                let r = TestRunner::new_with_rng(config(size, 120_000), rng(name, seed, batch))
                    .run(&strategy, case);
                batch += 1;
                if r.is_err() || Instant::now() >= deadline {
                    break r;
                }
                if t.elapsed() < Duration::from_millis(500) && size < 4096 {
                    size *= 2;
                } else if t.elapsed() > Duration::from_secs(2) && size > 1 {
                    size /= 2;
                }
            }
        }
    };
    let n = counted.get();
    let took = started.elapsed().as_secs_f64();
    let ok = ACCEPTED.with(Cell::get);
    let (slow, slow_input) = slowest.into_inner();
    if fuzz.is_some() && slow > SLOW {
        say(&format!(
            "fuzz: {name}: slowest case took {:.1} s: {slow_input}",
            slow.as_secs_f64()
        ));
    }
    match outcome {
        Ok(()) => {
            if fuzz.is_some() {
                say(&format!(
                    "fuzz: {name}: {n} cases ({ok} accepted) in {took:.0} s, \
                     no failure (seed {seed})"
                ));
            }
        }
        Err(TestError::Fail(reason, value)) => {
            let msg = format!(
                "{name}: failed after {n} cases (seed {seed}): {reason}\n  minimal input: {value:?}"
            );
            if fuzz.is_some() {
                say(&format!("fuzz: {msg}"));
            }
            panic!("{msg}");
        }
        Err(TestError::Abort(reason)) => {
            if fuzz.is_some() {
                say(&format!("fuzz: {name}: aborted after {n} cases: {reason}"));
            }
            panic!("{name}: aborted after {n} cases: {reason}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// The corpus: valid inputs from the fixtures, loaded once.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Set {
    /// Clearsigned documents (v3 spec manifests, v2 signed spec files).
    Signed,
    /// Manifest JSON (unwrapped).
    Manifests,
    /// Spec JSON.
    Specs,
    /// Index databases.
    Indexes,
    /// `binary_distribution` files.
    Buildinfos,
    /// `mirrors.yaml` files (written here: the fixtures have none).
    Configs,
    /// Listed text files.
    Texts,
    /// ELF files.
    Elfs,
}

impl Set {
    fn dict(self) -> &'static [&'static [u8]] {
        match self {
            Set::Signed => mutate::ARMOR_TOKENS,
            Set::Manifests | Set::Specs | Set::Indexes => mutate::JSON_TOKENS,
            Set::Buildinfos | Set::Configs => mutate::YAML_TOKENS,
            Set::Texts | Set::Elfs => &[b"/", b"\0", b" ", b"-", b":", b"\n"],
        }
    }

    fn yaml(self) -> bool {
        matches!(self, Set::Buildinfos | Set::Configs)
    }
}

/// A package tarball of the fixtures, inflated, with its spec.
struct TarSample {
    name: String,
    tar: Vec<u8>,
    dag: Option<SpecDag>,
}

/// The old prefixes of a package (sbang path, `hash_to_prefix` values, `buildpath`).
#[derive(Clone, Debug)]
struct OldPrefixes {
    sbang: Option<String>,
    prefixes: Vec<String>,
    buildpath: String,
}

impl OldPrefixes {
    /// The pairs to relocate to `root`, in the order Spack builds them.
    fn pairs(&self, root: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(s) = &self.sbang {
            out.push((s.clone(), format!("{root}/bin/sbang")));
        }
        for p in &self.prefixes {
            let base = p.rsplit('/').next().unwrap_or(p);
            out.push((p.clone(), format!("{root}/linux-x86_64/{base}")));
        }
        out.push((self.buildpath.clone(), root.to_string()));
        out
    }
}

#[derive(Default)]
struct Corpus {
    sets: HashMap<Set, Vec<Sample>>,
    tars: Vec<TarSample>,
    /// Per sample of `Texts` and `Elfs`: its package's old prefixes.
    olds: HashMap<(Set, usize), OldPrefixes>,
    /// The fixture signing key and the signed text of each `Signed` sample it verifies.
    keyring: Option<spackfs::trust::Keyring>,
    signed_texts: HashMap<usize, Vec<u8>>,
    dags: Vec<SpecDag>,
}

impl Corpus {
    fn set(&self, s: Set) -> &[Sample] {
        self.sets.get(&s).map_or(&[], Vec::as_slice)
    }

    fn push(&mut self, s: Set, sample: Sample) -> usize {
        let v = self.sets.entry(s).or_default();
        v.push(sample);
        v.len() - 1
    }
}

fn corpus() -> &'static Corpus {
    static CORPUS: OnceLock<Corpus> = OnceLock::new();
    CORPUS.get_or_init(load_corpus)
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("fixture blob inflates");
    out
}

fn unwrap_clearsigned(doc: &[u8]) -> Vec<u8> {
    if manifest::is_clearsigned(doc) {
        common::mirror::clearsigned_text(doc)
    } else {
        doc.to_vec()
    }
}

fn load_corpus() -> Corpus {
    let mut c = Corpus::default();
    for (i, text) in CONFIG_SEEDS.iter().enumerate() {
        c.push(
            Set::Configs,
            Sample::new(format!("config seed {i}"), text.as_bytes().to_vec()),
        );
    }
    c.dags
        .push(SpecDag::parse(BUILTIN_DAG.as_bytes(), "builtin").expect("builtin DAG"));
    let Some(fx) = common::fixtures() else {
        return c;
    };
    if let Ok(key) = std::fs::read(fx.fixture_key()) {
        let mut ring = spackfs::trust::Keyring::default();
        ring.add_bytes(&key, Path::new("fixture key"))
            .expect("fixture key loads");
        c.keyring = Some(ring);
    }
    for cache in ["spack-v3-signed", "spack-v3-unsigned", "spack-v3-realstack"] {
        let mirror = fx.mirror(cache);
        let mut manifests: Vec<PathBuf> = common::walk(&mirror.join("v3/manifests"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        manifests.sort();
        for path in manifests {
            let doc = std::fs::read(&path).expect("fixture manifest");
            let rel = path
                .strip_prefix(&fx.dir)
                .unwrap_or(&path)
                .display()
                .to_string();
            if manifest::is_clearsigned(&doc) {
                let i = c.push(Set::Signed, Sample::new(rel.clone(), doc.clone()));
                if cache == "spack-v3-signed" {
                    if let Some(ring) = &c.keyring {
                        let v = ring
                            .verify_clearsigned(&doc, "fixture")
                            .expect("fixture signature");
                        c.signed_texts.insert(i, v.text);
                    }
                }
            }
            let json = unwrap_clearsigned(&doc);
            c.push(Set::Manifests, Sample::new(rel.clone(), json.clone()));
            let m = Manifest::parse(&json, &rel).expect("fixture manifest parses");
            let blob = |r: &spackfs::buildcache::manifest::BlobRecord| {
                let b = std::fs::read(mirror.join(r.path())).expect("fixture blob");
                if r.compression == "gzip" {
                    gunzip(&b)
                } else {
                    b
                }
            };
            let spec = m.find(manifest::MEDIA_SPEC, &rel).ok().map(blob);
            if let Some(spec) = &spec {
                c.push(Set::Specs, Sample::new(format!("{rel} spec"), spec.clone()));
            }
            if let Ok(r) = m.find(manifest::MEDIA_INDEX, &rel) {
                c.push(Set::Indexes, Sample::new(format!("{rel} index"), blob(r)));
            }
            if let Ok(r) = m.find(manifest::MEDIA_TARBALL, &rel) {
                let tgz = std::fs::read(mirror.join(r.path())).expect("fixture tarball");
                let dag = spec.as_deref().and_then(|s| SpecDag::parse(s, &rel).ok());
                add_tarball(&mut c, &rel, &tgz, dag);
            }
        }
    }
    let v2 = fx.mirror("spack-v2-signed").join("build_cache");
    let mut files = common::walk(&v2);
    files.sort();
    let mut v2_specs: HashMap<String, SpecDag> = HashMap::new();
    for path in &files {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let rel = path
            .strip_prefix(&fx.dir)
            .unwrap_or(path)
            .display()
            .to_string();
        if name.ends_with(".spec.json.sig") {
            let doc = std::fs::read(path).expect("v2 spec");
            let i = c.push(Set::Signed, Sample::new(rel.clone(), doc.clone()));
            if let Some(ring) = &c.keyring {
                if let Ok(v) = ring.verify_clearsigned(&doc, "fixture") {
                    c.signed_texts.insert(i, v.text);
                }
            }
            let json = unwrap_clearsigned(&doc);
            if let Ok(dag) = SpecDag::parse(&json, &rel) {
                v2_specs.insert(dag.root.clone(), dag);
            }
            c.push(Set::Specs, Sample::new(rel, json));
        } else if name == "index.json" {
            c.push(
                Set::Indexes,
                Sample::new(rel, std::fs::read(path).expect("v2 index")),
            );
        }
    }
    for path in &files {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if let Some(stem) = name.strip_suffix(".spack") {
            let hash = stem.rsplit('-').next().unwrap_or("");
            let rel = path
                .strip_prefix(&fx.dir)
                .unwrap_or(path)
                .display()
                .to_string();
            let tgz = std::fs::read(path).expect("v2 tarball");
            add_tarball(&mut c, &rel, &tgz, v2_specs.get(hash).cloned());
        }
    }
    for s in c.set(Set::Specs).to_vec() {
        if let Ok(d) = SpecDag::parse(&s.bytes, "fixture") {
            c.dags.push(d);
        }
    }
    c
}

/// Take a tarball apart for the corpus: its `binary_distribution`, listed text files and
/// ELF files (with the package's old prefixes), and the tarball itself when small.
fn add_tarball(c: &mut Corpus, rel: &str, tgz: &[u8], dag: Option<SpecDag>) {
    if tgz.len() > 2 << 20 {
        return;
    }
    let tar = gunzip(tgz);
    let members = common::tarball::read_tgz(tgz);
    let Some(info_member) = members
        .iter()
        .filter(|m| m.name.ends_with("/.spack/binary_distribution"))
        .min_by_key(|m| m.name.len())
    else {
        return;
    };
    let prefix = info_member
        .name
        .strip_suffix("/.spack/binary_distribution")
        .unwrap_or("")
        .to_string();
    c.push(
        Set::Buildinfos,
        Sample::new(
            format!("{rel} binary_distribution"),
            info_member.data.clone(),
        ),
    );
    let info = reference::parse_buildinfo(&info_member.data);
    let mut prefixes: Vec<String> = info
        .get("hash_to_prefix")
        .and_then(|m| m.as_mapping())
        .map(|m| {
            m.values()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if prefixes.is_empty() {
        prefixes = info
            .get("prefix_to_hash")
            .and_then(|m| m.as_mapping())
            .map(|m| {
                m.keys()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
    }
    let olds = OldPrefixes {
        sbang: info
            .get("sbang_install_path")
            .and_then(|v| v.as_str())
            .map(str::to_string),
        prefixes,
        buildpath: reference::buildinfo_str(&info, "buildpath").to_string(),
    };
    let texts: HashSet<String> = reference::buildinfo_list(&info, "relocate_textfiles")
        .into_iter()
        .collect();
    let (mut n_text, mut n_elf) = (0, 0);
    for m in &members {
        let Some(r) = m
            .name
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_prefix('/'))
        else {
            continue;
        };
        if m.data.starts_with(b"\x7fELF") && m.data.len() <= 512 << 10 && n_elf < 6 {
            let i = c.push(
                Set::Elfs,
                Sample::new(format!("{rel}: {r}"), m.data.clone()),
            );
            c.olds.insert((Set::Elfs, i), olds.clone());
            n_elf += 1;
        } else if texts.contains(r) && m.data.len() <= 64 << 10 && n_text < 6 {
            let i = c.push(
                Set::Texts,
                Sample::new(format!("{rel}: {r}"), m.data.clone()),
            );
            c.olds.insert((Set::Texts, i), olds.clone());
            n_text += 1;
        }
    }
    if tgz.len() <= 300 << 10 && tar.len() <= 2 << 20 {
        c.tars.push(TarSample {
            name: rel.to_string(),
            tar,
            dag,
        });
    }
}

/// A DAG for relocation maps when no fixture is at hand.
const BUILTIN_DAG: &str = r#"{"spec":{"_meta":{"version":5},"nodes":[
  {"name":"pkg","version":"1.0","arch":{"platform":"linux","platform_os":"debian12","target":"x86_64"},
   "dependencies":[{"name":"dep","hash":"bbbbbbb","parameters":{"deptypes":["build","link"],"virtuals":[]}}],
   "hash":"aaaaaaa"},
  {"name":"dep","version":"2.0","arch":{"platform":"linux","platform_os":"debian12","target":"x86_64"},"hash":"bbbbbbb"}]}}"#;

/// Seeds of `mirrors.yaml` in both dialects.
const CONFIG_SEEDS: &[&str] = &[
    "mirrors:\n  a: /srv/cache\n  b:\n    url: file:///x\n    signed: false\n  src:\n    url: file:///s\n    binary: false\n  c:\n    url: file:///ignored\n    fetch: {url: file:///f}\n  o: oci://ghcr.io/x/y\n",
    "mirrors:\n  s3:\n    url: s3://bucket/cache\n    access_pair: {id_variable: AK, secret_variable: SK}\n    endpoint_url: http://127.0.0.1:9000\n    fetch:\n      url: s3://bucket/fetch\n      profile: site\n    push: {url: s3://bucket/push, access_pair: {id: me, secret_variable: P}}\n",
    "buildcache:\n  url: file:///cache/\n  mount_specific: true\n  public_key: key.asc\n  private_key: secret.gpg\nsourcemirror:\n  bin: {url: /m, binary: true}\n  src: {url: /s}\nbootstrap: {url: /b}\n",
    "buildcache:\n  url: /c\n  public_key: aGVsbG8=\n",
    "mirrors:\n  a:\n    url: s3://b\n    access_pair: [id, secret]\n    access_token: tok\n    access_token_variable: TOK\n    view: v1\n",
    "buildcache:\n  name: site\n  fetch: {url: https://cache.example.invalid/c, access_token_variable: T}\n  push: https://cache.example.invalid/p\n  signed: false\n  description: a cache\n",
    "mirrors:\n  h: {url: http://127.0.0.1:8080/m, signed: true, autopush: false, source: false}\n  p: {pull: /x, push: null}\n  v: $HOME/cache/${USER}\n",
];

// ---------------------------------------------------------------------------------------
// Inputs: generated, arbitrary, or a sample of the corpus with edits.

/// How a generated value becomes bytes.
trait Render: fmt::Debug {
    fn render(&self) -> Vec<u8>;
}

#[derive(Clone, Copy, Debug)]
enum Style {
    Compact,
    Pretty,
    /// YAML block style.
    Block,
    /// YAML flow style (JSON).
    Flow,
}

#[derive(Clone)]
enum Input<G> {
    Gen(G),
    /// A generated input, then byte edits.
    GenEdited(G, Vec<ByteOp>),
    Raw(Vec<u8>),
    Bytes(Set, Index, Vec<ByteOp>),
    Tree(Set, Index, Vec<TreeOp>, Style, Vec<ByteOp>),
}

fn render_tree(v: &Value, style: Style) -> Vec<u8> {
    match style {
        Style::Compact | Style::Flow => serde_json::to_vec(v).expect("JSON"),
        Style::Pretty => serde_json::to_vec_pretty(v).expect("JSON"),
        Style::Block => serde_yaml_ng::to_string(v)
            .map(String::into_bytes)
            .unwrap_or_else(|_| serde_json::to_vec(v).expect("JSON")),
    }
}

impl<G: Render> Input<G> {
    /// The bytes, and what was done to make them.
    fn bytes(&self) -> (Vec<u8>, String) {
        let c = corpus();
        let mut log = String::new();
        let data = match self {
            Input::Gen(g) => g.render(),
            Input::GenEdited(g, ops) => {
                mutate::apply_bytes(&g.render(), ops, &[], mutate::YAML_TOKENS, &mut log)
            }
            Input::Raw(b) => b.clone(),
            Input::Bytes(set, i, ops) => {
                let s = &c.set(*set)[i.index(c.set(*set).len())];
                let _ = write!(log, "sample {}: ", s.name);
                mutate::apply_bytes(&s.bytes, ops, c.set(*set), set.dict(), &mut log)
            }
            Input::Tree(set, i, ops, style, then) => {
                let s = &c.set(*set)[i.index(c.set(*set).len())];
                let _ = write!(log, "sample {} as a tree: ", s.name);
                let mut v: Value = if set.yaml() {
                    serde_yaml_ng::from_slice(&s.bytes).unwrap_or(Value::Null)
                } else {
                    serde_json::from_slice(&s.bytes).unwrap_or(Value::Null)
                };
                for op in ops {
                    op.apply(&mut v, &mut log);
                }
                let style = match (set.yaml(), style) {
                    (true, Style::Compact | Style::Flow) => Style::Flow,
                    (true, _) => Style::Block,
                    (false, Style::Block | Style::Flow) => Style::Compact,
                    (false, s) => *s,
                };
                let _ = write!(log, "written {style:?}; ");
                mutate::apply_bytes(&render_tree(&v, style), then, &[], set.dict(), &mut log)
            }
        };
        (data, log)
    }
}

fn preview(bytes: &[u8]) -> String {
    const MAX: usize = 800;
    let cut = &bytes[..bytes.len().min(MAX)];
    let mut s = format!("{:?}", String::from_utf8_lossy(cut));
    if bytes.len() > MAX {
        let _ = write!(s, " …({} bytes in all)", bytes.len());
    }
    s
}

impl<G: Render> fmt::Debug for Input<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (bytes, log) = self.bytes();
        match self {
            Input::Gen(g) => write!(f, "generated {g:?}")?,
            Input::GenEdited(g, _) => write!(f, "generated {g:?}, then {log}")?,
            Input::Raw(_) => write!(f, "arbitrary bytes")?,
            _ => write!(f, "{log}")?,
        }
        write!(f, "\n  bytes: {}", preview(&bytes))
    }
}

fn style() -> impl Strategy<Value = Style> + Clone {
    prop_oneof![
        Just(Style::Compact),
        Just(Style::Pretty),
        Just(Style::Block),
        Just(Style::Flow)
    ]
}

/// Generated, generated-then-edited, arbitrary, and edited samples of `sets`.
fn inputs<G: Clone + Render + 'static>(
    gen: impl Strategy<Value = G> + Clone + 'static,
    sets: &[Set],
) -> impl Strategy<Value = Input<G>> {
    let c = corpus();
    let sets: Vec<Set> = sets
        .iter()
        .copied()
        .filter(|s| !c.set(*s).is_empty())
        .collect();
    let mut arms: Vec<(u32, BoxedStrategy<Input<G>>)> = vec![
        (3, gen.clone().prop_map(Input::Gen).boxed()),
        (
            2,
            (gen, prop::collection::vec(mutate::byte_op(), 1..4))
                .prop_map(|(g, o)| Input::GenEdited(g, o))
                .boxed(),
        ),
        (
            1,
            prop::collection::vec(any::<u8>(), 0..1024)
                .prop_map(Input::Raw)
                .boxed(),
        ),
    ];
    if !sets.is_empty() {
        let pick = prop::sample::select(sets);
        arms.push((
            4,
            (
                pick.clone(),
                any::<Index>(),
                prop::collection::vec(mutate::byte_op(), 1..8),
            )
                .prop_map(|(s, i, o)| Input::Bytes(s, i, o))
                .boxed(),
        ));
        arms.push((
            4,
            (
                pick,
                any::<Index>(),
                prop::collection::vec(mutate::tree_op(), 1..6),
                style(),
                prop::collection::vec(mutate::byte_op(), 0..2),
            )
                .prop_map(|(s, i, o, st, b)| Input::Tree(s, i, o, st, b))
                .boxed(),
        ));
    }
    Union::new_weighted(arms)
}

/// A generated JSON (or YAML) document.
#[derive(Clone)]
struct Doc(Value, Style);

impl fmt::Debug for Doc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({:?})",
            preview(self.0.to_string().as_bytes()),
            self.1
        )
    }
}

impl Render for Doc {
    fn render(&self) -> Vec<u8> {
        render_tree(&self.0, self.1)
    }
}

fn json_leaf() -> impl Strategy<Value = Value> {
    mutate::leaf().prop_map(|l| l.value())
}

fn s(v: &'static [&'static str]) -> impl Strategy<Value = String> + Clone {
    prop::sample::select(v).prop_map(str::to_string)
}

// ---------------------------------------------------------------------------------------
// Manifests and the clearsigned wrapper.

fn gen_manifest() -> impl Strategy<Value = Doc> + Clone {
    let checksum = prop_oneof![
        4 => "[0-9a-f]{64}",
        1 => "[0-9a-fA-F]{62,66}",
        1 => s(mutate::STRINGS),
        1 => "[0-9a-f]{2}/\\.\\./[0-9a-f]{58}",
        // Long and not ASCII: error messages that quote it must cut it at a character.
        1 => "[0-9a-f]{76,82}[é®𐰀]{1,3}",
    ];
    let record = (
        prop_oneof![3 => any::<u64>().prop_map(Value::from), 1 => json_leaf()],
        s(&[
            manifest::MEDIA_TARBALL,
            manifest::MEDIA_SPEC,
            manifest::MEDIA_INDEX,
            manifest::MEDIA_KEY,
            manifest::MEDIA_KEY_INDEX,
            "x",
        ]),
        s(&["gzip", "none", "zstd"]),
        s(&["sha256", "sha256", "sha256", "sha512", "SHA256"]),
        checksum,
        prop::option::of(0usize..5),
    )
        .prop_map(|(len, media, comp, alg, sum, drop)| {
            let mut o = serde_json::Map::new();
            o.insert("contentLength".into(), len);
            o.insert("mediaType".into(), media.into());
            o.insert("compression".into(), comp.into());
            o.insert("checksumAlgorithm".into(), alg.into());
            o.insert("checksum".into(), sum.into());
            if let Some(k) = drop.and_then(|d| o.keys().nth(d).cloned()) {
                o.shift_remove(&k);
            }
            Value::Object(o)
        });
    (
        prop_oneof![4 => Just(json!(3)), 1 => json_leaf()],
        prop::collection::vec(record, 0..5),
        style(),
    )
        .prop_map(|(v, data, st)| Doc(json!({"version": v, "data": data}), st))
}

#[test]
fn manifest_json() {
    check(
        "manifest_json",
        256,
        || inputs(gen_manifest(), &[Set::Manifests]),
        |input| {
            let (bytes, _) = input.bytes();
            match bounded(bytes.len(), || Manifest::parse(&bytes, WHAT))? {
                Ok(m) => {
                    accepted();
                    ensure!(m.version == 3, "accepted manifest version {}", m.version);
                    for r in &m.data {
                        ensure!(
                            r.checksum_algorithm == "sha256",
                            "accepted checksum {}:{}",
                            r.checksum_algorithm,
                            r.checksum
                        );
                        let (p, hex) = (r.path(), r.checksum.hex());
                        ensure!(
                            p == format!("blobs/sha256/{}/{hex}", &hex[..2]),
                            "blob path {p:?}"
                        );
                    }
                    for media in [manifest::MEDIA_TARBALL, manifest::MEDIA_SPEC] {
                        if let Err(e) = m.find(media, WHAT) {
                            clear(&e.to_string())?;
                        }
                    }
                    Ok(())
                }
                Err(e) => clear(&e.to_string()),
            }
        },
    );
}

/// A clearsigned document written here, with dash-escaping.
#[derive(Clone, Debug)]
struct GenClearsigned {
    headers: Vec<String>,
    lines: Vec<String>,
    crlf: bool,
    signature: String,
}

impl GenClearsigned {
    /// The text a reader must take out of it.
    fn text(&self) -> Vec<u8> {
        let mut out = String::new();
        for l in &self.lines {
            out.push_str(l);
            out.push('\n');
        }
        out.into_bytes()
    }
}

impl Render for GenClearsigned {
    fn render(&self) -> Vec<u8> {
        let nl = if self.crlf { "\r\n" } else { "\n" };
        let mut out = format!("{}{nl}", manifest::CLEARSIGN_BEGIN);
        for h in &self.headers {
            out.push_str(h);
            out.push_str(nl);
        }
        out.push_str(nl);
        for l in &self.lines {
            if l.starts_with('-') {
                out.push_str("- ");
            }
            out.push_str(l);
            out.push_str(nl);
        }
        out.push_str("-----BEGIN PGP SIGNATURE-----");
        out.push_str(nl);
        out.push_str(&self.signature);
        out.push_str(nl);
        out.push_str("-----END PGP SIGNATURE-----");
        out.push_str(nl);
        out.into_bytes()
    }
}

fn gen_clearsigned() -> impl Strategy<Value = GenClearsigned> + Clone {
    let line = prop_oneof![
        3 => s(&[
            "{", "}", "\"version\":3,", "-", "- x", "--", "-----BEGIN PGP SIGNED MESSAGE-----",
            "", " ", "Hash: SHA512", "\"data\":[]",
        ]),
        1 => "[ -~]{0,40}",
    ];
    (
        prop::collection::vec(s(&["Hash: SHA512", "Hash: SHA256", "Comment: x"]), 1..3),
        prop::collection::vec(line, 0..12).prop_map(|mut v| {
            // The reader drops empty lines before the text (harmless for JSON).
            v.insert(0, "{".to_string());
            v
        }),
        any::<bool>(),
        "[A-Za-z0-9+/=\n]{0,80}",
    )
        .prop_map(|(headers, lines, crlf, signature)| GenClearsigned {
            headers,
            lines,
            crlf,
            signature,
        })
}

#[test]
fn clearsign_wrapper() {
    check(
        "clearsign_wrapper",
        256,
        || inputs(gen_clearsigned(), &[Set::Signed]),
        |input| {
            let (bytes, _) = input.bytes();
            let text = bounded(bytes.len(), || {
                manifest::clearsigned_text_unverified(&bytes)
            })?;
            if let Some(t) = &text {
                accepted();
                ensure!(
                    manifest::is_clearsigned(&bytes),
                    "took text out of a document that is not clearsigned"
                );
                ensure!(
                    t.len() <= bytes.len() + 1,
                    "the text is longer than the document"
                );
            }
            if let Input::Gen(g) = input {
                // Without CR: a CR-LF document keeps no CR in its lines either.
                ensure!(
                    text.as_deref() == Some(&g.text()[..]),
                    "took {:?} out of a well-formed document, not {:?}",
                    text.as_deref().map(String::from_utf8_lossy),
                    String::from_utf8_lossy(&g.text())
                );
            }
            Ok(())
        },
    );
}

/// A signed fixture document, edited.
#[derive(Clone)]
struct SignedEdit(Index, Vec<ByteOp>);

impl SignedEdit {
    fn sample(&self) -> (usize, Vec<u8>, String) {
        let c = corpus();
        let signed: Vec<usize> = {
            let mut v: Vec<usize> = c.signed_texts.keys().copied().collect();
            v.sort();
            v
        };
        let i = signed[self.0.index(signed.len())];
        let s = &c.set(Set::Signed)[i];
        let mut log = format!("sample {}: ", s.name);
        let bytes = mutate::apply_bytes(
            &s.bytes,
            &self.1,
            c.set(Set::Signed),
            mutate::ARMOR_TOKENS,
            &mut log,
        );
        (i, bytes, log)
    }
}

impl fmt::Debug for SignedEdit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (_, bytes, log) = self.sample();
        write!(f, "{log}\n  bytes: {}", preview(&bytes))
    }
}

/// Lines without trailing blanks and without trailing empty lines: what a text signature
/// covers (CR-LF, LF and a lone CR all end a line).
fn canonical(text: &[u8]) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(text)
        .replace("\r\n", "\n")
        .replace('\r', "\n");
    let mut lines: Vec<Vec<u8>> = text
        .split('\n')
        .map(|l| l.trim_end_matches([' ', '\t']).as_bytes().to_vec())
        .collect();
    while lines.last().is_some_and(Vec::is_empty) {
        lines.pop();
    }
    lines
}

#[test]
fn clearsign_verify() {
    let c = corpus();
    let Some(ring) = &c.keyring else {
        return;
    };
    if c.signed_texts.is_empty() {
        return;
    }
    check(
        "clearsign_verify",
        64,
        || {
            (
                any::<Index>(),
                prop::collection::vec(mutate::byte_op(), 1..6),
            )
                .prop_map(|(i, o)| SignedEdit(i, o))
        },
        |edit| {
            let (i, bytes, _) = edit.sample();
            match bounded(bytes.len(), || ring.verify_clearsigned(&bytes, WHAT))? {
                Ok(v) => {
                    accepted();
                    ensure!(
                        v.signer == common::FIXTURE_FPR,
                        "verified with signer {}",
                        v.signer
                    );
                    ensure!(
                        canonical(&v.text) == canonical(&c.signed_texts[&i]),
                        "an edited document verified with another text: {:?}",
                        String::from_utf8_lossy(&v.text)
                    );
                    Ok(())
                }
                Err(e) => clear(&e.to_string()),
            }
        },
    );
}

// ---------------------------------------------------------------------------------------
// Spec JSON.

const HASHES: &[&str] = &[
    "aaaaaaa",
    "bbbbbbbb",
    "zzz9",
    "fiay6eocdgxold5hkzanlohmkkidcfyd",
    "lll",
    "ppp",
];
const BAD_HASHES: &[&str] = &["", "a/b", "..", "ABC-", "é", "a b"];
const NAMES: &[&str] = &[
    "app",
    "zlib",
    "gcc",
    "glibc",
    "python",
    "gcc-runtime",
    "..",
    "",
    "a/b",
    "é",
    ".",
];
const VERSIONS: &[&str] = &["1.0", "12.2.0", "git.abc=1.2", "", "..", "1/2", "."];

fn gen_edge() -> impl Strategy<Value = Value> + Clone {
    (
        s(NAMES),
        prop_oneof![6 => s(HASHES), 1 => s(BAD_HASHES)],
        s(&["hash", "build_hash", "full_hash"]),
        prop::collection::vec(s(&["build", "link", "run", "test"]), 0..3),
        prop::collection::vec(s(&["c", "cxx", "fortran", "mpi"]), 0..2),
        0u8..4,
    )
        .prop_map(|(name, hash, key, deptypes, virtuals, form)| {
            let mut o = serde_json::Map::new();
            o.insert("name".into(), name.into());
            o.insert(key, hash.into());
            match form {
                0 => {
                    o.insert(
                        "parameters".into(),
                        json!({"deptypes": deptypes, "virtuals": virtuals}),
                    );
                }
                1 => {
                    o.insert("type".into(), json!(deptypes));
                }
                2 => {
                    o.insert(
                        "type".into(),
                        json!(deptypes.first().cloned().unwrap_or_default()),
                    );
                }
                _ => {
                    o.insert("parameters".into(), json!({"deptypes": "link"}));
                }
            }
            Value::Object(o)
        })
}

fn gen_node() -> impl Strategy<Value = Value> + Clone {
    let arch = prop_oneof![
        (
            s(&["linux", "darwin", "..", ""]),
            s(&["debian12", "x/y"]),
            s(&["x86_64", "zen3", "a/../b"]),
            any::<bool>(),
        )
            .prop_map(|(p, o, t, obj)| {
                let t = if obj { json!({ "name": t }) } else { json!(t) };
                json!({"platform": p, "platform_os": o, "target": t})
            }),
        json_leaf(),
    ];
    (
        s(NAMES),
        s(VERSIONS),
        prop_oneof![8 => s(HASHES), 1 => s(BAD_HASHES)],
        s(&["hash", "hash", "build_hash"]),
        prop::option::of(arch),
        prop::option::of(prop_oneof![
            (s(&["gcc", "clang"]), s(&["12.2.0", ""]))
                .prop_map(|(n, v)| json!({"name": n, "version": v})),
            json_leaf(),
        ]),
        prop::option::of(prop_oneof![
            Just(json!({"path": "/usr"})),
            Just(Value::Null)
        ]),
        prop::collection::vec(gen_edge(), 0..4),
        any::<bool>(),
        s(&["builtin", "", "a/b"]),
    )
        .prop_map(
            |(name, version, hash, hash_key, arch, compiler, external, deps, as_map, ns)| {
                let mut o = serde_json::Map::new();
                o.insert("name".into(), name.into());
                o.insert("version".into(), version.into());
                o.insert("namespace".into(), ns.into());
                o.insert(hash_key, hash.into());
                if let Some(a) = arch {
                    o.insert("arch".into(), a);
                }
                if let Some(c) = compiler {
                    o.insert("compiler".into(), c);
                }
                if let Some(e) = external {
                    o.insert("external".into(), e);
                }
                let deps = if as_map {
                    Value::Object(
                        deps.into_iter()
                            .map(|d| (d["name"].as_str().unwrap_or("").to_string(), d))
                            .collect(),
                    )
                } else {
                    Value::Array(deps)
                };
                o.insert("dependencies".into(), deps);
                Value::Object(o)
            },
        )
}

fn gen_dag() -> impl Strategy<Value = Doc> + Clone {
    (
        prop::collection::vec(gen_node(), 0..6),
        any::<bool>(),
        prop::option::of(prop_oneof![
            Just(json!(2)),
            Just(json!(3)),
            Just(json!(4)),
            json_leaf()
        ]),
        prop::option::of("[0-9a-f]{64}"),
        style(),
    )
        .prop_map(|(nodes, v1, layout, checksum, st)| {
            let spec = if v1 {
                Value::Array(
                    nodes
                        .into_iter()
                        .map(|n| {
                            let name = n["name"].as_str().unwrap_or("").to_string();
                            json!({ name: n })
                        })
                        .collect(),
                )
            } else {
                json!({"_meta": {"version": 5}, "nodes": nodes})
            };
            let mut doc = json!({ "spec": spec });
            if let Some(l) = layout {
                doc["buildcache_layout_version"] = l;
            }
            if let Some(c) = checksum {
                doc["binary_cache_checksum"] = json!({"hash_algorithm": "sha256", "hash": c});
            }
            Doc(doc, st)
        })
}

fn valid_hash(h: &str) -> bool {
    !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A relative path below an install root: no empty, `.` or `..` component, only
/// `[A-Za-z0-9_+.-]` in components.
fn safe_relative(p: &str) -> Result<(), String> {
    ensure!(
        !p.is_empty()
            && p.split('/').all(|c| {
                !c.is_empty()
                    && c != "."
                    && c != ".."
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_+.-".contains(&b))
            }),
        "{p:?} is not a safe relative path"
    );
    Ok(())
}

fn check_dag(dag: &SpecDag) -> Result<(), String> {
    ensure!(
        dag.nodes.contains_key(&dag.root),
        "root {} is not a node",
        dag.root
    );
    for (h, n) in &dag.nodes {
        ensure!(h == &n.hash, "node keyed {h} has hash {}", n.hash);
        ensure!(valid_hash(&n.hash), "node {} has hash {:?}", n.name, n.hash);
    }
    let set = dag.relocation_set();
    let mut seen = HashSet::new();
    for n in &set {
        ensure!(
            seen.insert(&n.hash),
            "{} twice in the relocation set",
            n.hash
        );
        ensure!(!n.external, "external {} in the relocation set", n.hash);
        ensure!(dag.nodes.contains_key(&n.hash), "{} is not a node", n.hash);
    }
    for n in dag.nodes.values() {
        let _ = n.display();
        let stem = n.stem();
        ensure!(
            sanitize_component(&stem) == stem,
            "stem {stem:?} not sanitized"
        );
        let compiler = dag.compiler_of(n);
        let _ = layout::v2_tarball(n, compiler.as_ref());
        match layout::v3_spec_manifest(&n.name, &n.version, &n.hash) {
            Ok(m) => {
                ensure!(
                    m.starts_with(layout::V3_SPEC_DIR),
                    "spec manifest path {m:?}"
                );
                let rest = &m[layout::V3_SPEC_DIR.len()..];
                safe_relative(rest)?;
            }
            Err(e) => ensure!(!e.to_string().is_empty(), "empty error"),
        }
        match Projection::default().format(n, Some(dag)) {
            Ok(p) => safe_relative(&p)?,
            Err(e) => ensure!(!e.to_string().is_empty(), "empty error"),
        }
    }
    Ok(())
}

#[test]
fn spec_json() {
    check(
        "spec_json",
        192,
        || inputs(gen_dag(), &[Set::Specs]),
        |input| {
            let (bytes, _) = input.bytes();
            match bounded(bytes.len(), || SpecDag::parse(&bytes, WHAT))? {
                Ok(dag) => {
                    accepted();
                    check_dag(&dag)
                }
                Err(e) => clear(&e.to_string()),
            }
        },
    );
}

// ---------------------------------------------------------------------------------------
// The index database.

fn gen_index() -> impl Strategy<Value = Doc> + Clone {
    let record = (
        prop_oneof![6 => gen_node(), 1 => json_leaf()],
        prop_oneof![3 => any::<bool>().prop_map(Value::from), 1 => json_leaf()],
        any::<bool>(),
    )
        .prop_map(|(spec, inb, with_extra)| {
            let mut r = json!({"spec": spec, "in_buildcache": inb});
            if with_extra {
                r["ref_count"] = json!(1);
                r["path"] = json!("/opt/x");
                r["installed"] = json!(false);
            }
            r
        });
    let installs = prop_oneof![
        6 => prop::collection::vec((prop_oneof![6 => s(HASHES), 1 => s(BAD_HASHES)], record), 0..6)
            .prop_map(|v| Value::Object(v.into_iter().collect())),
        1 => json_leaf(),
    ];
    (
        prop_oneof![
            6 => s(&["8", "7", "6"]).prop_map(Value::from),
            1 => Just(json!(8)),
            1 => s(&["5", "9", "x", ""]).prop_map(Value::from),
            1 => json_leaf()
        ],
        prop::option::of(installs),
        style(),
    )
        .prop_map(|(version, installs, st)| {
            let mut db = json!({ "version": version });
            if let Some(i) = installs {
                db["installs"] = i;
            }
            Doc(json!({ "database": db }), st)
        })
}

/// A reader that hands out at most `chunk` bytes per read.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.chunk.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

type Listing = Vec<(String, String, bool)>;

fn listing(r: &spackfs::buildcache::table::IndexTable) -> Result<Listing, String> {
    let mut out = Vec::new();
    for row in 0..r.len() as u32 {
        let n = r.ident(row);
        ensure!(
            valid_hash(n.hash),
            "index record of {:?} has hash {:?}",
            n.name,
            n.hash
        );
        out.push((n.hash.to_string(), n.name.to_string(), r.in_buildcache(row)));
    }
    Ok(out)
}

#[test]
fn index_db() {
    check(
        "index_db",
        192,
        || inputs(gen_index(), &[Set::Indexes]),
        |input| {
            let (bytes, _) = input.bytes();
            let whole = bounded(bytes.len(), || index::parse(&bytes, WHAT))?;
            let chunk = bytes.len() % 7 + 1;
            // As a mount reads it: copied to a spool in pieces, then parsed from its map.
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let mut pieces = Chunked {
                data: &bytes,
                chunk,
            };
            let spool = std::sync::Arc::new(
                spackfs::buildcache::rawspec::Spool::copy_from(dir.path(), &mut pieces)
                    .map_err(|e| e.to_string())?,
            );
            let streamed = bounded(bytes.len(), || index::parse_spool(&spool, WHAT))?;
            match (whole, streamed) {
                (Ok(a), Ok(b)) => {
                    accepted();
                    let (a, b) = (listing(&a)?, listing(&b)?);
                    ensure!(
                        a == b,
                        "read whole: {a:?}, spooled in {chunk}-byte pieces: {b:?}"
                    );
                    Ok(())
                }
                (Err(a), Err(b)) => {
                    clear(&a.to_string())?;
                    clear(&b.to_string())
                }
                (a, b) => Err(format!(
                    "read whole: {:?}; spooled in {chunk}-byte pieces: {:?}",
                    a.map(|r| r.len()),
                    b.map(|r| r.len())
                )),
            }
        },
    );
}

/// A valid index (a fixture's, or one written by the crate's own writer) cut short.
#[derive(Clone)]
struct Truncated(Option<Index>, Vec<Value>, Index);

impl Truncated {
    fn bytes(&self) -> (String, Vec<u8>) {
        let (name, full) = match &self.0 {
            Some(i) => {
                let set = corpus().set(Set::Indexes);
                let s = &set[i.index(set.len())];
                (s.name.clone(), s.bytes.clone())
            }
            None => {
                let nodes: Vec<SpecNode> = self
                    .1
                    .iter()
                    .filter_map(|v| {
                        let mut n = SpecNode::from_json(v, "gen").ok()?;
                        n.raw = spackfs::buildcache::rawspec::RawSpec::Value(std::sync::Arc::new(
                            v.clone(),
                        ));
                        Some(n)
                    })
                    .collect();
                let table = std::sync::Arc::new(
                    spackfs::buildcache::table::IndexTable::from_nodes(
                        nodes.iter().map(|n| (n, true)),
                    )
                    .expect("a table of valid nodes"),
                );
                let packages: Vec<_> =
                    spackfs::buildcache::table::IndexTable::packages(&table).collect();
                let mut db = Vec::new();
                spackfs::catalog::write_database(packages.iter().map(|p| (p, true)), &mut db)
                    .expect("written in memory");
                ("a database written by catalog::write_database".into(), db)
            }
        };
        let end = full.len()
            - full
                .iter()
                .rev()
                .take_while(|b| b.is_ascii_whitespace())
                .count();
        let at = self.2.index(end.max(1));
        (
            format!("{name} cut at {at} of {}", full.len()),
            full[..at].to_vec(),
        )
    }
}

impl fmt::Debug for Truncated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, bytes) = self.bytes();
        write!(f, "{what}\n  bytes: {}", preview(&bytes))
    }
}

#[test]
fn index_truncated() {
    check(
        "index_truncated",
        128,
        || {
            let base = if corpus().set(Set::Indexes).is_empty() {
                Just(None).boxed()
            } else {
                prop::option::of(any::<Index>()).boxed()
            };
            (
                base,
                prop::collection::vec(gen_node(), 1..5),
                any::<Index>(),
            )
                .prop_map(|(b, n, i)| Truncated(b, n, i))
        },
        |t| {
            let (_, bytes) = t.bytes();
            match index::parse(&bytes, WHAT) {
                Ok(r) => Err(format!("a truncated index listed {} records", r.len())),
                Err(e) => clear(&e.to_string()),
            }
        },
    );
}

// ---------------------------------------------------------------------------------------
// binary_distribution.

/// Extra YAML around a generated `binary_distribution`.
#[derive(Clone, Debug)]
enum YamlExtra {
    None,
    /// Nested aliases: `levels` levels of `width` references each.
    AliasBomb {
        levels: usize,
        width: usize,
    },
    /// One long scalar referred to `count` times from the field `key`.
    ScalarAlias {
        len: usize,
        count: usize,
        key: &'static str,
    },
    /// Flow sequences nested this deep.
    Deep(usize),
    Tag(&'static str),
}

impl YamlExtra {
    fn render(&self, doc: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            YamlExtra::None => out.extend_from_slice(doc),
            YamlExtra::AliasBomb { levels, width } => {
                out.extend_from_slice(b"l0: &l0 [\"lol\"]\n");
                for l in 1..=*levels {
                    let refs = vec![format!("*l{}", l - 1); *width].join(", ");
                    out.extend_from_slice(format!("l{l}: &l{l} [{refs}]\n").as_bytes());
                }
                out.extend_from_slice(format!("relocate_textfiles: *l{levels}\n").as_bytes());
                out.extend_from_slice(strip_keys(doc, &["relocate_textfiles"]).as_bytes());
            }
            YamlExtra::ScalarAlias { len, count, key } => {
                out.extend_from_slice(format!("zz: &big \"{}\"\n", "a".repeat(*len)).as_bytes());
                match *key {
                    "hash_to_prefix" | "mirrors" => {
                        out.extend_from_slice(format!("{key}:\n").as_bytes());
                        for i in 0..*count {
                            out.extend_from_slice(format!("  k{i}: *big\n").as_bytes());
                        }
                    }
                    _ => {
                        out.extend_from_slice(format!("{key}:\n").as_bytes());
                        for _ in 0..*count {
                            out.extend_from_slice(b"- *big\n");
                        }
                    }
                }
                out.extend_from_slice(strip_keys(doc, &[key]).as_bytes());
            }
            YamlExtra::Deep(n) => {
                out.extend_from_slice(doc);
                out.extend_from_slice(b"\nzz: ");
                out.extend(std::iter::repeat_n(b'[', *n));
                out.extend(std::iter::repeat_n(b']', *n));
                out.push(b'\n');
            }
            YamlExtra::Tag(t) => {
                out.extend_from_slice(format!("zz: {t} x\n").as_bytes());
                out.extend_from_slice(doc);
            }
        }
        out
    }
}

/// A block-style YAML document without the given top-level keys (and their blocks).
fn strip_keys(doc: &[u8], keys: &[&str]) -> String {
    let text = String::from_utf8_lossy(doc);
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        let top = !line.starts_with(' ') && !line.starts_with('-');
        if top {
            skipping = keys.iter().any(|k| line.starts_with(&format!("{k}:")));
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[derive(Clone)]
struct GenYaml(Value, YamlExtra);

impl fmt::Debug for GenYaml {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} with {:?}",
            preview(self.0.to_string().as_bytes()),
            self.1
        )
    }
}

impl Render for GenYaml {
    fn render(&self) -> Vec<u8> {
        let block = render_tree(&self.0, Style::Block);
        self.1.render(&block)
    }
}

fn yaml_extra(keys: &'static [&'static str]) -> impl Strategy<Value = YamlExtra> + Clone {
    prop_oneof![
        8 => Just(YamlExtra::None),
        1 => (1usize..10, 2usize..12)
            .prop_map(|(levels, width)| YamlExtra::AliasBomb { levels, width }),
        1 => (
            prop::sample::select(&[1usize << 10, 16 << 10][..]),
            prop::sample::select(&[64usize, 4096][..]),
            prop::sample::select(keys),
        )
            .prop_map(|(len, count, key)| YamlExtra::ScalarAlias { len, count, key }),
        1 => prop::sample::select(&[100usize, 5000][..]).prop_map(YamlExtra::Deep),
        1 => prop::sample::select(&["!!binary", "!custom", "!!map", "!!int"][..])
            .prop_map(YamlExtra::Tag),
    ]
}

fn gen_path() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        4 => s(&[
            "/opt/store",
            "/opt/store/linux-x86_64/pkg-1.0-aaaaaaa",
            "/opt/store/bin/sbang",
            "/",
            "/opt",
        ]),
        1 => s(mutate::STRINGS),
        1 => "/[a-z/_.-]{0,30}",
    ]
}

fn gen_member_path() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        4 => s(&["bin/x", "lib/libx.so", "share/t.txt", "lib/link", "lib", ".spack/x", ".spack"]),
        1 => s(&["..", "../x", "/etc/passwd", "a//b", "./a", "", "lib/link/x", "missing"]),
        1 => "[a-z/._-]{0,20}",
    ]
}

fn gen_buildinfo_value() -> impl Strategy<Value = Value> + Clone {
    let list = || {
        prop_oneof![
            6 => prop::collection::vec(gen_member_path(), 0..4).prop_map(|v| json!(v)),
            1 => json_leaf(),
        ]
    };
    let map = prop_oneof![
        6 => prop::collection::vec((s(HASHES), gen_path()), 0..3)
            .prop_map(|v| Value::Object(v.into_iter().map(|(h, p)| (h, p.into())).collect())),
        1 => json_leaf(),
    ];
    (
        prop::option::of(gen_path()),
        prop_oneof![6 => gen_path().prop_map(Some), 1 => Just(None)],
        prop::option::of("[a-z/_.-]{0,20}"),
        prop_oneof![3 => any::<bool>().prop_map(Value::from), 1 => json_leaf()],
        prop::option::of(map.clone()),
        prop::option::of(map),
        (list(), list(), list()),
    )
        .prop_map(
            |(sbang, buildpath, rel, dedup, h2p, p2h, (bins, texts, links))| {
                let mut o = serde_json::Map::new();
                if let Some(s) = sbang {
                    o.insert("sbang_install_path".into(), s.into());
                }
                if let Some(b) = buildpath {
                    o.insert("buildpath".into(), b.into());
                }
                if let Some(r) = rel {
                    o.insert("relative_prefix".into(), r.into());
                }
                o.insert("hardlinks_deduped".into(), dedup);
                if let Some(m) = h2p {
                    o.insert("hash_to_prefix".into(), m);
                }
                if let Some(m) = p2h {
                    // prefix → hash
                    let inverted = match m {
                        Value::Object(m) => Value::Object(
                            m.into_iter()
                                .map(|(h, p)| {
                                    (p.as_str().unwrap_or("").to_string(), Value::String(h))
                                })
                                .collect(),
                        ),
                        other => other,
                    };
                    o.insert("prefix_to_hash".into(), inverted);
                }
                o.insert("relocate_binaries".into(), bins);
                o.insert("relocate_textfiles".into(), texts);
                o.insert("relocate_links".into(), links);
                Value::Object(o)
            },
        )
}

fn gen_buildinfo() -> impl Strategy<Value = GenYaml> + Clone {
    (
        gen_buildinfo_value(),
        yaml_extra(&["hash_to_prefix", "relocate_textfiles", "relocate_binaries"]),
    )
        .prop_map(|(v, e)| GenYaml(v, e))
}

fn check_buildinfo(info: &BuildInfo, dag: &SpecDag) -> Result<(), String> {
    ensure!(info.buildpath.is_some(), "accepted without buildpath");
    if let Err(e) = info.hash_to_old_prefix(WHAT) {
        clear(&e.to_string())?;
    }
    match RelocationMap::for_package(info, dag, "/r", WHAT, |n| {
        Ok(format!("/r/linux-x86_64/{}", n.stem()))
    }) {
        Ok(map) => {
            let mut keys = HashSet::new();
            for (o, n) in map.pairs() {
                ensure!(!o.is_empty() && o != n, "pair {o:?} -> {n:?} kept");
                ensure!(keys.insert(o.clone()), "key {o:?} twice");
            }
            Ok(())
        }
        Err(e) => clear(&e.to_string()),
    }
}

#[test]
fn buildinfo_yaml() {
    check(
        "buildinfo_yaml",
        192,
        || (inputs(gen_buildinfo(), &[Set::Buildinfos]), any::<Index>()),
        |(input, d)| {
            let (bytes, _) = input.bytes();
            let dags = &corpus().dags;
            let dag = &dags[d.index(dags.len())];
            match bounded(bytes.len(), || BuildInfo::parse(&bytes, WHAT))? {
                Ok(info) => {
                    accepted();
                    check_buildinfo(&info, dag)
                }
                Err(e) => clear(&e.to_string()),
            }
        },
    );
}

// ---------------------------------------------------------------------------------------
// The tar stream: extraction, then relocation, of edited fixture tarballs and generated
// ones, in a work directory holding a sentinel file that must stay untouched.

#[derive(Clone, Copy, Debug)]
enum Comp {
    Gzip,
    Zstd,
}

fn compress(data: &[u8], c: Comp) -> Vec<u8> {
    match c {
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).expect("in-memory write");
            e.finish().expect("in-memory write")
        }
        Comp::Zstd => zstd::encode_all(data, 1).expect("in-memory zstd"),
    }
}

/// How the blob's checksum and length are given to `extract`.
#[derive(Clone, Copy, Debug)]
enum Claim {
    /// The blob's own sha256 and length.
    Right,
    /// Its sha256, no length.
    NoLength,
    /// Another sha256.
    WrongSha,
    /// Another length.
    WrongLength,
}

fn claim() -> impl Strategy<Value = Claim> {
    prop_oneof![
        6 => Just(Claim::Right),
        2 => Just(Claim::NoLength),
        1 => Just(Claim::WrongSha),
        1 => Just(Claim::WrongLength),
    ]
}

/// A member of a generated tarball.
#[derive(Clone, Debug)]
enum GenKind {
    Dir,
    File(Vec<u8>),
    Symlink(&'static str),
    Hardlink(Index),
    Char,
    Fifo,
    Type(u8),
}

#[derive(Clone, Debug)]
struct GenMember {
    name: String,
    kind: GenKind,
    mode: u32,
}

const PKG_PREFIX: &str = "opt/store/linux-x86_64/pkg-1.0-aaaaaaa";

const SYMLINK_TARGETS: &[&str] = &[
    "../sentinel",
    "../../../../sentinel",
    "/opt/store/linux-x86_64/pkg-1.0-aaaaaaa/bin/x",
    "x",
    "/tmp",
    "",
    "..",
];

/// Install roots: short, ordinary, and longer than the fixtures' padded build root.
const ROOTS: &[&str] = &[
    "/r",
    "/tmp/spackfs-fuzz-root",
    "/a/root/that/is/quite/a/lot/longer/than/the/padded/build/root/of/the/fixture/packages\
     /which/has/128/characters/so/this/is/more/than/that/0123456789",
];

#[derive(Clone, Debug)]
struct GenTar {
    parents: bool,
    members: Vec<GenMember>,
    /// Where among the members `binary_distribution` goes (none: absent).
    info_at: Option<Index>,
    info: Value,
}

impl GenTar {
    fn tar(&self) -> Vec<u8> {
        use tar::EntryType;
        let mut b = common::tarball::TarBuilder::new();
        if self.parents {
            let mut p = String::new();
            for c in PKG_PREFIX.split('/') {
                if !p.is_empty() {
                    p.push('/');
                }
                p.push_str(c);
                b.dir(&p);
            }
        }
        let info = render_tree(&self.info, Style::Block);
        let at = self
            .info_at
            .as_ref()
            .map(|i| i.index(self.members.len() + 1));
        let names: Vec<String> = self.members.iter().map(|m| m.name.clone()).collect();
        for (i, m) in self.members.iter().enumerate() {
            if at == Some(i) {
                b.file(
                    &format!("{PKG_PREFIX}/.spack/binary_distribution"),
                    0o644,
                    &info,
                );
            }
            let name = m.name.as_bytes();
            match &m.kind {
                GenKind::Dir => {
                    b.raw(
                        format!("{}/", m.name).as_bytes(),
                        EntryType::Directory,
                        m.mode,
                        None,
                        b"",
                    );
                }
                GenKind::File(data) => {
                    b.raw(name, EntryType::Regular, m.mode, None, data);
                }
                GenKind::Symlink(t) => {
                    b.raw(name, EntryType::Symlink, m.mode, Some(t.as_bytes()), b"");
                }
                GenKind::Hardlink(t) => {
                    let target = &names[t.index(names.len())];
                    b.raw(name, EntryType::Link, m.mode, Some(target.as_bytes()), b"");
                }
                GenKind::Char => {
                    b.char_device(&m.name, 1, 3);
                }
                GenKind::Fifo => {
                    b.fifo(&m.name);
                }
                GenKind::Type(t) => {
                    b.raw(name, EntryType::new(*t), m.mode, None, b"");
                }
            }
        }
        if at == Some(self.members.len()) {
            b.file(
                &format!("{PKG_PREFIX}/.spack/binary_distribution"),
                0o644,
                &info,
            );
        }
        b.finish()
    }
}

fn gen_tar() -> impl Strategy<Value = GenTar> {
    let rel = prop_oneof![
        6 => s(&[
            "bin", "bin/x", "lib", "lib/libx.so", "lib/link", "share", "share/t.txt", ".spack",
            ".spack/spec.json",
        ])
        .prop_map(|r| format!("{PKG_PREFIX}/{r}")),
        1 => prop::sample::select(mutate::TAR_NAMES)
            .prop_map(|n| String::from_utf8_lossy(n).into_owned()),
        1 => s(&[
            "opt/store/other/file",
            "opt",
            "opt/store",
            "etc/x",
            "opt/store/linux-x86_64/pkg-1.0-aaaaaaa/lib/link/x",
        ]),
        1 => (1usize..3)
            .prop_map(|n| format!("{PKG_PREFIX}/{}", "long-name-component/".repeat(n * 4))),
    ];
    let content = prop_oneof![
        s(&[
            "prefix=/opt/store/linux-x86_64/pkg-1.0-aaaaaaa\n",
            "#!/bin/sh /opt/store/bin/sbang\n",
            "/opt/store/linux-x86_64/pkg-1.0-aaaaaaa/lib\0xx\0",
            "",
        ])
        .prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..64),
    ];
    let kind = prop_oneof![
        3 => Just(GenKind::Dir),
        4 => content.prop_map(GenKind::File),
        2 => prop::sample::select(SYMLINK_TARGETS).prop_map(GenKind::Symlink),
        2 => any::<Index>().prop_map(GenKind::Hardlink),
        1 => Just(GenKind::Char),
        1 => Just(GenKind::Fifo),
        1 => prop::sample::select(&b"3467LKxgSV"[..]).prop_map(GenKind::Type),
    ];
    let member = (
        rel,
        kind,
        prop::sample::select(&[0o755u32, 0o644, 0o4755, 0o777, 0o2775, 0o1777][..]),
    )
        .prop_map(|(name, kind, mode)| GenMember { name, kind, mode });
    (
        prop::bool::weighted(0.9),
        prop::collection::vec(member, 0..10),
        prop::option::weighted(0.9, any::<Index>()),
        gen_buildinfo_value(),
    )
        .prop_map(|(parents, members, info_at, mut info)| {
            info["buildpath"] = json!("/opt/store");
            if !info["hash_to_prefix"].is_object() {
                info["hash_to_prefix"] =
                    json!({"aaaaaaa": "/opt/store/linux-x86_64/pkg-1.0-aaaaaaa"});
            }
            GenTar {
                parents,
                members,
                info_at,
                info,
            }
        })
}

#[derive(Clone, Debug)]
enum TarSource {
    /// A fixture tarball with edits of its tar stream.
    Fixture(Index, Vec<TarOp>),
    Generated(GenTar),
}

#[derive(Clone)]
struct TarCase {
    source: TarSource,
    comp: Comp,
    /// Edits of the compressed blob.
    blob_ops: Vec<ByteOp>,
    claim: Claim,
    root: &'static str,
}

impl TarCase {
    fn build(&self) -> (Vec<u8>, Option<&'static SpecDag>, String) {
        let c = corpus();
        let mut log = String::new();
        let (tar, dag) = match &self.source {
            TarSource::Fixture(i, ops) => {
                let t = &c.tars[i.index(c.tars.len())];
                let _ = write!(log, "tarball {}: ", t.name);
                (
                    mutate::apply_tar(&t.tar, ops, &[], &mut log),
                    t.dag.as_ref(),
                )
            }
            TarSource::Generated(g) => {
                let _ = write!(log, "generated {g:?}; ");
                (g.tar(), None)
            }
        };
        let blob = compress(&tar, self.comp);
        let blob = mutate::apply_bytes(&blob, &self.blob_ops, &[], &[], &mut log);
        let _ = write!(
            log,
            "{:?}-compressed to {} bytes, {:?}, root {:?}",
            self.comp,
            blob.len(),
            self.claim,
            self.root
        );
        (blob, dag, log)
    }
}

impl fmt::Debug for TarCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (_, _, log) = self.build();
        write!(f, "{log}")
    }
}

fn tar_case() -> impl Strategy<Value = TarCase> {
    let have = !corpus().tars.is_empty();
    let source = if have {
        prop_oneof![
            3 => (any::<Index>(), prop::collection::vec(mutate::tar_op(), 0..6))
                .prop_map(|(i, o)| TarSource::Fixture(i, o)),
            2 => gen_tar().prop_map(TarSource::Generated),
        ]
        .boxed()
    } else {
        gen_tar().prop_map(TarSource::Generated).boxed()
    };
    (
        source,
        prop_oneof![3 => Just(Comp::Gzip), 1 => Just(Comp::Zstd)],
        prop_oneof![
            8 => Just(Vec::new()),
            1 => prop::collection::vec(mutate::byte_op(), 1..3)
        ],
        claim(),
        prop::sample::select(ROOTS),
    )
        .prop_map(|(source, comp, blob_ops, claim, root)| TarCase {
            source,
            comp,
            blob_ops,
            claim,
            root,
        })
}

fn builtin_dag() -> &'static SpecDag {
    &corpus().dags[0]
}

/// Extract `blob` in a fresh work directory and relocate what came out; the sentinel next
/// to the staging directory must stay untouched and nothing may appear beside it.
fn extract_and_relocate(
    blob: &[u8],
    claim: Claim,
    dag: &SpecDag,
    root: &str,
    limits: Limits,
) -> Result<(), String> {
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let staging = work.path().join("staging");
    let sentinel = work.path().join("sentinel");
    std::fs::write(&sentinel, b"sentinel").map_err(|e| e.to_string())?;
    let sha = match claim {
        Claim::WrongSha => Sha256::of(b"another blob"),
        _ => Sha256::of(blob),
    };
    let len = match claim {
        Claim::Right | Claim::WrongSha => Some(blob.len() as u64),
        Claim::NoLength => None,
        Claim::WrongLength => Some(blob.len() as u64 + 1),
    };
    let result = bounded(blob.len(), || {
        extract(blob, &sha, len, &staging, limits, true, WHAT)
    })?;
    let outcome = match result {
        Err(e) => clear(&e.to_string()),
        Ok(ex) => (|| {
            accepted();
            ensure!(
                matches!(claim, Claim::Right | Claim::NoLength),
                "extracted a blob whose claim is {claim:?}"
            );
            ensure!(
                ex.prefix_dir.starts_with(&staging),
                "prefix {} outside staging",
                ex.prefix_dir.display()
            );
            for (rel, (kind, mode)) in &ex.members {
                ensure!(check_name(rel.as_bytes()).is_ok(), "member {rel:?} kept");
                ensure!(mode & !0o755 == 0, "member {rel:?} keeps mode {mode:o}");
                if *kind == MemberKind::File {
                    let m = std::fs::symlink_metadata(ex.prefix_dir.join(rel))
                        .map_err(|e| format!("{rel}: {e}"))?;
                    let on_disk = m.permissions().mode() & 0o7777;
                    ensure!(on_disk & 0o7022 == 0, "{rel} has mode {on_disk:o} on disk");
                }
            }
            let map = RelocationMap::for_package(&ex.buildinfo, dag, root, WHAT, |n| {
                Projection::default()
                    .format(n, Some(dag))
                    .map(|p| format!("{root}/{p}"))
            });
            match map {
                Err(e) => clear(&e.to_string()),
                Ok(map) => {
                    let limit = HEAP_BASE + 3 * ex.unpacked_bytes;
                    let r = bounded_by(limit, ex.unpacked_bytes as usize, || {
                        relocate(&ex.prefix_dir, &ex.members, &ex.buildinfo, &map, true, WHAT)
                    })?;
                    match r {
                        Ok(_) => Ok(()),
                        Err(e) => clear(&e.to_string()),
                    }
                }
            }
        })(),
    };
    let s = std::fs::read(&sentinel).map_err(|e| format!("sentinel: {e}"))?;
    ensure!(s == b"sentinel", "the sentinel beside staging was changed");
    let mut beside = common::entries(work.path());
    beside.sort();
    ensure!(
        beside == ["sentinel", "staging"] || beside == ["sentinel"],
        "beside staging: {beside:?}"
    );
    outcome
}

#[test]
fn tar_stream() {
    check("tar_stream", 96, tar_case, |case| {
        let (blob, dag, _) = case.build();
        extract_and_relocate(
            &blob,
            case.claim,
            dag.unwrap_or_else(builtin_dag),
            case.root,
            Limits {
                max_unpacked: 1 << 30,
            },
        )
    });
}

/// A tarball whose size comes from a length field: an extension header (pax `x`/`g`, GNU
/// `L`/`K`) or a file claiming `mib` MiB, of highly compressible content.
#[derive(Clone, Debug)]
struct Bomb {
    kind: u8,
    mib: usize,
    comp: Comp,
}

impl Bomb {
    fn blob(&self) -> Vec<u8> {
        let size = self.mib << 20;
        let mut tar = Vec::with_capacity(size + 8192);
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::new(self.kind));
        h.set_size(size as u64);
        h.set_mode(0o644);
        h.as_mut_bytes()[..20].copy_from_slice(b"opt/store/bomb-entry");
        h.set_cksum();
        tar.extend_from_slice(h.as_bytes());
        if self.kind == b'x' {
            // One pax record as long as the header says, then padding.
            let rec = format!("{size} comment=");
            tar.extend_from_slice(rec.as_bytes());
            tar.extend(std::iter::repeat_n(b'a', size - rec.len() - 1));
            tar.push(b'\n');
        } else {
            tar.extend(std::iter::repeat_n(b'a', size));
        }
        let mut f = tar::Header::new_ustar();
        f.set_entry_type(tar::EntryType::Regular);
        f.set_size(0);
        f.as_mut_bytes()[..15].copy_from_slice(b"opt/store/after");
        f.set_cksum();
        tar.extend_from_slice(f.as_bytes());
        tar.extend(std::iter::repeat_n(0u8, 1024));
        compress(&tar, self.comp)
    }
}

#[test]
fn tar_bomb() {
    let bomb = (
        prop::sample::select(&b"xgLK0"[..]),
        prop::sample::select(&[16usize, 48][..]),
        prop_oneof![Just(Comp::Gzip), Just(Comp::Zstd)],
    )
        .prop_map(|(kind, mib, comp)| Bomb { kind, mib, comp });
    check(
        "tar_bomb",
        6,
        || bomb,
        |b| {
            let blob = b.blob();
            let work = tempfile::tempdir().map_err(|e| e.to_string())?;
            let staging = work.path().join("staging");
            let limits = Limits {
                max_unpacked: 32 << 20,
            };
            let sha = Sha256::of(&blob);
            let r = bounded(blob.len(), || {
                extract(&blob[..], &sha, None, &staging, limits, true, WHAT)
            })?;
            match r {
                Ok(_) => Err("extracted a tarball without binary_distribution".into()),
                Err(e) => clear(&e.to_string()),
            }
        },
    );
}

// ---------------------------------------------------------------------------------------
// Relocation rules against the independent references.

/// How a key of a generated map is made.
#[derive(Clone, Debug)]
enum KeySpec {
    Fresh(String),
    /// A prefix of an earlier key.
    PrefixOf(Index, Index),
    /// An earlier key with more after it.
    Extend(Index, String),
    /// An earlier key again (its value is updated in place).
    Same(Index),
}

/// How a value is made from its key.
#[derive(Clone, Debug)]
enum ValueSpec {
    Fresh(String),
    /// The key's tail after `d` more bytes: same tail, `d` bytes shorter.
    SameTail(usize),
    /// Another string `d` bytes shorter.
    Other(usize),
    /// `e` bytes longer.
    Longer(usize),
    /// The key itself (dropped from the map).
    Identity,
}

fn key_string() -> impl Strategy<Value = String> + Clone {
    let seg = s(&[
        "opt",
        "spack",
        "a",
        "b",
        "ab",
        "x-y",
        "_",
        "lib",
        "é",
        "9",
        "sp",
        "__spack_path_placeholder__",
    ]);
    (
        s(&["/", "/", "/", "", "-L/", "x", ":", "=", "a/"]),
        prop::collection::vec(seg, 1..4),
        s(&["", "", "/", "-", ":", " ", "\0", "_"]),
    )
        .prop_map(|(lead, segs, trail)| format!("{lead}{}{trail}", segs.join("/")))
}

fn resolve_pairs(specs: &[(KeySpec, ValueSpec)]) -> Vec<(String, String)> {
    let mut keys: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for (k, v) in specs {
        let key = match k {
            KeySpec::Fresh(s) => s.clone(),
            KeySpec::PrefixOf(i, at) if !keys.is_empty() => {
                let k = &keys[i.index(keys.len())];
                let mut at = 1 + at.index(k.len().max(1));
                at = at.min(k.len());
                while !k.is_char_boundary(at) {
                    at -= 1;
                }
                k[..at].to_string()
            }
            KeySpec::Extend(i, more) if !keys.is_empty() => {
                format!("{}{more}", keys[i.index(keys.len())])
            }
            KeySpec::Same(i) if !keys.is_empty() => keys[i.index(keys.len())].clone(),
            _ => "/opt".to_string(),
        };
        let chars: Vec<char> = key.chars().collect();
        let value = match v {
            ValueSpec::Fresh(s) => s.clone(),
            ValueSpec::SameTail(d) => {
                let keep = chars.len().saturating_sub(*d + 1);
                let tail: String = chars[chars.len() - keep..].iter().collect();
                if key.len() > *d {
                    format!("/{}", &tail)
                } else {
                    tail
                }
            }
            ValueSpec::Other(d) => {
                let n = key.len().saturating_sub(*d);
                let mut v = "/n".to_string();
                v.push_str(&"q".repeat(n.saturating_sub(2)));
                v.truncate(n);
                v
            }
            ValueSpec::Longer(e) => format!("{key}{}", "x".repeat(*e)),
            ValueSpec::Identity => key.clone(),
        };
        keys.push(key.clone());
        out.push((key, value));
    }
    out
}

/// A piece of a generated text or binary.
#[derive(Clone, Debug)]
enum Piece {
    Key(Index),
    /// The start of a key.
    KeyCut(Index, Index),
    Value(Index),
    Sep(&'static str),
    Raw(Vec<u8>),
}

const SEPS: &[&str] = &[
    " ", "/", "//", "-", "_", ":", "=", "\n", "\0", "\0\0", "x", "é", "\r\n", ".", "a", "9", "lib",
    "\"", "'", "-L", "x/",
];

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        4 => any::<Index>().prop_map(Piece::Key),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(i, j)| Piece::KeyCut(i, j)),
        1 => any::<Index>().prop_map(Piece::Value),
        4 => prop::sample::select(SEPS).prop_map(Piece::Sep),
        1 => prop::collection::vec(any::<u8>(), 1..4).prop_map(Piece::Raw),
    ]
}

/// A generated map and data for the relocation rules.
#[derive(Clone)]
struct RuleCase {
    pairs: Vec<(String, String)>,
    data: Vec<u8>,
}

impl fmt::Debug for RuleCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pairs {:?}\n  data: {}", self.pairs, preview(&self.data))
    }
}

fn assemble(pieces: &[Piece], pairs: &[(String, String)]) -> Vec<u8> {
    let mut data = Vec::new();
    for p in pieces {
        match p {
            Piece::Key(i) => data.extend_from_slice(pairs[i.index(pairs.len())].0.as_bytes()),
            Piece::KeyCut(i, j) => {
                let k = pairs[i.index(pairs.len())].0.as_bytes();
                data.extend_from_slice(&k[..j.index(k.len() + 1)]);
            }
            Piece::Value(i) => data.extend_from_slice(pairs[i.index(pairs.len())].1.as_bytes()),
            Piece::Sep(s) => data.extend_from_slice(s.as_bytes()),
            Piece::Raw(b) => data.extend_from_slice(b),
        }
    }
    data
}

fn rule_case() -> impl Strategy<Value = RuleCase> {
    let key = prop_oneof![
        4 => key_string().prop_map(KeySpec::Fresh),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(i, j)| KeySpec::PrefixOf(i, j)),
        2 => (any::<Index>(), s(&["/", "/lib", "-1.0", "x", "/a/b"]))
            .prop_map(|(i, s)| KeySpec::Extend(i, s)),
        1 => any::<Index>().prop_map(KeySpec::Same),
    ];
    let value = prop_oneof![
        2 => prop_oneof![
            key_string(),
            s(&["/u", "", "/u/linux-x86_64/zlib-1.3-abc", "/new/prefix/that/is/long"]),
        ]
        .prop_map(ValueSpec::Fresh),
        3 => (0usize..16).prop_map(ValueSpec::SameTail),
        2 => (0usize..16).prop_map(ValueSpec::Other),
        1 => (1usize..4).prop_map(ValueSpec::Longer),
        1 => Just(ValueSpec::Identity),
    ];
    (
        prop::collection::vec((key, value), 1..6),
        prop::collection::vec(piece(), 0..40),
    )
        .prop_map(|(specs, pieces)| {
            let pairs = resolve_pairs(&specs);
            let data = assemble(&pieces, &pairs);
            RuleCase { pairs, data }
        })
}

/// `M` as format doc 7.1 defines it, written independently of `RelocationMap`: insertion
/// order, a repeated key updated in place, then empty keys and identity pairs dropped.
fn reference_map(pairs: &[(String, String)]) -> Map {
    let mut m: Map = Vec::new();
    for (k, v) in pairs {
        let (k, v) = (k.as_bytes().to_vec(), v.as_bytes().to_vec());
        match m.iter_mut().find(|(x, _)| *x == k) {
            Some(e) => e.1 = v,
            None => m.push((k, v)),
        }
    }
    m.retain(|(k, v)| !k.is_empty() && k != v);
    m
}

fn check_text_rule(data: &[u8], pairs: &[(String, String)]) -> Result<(), String> {
    let map = RelocationMap::from_pairs(pairs.iter().cloned(), "/u");
    let m = reference_map(pairs);
    ensure!(
        map.pairs() == &m[..],
        "map {:?}, reference {:?}",
        map.pairs(),
        m
    );
    let got = bounded(data.len(), || relocate_text(data, &map))?;
    let want = if m.is_empty() {
        data.to_vec()
    } else {
        reference::relocate_text(data, &m)
    };
    match got {
        None => ensure!(
            want == data,
            "left untouched, the reference gives {}",
            preview(&want)
        ),
        Some(out) => ensure!(
            {
                accepted();
                out == want
            },
            "gives {}\n  the reference gives {}",
            preview(&out),
            preview(&want)
        ),
    }
    Ok(())
}

/// A listed text file or an ELF file of the fixtures, edited, with its package's map to a
/// root.
#[derive(Clone)]
struct FixtureFile(Set, Index, Vec<ByteOp>, &'static str);

impl FixtureFile {
    fn get(&self) -> (Vec<u8>, Vec<(String, String)>, String) {
        let c = corpus();
        let set = c.set(self.0);
        let i = self.1.index(set.len());
        let mut log = format!("sample {}, root {:?}: ", set[i].name, self.3);
        let data = mutate::apply_bytes(&set[i].bytes, &self.2, set, self.0.dict(), &mut log);
        (data, c.olds[&(self.0, i)].pairs(self.3), log)
    }
}

impl fmt::Debug for FixtureFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (data, _, log) = self.get();
        write!(f, "{log}\n  bytes: {}", preview(&data))
    }
}

#[derive(Clone, Debug)]
enum RuleInput {
    Gen(RuleCase),
    Fixture(FixtureFile),
}

fn rule_inputs(set: Set) -> impl Strategy<Value = RuleInput> {
    let gen = rule_case().prop_map(RuleInput::Gen);
    if corpus().set(set).is_empty() {
        return gen.boxed();
    }
    prop_oneof![
        3 => gen,
        1 => (
            any::<Index>(),
            prop::collection::vec(mutate::byte_op(), 0..6),
            prop::sample::select(&["/u", "/tmp/spackfs-root", "/opt/fixture-store"][..]),
        )
            .prop_map(move |(i, o, r)| RuleInput::Fixture(FixtureFile(set, i, o, r))),
    ]
    .boxed()
}

impl RuleInput {
    fn get(&self) -> (Vec<u8>, Vec<(String, String)>) {
        match self {
            RuleInput::Gen(c) => (c.data.clone(), c.pairs.clone()),
            RuleInput::Fixture(f) => {
                let (d, p, _) = f.get();
                (d, p)
            }
        }
    }
}

#[test]
fn relocate_text_reference() {
    check(
        "relocate_text_reference",
        512,
        || rule_inputs(Set::Texts),
        |input| {
            let (data, pairs) = input.get();
            check_text_rule(&data, &pairs)
        },
    );
}

fn check_binary_rule(data: &[u8], pairs: &[(String, String)]) -> Result<(), String> {
    let map = RelocationMap::from_pairs(pairs.iter().cloned(), "/u");
    let m = reference_map(pairs);
    let mut got = data.to_vec();
    let r = bounded(data.len(), || relocate_binary(&mut got, &map))?;
    let want = common::binary_reference::relocate_binary(data, &m);
    use common::binary_reference::Refusal;
    match (r, want) {
        (Ok(n), Ok((out, k))) => {
            if n > 0 {
                accepted();
            }
            ensure!(
                got == out,
                "gives {}\n  the reference gives {}",
                preview(&got),
                preview(&out)
            );
            ensure!(n == k, "{n} replacements, the reference makes {k}");
        }
        (Err(BinaryError::CannotGrow { old, new }), Err(Refusal::Grow { old: o, new: n })) => {
            ensure!(
                old == o && new == n,
                "refused growing {old:?} -> {new:?}, the reference {o:?} -> {n:?}"
            );
        }
        (Err(BinaryError::CannotShrink { offset, .. }), Err(Refusal::Shrink { offset: o })) => {
            ensure!(
                offset == o,
                "refused shrinking at {offset}, the reference at {o}"
            );
        }
        (r, w) => {
            return Err(format!(
                "gives {:?}, the reference {:?}",
                r,
                w.map(|(_, k)| k)
            ))
        }
    }
    Ok(())
}

#[test]
fn relocate_binary_reference() {
    check(
        "relocate_binary_reference",
        512,
        || rule_inputs(Set::Elfs),
        |input| {
            let (data, pairs) = input.get();
            check_binary_rule(&data, &pairs)
        },
    );
}

// ---------------------------------------------------------------------------------------
// Relocation of a prefix through the public entry point: an ELF file (a fixture's, edited
// field-wise or byte-wise, or a small one written here), a text file, a symlink and hostile
// list entries.

/// A small ELF64 shared object with a `PT_INTERP`, a `PT_DYNAMIC` with `DT_STRTAB` and an
/// rpath (`DT_RPATH` or `DT_RUNPATH`), and the string table's section header.
fn mini_elf(rpath: &[u8], interp: &[u8], runpath: bool, big_endian: bool) -> Vec<u8> {
    let w16 = |v: &mut Vec<u8>, x: u16| {
        v.extend_from_slice(&if big_endian {
            x.to_be_bytes()
        } else {
            x.to_le_bytes()
        })
    };
    let w32 = |v: &mut Vec<u8>, x: u32| {
        v.extend_from_slice(&if big_endian {
            x.to_be_bytes()
        } else {
            x.to_le_bytes()
        })
    };
    let w64 = |v: &mut Vec<u8>, x: u64| {
        v.extend_from_slice(&if big_endian {
            x.to_be_bytes()
        } else {
            x.to_le_bytes()
        })
    };
    const VADDR: u64 = 0x40_0000;
    let interp_off = 64 + 3 * 56;
    let strtab_off = interp_off + interp.len() + 1;
    let strtab_len = rpath.len() + 2;
    let dyn_off = (strtab_off + strtab_len).div_ceil(8) * 8;
    let sh_off = dyn_off + 3 * 16;
    let total = sh_off + 2 * 64;
    let mut v = Vec::with_capacity(total);
    v.extend_from_slice(b"\x7fELF\x02");
    v.push(if big_endian { 2 } else { 1 });
    v.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    w16(&mut v, 3); // ET_DYN
    w16(&mut v, 62);
    w32(&mut v, 1);
    w64(&mut v, 0);
    w64(&mut v, 64); // e_phoff
    w64(&mut v, sh_off as u64);
    w32(&mut v, 0);
    w16(&mut v, 64);
    w16(&mut v, 56);
    w16(&mut v, 3);
    w16(&mut v, 64);
    w16(&mut v, 2);
    w16(&mut v, 0);
    let ph = |v: &mut Vec<u8>, t: u32, off: usize, size: usize| {
        w32(v, t);
        w32(v, 4);
        w64(v, off as u64);
        w64(v, VADDR + off as u64);
        w64(v, VADDR + off as u64);
        w64(v, size as u64);
        w64(v, size as u64);
        w64(v, 8);
    };
    ph(&mut v, 1, 0, total);
    ph(&mut v, 3, interp_off, interp.len() + 1);
    ph(&mut v, 2, dyn_off, 3 * 16);
    v.extend_from_slice(interp);
    v.push(0);
    v.push(0);
    v.extend_from_slice(rpath);
    v.push(0);
    v.resize(dyn_off, 0);
    w64(&mut v, 5); // DT_STRTAB
    w64(&mut v, VADDR + strtab_off as u64);
    w64(&mut v, if runpath { 29 } else { 15 });
    w64(&mut v, 1);
    w64(&mut v, 0);
    w64(&mut v, 0);
    v.resize(sh_off + 64, 0);
    w32(&mut v, 0);
    w32(&mut v, 3); // SHT_STRTAB
    w64(&mut v, 0);
    w64(&mut v, VADDR + strtab_off as u64);
    w64(&mut v, strtab_off as u64);
    w64(&mut v, strtab_len as u64);
    w32(&mut v, 0);
    w32(&mut v, 0);
    w64(&mut v, 1);
    w64(&mut v, 0);
    v
}

/// An edit of an ELF file at a field of its tables (ELF64, either byte order).
#[derive(Clone, Debug)]
enum ElfOp {
    /// A field of the file header: (offset, width).
    Header((usize, usize), u64),
    /// A field of a program header: which one, (offset, width).
    Phdr(Index, (usize, usize), u64),
    /// A field of a section header.
    Shdr(Index, (usize, usize), u64),
    /// The tag (`false`) or value (`true`) of a dynamic entry.
    Dyn(Index, bool, u64),
    Bytes(ByteOp),
}

const EHDR_FIELDS: &[(usize, usize)] = &[
    (4, 1),
    (5, 1),
    (16, 2),
    (32, 8),
    (40, 8),
    (56, 2),
    (60, 2),
    (54, 2),
    (58, 2),
];
const PHDR_FIELDS: &[(usize, usize)] = &[(0, 4), (8, 8), (16, 8), (32, 8)];
const SHDR_FIELDS: &[(usize, usize)] = &[(4, 4), (24, 8), (32, 8)];

fn elf_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => prop::sample::select(mutate::INTERESTING),
        1 => prop::sample::select(&[1u64, 2, 3, 5, 15, 29, 0x40_0000, 0x3f_ffff][..]),
        1 => any::<u64>(),
    ]
}

fn elf_op() -> impl Strategy<Value = ElfOp> {
    prop_oneof![
        2 => (prop::sample::select(EHDR_FIELDS), elf_value())
            .prop_map(|(f, v)| ElfOp::Header(f, v)),
        3 => (any::<Index>(), prop::sample::select(PHDR_FIELDS), elf_value())
            .prop_map(|(i, f, v)| ElfOp::Phdr(i, f, v)),
        1 => (any::<Index>(), prop::sample::select(SHDR_FIELDS), elf_value())
            .prop_map(|(i, f, v)| ElfOp::Shdr(i, f, v)),
        3 => (any::<Index>(), any::<bool>(), elf_value()).prop_map(|(i, b, v)| ElfOp::Dyn(i, b, v)),
        2 => mutate::byte_op().prop_map(ElfOp::Bytes),
    ]
}

fn get_uint(d: &[u8], off: usize, w: usize, be: bool) -> Option<u64> {
    let b = d.get(off..off.checked_add(w)?)?;
    let mut v = 0u64;
    for i in 0..w {
        let byte = if be { b[i] } else { b[w - 1 - i] };
        v = (v << 8) | byte as u64;
    }
    Some(v)
}

fn put_uint(d: &mut [u8], off: usize, w: usize, be: bool, v: u64) -> bool {
    let Some(b) = off.checked_add(w).and_then(|e| d.get_mut(off..e)) else {
        return false;
    };
    for (i, byte) in b.iter_mut().enumerate() {
        let shift = 8 * if be { w - 1 - i } else { i };
        *byte = (v >> shift) as u8;
    }
    true
}

impl ElfOp {
    fn apply(&self, d: &mut Vec<u8>, log: &mut String) {
        let be = d.get(5) == Some(&2);
        let g = |d: &[u8], off, w| get_uint(d, off, w, be).unwrap_or(0) as usize;
        let (phoff, phnum, shoff, shnum) = (g(d, 32, 8), g(d, 56, 2), g(d, 40, 8), g(d, 60, 2));
        let at = match self {
            ElfOp::Header((off, w), v) => Some((*off, *w, *v)),
            ElfOp::Phdr(i, (off, w), v) if phnum > 0 => {
                let n = i.index(phnum);
                phoff.checked_add(n * 56 + off).map(|o| (o, *w, *v))
            }
            ElfOp::Shdr(i, (off, w), v) if shnum > 0 => {
                let n = i.index(shnum);
                shoff.checked_add(n * 64 + off).map(|o| (o, *w, *v))
            }
            ElfOp::Dyn(i, val, v) => {
                // The PT_DYNAMIC program header.
                let dynamic = (0..phnum.min(64)).find_map(|n| {
                    let base = phoff.checked_add(n * 56)?;
                    (get_uint(d, base, 4, be)? == 2)
                        .then(|| {
                            Some((
                                get_uint(d, base + 8, 8, be)?,
                                get_uint(d, base + 32, 8, be)?,
                            ))
                        })
                        .flatten()
                });
                dynamic.and_then(|(off, size)| {
                    let n = (size / 16).max(1) as usize;
                    (off as usize)
                        .checked_add(i.index(n) * 16 + if *val { 8 } else { 0 })
                        .map(|o| (o, 8, *v))
                })
            }
            ElfOp::Bytes(b) => {
                b.apply(d, &[], &[], log);
                None
            }
            _ => None,
        };
        if let Some((off, w, v)) = at {
            if put_uint(d, off, w, be, v) {
                let _ = write!(log, "write {v:#x} in {w} bytes at {off} ({self:?}); ");
            }
        }
    }
}

#[derive(Clone, Debug)]
enum ElfSource {
    Fixture(Index),
    Mini {
        rpath: Vec<Piece>,
        interp: Vec<Piece>,
        runpath: bool,
        big_endian: bool,
    },
    /// Not an ELF file: the binary rule alone applies.
    Plain(Vec<Piece>),
}

/// Entries added to a relocation list: hostile, missing, of the wrong kind, or repeated.
const LIST_ENTRIES: &[&str] = &[
    "..",
    "/etc/passwd",
    "missing",
    "lib/link",
    "lib/link/x",
    "share/t.txt",
    "bin/prog",
    ".spack/x",
    "a//b",
];

#[derive(Clone)]
struct FilesCase {
    elf: ElfSource,
    elf_ops: Vec<ElfOp>,
    /// Pairs of a generated map (used when the ELF is not a fixture's).
    specs: Vec<(KeySpec, ValueSpec)>,
    root: &'static str,
    text: Vec<Piece>,
    link: Vec<Piece>,
    hardlink: bool,
    deduped: bool,
    /// Entries added to the relocation lists: (list, entry).
    extra: Vec<(u8, &'static str)>,
}

struct BuiltFiles {
    elf: Vec<u8>,
    pairs: Vec<(String, String)>,
    text: Vec<u8>,
    link: Vec<u8>,
    log: String,
}

impl FilesCase {
    fn build(&self) -> BuiltFiles {
        let c = corpus();
        let mut log = String::new();
        let (mut elf, pairs) = match &self.elf {
            ElfSource::Fixture(i) => {
                let set = c.set(Set::Elfs);
                let n = i.index(set.len());
                let _ = write!(log, "ELF {}: ", set[n].name);
                (
                    set[n].bytes.clone(),
                    c.olds[&(Set::Elfs, n)].pairs(self.root),
                )
            }
            ElfSource::Mini {
                rpath,
                interp,
                runpath,
                big_endian,
            } => {
                let pairs = resolve_pairs(&self.specs);
                let elf = mini_elf(
                    &assemble(rpath, &pairs),
                    &assemble(interp, &pairs),
                    *runpath,
                    *big_endian,
                );
                let _ = write!(log, "small ELF ({:?}): ", self.elf);
                (elf, pairs)
            }
            ElfSource::Plain(p) => {
                let pairs = resolve_pairs(&self.specs);
                (assemble(p, &pairs), pairs)
            }
        };
        for op in &self.elf_ops {
            op.apply(&mut elf, &mut log);
        }
        let text = assemble(&self.text, &pairs);
        let mut link = b"/".to_vec();
        link.extend(assemble(&self.link, &pairs).into_iter().filter(|b| *b != 0));
        let _ = write!(
            log,
            "pairs {pairs:?}, text {}, link {}, hardlink {}, deduped {}, extra {:?}",
            preview(&text),
            preview(&link),
            self.hardlink,
            self.deduped,
            self.extra
        );
        BuiltFiles {
            elf,
            pairs,
            text,
            link,
            log,
        }
    }
}

impl fmt::Debug for FilesCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.build();
        write!(f, "{}\n  ELF bytes: {}", b.log, preview(&b.elf))
    }
}

fn files_case() -> impl Strategy<Value = FilesCase> {
    let have = !corpus().set(Set::Elfs).is_empty();
    let pieces = || prop::collection::vec(piece(), 0..8);
    let mini = (pieces(), pieces(), any::<bool>(), prop::bool::weighted(0.2)).prop_map(
        |(rpath, interp, runpath, big_endian)| ElfSource::Mini {
            rpath,
            interp,
            runpath,
            big_endian,
        },
    );
    let elf = if have {
        prop_oneof![
            3 => any::<Index>().prop_map(ElfSource::Fixture),
            3 => mini,
            1 => pieces().prop_map(ElfSource::Plain),
        ]
        .boxed()
    } else {
        prop_oneof![3 => mini, 1 => pieces().prop_map(ElfSource::Plain)].boxed()
    };
    let key = prop_oneof![
        4 => key_string().prop_map(KeySpec::Fresh),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(i, j)| KeySpec::PrefixOf(i, j)),
        1 => (any::<Index>(), s(&["/", "/lib", "x"])).prop_map(|(i, s)| KeySpec::Extend(i, s)),
    ];
    let value = prop_oneof![
        3 => (0usize..16).prop_map(ValueSpec::SameTail),
        2 => (0usize..16).prop_map(ValueSpec::Other),
        1 => (1usize..4).prop_map(ValueSpec::Longer),
        1 => s(&["/u", "/u/linux-x86_64/x"]).prop_map(ValueSpec::Fresh),
    ];
    (
        elf,
        prop::collection::vec(elf_op(), 0..5),
        prop::collection::vec((key, value), 1..5),
        prop::sample::select(ROOTS),
        pieces(),
        pieces(),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec((0u8..3, prop::sample::select(LIST_ENTRIES)), 0..2),
    )
        .prop_map(
            |(elf, elf_ops, specs, root, text, link, hardlink, deduped, extra)| FilesCase {
                elf,
                elf_ops,
                specs,
                root,
                text,
                link,
                hardlink,
                deduped,
                extra,
            },
        )
}

/// The first key that is a prefix of `target` replaced (format doc 7.2).
fn reference_link(target: &[u8], m: &Map) -> Vec<u8> {
    if !target.starts_with(b"/") {
        return target.to_vec();
    }
    match m.iter().find(|(k, _)| target.starts_with(k)) {
        Some((k, v)) => {
            let mut out = v.clone();
            out.extend_from_slice(&target[k.len()..]);
            out
        }
        None => target.to_vec(),
    }
}

fn check_files(case: &FilesCase) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let b = case.build();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let prefix = dir.path().join("prefix");
    for d in ["bin", "share", "lib", ".spack"] {
        std::fs::create_dir_all(prefix.join(d)).map_err(|e| e.to_string())?;
    }
    std::fs::write(prefix.join("bin/prog"), &b.elf).map_err(|e| e.to_string())?;
    std::fs::write(prefix.join("share/t.txt"), &b.text).map_err(|e| e.to_string())?;
    std::os::unix::fs::symlink(
        std::ffi::OsStr::from_bytes(&b.link),
        prefix.join("lib/link"),
    )
    .map_err(|e| e.to_string())?;
    let mut members: HashMap<String, (MemberKind, u32)> = HashMap::from([
        ("bin".into(), (MemberKind::Dir, 0o755)),
        ("share".into(), (MemberKind::Dir, 0o755)),
        ("lib".into(), (MemberKind::Dir, 0o755)),
        ("bin/prog".into(), (MemberKind::File, 0o755)),
        ("share/t.txt".into(), (MemberKind::File, 0o644)),
        ("lib/link".into(), (MemberKind::Symlink, 0o777)),
    ]);
    let mut info = BuildInfo {
        buildpath: Some("/opt".into()),
        hardlinks_deduped: case.deduped,
        relocate_binaries: vec!["bin/prog".into()],
        relocate_textfiles: vec!["share/t.txt".into()],
        relocate_links: vec!["lib/link".into()],
        ..Default::default()
    };
    if case.hardlink {
        std::fs::hard_link(prefix.join("bin/prog"), prefix.join("bin/prog2"))
            .map_err(|e| e.to_string())?;
        members.insert(
            "bin/prog2".into(),
            (MemberKind::HardLink("bin/prog".into()), 0o755),
        );
        info.relocate_binaries.push("bin/prog2".into());
    }
    for (list, entry) in &case.extra {
        match list {
            0 => info.relocate_binaries.push(entry.to_string()),
            1 => info.relocate_textfiles.push(entry.to_string()),
            _ => info.relocate_links.push(entry.to_string()),
        }
    }
    let map = RelocationMap::from_pairs(b.pairs.iter().cloned(), case.root);
    let m = reference_map(&b.pairs);
    let input = b.elf.len() + b.text.len();
    let r = bounded(input, || {
        relocate(&prefix, &members, &info, &map, true, WHAT)
    })?;
    let elf_after = std::fs::read(prefix.join("bin/prog")).map_err(|e| e.to_string())?;
    if let Err(e) = r {
        return clear(&e.to_string());
    }
    accepted();
    // A file listed in the other kind's list is relocated both ways: only "no panic" and
    // "clear error" hold then.
    if case.extra.contains(&(1, "bin/prog")) || case.extra.contains(&(0, "share/t.txt")) {
        return Ok(());
    }
    // A path listed twice is relocated twice, as Spack does; a second hard link of a file
    // is dropped unless hardlinks_deduped.
    let times = |list: &[String], paths: &[&str]| {
        list.iter().filter(|p| paths.contains(&p.as_str())).count()
    };
    let binary_passes = if case.hardlink && !case.deduped {
        1
    } else {
        times(&info.relocate_binaries, &["bin/prog", "bin/prog2"])
    };
    let text_passes = times(&info.relocate_textfiles, &["share/t.txt"]);
    let link_passes = times(&info.relocate_links, &["lib/link"]);
    ensure!(
        elf_after.len() == b.elf.len(),
        "the binary went from {} to {} bytes",
        b.elf.len(),
        elf_after.len()
    );
    let key_in_elf = m
        .iter()
        .any(|(k, _)| memchr::memmem::find(&b.elf, k).is_some());
    if !key_in_elf {
        ensure!(elf_after == b.elf, "a binary holding no key was changed");
    }
    if !b.elf.starts_with(b"\x7fELF") && !m.is_empty() {
        let mut want = b.elf.clone();
        for _ in 0..binary_passes {
            want = common::binary_reference::relocate_binary(&want, &m)
                .map_err(|e| format!("relocated, but the reference refuses: {e:?}"))?
                .0;
        }
        ensure!(
            elf_after == want,
            "the binary is {}\n  the binary rule gives {}",
            preview(&elf_after),
            preview(&want)
        );
    }
    let text_after = std::fs::read(prefix.join("share/t.txt")).map_err(|e| e.to_string())?;
    let mut want = b.text.clone();
    if !m.is_empty() {
        for _ in 0..text_passes {
            want = reference::relocate_text(&want, &m);
        }
    }
    ensure!(
        text_after == want,
        "text {}\n  the reference gives {}",
        preview(&text_after),
        preview(&want)
    );
    let link_after = std::fs::read_link(prefix.join("lib/link")).map_err(|e| e.to_string())?;
    let mut want = b.link.clone();
    for _ in 0..link_passes {
        want = reference_link(&want, &m);
    }
    ensure!(
        link_after.as_os_str().as_bytes() == want,
        "link {:?}, the reference {:?}",
        link_after,
        String::from_utf8_lossy(&want)
    );
    Ok(())
}

#[test]
fn relocate_files() {
    check("relocate_files", 192, files_case, check_files);
}

// ---------------------------------------------------------------------------------------
// mirrors.yaml.

fn yaml_url() -> impl Strategy<Value = serde_yaml_ng::Value> + Clone {
    use serde_yaml_ng::Value as Y;
    prop_oneof![
        6 => s(&[
            "file:///x", "/srv/cache", "s3://bucket/p", "https://h/c", "http://127.0.0.1/m",
            "oci://ghcr.io/x", "gs://b", "htp://h", "file://", "", "  ", "$HOME/c", "~/c", "${X",
            "${}", "$", "~", "a\0b", "sftp://h",
        ])
        .prop_map(Y::from),
        1 => any::<bool>().prop_map(Y::from),
        1 => any::<i64>().prop_map(Y::from),
        1 => Just(Y::Null),
        1 => Just(Y::Sequence(vec![Y::from("/x")])),
    ]
}

fn yaml_connection(
    fields: &'static [&'static str],
) -> impl Strategy<Value = serde_yaml_ng::Value> + Clone {
    use serde_yaml_ng::Value as Y;
    let pair = prop_oneof![
        (
            prop::option::of(s(&["me", ""])),
            prop::option::of(s(&["AK", ""])),
            prop::option::of(s(&["SK", ""]))
        )
            .prop_map(|(id, idv, sv)| {
                let mut m = serde_yaml_ng::Mapping::new();
                if let Some(i) = id {
                    m.insert("id".into(), i.into());
                }
                if let Some(i) = idv {
                    m.insert("id_variable".into(), i.into());
                }
                if let Some(i) = sv {
                    m.insert("secret_variable".into(), i.into());
                }
                Y::Mapping(m)
            }),
        Just(Y::Sequence(vec!["id".into(), "secret".into()])),
        Just(Y::Sequence(vec!["id".into()])),
        yaml_url(),
    ];
    let field = (
        prop::sample::select(fields),
        prop_oneof![4 => yaml_url(), 1 => pair, 1 => any::<bool>().prop_map(Y::from)],
    );
    prop::collection::vec(field, 0..6)
        .prop_map(|fs| Y::Mapping(fs.into_iter().map(|(k, v)| (Y::from(k), v)).collect()))
}

const SPACK_ENTRY_FIELDS: &[&str] = &[
    "url",
    "url",
    "fetch",
    "push",
    "pull",
    "binary",
    "source",
    "signed",
    "autopush",
    "view",
    "access_pair",
    "access_token_variable",
    "access_token",
    "profile",
    "endpoint_url",
    "sigend",
];
const STACKINATOR_ENTRY_FIELDS: &[&str] = &[
    "url",
    "url",
    "fetch",
    "push",
    "name",
    "description",
    "mount_specific",
    "source",
    "binary",
    "signed",
    "autopush",
    "private_key",
    "public_key",
    "access_pair",
    "profile",
    "x",
];

fn gen_config() -> impl Strategy<Value = YamlDoc> + Clone {
    use serde_yaml_ng::Value as Y;
    let entry = |fields: &'static [&'static str]| {
        prop_oneof![
            2 => yaml_url(),
            5 => (
                yaml_connection(fields),
                prop::option::of(prop_oneof![yaml_url(), yaml_connection(CONNECTION)]),
            )
                .prop_map(|(mut e, fetch)| {
                if let (Y::Mapping(m), Some(f)) = (&mut e, fetch) {
                    m.insert("fetch".into(), f);
                }
                e
            }),
        ]
    };
    let key = prop_oneof![
        6 => s(&["a", "b", "mirror", "s3", ""]).prop_map(Y::from),
        1 => any::<i64>().prop_map(Y::from),
        1 => Just(Y::Null),
        1 => Just(Y::Bool(true)),
    ];
    let spack =
        prop::collection::vec((key.clone(), entry(SPACK_ENTRY_FIELDS)), 0..4).prop_map(|v| {
            let mut top = serde_yaml_ng::Mapping::new();
            top.insert("mirrors".into(), Y::Mapping(v.into_iter().collect()));
            Y::Mapping(top)
        });
    let stackinator = (
        prop::option::of(entry(STACKINATOR_ENTRY_FIELDS)),
        prop::option::of(prop::collection::vec(
            (key, entry(SPACK_ENTRY_FIELDS)),
            0..3,
        )),
        prop::option::of(s(&[
            "bootstrap",
            "sourcecache",
            "concretizer",
            "mirrors",
            "other",
        ])),
    )
        .prop_map(|(bc, sm, other)| {
            let mut top = serde_yaml_ng::Mapping::new();
            if let Some(b) = bc {
                top.insert("buildcache".into(), b);
            }
            if let Some(sm) = sm {
                top.insert("sourcemirror".into(), Y::Mapping(sm.into_iter().collect()));
            }
            if let Some(o) = other {
                top.insert(o.into(), Y::Mapping(Default::default()));
            }
            Y::Mapping(top)
        });
    (
        prop_oneof![spack, stackinator, yaml_url()],
        yaml_extra(&["mirrors"]),
    )
        .prop_map(|(v, e)| YamlDoc(v, e))
}

const CONNECTION: &[&str] = &[
    "url",
    "view",
    "access_pair",
    "access_token_variable",
    "access_token",
    "profile",
    "endpoint_url",
    "nope",
];

#[derive(Clone)]
struct YamlDoc(serde_yaml_ng::Value, YamlExtra);

impl fmt::Debug for YamlDoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} with {:?}", preview(&self.render_plain()), self.1)
    }
}

impl YamlDoc {
    fn render_plain(&self) -> Vec<u8> {
        serde_yaml_ng::to_string(&self.0)
            .map(String::into_bytes)
            .unwrap_or_default()
    }
}

impl Render for YamlDoc {
    fn render(&self) -> Vec<u8> {
        self.1.render(&self.render_plain())
    }
}

#[test]
fn mirrors_yaml() {
    let path = Path::new("/nonexistent/spackfs-fuzz/mirrors.yaml");
    check(
        "mirrors_yaml",
        192,
        || inputs(gen_config(), &[Set::Configs]),
        |input| {
            let (bytes, _) = input.bytes();
            let text = String::from_utf8_lossy(&bytes);
            let r = bounded(bytes.len(), || {
                spackfs::config::parse(&text, path, "/user-environment")
            })?;
            match r {
                Ok(mirrors) => {
                    accepted();
                    for m in &mirrors {
                        ensure!(!m.url.is_empty(), "mirror {:?} without URL", m.name);
                        ensure!(
                            m.origin.starts_with(path.to_str().unwrap_or_default()),
                            "origin {:?}",
                            m.origin
                        );
                        let _ = m.support();
                    }
                    Ok(())
                }
                Err(e) => {
                    let msg = e.to_string();
                    ensure!(
                        msg.starts_with("/nonexistent/spackfs-fuzz/mirrors.yaml: ")
                            && msg.len() > 45,
                        "unclear error (it must name the file): {msg:?}"
                    );
                    Ok(())
                }
            }
        },
    );
}

// ---------------------------------------------------------------------------------------
// Projections and layout names.

const TEMPLATE_PIECES: &[&str] = &[
    "{name}",
    "{version}",
    "{hash}",
    "{hash:7}",
    "{hash:}",
    "{hash:99999999999999999999}",
    "{namespace}",
    "{architecture}",
    "{arch}",
    "{platform}",
    "{os}",
    "{target}",
    "{compiler}",
    "{compiler.name}",
    "{compiler.version}",
    "{architecture.platform}",
    "{architecture.target}",
    "{NAME}",
    "{nope}",
    "{",
    "}",
    "/",
    "/",
    "-",
    "..",
    ".",
    "x",
    "é",
    "{{name}}",
    "{name",
];

#[derive(Clone, Debug)]
struct ProjCase {
    template: String,
    node: Value,
}

#[test]
fn projection() {
    let template = prop_oneof![
        4 => prop::collection::vec(prop::sample::select(TEMPLATE_PIECES), 0..8)
            .prop_map(|v| v.concat()),
        1 => any::<String>(),
        1 => Just(spackfs::buildcache::projection::DEFAULT_PROJECTION.to_string()),
    ];
    check(
        "projection",
        256,
        || (template, gen_node()).prop_map(|(template, node)| ProjCase { template, node }),
        |c| {
            let p = match bounded(c.template.len(), || Projection::new(&c.template))? {
                Ok(p) => {
                    accepted();
                    p
                }
                Err(e) => {
                    ensure!(!e.to_string().is_empty(), "empty error");
                    return Ok(());
                }
            };
            ensure!(
                p.template() == c.template.to_lowercase(),
                "template {:?} kept as {:?}",
                c.template,
                p.template()
            );
            let Ok(node) = SpecNode::from_json(&c.node, WHAT) else {
                return Ok(());
            };
            match p.format(&node, None) {
                Ok(path) => safe_relative(&path),
                Err(e) => {
                    ensure!(!e.to_string().is_empty(), "empty error");
                    Ok(())
                }
            }
        },
    );
}

#[derive(Clone, Debug)]
enum LayoutCase {
    Path(String),
    /// The v3 manifest path of (name, version, hash), then edited.
    Edited(String, String, String, Vec<ByteOp>),
    RoundTrip(String, String, String),
}

#[test]
fn layout_names() {
    let path = prop_oneof![
        any::<String>(),
        (
            s(&["v3/manifests/spec/", "build_cache/", "", "v3/manifests/"]),
            "[a-z0-9./_-]{0,12}",
            s(&["/", "", "-"]),
            "[a-z0-9./_-]{0,20}",
            s(&[".spec.manifest.json", ".spec.json", ".spec.json.sig", ""]),
        )
            .prop_map(|(a, b, c, d, e)| format!("{a}{b}{c}{d}{e}")),
    ];
    let names = || {
        (
            "[a-z][a-z0-9-]{0,10}",
            "[0-9][0-9.a-z]{0,6}",
            "[a-z0-9]{1,32}",
        )
    };
    let case = prop_oneof![
        path.prop_map(LayoutCase::Path),
        (names(), prop::collection::vec(mutate::byte_op(), 0..4))
            .prop_map(|((n, v, h), o)| LayoutCase::Edited(n, v, h, o)),
        names().prop_map(|(n, v, h)| LayoutCase::RoundTrip(n, v, h)),
    ];
    check(
        "layout_names",
        512,
        || case,
        |c| match c {
            LayoutCase::Path(_) | LayoutCase::Edited(..) => {
                let p = &match c {
                    LayoutCase::Edited(n, v, h, ops) => {
                        let base = layout::v3_spec_manifest(n, v, h).map_err(|e| e.to_string())?;
                        let edited = mutate::apply_bytes(
                            base.as_bytes(),
                            ops,
                            &[],
                            &[b"/", b"-", b".", b".."],
                            &mut String::new(),
                        );
                        String::from_utf8_lossy(&edited).into_owned()
                    }
                    LayoutCase::Path(p) => p.clone(),
                    LayoutCase::RoundTrip(..) => unreachable!(),
                };
                if let Some((n, v, h)) = layout::parse_v3_spec_manifest(p) {
                    accepted();
                    let clean = [&n, &v, &h].iter().all(|x| sanitize_component(x) == **x);
                    if clean {
                        if let Ok(again) = layout::v3_spec_manifest(&n, &v, &h) {
                            ensure!(
                                &again == p,
                                "{p:?} parsed as ({n}, {v}, {h}), written back as {again:?}"
                            );
                        }
                    }
                }
                if let Some((h, signed)) = layout::parse_v2_spec_file(p) {
                    ensure!(!h.contains('-'), "hash {h:?}");
                    let suffix = if signed {
                        ".spec.json.sig"
                    } else {
                        ".spec.json"
                    };
                    ensure!(
                        p.ends_with(&format!("-{h}{suffix}")),
                        "{p:?} gave hash {h:?}"
                    );
                }
                Ok(())
            }
            LayoutCase::RoundTrip(n, v, h) => {
                let p = layout::v3_spec_manifest(n, v, h).map_err(|e| e.to_string())?;
                let back = layout::parse_v3_spec_manifest(&p);
                ensure!(
                    back == Some((n.clone(), v.clone(), h.clone())),
                    "{p:?} parsed back as {back:?}"
                );
                Ok(())
            }
        },
    );
}

//! Helpers of the cache tests (tests/cache.rs): running `spackfs cache ...`, reading the
//! cache directory's layout (`prefixes/`, `meta/`, `staging/`) as the tests see it on
//! disk, disk usage, a tmpfs guard, a small random source, and the expected content of the
//! fixture packages under any root of the mount points' length.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{path_str, run_program, spackfs, Fixtures, Run, V3_UNSIGNED};

/// `spackfs cache ARGS... --cache-dir CACHE`.
pub fn cache_cmd(cache: &Path, args: &[&str]) -> Run {
    let mut v: Vec<&str> = vec!["cache"];
    v.extend_from_slice(args);
    v.extend_from_slice(&["--cache-dir", path_str(cache)]);
    spackfs(v)
}

/// One line of `spackfs cache ls`.
#[derive(Debug, Clone)]
pub struct LsLine {
    pub key: String,
    /// `name@version/hash7`.
    pub package: String,
    pub pinned: bool,
    pub root: String,
}

/// `spackfs cache ls`, parsed: the lines (least recently used first) and the total in bytes
/// (as printed, so rounded to a tenth of its unit).
pub struct Listing {
    pub lines: Vec<LsLine>,
    pub total: f64,
    pub run: Run,
}

impl Listing {
    /// The package names (`fixture-greet`, ...) listed, in order.
    pub fn names(&self) -> Vec<String> {
        self.lines
            .iter()
            .map(|l| l.package.split('@').next().unwrap_or_default().to_string())
            .collect()
    }

    pub fn name_set(&self) -> BTreeSet<String> {
        self.names().into_iter().collect()
    }

    /// The line of package `name`.
    #[track_caller]
    pub fn line(&self, name: &str) -> &LsLine {
        self.lines
            .iter()
            .find(|l| l.package.starts_with(&format!("{name}@")))
            .unwrap_or_else(|| panic!("{name} not listed:\n{}", self.run))
    }
}

/// Run and parse `spackfs cache ls`.
#[track_caller]
pub fn cache_ls(cache: &Path) -> Listing {
    let run = cache_cmd(cache, &["ls"]);
    run.assert_ok();
    let mut lines = Vec::new();
    let mut total = None;
    for l in run.stdout.lines() {
        if let Some(t) = l.strip_prefix("total ") {
            total = Some(parse_human(t).unwrap_or_else(|| panic!("total {t:?}:\n{run}")));
            continue;
        }
        let f: Vec<&str> = l.split("  ").collect();
        assert!(f.len() >= 6, "unexpected `cache ls` line {l:?}:\n{run}");
        assert!(
            f[4] == "pinned" || f[4] == "unpinned",
            "pinned column of {l:?}:\n{run}"
        );
        lines.push(LsLine {
            key: f[0].to_string(),
            package: f[1].to_string(),
            pinned: f[4] == "pinned",
            root: f[5].trim_start_matches("root ").to_string(),
        });
    }
    let total = total.unwrap_or_else(|| panic!("no total line:\n{run}"));
    Listing { lines, total, run }
}

/// `23.9 MiB`, `128.0 KiB`, `0 B`, `1.5 MB` in bytes.
pub fn parse_human(s: &str) -> Option<f64> {
    let (num, unit) = s.trim().split_once(' ')?;
    let n: f64 = num.parse().ok()?;
    let mult = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        _ => return None,
    };
    Some(n * mult)
}

/// The precision of a printed size: half a tenth of its unit.
pub fn human_slack(bytes: f64) -> f64 {
    let unit = if bytes >= 1024.0 * 1024.0 * 1024.0 {
        1024.0 * 1024.0 * 1024.0
    } else if bytes >= 1024.0 * 1024.0 {
        1024.0 * 1024.0
    } else if bytes >= 1024.0 {
        1024.0
    } else {
        1.0
    };
    unit * 0.05 + 1.0
}

/// A `meta/<key>.json` as written by the store.
#[derive(Debug, Clone)]
pub struct MetaFile {
    pub key: String,
    pub package: String,
    pub hash: String,
    pub size: u64,
}

impl MetaFile {
    pub fn name(&self) -> &str {
        self.package.split('@').next().unwrap_or_default()
    }
}

/// Every `meta/*.json` of a cache directory.
pub fn metas(cache: &Path) -> Vec<MetaFile> {
    let mut out = Vec::new();
    for name in super::entries(&cache.join("meta")) {
        let Some(key) = name.strip_suffix(".json") else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let p = cache.join("meta").join(&name);
        let v: Value = serde_json::from_slice(&std::fs::read(&p).expect("meta file"))
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        out.push(MetaFile {
            key: key.to_string(),
            package: v["package"].as_str().unwrap_or_default().to_string(),
            hash: v["hash"].as_str().unwrap_or_default().to_string(),
            size: v["size"].as_u64().expect("meta size"),
        });
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// The meta of package `name`, if cached.
pub fn meta_of(cache: &Path, name: &str) -> Option<MetaFile> {
    metas(cache).into_iter().find(|m| m.name() == name)
}

/// (path, size) of every regular file in the integrity record `digests/<key>.json`.
pub fn recorded_files(cache: &Path, key: &str) -> Option<Vec<(String, u64)>> {
    let b = std::fs::read(cache.join("digests").join(format!("{key}.json"))).ok()?;
    let v: Value = serde_json::from_slice(&b).ok()?;
    Some(
        v.as_array()?
            .iter()
            .map(|f| {
                (
                    f["path"].as_str().unwrap_or_default().to_string(),
                    f["size"].as_u64().unwrap_or(u64::MAX),
                )
            })
            .collect(),
    )
}

/// The alias files (`aliases/<id>`, each naming a key): (id, key).
pub fn aliases(cache: &Path) -> Vec<(String, String)> {
    super::entries(&cache.join("aliases"))
        .into_iter()
        .map(|id| {
            let key = std::fs::read_to_string(cache.join("aliases").join(&id)).unwrap_or_default();
            (id, key.trim().to_string())
        })
        .collect()
}

/// Names of the directories in `prefixes/`.
pub fn prefix_keys(cache: &Path) -> BTreeSet<String> {
    super::entries(&cache.join("prefixes"))
        .into_iter()
        .collect()
}

/// Entries of `staging/`.
pub fn staging(cache: &Path) -> Vec<String> {
    super::entries(&cache.join("staging"))
}

/// Package names of the cached entries (from the meta files).
pub fn cached_names(cache: &Path) -> BTreeSet<String> {
    metas(cache).iter().map(|m| m.name().to_string()).collect()
}

/// Sum of the recorded sizes.
pub fn recorded_total(cache: &Path) -> u64 {
    metas(cache).iter().map(|m| m.size).sum()
}

/// The bookkeeping matches the directories: every meta has its prefix directory, its
/// integrity record and an alias naming it; every prefix directory, integrity record and
/// alias belongs to a meta; no temporary files are left in `meta/`, `digests/`,
/// `aliases/`. Returns a description of what is wrong.
pub fn bookkeeping_problems(cache: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let keys = prefix_keys(cache);
    let metas: BTreeSet<String> = metas(cache).into_iter().map(|m| m.key).collect();
    for k in keys.difference(&metas) {
        problems.push(format!("prefixes/{k} has no meta/{k}.json"));
    }
    for k in metas.difference(&keys) {
        problems.push(format!("meta/{k}.json has no prefixes/{k}"));
    }
    let digests: BTreeSet<String> = super::entries(&cache.join("digests"))
        .into_iter()
        .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
        .filter(|n| !n.starts_with('.'))
        .collect();
    for k in metas.difference(&digests) {
        problems.push(format!("meta/{k}.json has no digests/{k}.json"));
    }
    for k in digests.difference(&metas) {
        problems.push(format!("digests/{k}.json has no meta/{k}.json"));
    }
    let aliased: BTreeSet<String> = aliases(cache).into_iter().map(|(_, k)| k).collect();
    for k in metas.difference(&aliased) {
        problems.push(format!("meta/{k}.json is named by no alias"));
    }
    for (id, k) in aliases(cache) {
        if !metas.contains(&k) {
            problems.push(format!("aliases/{id} names {k:?}, which has no meta"));
        }
    }
    for (id, _) in aliases(cache) {
        if id.starts_with('.') {
            problems.push(format!("aliases/{id} is a temporary file"));
        }
    }
    for dir in ["meta", "digests"] {
        for name in super::entries(&cache.join(dir)) {
            if !name.ends_with(".json") || name.starts_with('.') {
                problems.push(format!("{dir}/{name} is not the record of an entry"));
            }
        }
    }
    problems
}

/// Every file of an entry's integrity record is in its prefix with the recorded size (the
/// tree is complete). Returns what is missing or short.
pub fn incomplete_files(cache: &Path, m: &MetaFile) -> Vec<String> {
    let Some(files) = recorded_files(cache, &m.key) else {
        return vec![format!("digests/{}.json missing or unreadable", m.key)];
    };
    let dir = cache.join("prefixes").join(&m.key);
    files
        .iter()
        .filter_map(|(p, size)| match std::fs::symlink_metadata(dir.join(p)) {
            Ok(md) if md.is_file() && md.len() == *size => None,
            Ok(md) => Some(format!("{p}: {} bytes, recorded {size}", md.len())),
            Err(e) => Some(format!("{p}: {e}")),
        })
        .collect()
}

/// Disk usage of a tree in bytes (allocated blocks, each inode once), like `du -sB1`.
pub fn disk_usage(dir: &Path) -> u64 {
    let mut seen = BTreeSet::new();
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    if let Ok(m) = std::fs::symlink_metadata(dir) {
        seen.insert((m.dev(), m.ino()));
        total += m.blocks() * 512;
    }
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(&Sha256::digest(b)[..])
}

/// `hay` with every occurrence of `from` replaced by `to`.
pub fn replace_bytes(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let finder = memchr::memmem::Finder::new(from);
    let mut out = Vec::with_capacity(hay.len());
    let mut last = 0;
    for i in finder.find_iter(hay) {
        out.extend_from_slice(&hay[last..i]);
        out.extend_from_slice(to);
        last = i + from.len();
    }
    out.extend_from_slice(&hay[last..]);
    out
}

/// Files of fixture-bulk whose content the tests compare.
pub const BULK_CHECKED: [&str; 3] = [
    "share/fixture-bulk/bulk.dat",
    "share/fixture-bulk/blob.bin",
    "share/fixture-bulk/tree/d00/s00/file-0.txt",
];

/// fixture-bulk of spack-v3-unsigned as `spackfs install` makes it under a root as long as
/// every `MountDirs` mount point: the root and the checked files' bytes.
pub struct BulkReference {
    pub root: String,
    pub files: Vec<(&'static str, Vec<u8>)>,
}

impl BulkReference {
    /// sha256 of each checked file as it must read under `root` (same length).
    pub fn expected_sha256(&self, root: &Path) -> Vec<(&'static str, String)> {
        assert_eq!(path_str(root).len(), self.root.len(), "root lengths");
        self.files
            .iter()
            .map(|(rel, bytes)| {
                let b = replace_bytes(bytes, self.root.as_bytes(), path_str(root).as_bytes());
                (*rel, sha256_hex(&b))
            })
            .collect()
    }
}

/// The reference install of fixture-bulk, made once per test process (in a root as long as
/// the mount points, `/tmp/sfsXXXXXX/mnt`; removed once read).
pub fn bulk_reference(fx: &Fixtures) -> &'static BulkReference {
    static REF: OnceLock<BulkReference> = OnceLock::new();
    REF.get_or_init(|| {
        let tmp = super::short_tempdir();
        let root = tmp.path().join("ins");
        V3_UNSIGNED
            .install(fx, &root, &["fixture-bulk"])
            .assert_ok();
        let prefix = V3_UNSIGNED.bulk_prefix(&root);
        let files = BULK_CHECKED
            .iter()
            .map(|rel| {
                (
                    *rel,
                    std::fs::read(prefix.join(rel)).expect("installed file"),
                )
            })
            .collect();
        BulkReference {
            root: path_str(&root).to_string(),
            files,
        }
    })
}

/// A tmpfs mounted on a directory for the life of the guard (then unmounted, lazily if busy).
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    /// `mount -t tmpfs -o size=SIZE tmpfs DIR` (DIR is created).
    #[track_caller]
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("tmpfs mount point");
        let opt = format!("size={size}");
        run_program(
            "mount",
            ["-t", "tmpfs", "-o", opt.as_str(), "tmpfs", path_str(dir)],
        )
        .assert_ok();
        Tmpfs {
            dir: dir.to_path_buf(),
        }
    }

    /// `mount -o remount,size=SIZE DIR`.
    #[track_caller]
    pub fn resize(&self, size: &str) {
        self.remount(&format!("size={size}"));
    }

    /// `mount -o remount,OPTIONS DIR`.
    #[track_caller]
    pub fn remount(&self, options: &str) {
        let opt = format!("remount,{options}");
        run_program("mount", ["-o", opt.as_str(), path_str(&self.dir)]).assert_ok();
    }

    /// Inodes in use.
    pub fn inodes_used(&self) -> u64 {
        let c = std::ffi::CString::new(path_str(&self.dir)).expect("path");
        // SAFETY: `c` is a valid C string and `st` a properly sized out-parameter.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above; statvfs writes only into `st`.
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        st.f_files - st.f_ffree
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        for _ in 0..4 {
            if !super::mount::is_mounted(&self.dir) {
                break;
            }
            let ok = Command::new("umount")
                .arg(&self.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                super::mount::lazy_unmount(&self.dir);
            }
        }
    }
}

/// A child process killed and reaped when dropped.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// Wait up to `timeout` for the child to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(s)) = self.0.try_wait() {
                return Some(s);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// xorshift64*: reproducible random points from a printed seed.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `SPACKFS_TEST_SEED` or the clock; the seed is printed.
    pub fn from_env_or_clock(what: &str) -> Rng {
        let seed = std::env::var("SPACKFS_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
                    ^ u64::from(std::process::id())
            });
        eprintln!("{what}: random seed {seed} (set SPACKFS_TEST_SEED to repeat)");
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Poll `f` every 20 ms for up to `timeout`; true once it held.
pub fn wait_until(timeout: Duration, f: impl FnMut() -> bool) -> bool {
    poll_until(timeout, Duration::from_millis(20), f)
}

/// Poll `f` every `every` for up to `timeout`; true once it held.
pub fn poll_until(timeout: Duration, every: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(every);
    }
}

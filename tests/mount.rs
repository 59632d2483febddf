//! The FUSE mount (`spackfs mount`), run as a real daemon on a temporary mount point: the
//! fixture programs run from the mount, listing fetches nothing, a mounted prefix is the
//! tree `spackfs install` (and Spack) make, materialisation is single-flight under
//! concurrency, failures reach the touching process as errno and are logged once, and the
//! daemon unmounts cleanly (SIGTERM/SIGINT) or is cleaned up after `kill -9`.
//!
//! Every test has its own mount point and cache; the `Daemon` guard always unmounts, and a
//! watchdog kills a daemon that hangs (see `common::mount`).

mod common;

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Barrier;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use common::mirror::{assert_good_works, good_pkg, GenPkg, Lists, Scenario};
use common::mount::{
    check_greet_programs, errno_of, is_mounted, is_stale, lazy_unmount, metric, mount_count, state,
    xattr, xattr_str, Daemon, MountDirs,
};
use common::tarball::gzip_stored;
use common::{
    expected_greet_output, fixtures, path_str, run_program, FixtureCache, Fixtures, Run,
    FIXTURE_FPR, V2_SIGNED, V3_SIGNED, V3_UNSIGNED,
};

/// Files of fixture-bulk compared with an install: relocated text (with the prefix), a
/// binary-looking but UTF-8 file with the prefix, and files that hold no prefix.
const BULK_FILES: [&str; 6] = [
    "share/fixture-bulk/bulk.dat",
    "share/fixture-bulk/blob.bin",
    "share/fixture-bulk/tree/d00/s00/file-0.txt",
    "share/fixture-bulk/tree/d00/s00/file-1.txt",
    "share/fixture-bulk/tree/d07/s03/file-4.txt",
    "share/fixture-bulk/tree/d19/s04/file-0.txt",
];

// ------------------------------------------------------------------ helpers

/// `spackfs mount` of a fixture cache with its trust options and `extra`.
#[track_caller]
fn mount_cache(cache: &FixtureCache, fx: &Fixtures, dirs: &MountDirs, extra: &[&str]) -> Daemon {
    let trust = cache.trust_args(fx);
    let mut args: Vec<&str> = trust.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    Daemon::mount(&fx.mirror(cache.name), &dirs.mnt, &dirs.cache, &args)
}

/// The three package directories under `root`: greet, libgreet, bulk.
fn package_dirs(cache: &FixtureCache, root: &Path) -> [(&'static str, &'static str, PathBuf); 3] {
    [
        ("fixture-greet", cache.greet_hash, cache.greet_prefix(root)),
        (
            "fixture-libgreet",
            cache.libgreet_hash,
            cache.libgreet_prefix(root),
        ),
        ("fixture-bulk", cache.bulk_hash, cache.bulk_prefix(root)),
    ]
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(&Sha256::digest(b)[..])
}

/// `hay` with every occurrence of `from` replaced by `to`.
fn replace_bytes(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// `fixtures/tools/tree-manifest.py ROOT`, line by line.
#[track_caller]
fn tree_manifest(fx: &Fixtures, root: &Path) -> Vec<String> {
    let run = run_program(
        "python3",
        [
            path_str(&fx.dir.join("tools/tree-manifest.py")),
            path_str(root),
        ],
    );
    run.assert_ok();
    run.stdout.lines().map(str::to_string).collect()
}

/// Two manifests are equal line by line (the first difference is reported).
#[track_caller]
fn assert_same_tree(ours: &[String], expected: &[String], what: &str, d: &Daemon) {
    for (i, (a, b)) in ours.iter().zip(expected).enumerate() {
        assert_eq!(
            a,
            b,
            "{what}: tree line {} differs (mount, then expected)\n{d}",
            i + 1
        );
    }
    assert_eq!(
        ours.len(),
        expected.len(),
        "{what}: number of tree entries (mount, then expected); extra lines: {:?}\n{d}",
        if ours.len() > expected.len() {
            &ours[expected.len()..]
        } else {
            &expected[ours.len()..]
        }
    );
}

/// Remove everything inside `dir`, keeping `dir`.
fn empty_dir(dir: &Path) {
    for e in std::fs::read_dir(dir).expect("read dir") {
        let p = e.expect("dir entry").path();
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            std::fs::remove_dir_all(&p).expect("remove dir");
        } else {
            std::fs::remove_file(&p).expect("remove file");
        }
    }
}

/// Regular files below `dir`, relative, sorted.
fn files_below(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = common::walk(dir)
        .into_iter()
        .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
        .map(|p| path_str(p.strip_prefix(dir).expect("below")).to_string())
        .collect();
    out.sort();
    out
}

fn errno_name(e: i32) -> String {
    format!("{e} ({})", std::io::Error::from_raw_os_error(e))
}

/// A child process killed when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ------------------------------------------------------------------ 1. serving the fixtures

/// Listing fetches nothing; the greet programs run with prefixes under the mount point;
/// bulk reads through the mount and matches an install of the same package.
fn serves_fixture_cache(cache: &FixtureCache) {
    let Some(fx) = fixtures() else { return };
    let dirs = MountDirs::new();
    let d = mount_cache(cache, &fx, &dirs, &[]);
    let mnt = &dirs.mnt;
    let pkgs = package_dirs(cache, mnt);

    // Listing and stat: no fetch.
    let root_ls = run_program("ls", ["-la", path_str(mnt)]);
    root_ls.assert_ok();
    for name in [".spack-db", "bin", "linux-x86_64"] {
        assert!(
            root_ls.stdout.contains(name),
            "{name} not listed:\n{root_ls}"
        );
    }
    let proj_ls = run_program("ls", ["-la", path_str(&mnt.join("linux-x86_64"))]);
    proj_ls.assert_ok();
    let stat_args: Vec<&str> = pkgs.iter().map(|(_, _, p)| path_str(p)).collect();
    let stat = run_program("stat", &stat_args);
    stat.assert_ok();
    for (name, hash, dir) in &pkgs {
        assert!(
            proj_ls.stdout.contains(&format!("{name}-1.0-{hash}")),
            "{name} not listed:\n{proj_ls}"
        );
        assert!(std::fs::metadata(dir).is_ok_and(|m| m.is_dir()), "{name}");
        assert_eq!(xattr_str(dir, "user.spackfs.hash"), *hash);
        assert!(
            xattr_str(dir, "user.spackfs.mirror").ends_with(&format!("{}/mirror", cache.name)),
            "{name}: mirror xattr"
        );
    }
    for (name, _, dir) in &pkgs {
        assert_eq!(state(dir), "remote", "{name} left remote by ls/stat\n{d}");
    }
    assert_eq!(
        metric(mnt, "blobs_fetched"),
        0,
        "ls -la / stat fetched blobs\n{d}"
    );
    assert_eq!(metric(mnt, "packages_materialised"), 0, "{d}");

    // The five entry points.
    check_greet_programs(cache, mnt, &d);
    assert_eq!(
        metric(mnt, "blobs_fetched"),
        2,
        "greet and libgreet fetched\n{d}"
    );
    let signer = if cache.signed {
        FIXTURE_FPR
    } else {
        "unsigned"
    };
    for (name, _, dir) in &pkgs[..2] {
        assert_eq!(state(dir), "ready", "{name}\n{d}");
        assert_eq!(xattr_str(dir, "user.spackfs.signer"), signer, "{name}");
        assert!(
            xattr_str(dir, "user.spackfs.timings").contains("Total:"),
            "{name}: timings xattr"
        );
    }
    assert_eq!(
        state(&pkgs[2].2),
        "remote",
        "bulk is nobody's dependency\n{d}"
    );

    // fixture-bulk through the mount.
    let bulk_m = cache.bulk_prefix(mnt);
    let cat = run_program(
        "sh",
        [
            "-c",
            "find \"$1\" -type f | xargs cat > /dev/null",
            "sh",
            path_str(&bulk_m),
        ],
    );
    assert_eq!(cat.code, Some(0), "{cat}\n{d}");
    assert!(cat.stderr.is_empty(), "{cat}\n{d}");
    assert_eq!(metric(mnt, "blobs_fetched"), 3, "{d}");
    assert_eq!(state(&bulk_m), "ready");
    // What find saw and cat read (total bytes), to compare with the install below.
    let found = run_program("find", [path_str(&bulk_m), "-type", "f"]);
    found.assert_ok();
    let mut found: Vec<String> = found
        .stdout
        .lines()
        .map(|l| {
            l.strip_prefix(path_str(&bulk_m))
                .expect("below")
                .trim_start_matches('/')
                .to_string()
        })
        .collect();
    found.sort();
    let bytes_read = run_program(
        "sh",
        [
            "-c",
            "find \"$1\" -type f | xargs cat | wc -c",
            "sh",
            path_str(&bulk_m),
        ],
    );
    bytes_read.assert_ok();
    let bytes_read: u64 = bytes_read.stdout.trim().parse().expect("wc -c");

    // The same package installed under a root of the same length as the mount point: the
    // files are the same once the root is substituted (and equal where no prefix is held).
    let ins = dirs.path().join("ins");
    assert_eq!(path_str(&ins).len(), path_str(mnt).len());
    cache.install(&fx, &ins, &["fixture-bulk"]).assert_ok();
    let bulk_i = cache.bulk_prefix(&ins);
    let installed_files = files_below(&bulk_i);
    assert!(installed_files.len() > 500, "{}", installed_files.len());
    assert_eq!(found, installed_files, "find in the mount, files installed");
    assert_eq!(
        files_below(&bulk_m),
        installed_files,
        "files of fixture-bulk (mount, install)"
    );
    let installed_bytes: u64 = installed_files
        .iter()
        .map(|f| std::fs::metadata(bulk_i.join(f)).expect("stat").len())
        .sum();
    assert_eq!(
        bytes_read, installed_bytes,
        "bytes cat read through the mount (roots of equal length)"
    );
    for rel in BULK_FILES {
        let mounted = std::fs::read(bulk_m.join(rel)).expect("read from the mount");
        let installed = std::fs::read(bulk_i.join(rel)).expect("read the install");
        let expected = replace_bytes(
            &installed,
            path_str(&ins).as_bytes(),
            path_str(mnt).as_bytes(),
        );
        assert_eq!(
            sha256_hex(&mounted),
            sha256_hex(&expected),
            "{rel}: mount and install differ"
        );
    }
    let dat = std::fs::read(bulk_m.join("share/fixture-bulk/bulk.dat")).expect("bulk.dat");
    assert_eq!(
        common::count(&dat, path_str(&bulk_m).as_bytes()),
        3,
        "bulk.dat names the prefix under the mount three times"
    );
    assert!(!common::contains(&dat, cache.build_store.as_bytes()));
    assert!(
        d.error_lines().is_empty(),
        "no ERROR expected:\n{:?}",
        d.error_lines()
    );
}

#[test]
fn v3_signed_mount_serves_greet_and_bulk() {
    serves_fixture_cache(&V3_SIGNED);
}

#[test]
fn v3_unsigned_mount_serves_greet_and_bulk() {
    serves_fixture_cache(&V3_UNSIGNED);
}

#[test]
fn v2_signed_mount_serves_greet_and_bulk() {
    serves_fixture_cache(&V2_SIGNED);
}

#[test]
fn pread_read_mode_serves_greet() {
    let Some(fx) = fixtures() else { return };
    let dirs = MountDirs::new();
    let d = mount_cache(&V3_UNSIGNED, &fx, &dirs, &["--read-mode", "pread"]);
    assert_eq!(xattr_str(&dirs.mnt, "user.spackfs.read_mode"), "pread");
    check_greet_programs(&V3_UNSIGNED, &dirs.mnt, &d);
    assert_eq!(xattr_str(&dirs.mnt, "user.spackfs.read_mode"), "pread");
}

// ------------------------------------------------------------------ 2. same tree as install

/// Install greet and bulk into P, record the tree, empty P, mount at P, record again.
fn mounted_tree_equals_installed_tree(cache: &FixtureCache) {
    trees_equal_under(cache, None, "linux-x86_64");
}

/// Install greet and bulk from `cache` with `projection` (default: Spack's), then mount it
/// at the same root with the same projection: the trees are the same, and greet sits in
/// directory `greet_dir` (the formatted first component).
fn trees_equal_under(cache: &FixtureCache, projection: Option<&str>, greet_dir: &str) {
    let Some(fx) = fixtures() else { return };
    let dirs = MountDirs::new();
    let p = &dirs.mnt;
    let mut extra = Vec::new();
    if let Some(proj) = projection {
        extra.extend(["--projection", proj]);
    }
    cache
        .install_with(&fx, p, &extra, &["fixture-greet", "fixture-bulk"])
        .assert_ok();
    let installed = tree_manifest(&fx, p);
    let greet = format!("{greet_dir}/fixture-greet-1.0-{}", cache.greet_hash);
    let greet_line = format!(
        "{greet}/bin/greet-abs -> {}/bin/greet",
        path_str(&p.join(&greet))
    );
    assert!(
        installed.iter().any(|l| l.ends_with(&greet_line)),
        "the install's tree looks wrong (no {greet_line:?}): {installed:?}"
    );
    assert!(installed.len() > 600, "{} entries", installed.len());
    empty_dir(p);

    let d = mount_cache(cache, &fx, &dirs, &extra);
    let mounted = tree_manifest(&fx, p);
    assert_same_tree(&mounted, &installed, cache.name, &d);
    assert_eq!(metric(p, "blobs_fetched"), 3, "{d}");
    let run = run_program(p.join(&greet).join("bin/greet"), [] as [&str; 0]);
    run.assert_ok();
}

/// A projection with compiler tokens: v5 specs (v3 caches) name no compiler on the node,
/// so it comes from the DAG (install) or the index (mount); both place packages alike.
#[test]
fn v3_trees_are_equal_under_a_compiler_projection() {
    trees_equal_under(
        &V3_SIGNED,
        Some("{compiler.name}-{compiler.version}/{name}-{version}-{hash}"),
        "gcc-12.2.0",
    );
}

#[test]
fn v2_trees_are_equal_under_a_compiler_projection() {
    trees_equal_under(
        &V2_SIGNED,
        Some("{compiler.name}-{compiler.version}/{name}-{version}-{hash}"),
        "gcc-12.2.0",
    );
}

#[test]
fn v3_signed_mounted_tree_is_the_installed_tree() {
    mounted_tree_equals_installed_tree(&V3_SIGNED);
}

#[test]
fn v3_unsigned_mounted_tree_is_the_installed_tree() {
    mounted_tree_equals_installed_tree(&V3_UNSIGNED);
}

#[test]
fn v2_signed_mounted_tree_is_the_installed_tree() {
    mounted_tree_equals_installed_tree(&V2_SIGNED);
}

const REALSTACK_ROOT: &str = "/tmp/realstack-root";

/// The exclusive lock tests/realstack.rs takes on `/tmp/realstack-root`.
struct RealstackLock {
    _file: File,
}

impl RealstackLock {
    fn acquire() -> Self {
        let f = File::create(format!("{REALSTACK_ROOT}.lock")).expect("lock file");
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
        RealstackLock { _file: f }
    }
}

/// spack-v3-realstack mounted at Spack's own install root matches the tree Spack made, and
/// `file` and `zstd` run from the mount.
#[test]
fn realstack_mounted_at_spack_root_matches_spack_tree_and_runs() {
    let Some(fx) = fixtures() else { return };
    let _lock = RealstackLock::acquire();
    let root = Path::new(REALSTACK_ROOT);
    // Leftovers: a mount of an earlier run, the install test's tree.
    for _ in 0..4 {
        if !is_mounted(root) {
            break;
        }
        lazy_unmount(root);
    }
    if std::fs::symlink_metadata(root).is_ok() {
        std::fs::remove_dir_all(root).expect("remove the old realstack root");
    }
    std::fs::create_dir(root).expect("create the realstack mount point");
    let cache = common::short_tempdir();
    let key = fx.realstack_key();
    let d = Daemon::mount(
        &fx.mirror("spack-v3-realstack"),
        root,
        &cache.path().join("cache"),
        &["--key", path_str(&key)],
    );

    let ours = tree_manifest(&fx, root);
    let expected =
        std::fs::read_to_string(fx.dir.join("spack-v3-realstack/spack-installed-tree.txt"))
            .expect("spack-installed-tree.txt");
    let spack: Vec<String> = expected.lines().map(str::to_string).collect();
    assert_same_tree(&ours, &spack, "realstack", &d);

    let file = run_program(
        root.join("linux-x86_64/file-5.44-bf57zikkqvfnjy2z6hskq4e5iftfafgn/bin/file"),
        ["/bin/ls"],
    );
    assert_eq!(file.code, Some(0), "{file}\n{d}");
    assert!(file.stdout.starts_with("/bin/ls: ELF 64-bit LSB"), "{file}");
    let zstd = run_program(
        root.join("linux-x86_64/zstd-1.5.4-4pk5gwx3qursby6fl7ryplex4eeuz73b/bin/zstd"),
        ["--version"],
    );
    assert_eq!(zstd.code, Some(0), "{zstd}\n{d}");
    assert!(
        zstd.stdout
            .contains("*** Zstandard CLI (64-bit) v1.5.4, by Yann Collet ***"),
        "{zstd}"
    );
    assert_eq!(metric(root, "blobs_fetched"), 6, "{d}");
    drop(d);
    assert!(!is_mounted(root), "{REALSTACK_ROOT} still mounted");
    let _ = std::fs::remove_dir(root);
}

// ------------------------------------------------------------------ 3. single flight

#[test]
fn cold_mount_32_concurrent_greets_fetch_each_blob_once() {
    let Some(fx) = fixtures() else { return };
    let cache = &V3_SIGNED;
    let dirs = MountDirs::new();
    let d = mount_cache(cache, &fx, &dirs, &[]);
    let mnt = &dirs.mnt;
    let greet = cache.greet_prefix(mnt).join("bin/greet");
    let expected = expected_greet_output(&cache.greet_prefix(mnt), &cache.libgreet_prefix(mnt));
    const N: usize = 32;
    let start = Barrier::new(N);
    let runs: Vec<Run> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    run_program(&greet, [] as [&str; 0])
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(run.code, Some(0), "process {i}:\n{run}\n{d}");
        assert_eq!(run.stdout, expected, "process {i}:\n{run}");
    }
    assert_eq!(
        metric(mnt, "blobs_fetched"),
        2,
        "greet and libgreet fetched once each\n{d}"
    );
    assert_eq!(metric(mnt, "packages_materialised"), 2, "{d}");
    for (name, hash) in [
        ("fixture-greet", cache.greet_hash),
        ("fixture-libgreet", cache.libgreet_hash),
    ] {
        let lines = d.log_lines_with(&[&format!("Successfully materialised {name}-1.0-{hash}")]);
        assert_eq!(lines.len(), 1, "{name} materialised once: {lines:?}\n{d}");
    }
    assert_eq!(state(&cache.bulk_prefix(mnt)), "remote");
    assert!(d.error_lines().is_empty(), "{d}");
}

// ------------------------------------------------------------------ 4. failures

/// The touching process gets `errno` from the package directory and paths inside it, as
/// often as it tries; nothing of the package is ever visible; the daemon logged exactly one
/// ERROR line for it, naming the package, the mirror and every one of `causes`.
#[track_caller]
fn assert_failed_package(
    d: &Daemon,
    pkg_dir: &Path,
    inside: &[&str],
    spec: &str,
    mirror: &Path,
    errno: i32,
    causes: &[&str],
) {
    assert!(
        std::fs::metadata(pkg_dir).is_ok_and(|m| m.is_dir()),
        "{} is listed from the index",
        pkg_dir.display()
    );
    // The first touches come together (they share one attempt)...
    let start = Barrier::new(8);
    let together: Vec<std::io::Result<std::fs::ReadDir>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    std::fs::read_dir(pkg_dir)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    for r in together {
        let e = errno_of(r, "read_dir (concurrent)", d);
        assert_eq!(errno_name(e), errno_name(errno), "{d}");
    }
    // ...then one after another (answered from the failed state).
    for round in 0..4 {
        let e = errno_of(std::fs::read_dir(pkg_dir), "read_dir", d);
        assert_eq!(
            errno_name(e),
            errno_name(errno),
            "read_dir {} (round {round})\n{d}",
            pkg_dir.display()
        );
        for rel in inside {
            let p = pkg_dir.join(rel);
            let e = errno_of(std::fs::metadata(&p), "metadata", d);
            assert_eq!(
                errno_name(e),
                errno_name(errno),
                "metadata {} (round {round})\n{d}",
                p.display()
            );
            let e = errno_of(std::fs::read(&p), "read", d);
            assert_eq!(errno_name(e), errno_name(errno), "read {}", p.display());
        }
    }
    assert_eq!(state(pkg_dir), "failed", "{d}");
    let err = xattr_str(pkg_dir, "user.spackfs.error");
    for c in causes {
        assert!(err.contains(c), "error xattr {err:?} lacks {c:?}");
    }
    let lines: Vec<String> = d
        .error_lines()
        .into_iter()
        .filter(|l| l.contains(spec))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one ERROR line for {spec}: {lines:#?}\n{d}"
    );
    let mut needles = vec![spec, path_str(mirror)];
    needles.extend_from_slice(causes);
    for n in needles {
        assert!(lines[0].contains(n), "ERROR line lacks {n:?}: {}", lines[0]);
    }
}

/// Nothing of a failed package reached the cache: only `ready` prefixes, no staging.
#[track_caller]
fn assert_cache_holds(cache: &Path, ready: usize) {
    let prefixes: Vec<String> = common::entries(&cache.join("prefixes"))
        .into_iter()
        .filter(|e| cache.join("prefixes").join(e).is_dir())
        .collect();
    assert_eq!(
        prefixes.len(),
        ready,
        "ready prefixes in the cache: {prefixes:?}"
    );
    let staging = common::entries(&cache.join("staging"));
    assert!(staging.is_empty(), "staging left behind: {staging:?}");
}

/// A signed fixture mirror mounted without its key: every package answers EACCES; the
/// tree and `.spack-db` are still listed.
#[test]
fn signed_fixture_mirror_without_key_answers_eacces() {
    let Some(fx) = fixtures() else { return };
    let cache = &V3_SIGNED;
    let dirs = MountDirs::new();
    let mirror = fx.mirror(cache.name);
    let d = Daemon::mount(&mirror, &dirs.mnt, &dirs.cache, &["--retry-after", "300"]);
    let mnt = &dirs.mnt;
    let greet = cache.greet_prefix(mnt);
    // exec(2) itself fails: the kernel's path walk gets EACCES from the package.
    match Command::new(greet.join("bin/greet")).output() {
        Ok(out) => panic!("greet ran from an untrusted mirror: {out:?}\n{d}"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EACCES), "exec greet: {e}\n{d}"),
    }
    assert_failed_package(
        &d,
        &greet,
        &["bin", "bin/greet", "share/fixture-greet/selfcheck.txt"],
        "fixture-greet@1.0",
        &mirror,
        libc::EACCES,
        &["not among the trusted keys"],
    );
    let greet_bin = greet.join("bin/greet");
    let run = run_program("sh", ["-c", "\"$1\"", "sh", path_str(&greet_bin)]);
    assert_eq!(run.code, Some(126), "{run}");
    assert!(run.stderr.contains("Permission denied"), "{run}");
    assert_eq!(metric(mnt, "blobs_fetched"), 0, "{d}");
    assert_eq!(metric(mnt, "packages_failed"), 1, "{d}");
    assert_eq!(state(&cache.libgreet_prefix(mnt)), "remote");
    assert!(mnt.join(".spack-db/index.json").is_file());
    assert_cache_holds(&dirs.cache, 0);
}

/// Mount a failure scenario (`evil` broken, `good` fine) and check both.
fn check_failure_scenario(s: &Scenario, errno: i32, causes: &[&str]) {
    let dirs = MountDirs::new();
    let trust = s.mirror.trust_args();
    let mut args: Vec<&str> = trust.iter().map(String::as_str).collect();
    args.extend_from_slice(&["--retry-after", "300"]);
    let d = Daemon::mount(&s.mirror.dir(), &dirs.mnt, &dirs.cache, &args);
    let evil_dir = s.evil.installed_prefix(&dirs.mnt);
    assert_failed_package(
        &d,
        &evil_dir,
        &["data.txt", ".spack/binary_distribution"],
        &s.evil.spec(),
        &s.mirror.dir(),
        errno,
        causes,
    );
    // The other package of the mirror works, and touching it logs no error.
    assert_good_works(&dirs.mnt);
    let (good, _) = good_pkg();
    assert_eq!(state(&good.installed_prefix(&dirs.mnt)), "ready");
    assert_eq!(
        d.error_lines().len(),
        1,
        "only evil's failure logged: {:#?}",
        d.error_lines()
    );
    // evil still fails (no retry within --retry-after 300) and still without a new line.
    let e = errno_of(std::fs::read_dir(&evil_dir), "read_dir", &d);
    assert_eq!(errno_name(e), errno_name(errno));
    assert_eq!(d.error_lines().len(), 1, "{d}");
    assert_eq!(metric(&dirs.mnt, "packages_failed"), 1, "{d}");
    assert_eq!(metric(&dirs.mnt, "packages_materialised"), 1, "{d}");
    assert_cache_holds(&dirs.cache, 1);
}

/// `evil` with a `data.txt`, in a signed generated mirror with `good`.
fn evil_scenario() -> Scenario {
    let pkg = GenPkg::new("evil");
    let tgz = pkg.tgz(
        |t| {
            t.file(&pkg.member("data.txt"), 0o644, b"data\n");
        },
        &Lists::default(),
    );
    Scenario::new(pkg, &tgz)
}

#[test]
fn package_signed_by_untrusted_key_answers_eacces_others_run() {
    let s = evil_scenario();
    let stranger =
        spackfs::writer::SigningKey::generate("Stranger <stranger@example.invalid>", None, None)
            .expect("key generation");
    s.mirror.resign(&s.evil, &stranger, None);
    check_failure_scenario(&s, libc::EACCES, &["not among the trusted keys"]);
}

#[test]
fn missing_blob_answers_eio_others_run() {
    let s = evil_scenario();
    std::fs::remove_file(s.mirror.blob(&s.evil_rec)).expect("remove blob");
    check_failure_scenario(&s, libc::EIO, &["not found", &s.evil_rec.checksum.hex()]);
}

/// A failed package is tried again only after the back-off: a blob that comes back is
/// not noticed during the back-off, and is served once it has passed.
#[test]
fn failed_package_is_retried_only_after_the_back_off() {
    let s = evil_scenario();
    let blob = s.mirror.blob(&s.evil_rec);
    let bytes = std::fs::read(&blob).expect("blob");
    std::fs::remove_file(&blob).expect("remove blob");
    let dirs = MountDirs::new();
    let trust = s.mirror.trust_args();
    let mut args: Vec<&str> = trust.iter().map(String::as_str).collect();
    args.extend_from_slice(&["--retry-after", "2"]);
    let d = Daemon::mount(&s.mirror.dir(), &dirs.mnt, &dirs.cache, &args);
    let evil_dir = s.evil.installed_prefix(&dirs.mnt);
    let e = errno_of(std::fs::read_dir(&evil_dir), "read_dir", &d);
    let failed_at = std::time::Instant::now();
    assert_eq!(errno_name(e), errno_name(libc::EIO), "{d}");
    std::fs::write(&blob, &bytes).expect("restore blob");
    let e = errno_of(std::fs::metadata(evil_dir.join("data.txt")), "metadata", &d);
    if failed_at.elapsed() < Duration::from_millis(1500) {
        assert_eq!(
            errno_name(e),
            errno_name(libc::EIO),
            "retried within the back-off\n{d}"
        );
        assert_eq!(state(&evil_dir), "failed");
    }
    std::thread::sleep(Duration::from_millis(2200).saturating_sub(failed_at.elapsed()));
    let data = std::fs::read(evil_dir.join("data.txt"))
        .unwrap_or_else(|e| panic!("not served after the back-off: {e}\n{d}"));
    assert_eq!(data, b"data\n");
    assert_eq!(state(&evil_dir), "ready");
    assert_eq!(
        d.log_lines_with(&[" ERROR ", &s.evil.spec()]).len(),
        1,
        "one failure, one ERROR line\n{d}"
    );
    assert_eq!(metric(&dirs.mnt, "packages_failed"), 1, "{d}");
    assert_eq!(metric(&dirs.mnt, "packages_materialised"), 1, "{d}");
}

/// The blob is swapped for another valid tarball of the same length that would extract
/// cleanly: only its sha256 tells, after it has been extracted to staging.
#[test]
fn corrupt_blob_answers_eio_others_run() {
    let pkg = GenPkg::new("evil");
    let make = |word: &[u8]| {
        gzip_stored(&pkg.tar(
            |t| {
                t.file(&pkg.member("data.txt"), 0o644, word);
            },
            Some(&pkg.buildinfo(&Lists::default())),
        ))
    };
    let (honest, swapped) = (make(b"honest\n"), make(b"swappd\n"));
    assert_eq!(honest.len(), swapped.len());
    let s = Scenario::new(pkg, &honest);
    std::fs::write(s.mirror.blob(&s.evil_rec), &swapped).expect("swap blob");
    check_failure_scenario(&s, libc::EIO, &["sha256", &s.evil_rec.checksum.hex()]);
}

// ------------------------------------------------------------------ 5. signals, stale mounts

fn stops_cleanly_on(sig: i32) {
    let Some(fx) = fixtures() else { return };
    let dirs = MountDirs::new();
    let d = mount_cache(&V3_UNSIGNED, &fx, &dirs, &[]);
    check_greet_programs(&V3_UNSIGNED, &dirs.mnt, &d);
    d.signal(sig);
    let status = d.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some(),
        "daemon still running 10 s after signal {sig}\n{d}"
    );
    assert_eq!(status.and_then(|s| s.code()), Some(0), "exit status\n{d}");
    assert!(
        !is_mounted(&dirs.mnt),
        "still mounted after signal {sig}\n{d}"
    );
    assert!(
        common::entries(&dirs.mnt).is_empty(),
        "the mount point is back to its empty self"
    );
}

#[test]
fn sigterm_unmounts_and_exits_0() {
    stops_cleanly_on(libc::SIGTERM);
}

#[test]
fn sigint_unmounts_and_exits_0() {
    stops_cleanly_on(libc::SIGINT);
}

/// `umount` from outside ends the daemon too, with status 0.
#[test]
fn unmount_from_outside_ends_the_daemon() {
    let Some(fx) = fixtures() else { return };
    let dirs = MountDirs::new();
    let d = mount_cache(&V3_UNSIGNED, &fx, &dirs, &[]);
    check_greet_programs(&V3_UNSIGNED, &dirs.mnt, &d);
    let run = run_program("umount", [path_str(&dirs.mnt)]);
    run.assert_ok();
    let status = d.wait_exit(Duration::from_secs(10));
    assert!(status.is_some(), "daemon still running after umount\n{d}");
    assert_eq!(status.and_then(|s| s.code()), Some(0), "exit status\n{d}");
    assert!(!is_mounted(&dirs.mnt));
}

/// SIGTERM while a process has its working directory inside the mount: the mount is busy,
/// so the daemon detaches it (as `umount -l` does) and still exits 0.
#[test]
fn sigterm_with_a_busy_mount_point_still_unmounts_and_exits_0() {
    let Some(fx) = fixtures() else { return };
    let dirs = MountDirs::new();
    let d = mount_cache(&V3_UNSIGNED, &fx, &dirs, &[]);
    let busy = KillOnDrop(
        Command::new("sleep")
            .arg("60")
            .current_dir(dirs.mnt.join("linux-x86_64"))
            .stdin(Stdio::null())
            .spawn()
            .expect("sleep"),
    );
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(10));
    let stale = is_stale(&dirs.mnt);
    let still_mounted = is_mounted(&dirs.mnt);
    drop(busy);
    assert!(status.is_some(), "daemon still running after SIGTERM\n{d}");
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "exit status of SIGTERM with a busy mount point\n{d}"
    );
    assert!(
        !still_mounted,
        "SIGTERM left the mount behind (dead: {stale})\n{d}"
    );
}

/// After `kill -9` the mount is left dead; the next mount at the same place cleans it up
/// and serves.
///
/// `stat` of the dead mount root may be answered from the kernel's attribute cache, so the
/// check must use a request that reaches the daemon.
#[test]
fn mount_after_kill_9_cleans_the_stale_mount_and_serves() {
    let Some(fx) = fixtures() else { return };
    let dirs = MountDirs::new();
    let first = mount_cache(&V3_SIGNED, &fx, &dirs, &[]);
    check_greet_programs(&V3_SIGNED, &dirs.mnt, &first);
    // What `ls -la` of the parent, a shell's `cd` or `df` do: stat the mount root.
    run_program("stat", [path_str(&dirs.mnt)]).assert_ok();
    let status = first.kill9();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    assert!(
        is_stale(&dirs.mnt),
        "a killed daemon leaves a dead mount (the case under test)"
    );
    let second = mount_cache(&V3_SIGNED, &fx, &dirs, &[]);
    assert_eq!(
        mount_count(&dirs.mnt),
        1,
        "the stale mount was replaced, not stacked under\n{second}"
    );
    check_greet_programs(&V3_SIGNED, &dirs.mnt, &second);
    assert!(
        !second.log_lines_with(&["stale"]).is_empty(),
        "the cleanup is logged\n{second}"
    );
    drop(second);
    assert!(!is_mounted(&dirs.mnt));
}

// ------------------------------------------------------------------ 6. .spack-db

fn spack_db_lists_every_package(cache: &FixtureCache) {
    let Some(fx) = fixtures() else { return };
    let dirs = MountDirs::new();
    let d = mount_cache(cache, &fx, &dirs, &[]);
    let mnt = &dirs.mnt;
    let raw = std::fs::read(mnt.join(".spack-db/index.json")).expect("read index.json");
    let db: Value = serde_json::from_slice(&raw).expect("index.json is JSON");
    assert_eq!(db["database"]["version"], "8", "{db}");
    let installs = db["database"]["installs"]
        .as_object()
        .expect("database.installs is an object");
    let want: BTreeSet<&str> = [cache.greet_hash, cache.libgreet_hash, cache.bulk_hash].into();
    let got: BTreeSet<&str> = installs.keys().map(String::as_str).collect();
    assert_eq!(got, want, "packages in .spack-db");
    for (name, hash, dir) in package_dirs(cache, mnt) {
        let rec = &installs[hash];
        assert_eq!(rec["spec"]["name"], name, "{rec}");
        assert_eq!(rec["spec"]["version"], "1.0", "{rec}");
        assert_eq!(rec["installed"], true, "{rec}");
        let refs = if name == "fixture-libgreet" { 1 } else { 0 };
        assert_eq!(rec["ref_count"], refs, "{name}: ref_count");
        let path = rec["path"].as_str().expect("path is a string");
        assert_eq!(Path::new(path), dir, "{name}: path");
        assert!(Path::new(path).starts_with(mnt));
        assert!(
            std::fs::metadata(path).is_ok_and(|m| m.is_dir()),
            "{path} exists in the mount"
        );
    }
    assert_eq!(
        metric(mnt, "blobs_fetched"),
        0,
        "reading .spack-db fetched blobs\n{d}"
    );
    let sbang = std::fs::read(mnt.join("bin/sbang")).expect("bin/sbang");
    assert!(sbang.starts_with(b"#!/bin/sh"), "bin/sbang is a script");
}

#[test]
fn v3_spack_db_lists_every_package_under_the_mount_point() {
    spack_db_lists_every_package(&V3_SIGNED);
}

#[test]
fn v2_spack_db_lists_every_package_under_the_mount_point() {
    spack_db_lists_every_package(&V2_SIGNED);
}

// ------------------------------------------------------------------ mount point checks

#[test]
fn mount_on_a_non_empty_directory_fails_naming_it() {
    let Some(fx) = fixtures() else { return };
    let dirs = MountDirs::new();
    std::fs::write(dirs.mnt.join("precious.txt"), b"keep me\n").expect("write");
    let trust = V3_UNSIGNED.trust_args(&fx);
    let args: Vec<&str> = trust.iter().map(String::as_str).collect();
    let d = Daemon::spawn(&fx.mirror(V3_UNSIGNED.name), &dirs.mnt, &dirs.cache, &args);
    let status = d.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| !s.success()),
        "mount on a non-empty directory must fail ({status:?})\n{d}"
    );
    assert!(!is_mounted(&dirs.mnt), "{d}");
    let lines = d.log_lines_with(&["not empty", path_str(&dirs.mnt)]);
    assert!(!lines.is_empty(), "no message naming the directory\n{d}");
    assert_eq!(
        std::fs::read(dirs.mnt.join("precious.txt")).expect("still there"),
        b"keep me\n"
    );
}

#[test]
fn mount_on_a_live_spackfs_mount_fails_clearly() {
    let Some(fx) = fixtures() else { return };
    let dirs = MountDirs::new();
    let live = mount_cache(&V3_UNSIGNED, &fx, &dirs, &[]);
    let trust = V3_UNSIGNED.trust_args(&fx);
    let args: Vec<&str> = trust.iter().map(String::as_str).collect();
    let other_cache = dirs.path().join("cache2");
    let second = Daemon::spawn(&fx.mirror(V3_UNSIGNED.name), &dirs.mnt, &other_cache, &args);
    let status = second.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| !s.success()),
        "a second mount on a live mount must fail ({status:?})\n{second}"
    );
    let lines = second.log_lines_with(&["already mounted", path_str(&dirs.mnt)]);
    assert!(!lines.is_empty(), "no clear message\n{second}");
    assert_eq!(mount_count(&dirs.mnt), 1, "nothing stacked");
    // The live mount is untouched.
    check_greet_programs(&V3_UNSIGNED, &dirs.mnt, &live);
    assert!(xattr(&dirs.mnt, "user.spackfs.read_mode").is_ok());
}

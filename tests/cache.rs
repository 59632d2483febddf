//! The on-disk prefix cache of `spackfs mount` (`--cache-dir`, `--cache-size`) and the
//! `spackfs cache ls|gc|verify` verbs, against the real binary: a bounded cache stays under
//! its bound and evicts the least recently used prefixes while every touch gets correct
//! bytes; open files pin their prefix; a mount whose mirror is gone serves what is cached;
//! `kill -9` during extraction never leaves a partial prefix; damaged prefixes are found
//! (by `cache verify`, or at first use by a new mount) and fetched again; a full cache file
//! system fails the touch cleanly and recovers.
//!
//! Every test has its own mount point and cache (`MountDirs`); the `Daemon` guard always
//! unmounts, `Tmpfs` always unmounts its tmpfs. Tests that count evictions or pins use
//! `--read-mode pread`: in passthrough mode a pin can leak (see
//! `bug_passthrough_open_close_leaks_pins`), which would make them flaky.

mod common;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::cache::{
    bookkeeping_problems, bulk_reference, cache_cmd, cache_ls, cached_names, disk_usage,
    human_slack, incomplete_files, meta_of, metas, poll_until, prefix_keys, recorded_total,
    sha256_hex, staging, wait_until, KillOnDrop, Rng, Tmpfs,
};
use common::mirror::{GenPkg, Lists, TestMirror};
use common::mount::{errno_of, is_stale, metric, mount_count, state, Daemon, MountDirs};
use common::{expected_greet_output, fixtures, path_str, run_program, Fixtures, V3_UNSIGNED};

const GREET: &str = "fixture-greet";
const LIBGREET: &str = "fixture-libgreet";
const BULK: &str = "fixture-bulk";

// ------------------------------------------------------------------ helpers

/// `spackfs mount MIRROR MNT --cache-dir CACHE --unsigned EXTRA...`.
#[track_caller]
fn mount_unsigned(mirror: &Path, dirs: &MountDirs, extra: &[&str]) -> Daemon {
    let mut args = vec!["--unsigned"];
    args.extend_from_slice(extra);
    Daemon::mount(mirror, &dirs.mnt, &dirs.cache, &args)
}

/// Run `bin/greet` from the mount and check its five lines.
#[track_caller]
fn run_greet(mnt: &Path, d: &Daemon) {
    let greet = V3_UNSIGNED.greet_prefix(mnt);
    let run = run_program(greet.join("bin/greet"), [] as [&str; 0]);
    assert_eq!(run.code, Some(0), "greet failed:\n{run}\n{d}");
    assert_eq!(
        run.stdout,
        expected_greet_output(&greet, &V3_UNSIGNED.libgreet_prefix(mnt)),
        "greet output\n{d}"
    );
}

/// Read the checked files of fixture-bulk through the mount; they equal the install's.
#[track_caller]
fn check_bulk(fx: &Fixtures, mnt: &Path, d: &Daemon) {
    let prefix = V3_UNSIGNED.bulk_prefix(mnt);
    for (rel, want) in bulk_reference(fx).expected_sha256(mnt) {
        let got = std::fs::read(prefix.join(rel))
            .unwrap_or_else(|e| panic!("read {rel} through the mount: {e}\n{d}"));
        assert_eq!(
            sha256_hex(&got),
            want,
            "{rel}: mount and install differ\n{d}"
        );
    }
}

/// Wait until `cache ls` shows no pinned entry (the kernel's RELEASE of files that
/// processes closed arrives asynchronously).
#[track_caller]
fn wait_all_unpinned(cache: &Path, d: &Daemon) {
    let ok = wait_until(Duration::from_secs(3), || {
        cache_ls(cache).lines.iter().all(|l| !l.pinned)
    });
    assert!(
        ok,
        "entries still pinned with no file open:\n{}\n{d}",
        cache_ls(cache).run
    );
}

/// Print the daemon's log when `SPACKFS_TEST_VERBOSE` is set.
fn verbose(d: &Daemon) {
    if std::env::var_os("SPACKFS_TEST_VERBOSE").is_some() {
        eprintln!("{d}");
    }
}

/// Evictions of package `name` the daemon logged.
fn evictions(d: &Daemon, name: &str) -> usize {
    d.log_lines_with(&[&format!("cache: evicted {name}@")])
        .len()
}

/// Materialisations of package `name` the daemon logged.
fn materialised(d: &Daemon, name: &str) -> usize {
    d.log_lines_with(&[&format!("Successfully materialised {name}-1.0-")])
        .len()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Exactly these packages are cached, by their meta files and by `cache ls`.
#[track_caller]
fn assert_cached(cache: &Path, list: &[&str], d: &Daemon) {
    assert_eq!(cached_names(cache), names(list), "meta files\n{d}");
    let ls = cache_ls(cache);
    assert_eq!(ls.name_set(), names(list), "`cache ls`:\n{}\n{d}", ls.run);
}

/// Disk usage of the fixture packages in a cache under a `MountDirs` mount point (the
/// relocated prefixes have the same length in every test, so the same size).
struct Sizes {
    greet: u64,
    libgreet: u64,
    bulk: u64,
}

impl Sizes {
    /// A bound that holds bulk with either greet or libgreet, but not all three.
    fn bound(&self) -> u64 {
        let slack = 32 * 1024;
        assert!(
            self.greet.min(self.libgreet) > slack,
            "greet/libgreet smaller than expected"
        );
        self.bulk + self.greet.max(self.libgreet) + slack
    }
}

/// Measured once per process: an unbounded mount touches the three packages.
fn fixture_sizes(fx: &Fixtures) -> &'static Sizes {
    static SIZES: OnceLock<Sizes> = OnceLock::new();
    SIZES.get_or_init(|| {
        let dirs = MountDirs::new();
        let d = mount_unsigned(
            &fx.mirror(V3_UNSIGNED.name),
            &dirs,
            &["--read-mode", "pread"],
        );
        run_greet(&dirs.mnt, &d);
        std::fs::read(
            V3_UNSIGNED
                .bulk_prefix(&dirs.mnt)
                .join(common::cache::BULK_CHECKED[0]),
        )
        .expect("read bulk.dat");
        drop(d);
        let size = |name: &str| {
            meta_of(&dirs.cache, name)
                .unwrap_or_else(|| panic!("{name} not cached"))
                .size
        };
        Sizes {
            greet: size(GREET),
            libgreet: size(LIBGREET),
            bulk: size(BULK),
        }
    })
}

/// The cache holds at most `bound` bytes, by its records, by `cache ls` and on disk, and
/// its bookkeeping matches its directories.
#[track_caller]
fn check_bound(cache: &Path, bound: u64, step: &str, d: &Daemon) {
    let recorded = recorded_total(cache);
    assert!(
        recorded <= bound,
        "{step}: the cache records {recorded} bytes, over its bound of {bound}\n{d}"
    );
    let ls = cache_ls(cache);
    assert!(
        ls.total <= bound as f64 + human_slack(bound as f64),
        "{step}: `cache ls` total {} over the bound {bound}:\n{}",
        ls.total,
        ls.run
    );
    assert!(
        (ls.total - recorded as f64).abs() <= human_slack(recorded as f64),
        "{step}: `cache ls` total {} but the records sum to {recorded}:\n{}",
        ls.total,
        ls.run
    );
    let n = prefix_keys(cache).len() as u64;
    // The prefixes/ directory and each prefix's own directory are not part of an entry.
    let du = disk_usage(&cache.join("prefixes"));
    assert!(
        du <= bound + 8192 * (n + 1),
        "{step}: prefixes/ uses {du} bytes on disk, over the bound {bound}\n{d}"
    );
    let problems = bookkeeping_problems(cache);
    assert!(problems.is_empty(), "{step}: {problems:?}\n{d}");
}

/// Flip one bit of the byte at `offset` of `path` (same size; its change time moves).
fn flip_byte(path: &Path, offset: u64) {
    let mut f = File::options()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset)).expect("seek");
    f.read_exact(&mut b).expect("read byte");
    b[0] ^= 0x01;
    f.seek(SeekFrom::Start(offset)).expect("seek");
    f.write_all(&b).expect("write byte");
}

// ------------------------------------------------------------------ 1. bound and LRU

/// With a bound that holds bulk and one of greet/libgreet but not all three, touching
/// greet, bulk, greet, bulk, greet in turn keeps the cache under the bound after every
/// step, evicts what was used least recently (the other package), returns the evicted
/// package to "remote" so that its next touch fetches it again, and every touch reads
/// correct bytes.
#[test]
fn bounded_cache_stays_under_its_bound_evicts_lru_and_serves_correct_content() {
    let Some(fx) = fixtures() else { return };
    let sizes = fixture_sizes(&fx);
    let bound = sizes.bound();
    bulk_reference(&fx);
    let dirs = MountDirs::new();
    let mnt = &dirs.mnt;
    let cache = &dirs.cache;
    let bound_arg = bound.to_string();
    let d = mount_unsigned(
        &fx.mirror(V3_UNSIGNED.name),
        &dirs,
        &[
            "--cache-size",
            &bound_arg,
            "--cache-grace",
            "0",
            "--read-mode",
            "pread",
        ],
    );
    let greet_dir = V3_UNSIGNED.greet_prefix(mnt);
    let libgreet_dir = V3_UNSIGNED.libgreet_prefix(mnt);
    let bulk_dir = V3_UNSIGNED.bulk_prefix(mnt);

    // greet (and libgreet, its dependency).
    run_greet(mnt, &d);
    wait_all_unpinned(cache, &d);
    check_bound(cache, bound, "after greet", &d);
    assert_cached(cache, &[GREET, LIBGREET], &d);
    assert_eq!(d.log_lines_with(&["cache: evicted"]).len(), 0, "{d}");

    // bulk: greet and libgreet, both unpinned and older, go.
    check_bulk(&fx, mnt, &d);
    wait_all_unpinned(cache, &d);
    check_bound(cache, bound, "after bulk", &d);
    assert_cached(cache, &[BULK], &d);
    assert_eq!(evictions(&d, GREET), 1, "{d}");
    assert_eq!(evictions(&d, LIBGREET), 1, "{d}");
    assert_eq!(
        state(&greet_dir),
        "remote",
        "evicted greet is remote again\n{d}"
    );
    assert_eq!(state(&libgreet_dir), "remote", "{d}");
    assert_eq!(state(&bulk_dir), "ready", "{d}");
    let ls = cache_ls(cache);
    assert_eq!(ls.names(), vec![BULK.to_string()], "{}", ls.run);
    assert_eq!(ls.line(BULK).root, path_str(mnt), "{}", ls.run);

    // greet again: the first of greet/libgreet to be published fits; the second needs
    // room, and bulk (used least recently) goes, not the one just published.
    run_greet(mnt, &d);
    wait_all_unpinned(cache, &d);
    check_bound(cache, bound, "after greet again", &d);
    assert_cached(cache, &[GREET, LIBGREET], &d);
    assert_eq!(evictions(&d, BULK), 1, "{d}");
    assert_eq!(evictions(&d, GREET), 1, "greet itself was not evicted\n{d}");
    assert_eq!(evictions(&d, LIBGREET), 1, "{d}");
    assert_eq!(state(&bulk_dir), "remote", "{d}");
    assert_eq!(materialised(&d, GREET), 2, "greet fetched again\n{d}");

    // bulk again, then greet again.
    check_bulk(&fx, mnt, &d);
    wait_all_unpinned(cache, &d);
    check_bound(cache, bound, "after bulk again", &d);
    assert_cached(cache, &[BULK], &d);
    assert_eq!(evictions(&d, GREET), 2, "{d}");
    assert_eq!(evictions(&d, LIBGREET), 2, "{d}");
    assert_eq!(materialised(&d, BULK), 2, "bulk fetched again\n{d}");

    run_greet(mnt, &d);
    wait_all_unpinned(cache, &d);
    check_bound(cache, bound, "after greet a third time", &d);
    assert_cached(cache, &[GREET, LIBGREET], &d);
    assert_eq!(evictions(&d, BULK), 2, "{d}");
    assert!(d.error_lines().is_empty(), "{:?}", d.error_lines());
    verbose(&d);
}

// ------------------------------------------------------------------ 2. pins

/// A process holding a file of greet open keeps greet from eviction while bulk needs the
/// room: `cache ls` shows greet pinned, libgreet (unpinned) goes, greet's prefix stays,
/// and the open file reads the same bytes afterwards. `strict`: also check the bound and
/// exactly what was evicted (pread mode; see the leak in passthrough mode).
fn open_file_pins_its_prefix(read_mode: &str, strict: bool) {
    let Some(fx) = fixtures() else { return };
    let sizes = fixture_sizes(&fx);
    let bound = sizes.bound();
    bulk_reference(&fx);
    let dirs = MountDirs::new();
    let mnt = &dirs.mnt;
    let cache = &dirs.cache;
    let bound_arg = bound.to_string();
    let d = mount_unsigned(
        &fx.mirror(V3_UNSIGNED.name),
        &dirs,
        &[
            "--cache-size",
            &bound_arg,
            "--cache-grace",
            "0",
            "--read-mode",
            read_mode,
        ],
    );
    run_greet(mnt, &d);
    if strict {
        wait_all_unpinned(cache, &d);
    }
    let held_path = V3_UNSIGNED
        .greet_prefix(mnt)
        .join("share/fixture-greet/deps.txt");
    let mut held = File::open(&held_path).expect("open deps.txt");
    let mut before = Vec::new();
    held.read_to_end(&mut before).expect("read deps.txt");
    assert!(!before.is_empty());
    let greet_key = meta_of(cache, GREET).expect("greet cached").key;
    let ls = cache_ls(cache);
    assert!(ls.line(GREET).pinned, "greet has an open file:\n{}", ls.run);
    if strict {
        assert!(!ls.line(LIBGREET).pinned, "{}", ls.run);
    }

    // Pressure: bulk needs more room than greet's share of the bound.
    check_bulk(&fx, mnt, &d);
    assert!(
        cache.join("prefixes").join(&greet_key).is_dir(),
        "the pinned greet prefix was removed\n{d}"
    );
    assert_eq!(evictions(&d, GREET), 0, "pinned greet evicted\n{d}");
    let ls = cache_ls(cache);
    assert!(ls.line(GREET).pinned, "{}", ls.run);
    assert_eq!(ls.line(GREET).key, greet_key);
    if strict {
        assert_eq!(evictions(&d, LIBGREET), 1, "{d}");
        assert_cached(cache, &[GREET, BULK], &d);
        check_bound(cache, bound, "bulk while greet is pinned", &d);
    }

    // The open file reads the same bytes, and so does a new open.
    held.seek(SeekFrom::Start(0)).expect("seek");
    let mut after = Vec::new();
    held.read_to_end(&mut after)
        .expect("read the held file again");
    assert_eq!(after, before, "held file changed under pressure\n{d}");
    assert_eq!(std::fs::read(&held_path).expect("reopen"), before, "{d}");
    drop(held);

    // Once closed, greet can go like any other entry; greet still runs.
    if strict {
        wait_all_unpinned(cache, &d);
    }
    run_greet(mnt, &d);
    if strict {
        wait_all_unpinned(cache, &d);
        check_bound(cache, bound, "greet after the file was closed", &d);
    }
}

#[test]
fn open_file_pins_its_prefix_against_eviction_pread() {
    open_file_pins_its_prefix("pread", true);
}

#[test]
fn open_file_pins_its_prefix_against_eviction_passthrough() {
    open_file_pins_its_prefix("passthrough", false);
}

// ------------------------------------------------------------------ cache ls / gc

/// `cache ls` and `cache gc` with a mount running (an open file pins its entry, gc leaves
/// it) and without one (`gc --to 0` empties the cache).
#[test]
fn cache_ls_and_gc_work_with_and_without_a_mount() {
    let Some(fx) = fixtures() else { return };
    let dirs = MountDirs::new();
    let mnt = &dirs.mnt;
    let cache = &dirs.cache;
    let d = mount_unsigned(
        &fx.mirror(V3_UNSIGNED.name),
        &dirs,
        &["--read-mode", "pread"],
    );
    run_greet(mnt, &d);
    check_bulk(&fx, mnt, &d);
    wait_all_unpinned(cache, &d);
    let held = File::open(
        V3_UNSIGNED
            .greet_prefix(mnt)
            .join("share/fixture-greet/deps.txt"),
    )
    .expect("open");

    let ls = cache_ls(cache);
    assert_eq!(ls.name_set(), names(&[GREET, LIBGREET, BULK]), "{}", ls.run);
    for l in &ls.lines {
        assert_eq!(l.pinned, l.package.starts_with(GREET), "{}", ls.run);
        assert_eq!(l.root, path_str(mnt), "{}", ls.run);
        assert!(cache.join("prefixes").join(&l.key).is_dir(), "{}", ls.run);
    }
    let recorded = recorded_total(cache);
    assert!(
        (ls.total - recorded as f64).abs() <= human_slack(recorded as f64),
        "{}",
        ls.run
    );

    // gc to a size above the total evicts nothing.
    let gc = cache_cmd(cache, &["gc", "--to", "1GiB"]);
    gc.assert_ok();
    assert!(gc.stdout.contains("evicted 0 prefix(es)"), "{gc}");
    assert_eq!(prefix_keys(cache).len(), 3);

    // gc --to 0 with the mount running: everything but the pinned greet.
    let gc = cache_cmd(cache, &["gc", "--to", "0"]);
    gc.assert_ok();
    for name in [LIBGREET, BULK] {
        assert!(
            gc.stdout
                .lines()
                .any(|l| l.starts_with("evicted ") && l.contains(&format!("{name}@1.0"))),
            "{name} not evicted:\n{gc}"
        );
    }
    assert!(!gc.stdout.contains(&format!("{GREET}@")), "{gc}");
    assert!(gc.stdout.contains("evicted 2 prefix(es)"), "{gc}");
    assert_eq!(cached_names(cache), names(&[GREET]));
    assert!(bookkeeping_problems(cache).is_empty());
    let ls = cache_ls(cache);
    assert_eq!(ls.names(), vec![GREET.to_string()], "{}", ls.run);
    assert!(ls.line(GREET).pinned, "{}", ls.run);
    drop(held);
    drop(d);

    // Without a mount.
    let ls = cache_ls(cache);
    assert!(!ls.line(GREET).pinned, "nobody uses greet now:\n{}", ls.run);
    let gc = cache_cmd(cache, &["gc"]);
    gc.assert_ok();
    assert!(gc.stdout.contains("evicted 1 prefix(es)"), "{gc}");
    let gc = cache_cmd(cache, &["gc", "--to", "0"]);
    gc.assert_ok();
    assert!(gc.stdout.contains("evicted 0 prefix(es)"), "{gc}");
    let ls = cache_ls(cache);
    assert!(ls.lines.is_empty(), "{}", ls.run);
    assert_eq!(ls.total, 0.0, "{}", ls.run);
    assert!(prefix_keys(cache).is_empty());
    assert!(metas(cache).is_empty());
    assert!(staging(cache).is_empty());
}

// ------------------------------------------------------------------ 3. offline

/// The mirror (a copy of spack-v3-unsigned) is renamed away: a remount comes up from the
/// kept index; cached greet runs, uncached bulk fails at once with a log line naming the
/// package and the mirror; `.spack-db` and listing work.
#[test]
fn remount_without_the_mirror_serves_cached_packages_and_fails_others_quickly() {
    let Some(fx) = fixtures() else { return };
    let dirs = MountDirs::new();
    let mnt = &dirs.mnt;
    let mirror = dirs.path().join("mirror");
    fx.copy_mirror(V3_UNSIGNED.name, &mirror);
    let d = mount_unsigned(&mirror, &dirs, &[]);
    run_greet(mnt, &d);
    drop(d);
    std::fs::rename(&mirror, dirs.path().join("mirror-away")).expect("rename the mirror");

    let d = mount_unsigned(&mirror, &dirs, &["--retry-after", "300"]);
    assert!(
        !d.log_lines_with(&["kept"]).is_empty(),
        "the mount says it uses the kept index\n{d}"
    );
    run_greet(mnt, &d);
    assert_eq!(metric(mnt, "blobs_fetched"), 0, "{d}");

    let bulk = V3_UNSIGNED.bulk_prefix(mnt);
    let start = Instant::now();
    let e = errno_of(
        std::fs::read(bulk.join("share/fixture-bulk/bulk.dat")),
        "read uncached bulk",
        &d,
    );
    let took = start.elapsed();
    assert!(took < Duration::from_secs(3), "failing took {took:?}\n{d}");
    assert!(
        e == libc::EIO || e == libc::ENOENT || e == libc::EHOSTUNREACH || e == libc::ENETUNREACH,
        "errno {e} ({})\n{d}",
        std::io::Error::from_raw_os_error(e)
    );
    assert_eq!(state(&bulk), "failed", "{d}");
    let lines = d.log_lines_with(&[" ERROR ", "fixture-bulk@1.0", path_str(&mirror)]);
    assert_eq!(
        lines.len(),
        1,
        "one ERROR line naming bulk and the mirror\n{d}"
    );

    // Listing and .spack-db.
    let listed = common::entries(&mnt.join("linux-x86_64"));
    for (name, hash) in [
        (GREET, V3_UNSIGNED.greet_hash),
        (LIBGREET, V3_UNSIGNED.libgreet_hash),
        (BULK, V3_UNSIGNED.bulk_hash),
    ] {
        assert!(
            listed.contains(&format!("{name}-1.0-{hash}")),
            "{name} not listed: {listed:?}\n{d}"
        );
    }
    let db: serde_json::Value = serde_json::from_slice(
        &std::fs::read(mnt.join(".spack-db/index.json")).expect("read .spack-db"),
    )
    .expect(".spack-db is JSON");
    let installs = db["database"]["installs"].as_object().expect("installs");
    assert_eq!(installs.len(), 3, "{db}");
    assert_eq!(
        installs[V3_UNSIGNED.bulk_hash]["path"],
        path_str(&bulk),
        "{db}"
    );
    // Greet still runs after the failure.
    run_greet(mnt, &d);
}

// ------------------------------------------------------------------ 4. kill -9

/// A generated package of a few hundred MB of compressible data (parts of repeated 16 KiB
/// blocks) plus a relocated text file naming its prefix.
struct BigPackage {
    mirror: TestMirror,
    pkg: GenPkg,
}

const BIG_PARTS: usize = 20;
const BIG_PART_SIZE: usize = 12 << 20;
const BIG_BLOCK: usize = 16 << 10;

impl BigPackage {
    fn block(part: usize) -> Vec<u8> {
        let mut b = Vec::with_capacity(BIG_BLOCK);
        let mut line = 0;
        while b.len() < BIG_BLOCK {
            let l = format!(
                "big part {part:02} line {line:05} {:->40}\n",
                part * 7 + line
            );
            b.extend_from_slice(&l.as_bytes()[..l.len().min(BIG_BLOCK - b.len())]);
            line += 1;
        }
        b
    }

    fn part_name(part: usize) -> String {
        format!("share/big/part-{part:02}.dat")
    }

    fn new() -> BigPackage {
        let mut mirror = TestMirror::unsigned();
        let pkg = GenPkg::new("big");
        let prefix_text = format!("{}\n", pkg.prefix);
        let tgz = pkg.tgz(
            |t| {
                t.dir(&pkg.member("share"));
                t.dir(&pkg.member("share/big"));
                t.file(
                    &pkg.member("share/big/prefix.txt"),
                    0o644,
                    prefix_text.as_bytes(),
                );
                for part in 0..BIG_PARTS {
                    let block = Self::block(part);
                    let data = block.repeat(BIG_PART_SIZE / BIG_BLOCK);
                    t.file(&pkg.member(&Self::part_name(part)), 0o644, &data);
                }
            },
            &Lists::texts(&["share/big/prefix.txt"]),
        );
        mirror.add(&pkg, &tgz);
        mirror.finish();
        BigPackage { mirror, pkg }
    }

    /// Every part and prefix.txt read through the mount are what was packed (relocated).
    #[track_caller]
    fn check_content(&self, mnt: &Path, d: &Daemon) {
        let prefix = self.pkg.installed_prefix(mnt);
        let text = std::fs::read_to_string(prefix.join("share/big/prefix.txt"))
            .unwrap_or_else(|e| panic!("prefix.txt: {e}\n{d}"));
        assert_eq!(text, format!("{}\n", path_str(&prefix)), "{d}");
        for part in 0..BIG_PARTS {
            let data = std::fs::read(prefix.join(Self::part_name(part)))
                .unwrap_or_else(|e| panic!("part {part}: {e}\n{d}"));
            assert_eq!(data.len(), BIG_PART_SIZE, "part {part} size\n{d}");
            let block = Self::block(part);
            for (i, chunk) in data.chunks(BIG_BLOCK).enumerate() {
                assert!(chunk == block, "part {part}: block {i} differs\n{d}");
            }
        }
    }

    fn touch_cmd(&self, mnt: &Path) -> KillOnDrop {
        let part0 = self.pkg.installed_prefix(mnt).join(Self::part_name(0));
        KillOnDrop(
            Command::new("cat")
                .arg(part0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("cat"),
        )
    }
}

/// What the cache directory looks like right after a `kill -9`, before anyone opens it:
/// every meta names a complete prefix (a partial one may only exist without bookkeeping,
/// in staging or prefixes/, to be dropped by the next open).
#[track_caller]
fn check_after_crash(cache: &Path, round: usize, d: &Daemon) {
    for m in metas(cache) {
        let missing = incomplete_files(cache, &m);
        assert!(
            missing.is_empty(),
            "round {round}: {} is recorded but incomplete: {missing:?}\n{d}",
            m.key
        );
    }
}

/// After an open of the cache (`cache ls`, or a new mount): no staging of dead processes,
/// bookkeeping and directories agree.
#[track_caller]
fn check_after_open(cache: &Path, round: usize, what: &str) {
    let st = staging(cache);
    assert!(
        st.is_empty(),
        "round {round}: staging left after {what}: {st:?}"
    );
    let problems = bookkeeping_problems(cache);
    assert!(
        problems.is_empty(),
        "round {round}, after {what}: {problems:?}"
    );
}

/// `kill -9` of the daemon at random points of the first touch of a large package, ten
/// times: each restart mounts over the stale mount, no partial prefix is ever recorded,
/// the next open leaves no staging of the dead daemon and bookkeeping that matches the
/// directories, `cache verify` finds nothing damaged, and the package materialises fully
/// afterwards.
#[test]
fn kill_9_during_extraction_never_leaves_a_partial_prefix() {
    const ROUNDS: usize = 10;
    let big = BigPackage::new();
    let dirs = MountDirs::new();
    let mnt = &dirs.mnt;
    let cache = &dirs.cache;
    let mirror = big.mirror.dir();
    let mut rng = Rng::from_env_or_clock("kill_9_during_extraction");

    // How long a first touch takes here, and how long its staging directory lives (own
    // cache, so that the rounds start cold). Measured twice, the shorter kept: the first
    // touch on a fresh machine also pays for cold binaries and page cache, and a kill timed
    // by it comes after the (faster) touches of the rounds have published.
    let calibrate = |no: usize| {
        let calibration_cache = dirs.path().join(format!("calibration-{no}"));
        let d = Daemon::mount(&mirror, mnt, &calibration_cache, &["--unsigned"]);
        let start = Instant::now();
        let mut touch = big.touch_cmd(mnt);
        let (mut first, mut last) = (None, None);
        let status = loop {
            if !staging(&calibration_cache).is_empty() {
                first.get_or_insert_with(|| start.elapsed());
                last = Some(start.elapsed());
            }
            if let Ok(Some(s)) = touch.0.try_wait() {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(40),
                "first touch of big hangs\n{d}"
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        assert!(status.success(), "first touch of big: {status:?}\n{d}");
        let staged_for = match (first, last) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => Duration::ZERO,
        };
        let full = start.elapsed();
        drop(d);
        std::fs::remove_dir_all(&calibration_cache).expect("remove calibration cache");
        (full, staged_for)
    };
    let (full_a, staged_a) = calibrate(0);
    let (full_b, staged_b) = calibrate(1);
    let (full, staged_for) = (full_a.min(full_b), staged_a.min(staged_b));
    eprintln!(
        "kill_9_during_extraction: a first touch takes {full:?}, its staging lives {staged_for:?}"
    );

    let mut dead: Vec<Daemon> = Vec::new();
    let mut mid_extraction = 0;
    let mut published = 0;
    for round in 0..=ROUNDS {
        let after_crash = round > 0;
        // Even rounds: the offline verbs open the cache first; odd rounds: the mount does.
        if after_crash && round % 2 == 0 {
            let ls = cache_ls(cache);
            check_after_open(cache, round, "cache ls");
            assert!(ls.lines.len() <= 1, "{}", ls.run);
            let v = cache_cmd(cache, &["verify", "--quick"]);
            assert_eq!(v.code, Some(0), "round {round}:\n{v}");
            assert!(v.stdout.contains(", 0 damaged"), "{v}");
            if !ls.lines.is_empty() {
                cache_cmd(cache, &["gc", "--to", "0"]).assert_ok();
                assert!(prefix_keys(cache).is_empty());
            }
        }
        let was_stale = after_crash && is_stale(mnt);
        let d = Daemon::mount(&mirror, mnt, cache, &["--unsigned"]);
        if after_crash {
            assert!(
                was_stale,
                "round {round}: the killed daemon left no dead mount"
            );
            assert_eq!(mount_count(mnt), 1, "round {round}: stacked mounts\n{d}");
            assert!(
                !d.log_lines_with(&["stale"]).is_empty(),
                "round {round}: stale mount not cleaned by the new daemon\n{d}"
            );
            check_after_open(cache, round, "the new mount");
            if !prefix_keys(cache).is_empty() {
                // Published before the kill: drop it so that this round starts cold (the
                // new mount has not used it).
                cache_cmd(cache, &["gc", "--to", "0"]).assert_ok();
                assert!(prefix_keys(cache).is_empty());
            }
        }
        if round == ROUNDS {
            // Afterwards: the package materialises fully.
            big.check_content(mnt, &d);
            drop(d);
            let v = cache_cmd(cache, &["verify"]);
            assert_eq!(v.code, Some(0), "{v}");
            assert!(v.stdout.contains("1 prefix(es) checked, 0 damaged"), "{v}");
            assert!(bookkeeping_problems(cache).is_empty());
            break;
        }
        // Even rounds: a random point of the whole touch (spread over the rounds); odd
        // rounds: a random point after the staging directory appeared.
        let mut touch = big.touch_cmd(mnt);
        let start = Instant::now();
        let delay = if round % 2 == 0 {
            full.mul_f64((round as f64 + rng.unit()) / ROUNDS as f64 * 1.1)
        } else {
            let appeared = poll_until(Duration::from_secs(10), Duration::from_millis(1), || {
                !staging(cache).is_empty()
            });
            assert!(
                appeared,
                "round {round}: no staging directory appeared\n{d}"
            );
            start.elapsed() + staged_for.mul_f64(rng.unit() * 1.2)
        };
        std::thread::sleep(delay.saturating_sub(start.elapsed()));
        d.kill9();
        let staged = !staging(cache).is_empty();
        let recorded = !metas(cache).is_empty();
        eprintln!(
            "round {round}: killed after {:?}: staging {staged}, published {recorded}",
            start.elapsed()
        );
        mid_extraction += usize::from(staged);
        published += usize::from(recorded);
        assert!(
            touch.wait_timeout(Duration::from_secs(10)).is_some(),
            "round {round}: the touching process hangs after the kill"
        );
        check_after_crash(cache, round, &d);
        dead.push(d);
    }
    drop(dead);
    assert!(
        mid_extraction >= ROUNDS / 4,
        "only {mid_extraction} of {ROUNDS} kills hit an extraction in progress \
         ({published} after publishing); the test did not test much"
    );
}

/// The pid of a process that has exited (and was reaped).
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().expect("true");
    let pid = child.id();
    child.wait().expect("wait");
    pid
}

/// What a crash leaves at each point of publishing and evicting, made by hand from real
/// entries: staging of a dead process; a prefix renamed into place with its integrity
/// record but no meta yet; temporary files of interrupted record writes; an eviction
/// stopped after its alias and meta were removed; a tree moved aside for removal. The next
/// open (`cache ls`) drops them all and keeps the intact entry and the staging of live
/// processes.
#[test]
fn open_cleans_up_what_a_crash_leaves_at_each_step() {
    let Some(fx) = fixtures() else { return };
    let dirs = MountDirs::new();
    let cache = &dirs.cache;
    let d = mount_unsigned(&fx.mirror(V3_UNSIGNED.name), &dirs, &[]);
    run_greet(&dirs.mnt, &d);
    drop(d);
    assert!(bookkeeping_problems(cache).is_empty());
    let greet = meta_of(cache, GREET).expect("greet");
    let libgreet = meta_of(cache, LIBGREET).expect("libgreet");
    let greet_dir = cache.join("prefixes").join(&greet.key);
    let copy = |from: &Path, to: &Path| {
        run_program("cp", ["-a", path_str(from), path_str(to)]).assert_ok();
    };
    let dead = dead_pid();
    // Extraction in progress.
    copy(
        &greet_dir,
        &cache.join(format!("staging/{dead}.{}.AbC123", V3_UNSIGNED.bulk_hash)),
    );
    // Renamed into place and its digests written, meta not yet.
    let fake = "0123456789abcdef0123456789abcdef";
    copy(&greet_dir, &cache.join("prefixes").join(fake));
    copy(
        &cache.join(format!("digests/{}.json", greet.key)),
        &cache.join(format!("digests/{fake}.json")),
    );
    // Interrupted writes of records (write to a temporary file, then rename).
    for (dir, name) in [
        ("meta", format!(".{fake}.json.{dead}.tmp")),
        ("digests", format!(".{fake}.json.{dead}.tmp")),
        ("aliases", format!(".0011223344556677.{dead}.tmp")),
    ] {
        std::fs::write(cache.join(dir).join(name), b"{\"partial").expect("tmp file");
    }
    // Eviction of libgreet: alias and meta removed, digests and tree not yet.
    let (alias, _) = common::cache::aliases(cache)
        .into_iter()
        .find(|(_, k)| *k == libgreet.key)
        .expect("alias of libgreet");
    std::fs::remove_file(cache.join("aliases").join(alias)).expect("rm alias");
    std::fs::remove_file(cache.join(format!("meta/{}.json", libgreet.key))).expect("rm meta");
    // Eviction: tree moved aside, not yet removed.
    copy(
        &greet_dir,
        &cache.join(format!(
            "staging/{dead}.evicted.fedcba9876543210fedcba9876543210"
        )),
    );
    // A live process's staging stays.
    let live_name = format!("{}.x.live", std::process::id());
    let live = cache.join("staging").join(&live_name);
    std::fs::create_dir(&live).expect("live staging");
    assert!(!bookkeeping_problems(cache).is_empty());

    let ls = cache_ls(cache);
    assert_eq!(ls.names(), vec![GREET.to_string()], "{}", ls.run);
    assert_eq!(
        staging(cache),
        vec![live_name],
        "dead staging removed, live kept"
    );
    std::fs::remove_dir(&live).expect("remove live staging");
    let problems = bookkeeping_problems(cache);
    assert!(problems.is_empty(), "after the next open: {problems:?}");
    assert_eq!(prefix_keys(cache), [greet.key.clone()].into());
    let v = cache_cmd(cache, &["verify"]);
    assert_eq!(v.code, Some(0), "{v}");
    assert!(v.stdout.contains("1 prefix(es) checked, 0 damaged"), "{v}");
}

/// An entry whose alias is lost (what a crash between the alias and meta writes of an
/// older publish order left) is found again: the next open recreates the alias, so that a
/// mount whose mirror is unreachable still serves the cached package. Made by hand: the
/// alias file of greet is removed, then the mirror is taken away.
#[test]
fn entry_whose_alias_was_lost_is_found_offline_after_the_next_open() {
    let Some(fx) = fixtures() else { return };
    let dirs = MountDirs::new();
    let cache = &dirs.cache;
    let mirror = dirs.path().join("mirror");
    fx.copy_mirror(V3_UNSIGNED.name, &mirror);
    let d = mount_unsigned(&mirror, &dirs, &[]);
    run_greet(&dirs.mnt, &d);
    drop(d);
    let greet = meta_of(cache, GREET).expect("greet");
    let (alias, _) = common::cache::aliases(cache)
        .into_iter()
        .find(|(_, k)| *k == greet.key)
        .expect("alias of greet");
    std::fs::remove_file(cache.join("aliases").join(alias)).expect("rm alias");
    std::fs::rename(&mirror, dirs.path().join("mirror-away")).expect("rename the mirror");

    let d = mount_unsigned(&mirror, &dirs, &["--retry-after", "300"]);
    let ls = cache_ls(cache);
    assert!(
        ls.lines.iter().any(|l| l.key == greet.key),
        "greet is still an entry:\n{}",
        ls.run
    );
    run_greet(&dirs.mnt, &d);
    assert_eq!(metric(&dirs.mnt, "blobs_fetched"), 0, "{d}");
    let problems = bookkeeping_problems(cache);
    assert!(problems.is_empty(), "{problems:?}");
}

// ------------------------------------------------------------------ 5. damaged prefixes

/// One byte of a cached file is changed with the daemon stopped: `cache verify` reports
/// that prefix (exit status 1) and removes it, `--quick` finds another change too, the
/// intact entries stay, and the next mount fetches the removed ones again and serves
/// correct bytes.
#[test]
fn cache_verify_reports_and_removes_a_changed_prefix_and_the_next_mount_refetches() {
    let Some(fx) = fixtures() else { return };
    let dirs = MountDirs::new();
    let mnt = &dirs.mnt;
    let cache = &dirs.cache;
    let mirror = fx.mirror(V3_UNSIGNED.name);
    let d = mount_unsigned(&mirror, &dirs, &[]);
    run_greet(mnt, &d);
    check_bulk(&fx, mnt, &d);
    drop(d);

    let v = cache_cmd(cache, &["verify"]);
    assert_eq!(v.code, Some(0), "{v}");
    assert!(v.stdout.contains("3 prefix(es) checked, 0 damaged"), "{v}");

    let bulk = meta_of(cache, BULK).expect("bulk cached");
    flip_byte(
        &cache
            .join("prefixes")
            .join(&bulk.key)
            .join("share/fixture-bulk/blob.bin"),
        4096,
    );
    let v = cache_cmd(cache, &["verify"]);
    assert_eq!(v.code, Some(1), "{v}");
    assert!(
        v.stdout.lines().any(|l| l.starts_with("damaged")
            && l.contains(&bulk.key)
            && l.contains("fixture-bulk@1.0")
            && l.contains("blob.bin")),
        "{v}"
    );
    assert!(v.stdout.contains("3 prefix(es) checked, 1 damaged"), "{v}");
    assert!(!cache.join("prefixes").join(&bulk.key).exists(), "{v}");
    assert_eq!(cached_names(cache), names(&[GREET, LIBGREET]));
    assert!(bookkeeping_problems(cache).is_empty());
    let v = cache_cmd(cache, &["verify"]);
    assert_eq!(v.code, Some(0), "{v}");
    assert!(v.stdout.contains("2 prefix(es) checked, 0 damaged"), "{v}");

    let greet = meta_of(cache, GREET).expect("greet cached");
    flip_byte(
        &cache
            .join("prefixes")
            .join(&greet.key)
            .join("share/fixture-greet/selfcheck.txt"),
        3,
    );
    let v = cache_cmd(cache, &["verify", "--quick"]);
    assert_eq!(v.code, Some(1), "{v}");
    assert!(
        v.stdout.lines().any(|l| l.starts_with("damaged")
            && l.contains(&greet.key)
            && l.contains("fixture-greet@1.0")),
        "{v}"
    );
    assert_eq!(cached_names(cache), names(&[LIBGREET]));

    // The next mount fetches greet and bulk again; libgreet comes from the cache.
    let d = mount_unsigned(&mirror, &dirs, &[]);
    run_greet(mnt, &d);
    check_bulk(&fx, mnt, &d);
    assert_eq!(materialised(&d, GREET), 1, "{d}");
    assert_eq!(materialised(&d, BULK), 1, "{d}");
    assert_eq!(materialised(&d, LIBGREET), 0, "{d}");
    assert_eq!(metric(mnt, "blobs_fetched"), 2, "{d}");
    drop(d);
    let v = cache_cmd(cache, &["verify"]);
    assert_eq!(v.code, Some(0), "{v}");
    assert!(v.stdout.contains("3 prefix(es) checked, 0 damaged"), "{v}");
}

/// A cached file changed on disk without `cache verify`: the next mount notices at first
/// use (size/change time), drops the prefix and fetches it again; the changed bytes are
/// never served.
#[test]
fn changed_cached_file_is_detected_at_first_use_and_refetched() {
    let Some(fx) = fixtures() else { return };
    let dirs = MountDirs::new();
    let mnt = &dirs.mnt;
    let cache = &dirs.cache;
    let mirror = fx.mirror(V3_UNSIGNED.name);
    let d = mount_unsigned(&mirror, &dirs, &[]);
    check_bulk(&fx, mnt, &d);
    drop(d);
    let bulk = meta_of(cache, BULK).expect("bulk cached");
    flip_byte(
        &cache
            .join("prefixes")
            .join(&bulk.key)
            .join("share/fixture-bulk/bulk.dat"),
        100,
    );

    let d = mount_unsigned(&mirror, &dirs, &[]);
    check_bulk(&fx, mnt, &d);
    assert!(
        !d.log_lines_with(&["fixture-bulk@1.0", "damaged"])
            .is_empty(),
        "the damage is logged\n{d}"
    );
    assert_eq!(materialised(&d, BULK), 1, "bulk fetched again\n{d}");
    assert_eq!(metric(mnt, "blobs_fetched"), 1, "{d}");
    drop(d);
    let v = cache_cmd(cache, &["verify"]);
    assert_eq!(v.code, Some(0), "{v}");
    assert!(v.stdout.contains("1 prefix(es) checked, 0 damaged"), "{v}");
}

// ------------------------------------------------------------------ 6. full cache

/// The cache directory is a tmpfs of 8 MB and bulk needs 24: the touch fails with ENOSPC
/// (or EIO), the log says the cache file system is full, nothing of bulk is published or
/// left in staging; once the tmpfs is grown and the back-off has passed, bulk is served.
#[test]
fn full_cache_file_system_fails_the_touch_cleanly_and_recovers() {
    let Some(fx) = fixtures() else { return };
    bulk_reference(&fx);
    let dirs = MountDirs::new();
    let mnt = &dirs.mnt;
    let cache = &dirs.cache;
    let tmpfs = Tmpfs::mount(cache, "8m");
    let d = mount_unsigned(&fx.mirror(V3_UNSIGNED.name), &dirs, &["--retry-after", "1"]);
    run_greet(mnt, &d);

    let bulk_dat = V3_UNSIGNED
        .bulk_prefix(mnt)
        .join("share/fixture-bulk/bulk.dat");
    let e = errno_of(std::fs::read(&bulk_dat), "read bulk on a full cache", &d);
    let failed_at = Instant::now();
    assert_eq!(
        e,
        libc::ENOSPC,
        "errno {e} ({})\n{d}",
        std::io::Error::from_raw_os_error(e)
    );
    let lines = d.log_lines_with(&["fixture-bulk@1.0", "is full"]);
    assert_eq!(lines.len(), 1, "the log says the cache is full\n{d}");
    assert!(lines[0].contains(path_str(cache)), "{}", lines[0]);
    assert!(meta_of(cache, BULK).is_none(), "{d}");
    assert_eq!(
        prefix_keys(cache).len(),
        2,
        "only greet and libgreet: {:?}\n{d}",
        prefix_keys(cache)
    );
    assert!(staging(cache).is_empty(), "{:?}\n{d}", staging(cache));
    assert!(bookkeeping_problems(cache).is_empty());

    tmpfs.resize("64m");
    std::thread::sleep(Duration::from_millis(1300).saturating_sub(failed_at.elapsed()));
    check_bulk(&fx, mnt, &d);
    assert_eq!(state(&V3_UNSIGNED.bulk_prefix(mnt)), "ready", "{d}");
    assert!(meta_of(cache, BULK).is_some());
    assert!(staging(cache).is_empty());
    verbose(&d);
    drop(d);
    drop(tmpfs);
}

/// No inode is left on the cache's file system, so not even the staging directory can be
/// made: the touch gets ENOSPC (not EIO), nothing is left behind, and once inodes are free
/// again the package is served.
#[test]
fn no_inode_for_the_staging_directory_gives_enospc_and_recovers() {
    let Some(fx) = fixtures() else { return };
    let dirs = MountDirs::new();
    let mnt = &dirs.mnt;
    let cache = &dirs.cache;
    let tmpfs = Tmpfs::mount(cache, "64m");
    let d = mount_unsigned(&fx.mirror(V3_UNSIGNED.name), &dirs, &["--retry-after", "1"]);
    tmpfs.remount(&format!("nr_inodes={}", tmpfs.inodes_used()));
    let greet = V3_UNSIGNED.greet_prefix(mnt).join("bin/greet");
    let e = errno_of(std::fs::metadata(&greet), "stat greet without inodes", &d);
    let failed_at = Instant::now();
    assert_eq!(
        e,
        libc::ENOSPC,
        "errno {e} ({})\n{d}",
        std::io::Error::from_raw_os_error(e)
    );
    assert!(
        !d.log_lines_with(&["fixture-greet@1.0", "is full"])
            .is_empty(),
        "{d}"
    );
    assert!(staging(cache).is_empty(), "{:?}\n{d}", staging(cache));
    tmpfs.remount("nr_inodes=100000");
    std::thread::sleep(Duration::from_millis(1300).saturating_sub(failed_at.elapsed()));
    run_greet(mnt, &d);
    drop(d);
    drop(tmpfs);
}

// ------------------------------------------------------------------ bugs

/// In passthrough mode (the default), files opened and closed quickly on several threads
/// release their pins: the handle (and its pin) is recorded before the reply, so a RELEASE
/// handled at once on another FUSE thread finds it.
#[test]
fn passthrough_open_close_releases_its_pins() {
    pins_released_after_close("passthrough");
}

/// The same with `--read-mode pread`, where the handle is recorded before the reply.
#[test]
fn pins_are_released_after_close_pread() {
    pins_released_after_close("pread");
}

fn pins_released_after_close(read_mode: &str) {
    let Some(fx) = fixtures() else { return };
    let dirs = MountDirs::new();
    let mnt = &dirs.mnt;
    let d = mount_unsigned(
        &fx.mirror(V3_UNSIGNED.name),
        &dirs,
        &["--read-mode", read_mode],
    );
    run_greet(mnt, &d);
    let files: Vec<PathBuf> = vec![
        V3_UNSIGNED
            .greet_prefix(mnt)
            .join("share/fixture-greet/selfcheck.txt"),
        V3_UNSIGNED
            .libgreet_prefix(mnt)
            .join("share/greet/message.txt"),
    ];
    std::thread::scope(|s| {
        for t in 0..4 {
            let f = &files[t % files.len()];
            s.spawn(move || {
                for _ in 0..400 {
                    let mut file = File::open(f).expect("open");
                    let mut b = [0u8; 16];
                    let _ = file.read(&mut b).expect("read");
                }
            });
        }
    });
    let released = wait_until(Duration::from_secs(3), || {
        cache_ls(&dirs.cache).lines.iter().all(|l| !l.pinned)
    });
    assert!(
        released,
        "{read_mode}: prefixes still pinned though every file was closed:\n{}",
        cache_ls(&dirs.cache).run
    );
}

/// `spackfs cache gc` run while a mount is up evicts prefixes that the mount has ready:
/// the mount notices the prefix is gone (ESTALE makes the kernel walk the path again),
/// forgets it and fetches it again on the next touch.
#[test]
fn cache_gc_while_mounted_refetches_the_packages_it_evicts() {
    let Some(fx) = fixtures() else { return };
    let dirs = MountDirs::new();
    let mnt = &dirs.mnt;
    let d = mount_unsigned(
        &fx.mirror(V3_UNSIGNED.name),
        &dirs,
        &["--read-mode", "pread"],
    );
    run_greet(mnt, &d);
    check_bulk(&fx, mnt, &d);
    wait_all_unpinned(&dirs.cache, &d);
    let gc = cache_cmd(&dirs.cache, &["gc", "--to", "0"]);
    gc.assert_ok();
    assert!(gc.stdout.contains("evicted 3 prefix(es)"), "{gc}");
    // The running mount must fetch them again.
    check_bulk(&fx, mnt, &d);
    run_greet(mnt, &d);
}

/// `spackfs cache verify` removes a damaged prefix that a running mount has ready; the
/// mount fetches the package again instead of failing.
#[test]
fn cache_verify_while_mounted_refetches_the_package_it_removes() {
    let Some(fx) = fixtures() else { return };
    let dirs = MountDirs::new();
    let mnt = &dirs.mnt;
    let cache = &dirs.cache;
    let d = mount_unsigned(
        &fx.mirror(V3_UNSIGNED.name),
        &dirs,
        &["--read-mode", "pread"],
    );
    check_bulk(&fx, mnt, &d);
    wait_all_unpinned(cache, &d);
    let bulk = meta_of(cache, BULK).expect("bulk cached");
    flip_byte(
        &cache
            .join("prefixes")
            .join(&bulk.key)
            .join("share/fixture-bulk/tree/d03/s01/file-2.txt"),
        0,
    );
    let v = cache_cmd(cache, &["verify"]);
    assert_eq!(v.code, Some(1), "{v}");
    assert!(meta_of(cache, BULK).is_none(), "{v}");
    let listed = std::fs::read_dir(V3_UNSIGNED.bulk_prefix(mnt).join("share/fixture-bulk/tree"))
        .map(|rd| rd.count());
    assert!(
        listed.is_ok(),
        "bulk after verify removed it: {listed:?}\n{d}"
    );
    check_bulk(&fx, mnt, &d);
}

/// Within a running mount, using a ready package again counts as a use for the cache's
/// LRU order: greet, run again after bulk was read, is newer than bulk.
#[test]
fn uses_within_a_running_mount_count_for_lru() {
    let Some(fx) = fixtures() else { return };
    let dirs = MountDirs::new();
    let mnt = &dirs.mnt;
    let cache = &dirs.cache;
    let d = mount_unsigned(
        &fx.mirror(V3_UNSIGNED.name),
        &dirs,
        &["--read-mode", "pread"],
    );
    run_greet(mnt, &d);
    std::thread::sleep(Duration::from_millis(50));
    check_bulk(&fx, mnt, &d);
    std::thread::sleep(Duration::from_millis(50));
    // greet (and through it libgreet) is now the most recently used.
    run_greet(mnt, &d);
    wait_all_unpinned(cache, &d);
    drop(d);

    let ls = cache_ls(cache);
    assert_eq!(
        ls.names().first().map(String::as_str),
        Some(BULK),
        "bulk is the least recently used:\n{}",
        ls.run
    );
    let keep =
        meta_of(cache, GREET).expect("greet").size + meta_of(cache, LIBGREET).expect("l").size;
    let keep_arg = keep.to_string();
    let gc = cache_cmd(cache, &["gc", "--to", &keep_arg]);
    gc.assert_ok();
    assert_eq!(
        cached_names(cache),
        names(&[GREET, LIBGREET]),
        "gc evicts the least recently used first:\n{gc}"
    );
}

/// A prefix made ready for a waiting process can be evicted before that process opens
/// anything in it (bulk pinned, a bound that holds bulk plus one of greet/libgreet, greet
/// and libgreet published one after the other). The open then gets ESTALE, the kernel
/// walks the path again and the package is fetched again: greet still runs. Timing
/// dependent, so the test tries twelve fresh mounts; when the two thrash (the cache is
/// smaller than the working set) the process may see ESTALE once, never ENOENT.
#[test]
fn prefix_evicted_between_lookup_and_open_is_fetched_again() {
    let Some(fx) = fixtures() else { return };
    let bound = fixture_sizes(&fx).bound().to_string();
    for attempt in 0..12 {
        let dirs = MountDirs::new();
        let d = mount_unsigned(
            &fx.mirror(V3_UNSIGNED.name),
            &dirs,
            &[
                "--cache-size",
                &bound,
                "--cache-grace",
                "0",
                "--read-mode",
                "pread",
            ],
        );
        let held = File::open(
            V3_UNSIGNED
                .bulk_prefix(&dirs.mnt)
                .join("share/fixture-bulk/bulk.dat"),
        )
        .expect("open bulk.dat");
        let greet = V3_UNSIGNED.greet_prefix(&dirs.mnt);
        match Command::new(greet.join("bin/greet")).output() {
            Ok(out) if out.status.success() => {}
            // The cache is smaller than greet's closure plus the pinned bulk, so greet and
            // libgreet may evict each other more than once while the kernel walks the path
            // again: the process may then see ESTALE, never a missing file, and the next
            // run (greet pinned by its own open) succeeds.
            Err(e) if e.raw_os_error() == Some(libc::ESTALE) => {
                let again = Command::new(greet.join("bin/greet")).output();
                assert!(
                    again.as_ref().is_ok_and(|o| o.status.success()),
                    "attempt {attempt}: greet failed again after ESTALE: {again:?}\n{d}"
                );
            }
            other => {
                panic!("attempt {attempt}: greet failed while bulk was pinned: {other:?}\n{d}")
            }
        }
        drop(held);
    }
}

//! A mount of a large index (issue 12), CI-sized: 20,000 generated packages shaped like
//! Spack's records (examples/bench_index_mirror.rs, the generator of `bench/index`) with the
//! real fixture packages of spack-v3-unsigned placed among them. Listing, lookup, `stat` of
//! every entry of the largest directory, a touch (the greet programs run), the database at
//! the root, the kept index (mirror gone), and an index refresh that swaps in a changed
//! index while processes keep using the mount.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::cache::poll_until;
use common::mount::{check_greet_programs, Daemon, MountDirs};
use common::{fixtures, run_program, V3_UNSIGNED};
use serde_json::Value;

const PACKAGES: usize = 20_000;

/// The generator `cargo test` built beside this test.
fn generator() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    dir.join("examples").join("bench_index_mirror")
}

/// Generate a mirror of `packages` packages (plus the fixture's) under `out`; returns it.
fn generate(out: &Path, packages: usize, fixture: &Path) -> PathBuf {
    let run = Command::new(generator())
        .arg(out)
        .args(["--packages", &packages.to_string(), "--fixture"])
        .arg(fixture)
        .output()
        .expect("run the generator");
    assert!(
        run.status.success(),
        "the generator failed:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    out.join("mirror")
}

/// The package directories a mount of `mirror` must show (default projection
/// `{platform}-{target}/{name}-{version}-{hash}`), read from its index with serde_json.
fn expected_paths(mirror: &Path) -> BTreeSet<String> {
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(mirror.join("v3/manifests/index/index.manifest.json")).unwrap(),
    )
    .unwrap();
    let sum = manifest["data"][0]["checksum"].as_str().unwrap();
    let blob = mirror.join(format!("blobs/sha256/{}/{sum}", &sum[..2]));
    let db: Value = serde_json::from_slice(&std::fs::read(blob).unwrap()).unwrap();
    let mut out = BTreeSet::new();
    for (hash, rec) in db["database"]["installs"].as_object().unwrap() {
        let spec = &rec["spec"];
        if rec["in_buildcache"] != true || spec.get("external").is_some_and(|e| !e.is_null()) {
            continue;
        }
        let arch = &spec["arch"];
        let target = arch["target"]
            .as_str()
            .or_else(|| arch["target"]["name"].as_str())
            .unwrap();
        out.insert(format!(
            "{}-{target}/{}-{}-{hash}",
            arch["platform"].as_str().unwrap(),
            spec["name"].as_str().unwrap(),
            spec["version"].as_str().unwrap()
        ));
    }
    out
}

/// Every package directory the mount lists, and how many the largest directory holds.
fn listed_paths(mnt: &Path) -> (BTreeSet<String>, PathBuf) {
    let mut out = BTreeSet::new();
    let mut sizes = BTreeMap::new();
    for top in std::fs::read_dir(mnt).unwrap() {
        let top = top.unwrap();
        let name = top.file_name().into_string().unwrap();
        // `.spack-db`, and `bin` (sbang) are no packages.
        if name.starts_with('.') || name == "bin" || !top.file_type().unwrap().is_dir() {
            continue;
        }
        let mut n = 0;
        for e in std::fs::read_dir(top.path()).unwrap() {
            let e = e.unwrap();
            out.insert(format!("{name}/{}", e.file_name().into_string().unwrap()));
            n += 1;
        }
        sizes.insert(n, top.path());
    }
    let largest = sizes.pop_last().expect("a directory of packages").1;
    (out, largest)
}

#[test]
fn a_large_index_lists_looks_up_and_touches() {
    let Some(fx) = fixtures() else { return };
    let gen = common::short_tempdir();
    let mirror = generate(gen.path(), PACKAGES, &fx.mirror(V3_UNSIGNED.name));
    let expected = expected_paths(&mirror);
    assert!(expected.len() > PACKAGES, "{} expected", expected.len());
    // Mounted through a link to the mirror: removing the link takes the mirror away.
    let link = gen.path().join("mirror-link");
    std::os::unix::fs::symlink(&mirror, &link).unwrap();
    let dirs = MountDirs::new();
    let d = Daemon::mount(&link, &dirs.mnt, &dirs.cache, &["--unsigned"]);

    let (listed, largest) = listed_paths(&dirs.mnt);
    assert!(
        listed == expected,
        "the listing is not the index's packages: listed only {:?}, in the index only {:?}\n{d}",
        listed.difference(&expected).take(5).collect::<Vec<_>>(),
        expected.difference(&listed).take(5).collect::<Vec<_>>()
    );
    // `ls -l` of the largest directory: every entry stats as a directory.
    let mut entries = 0;
    for e in std::fs::read_dir(&largest).unwrap() {
        let md = std::fs::symlink_metadata(e.unwrap().path()).unwrap();
        assert!(md.is_dir());
        entries += 1;
    }
    assert!(entries > PACKAGES / 2, "{entries} in {}", largest.display());
    // Lookups by name (not through a listing of their directory first) find each package
    // once; a name one character off is no package.
    for p in expected.iter().step_by(97) {
        assert!(dirs.mnt.join(p).is_dir(), "{p} not found\n{d}");
        let mut wrong = p.clone();
        let last = wrong.pop().unwrap();
        wrong.push(if last == 'a' { 'b' } else { 'a' });
        let err = std::fs::symlink_metadata(dirs.mnt.join(&wrong)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{wrong}");
    }
    // A touch: the fixture package placed in the large index is materialised and runs.
    check_greet_programs(&V3_UNSIGNED, &dirs.mnt, &d);
    // The database at the root names every prefix, in Spack's format.
    let db: Value =
        serde_json::from_slice(&std::fs::read(dirs.mnt.join(".spack-db/index.json")).unwrap())
            .unwrap();
    assert_eq!(db["database"]["version"], "8");
    let installs = db["database"]["installs"].as_object().unwrap();
    let db_paths: BTreeSet<String> = installs
        .values()
        .map(|r| {
            let path = Path::new(r["path"].as_str().unwrap());
            let rel = path.strip_prefix(&dirs.mnt).unwrap();
            rel.to_str().unwrap().to_string()
        })
        .collect();
    assert!(
        db_paths == expected,
        "the database's prefixes are not the listing's"
    );
    for (hash, r) in installs.iter().step_by(211) {
        assert_eq!(r["spec"]["hash"].as_str(), Some(hash.as_str()));
        assert!(r["spec"]["arch"]["target"].is_object() || r["spec"]["arch"]["target"].is_string());
    }
    drop(d);

    // The mirror is gone: a new mount lists the kept index, and the prefix the cache holds
    // still runs.
    std::fs::remove_file(&link).unwrap();
    let d = Daemon::mount(&link, &dirs.mnt, &dirs.cache, &["--unsigned"]);
    let (listed, _) = listed_paths(&dirs.mnt);
    assert!(
        listed == expected,
        "the kept index lists other packages\n{d}"
    );
    check_greet_programs(&V3_UNSIGNED, &dirs.mnt, &d);
}

#[test]
fn a_changed_large_index_is_swapped_in_while_processes_run() {
    let Some(fx) = fixtures() else { return };
    let gen = common::short_tempdir();
    let fixture = fx.mirror(V3_UNSIGNED.name);
    let mirror = generate(&gen.path().join("a"), PACKAGES, &fixture);
    let before = expected_paths(&mirror);
    // The same generator with one package more: the same records, and one new.
    let next = generate(&gen.path().join("b"), PACKAGES + 1, &fixture);
    let after = expected_paths(&next);
    let added: Vec<&String> = after.difference(&before).collect();
    assert_eq!(added.len(), 1, "{added:?}");
    assert!(before.is_subset(&after));

    let dirs = MountDirs::new();
    let d = Daemon::mount(
        &mirror,
        &dirs.mnt,
        &dirs.cache,
        &["--unsigned", "--index-ttl", "1s"],
    );
    let greet = V3_UNSIGNED.greet_prefix(&dirs.mnt).join("bin/greet");
    let stop = AtomicBool::new(false);
    let (runs, failures) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let failed = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        // Users of the mount during the swap: a program run from it, and lookups of
        // packages that stay.
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let run = run_program(&greet, [] as [&str; 0]);
                runs.fetch_add(1, Ordering::Relaxed);
                if run.code != Some(0) {
                    failures.fetch_add(1, Ordering::Relaxed);
                    failed.lock().unwrap().push(run.to_string());
                }
            }
        });
        s.spawn(|| {
            let some: Vec<&String> = before.iter().step_by(503).collect();
            while !stop.load(Ordering::Relaxed) {
                for p in &some {
                    runs.fetch_add(1, Ordering::Relaxed);
                    if !dirs.mnt.join(p).is_dir() {
                        failures.fetch_add(1, Ordering::Relaxed);
                        failed.lock().unwrap().push(format!("{p} vanished"));
                    }
                }
            }
        });
        // The mirror's index changes: blobs and manifests first, the index manifest last
        // (renamed into place, as a publishing tool does).
        std::thread::sleep(Duration::from_millis(500));
        copy_missing(&next, &mirror);
        let manifest = "v3/manifests/index/index.manifest.json";
        let tmp = mirror.join("v3/manifests/index/.index.manifest.json.new");
        std::fs::copy(next.join(manifest), &tmp).unwrap();
        std::fs::rename(&tmp, mirror.join(manifest)).unwrap();
        let appeared = poll_until(Duration::from_secs(60), Duration::from_millis(50), || {
            dirs.mnt.join(added[0]).is_dir()
        });
        let runs_at_swap = runs.load(Ordering::Relaxed);
        // Keep the users going a little past the swap.
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        assert!(
            appeared,
            "{} did not appear after the index changed\n{d}",
            added[0]
        );
        assert!(runs_at_swap > 0, "nothing ran during the swap");
    });
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "uses of the mount failed during the swap: {:?}\n{d}",
        failed.lock().unwrap().first()
    );
    let (listed, _) = listed_paths(&dirs.mnt);
    assert!(
        listed == after,
        "after the swap the listing is not the new index's"
    );
    check_greet_programs(&V3_UNSIGNED, &dirs.mnt, &d);
}

/// Copy every file of `from` that `to` lacks (same relative path).
fn copy_missing(from: &Path, to: &Path) {
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(from.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                std::fs::create_dir_all(to.join(&r)).unwrap();
                stack.push(r);
            } else if !to.join(&r).exists() {
                std::fs::copy(e.path(), to.join(&r)).unwrap();
            }
        }
    }
}

//! `spackfs mirror copy` (air-gapped seeding), run as the real binary on the real signed
//! fixtures: a copy from a `spack.lock` holds exactly the packages' closure, index and keys,
//! byte for byte, and mounts alone with the original key; a byte changed in the copy is
//! refused at first touch; a partial copy offers only what it holds (`ls` marks the rest);
//! bad specs and lock files fail naming them; a second copy writes nothing, and repairs a
//! damaged blob.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::mount::{check_greet_programs, errno_of, Daemon, MountDirs};
use common::{entries, fixtures, path_str, spackfs, walk, Fixtures, Run, V2_SIGNED, V3_SIGNED};
use spackfs::buildcache::manifest::{self, Manifest};

const GCC_RUNTIME: &str = "fiay6eocdgxold5hkzanlohmkkidcfyd";

/// A `spack.lock` whose root is fixture-greet, with its DAG (libgreet, gcc-runtime, which
/// the mirror lacks, and the external glibc) as Spack would list it.
fn write_lock(dir: &Path) -> PathBuf {
    let c = &V3_SIGNED;
    let lock = serde_json::json!({
        "_meta": {"file-type": "spack-lockfile", "lockfile-version": 6, "specfile-version": 5},
        "spack": {"version": "1.2.0.dev0"},
        "roots": [{"hash": c.greet_hash, "spec": "fixture-greet"}],
        "concrete_specs": {
            c.greet_hash: {"name": "fixture-greet", "version": "1.0"},
            c.libgreet_hash: {"name": "fixture-libgreet", "version": "1.0"},
            GCC_RUNTIME: {"name": "gcc-runtime", "version": "12.2.0"},
            "qggmgd4wxtfyxatu4z6mmwiv6acfa4ys": {"name": "glibc", "external": {"path": "/usr"}},
        }
    });
    let path = dir.join("spack.lock");
    std::fs::write(&path, serde_json::to_vec_pretty(&lock).unwrap()).expect("write lock");
    path
}

fn key_args(fx: &Fixtures) -> Vec<String> {
    V3_SIGNED.trust_args(fx)
}

/// `spackfs mirror copy MIRROR DEST --key K ARGS...`
fn copy(fx: &Fixtures, mirror: &Path, dest: &Path, args: &[&str]) -> Run {
    let key = key_args(fx);
    let mut all = vec!["mirror", "copy", path_str(mirror), path_str(dest)];
    all.extend(key.iter().map(String::as_str));
    all.extend_from_slice(args);
    spackfs(all)
}

/// Mirror-relative paths of every file under `dir`.
fn files(dir: &Path) -> BTreeSet<String> {
    walk(dir)
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| p.strip_prefix(dir).unwrap().to_string_lossy().into_owned())
        .collect()
}

/// The manifest of `name-1.0-hash` and the blobs it names (mirror-relative paths).
fn package_files(mirror: &Path, name: &str, hash: &str) -> Vec<String> {
    let rel = format!("v3/manifests/spec/{name}/{name}-1.0-{hash}.spec.manifest.json");
    let raw = std::fs::read(mirror.join(&rel)).expect("manifest");
    let text = manifest::clearsigned_text_unverified(&raw).expect("clearsigned manifest");
    let m = Manifest::parse(&text, &rel).expect("manifest JSON");
    let mut out = vec![rel];
    out.extend(m.data.iter().map(|r| r.path()));
    out
}

/// The tarball blob of a package (the first record, as Spack writes them).
fn tarball_of(mirror: &Path, name: &str, hash: &str) -> PathBuf {
    mirror.join(&package_files(mirror, name, hash)[1])
}

#[track_caller]
fn assert_same_bytes(src: &Path, dest: &Path, rel: &str) {
    let (a, b) = (std::fs::read(src.join(rel)), std::fs::read(dest.join(rel)));
    assert!(
        a.as_ref().ok() == b.as_ref().ok() && a.is_ok(),
        "{rel}: the copy differs from the source"
    );
}

/// Copy greet's closure from a lock file into `dest` and check the run succeeded.
fn copy_greet(fx: &Fixtures, dest: &Path, tmp: &Path) -> Run {
    let lock = write_lock(tmp);
    let run = copy(
        fx,
        &fx.mirror(V3_SIGNED.name),
        dest,
        &["--from", path_str(&lock)],
    );
    run.assert_ok();
    run
}

#[test]
fn copy_from_a_lock_file_is_byte_identical_and_mounts_alone() {
    let Some(fx) = fixtures() else { return };
    let c = &V3_SIGNED;
    let src = fx.mirror(c.name);
    let dirs = MountDirs::new();
    let dest = dirs.path().join("copy");
    let run = copy_greet(&fx, &dest, dirs.path());
    run.assert_stderr_has(&["2 package(s) copied", "0 failed"]);
    // Exactly the source minus fixture-bulk (not in greet's closure), byte for byte.
    let bulk: BTreeSet<String> = package_files(&src, "fixture-bulk", c.bulk_hash)
        .into_iter()
        .collect();
    let expected: BTreeSet<String> = files(&src).difference(&bulk).cloned().collect();
    assert_eq!(files(&dest), expected, "{run}");
    for rel in &expected {
        assert_same_bytes(&src, &dest, rel);
    }
    for rel in package_files(&src, "fixture-greet", c.greet_hash)
        .into_iter()
        .chain(package_files(&src, "fixture-libgreet", c.libgreet_hash))
        .chain([
            "v3/manifests/index/index.manifest.json".to_string(),
            format!("v3/manifests/key/{}.key.manifest.json", common::FIXTURE_FPR),
            "v3/manifests/key/keys.manifest.json".to_string(),
        ])
    {
        assert!(dest.join(&rel).is_file(), "{rel} not copied\n{run}");
    }
    // The copy alone, with the original key, serves greet.
    let key = key_args(&fx);
    let args: Vec<&str> = key.iter().map(String::as_str).collect();
    let d = Daemon::mount(&dest, &dirs.mnt, &dirs.cache, &args);
    check_greet_programs(c, &dirs.mnt, &d);
}

#[test]
fn a_partial_copy_lists_only_what_it_holds() {
    let Some(fx) = fixtures() else { return };
    let c = &V3_SIGNED;
    let dirs = MountDirs::new();
    let dest = dirs.path().join("copy");
    copy_greet(&fx, &dest, dirs.path());
    // ls shows every indexed package, bulk marked missing, and counts it.
    let key = key_args(&fx);
    let mut ls = vec!["ls", "--long", path_str(&dest)];
    ls.extend(key.iter().map(String::as_str));
    let run = spackfs(&ls);
    run.assert_ok();
    let line = |name: &str| {
        run.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} not listed\n{run}"))
            .to_string()
    };
    assert!(line("fixture-bulk").ends_with("MISSING"), "{run}");
    for name in ["fixture-greet", "fixture-libgreet"] {
        let l = line(name);
        assert!(!l.contains("MISSING"), "{l}\n{run}");
        assert!(l.ends_with(common::FIXTURE_FPR), "{l}\n{run}");
    }
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("MISSING: 1 of 3 indexed package(s)")),
        "{run}"
    );
    // The listing from the index alone marks it the same way.
    let mut ls = vec!["ls", path_str(&dest)];
    ls.extend(key.iter().map(String::as_str));
    let short = spackfs(&ls);
    short.assert_ok();
    let short_lines: Vec<&str> = short.stdout.lines().collect();
    assert_eq!(
        short_lines.len(),
        4,
        "three packages and the count:\n{short}"
    );
    for l in &short_lines[..3] {
        let missing = l.starts_with("fixture-bulk ");
        assert_eq!(l.ends_with("MISSING"), missing, "{l}\n{short}");
    }
    assert!(
        short_lines[3].starts_with("MISSING: 1 of 3 indexed package(s)"),
        "{short}"
    );
    // The source itself has nothing missing.
    let mut ls_src = vec![
        "ls".to_string(),
        "--long".to_string(),
        path_str(&fx.mirror(c.name)).to_string(),
    ];
    ls_src.extend(key.iter().cloned());
    let src_run = spackfs(&ls_src);
    c.assert_listed(&src_run, common::FIXTURE_FPR);
    // The mount of the copy does not list bulk.
    let args: Vec<&str> = key.iter().map(String::as_str).collect();
    let d = Daemon::mount(&dest, &dirs.mnt, &dirs.cache, &args);
    let listed: BTreeSet<String> = entries(&dirs.mnt.join("linux-x86_64"))
        .into_iter()
        .collect();
    let want: BTreeSet<String> = [
        format!("fixture-greet-1.0-{}", c.greet_hash),
        format!("fixture-libgreet-1.0-{}", c.libgreet_hash),
    ]
    .into();
    assert_eq!(listed, want, "{d}");
    assert!(!c.bulk_prefix(&dirs.mnt).exists(), "{d}");
}

#[test]
fn a_byte_changed_in_the_copy_is_refused_at_first_touch() {
    let Some(fx) = fixtures() else { return };
    let c = &V3_SIGNED;
    let dirs = MountDirs::new();
    let dest = dirs.path().join("copy");
    copy_greet(&fx, &dest, dirs.path());
    let blob = tarball_of(&dest, "fixture-greet", c.greet_hash);
    let mut bytes = std::fs::read(&blob).expect("tarball blob");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&blob, &bytes).expect("write blob");
    let key = key_args(&fx);
    let mut args: Vec<&str> = key.iter().map(String::as_str).collect();
    args.extend_from_slice(&["--retry-after", "300"]);
    let d = Daemon::mount(&dest, &dirs.mnt, &dirs.cache, &args);
    let greet = c.greet_prefix(&dirs.mnt);
    let e = errno_of(std::fs::read_dir(&greet), "read_dir of greet", &d);
    assert_eq!(e, libc::EIO, "{d}");
    let e = errno_of(std::fs::read(greet.join("bin/greet")), "read bin/greet", &d);
    assert_eq!(e, libc::EIO, "{d}");
    assert!(
        !d.log_lines_with(&[" ERROR ", "fixture-greet", "sha256"])
            .is_empty(),
        "no error naming the package and the checksum\n{d}"
    );
    // Nothing of greet was published to the cache.
    let published = walk(&dirs.cache)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(c.greet_hash))
        .collect::<Vec<_>>();
    assert!(published.is_empty(), "{published:?}\n{d}");
}

#[test]
fn a_second_copy_writes_nothing_and_repairs_a_damaged_blob() {
    let Some(fx) = fixtures() else { return };
    let c = &V3_SIGNED;
    let tmp = common::short_tempdir();
    let dest = tmp.path().join("copy");
    copy_greet(&fx, &dest, tmp.path());
    let mtimes = |dir: &Path| -> Vec<(String, std::time::SystemTime)> {
        files(dir)
            .into_iter()
            .map(|f| {
                let m = std::fs::metadata(dir.join(&f)).unwrap().modified().unwrap();
                (f, m)
            })
            .collect()
    };
    let before = mtimes(&dest);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let again = copy_greet(&fx, &dest, tmp.path());
    again.assert_stderr_has(&[
        "0 package(s) copied, 2 already present, 0 failed",
        "0 B written (0 file(s))",
    ]);
    assert_eq!(mtimes(&dest), before, "files rewritten\n{again}");
    // A blob damaged in the copy (same size) is noticed by its sha256 and copied anew.
    let blob = tarball_of(&dest, "fixture-libgreet", c.libgreet_hash);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[10] ^= 0x80;
    std::fs::write(&blob, &bytes).unwrap();
    let repair = copy_greet(&fx, &dest, tmp.path());
    repair.assert_stderr_has(&["1 package(s) copied, 1 already present", "(1 file(s))"]);
    assert_same_bytes(
        &fx.mirror(c.name),
        &dest,
        &package_files(&dest, "fixture-libgreet", c.libgreet_hash)[1],
    );
}

#[test]
fn a_spec_not_in_the_mirror_fails_naming_it() {
    let Some(fx) = fixtures() else { return };
    let tmp = common::short_tempdir();
    let dest = tmp.path().join("copy");
    let src = fx.mirror(V3_SIGNED.name);
    let run = copy(&fx, &src, &dest, &["fixture-greet", "no-such-package@2.0"]);
    run.assert_failed();
    run.assert_stderr_line_has(&["not copied", "no-such-package@2.0"]);
    // What could be copied was.
    run.assert_stderr_has(&["2 package(s) copied"]);
    // A lock file whose root the mirror lacks fails naming it.
    let lock = serde_json::json!({
        "_meta": {"file-type": "spack-lockfile", "lockfile-version": 6},
        "roots": [{"hash": GCC_RUNTIME, "spec": "gcc-runtime"}],
        "concrete_specs": {GCC_RUNTIME: {"name": "gcc-runtime"}},
    });
    let lock_path = tmp.path().join("spack.lock");
    std::fs::write(&lock_path, lock.to_string()).unwrap();
    let run = copy(&fx, &src, &dest, &["--from", path_str(&lock_path)]);
    run.assert_failed();
    run.assert_stderr_line_has(&["not copied", "gcc-runtime@12.2.0/fiay6eo"]);
}

#[test]
fn a_malformed_lock_file_fails_naming_it() {
    let Some(fx) = fixtures() else { return };
    let tmp = common::short_tempdir();
    let dest = tmp.path().join("copy");
    let src = fx.mirror(V3_SIGNED.name);
    for (content, why) in [
        ("{\"roots\": [", "invalid JSON"),
        ("{\"roots\": [], \"concrete_specs\": {}}", "not a Spack lock file"),
        (
            "{\"_meta\":{\"file-type\":\"spack-lockfile\"},\"roots\":[],\"concrete_specs\":{\"../../../etc\":{}}}",
            "is not a Spack DAG hash",
        ),
    ] {
        let lock = tmp.path().join("bad.lock");
        std::fs::write(&lock, content).unwrap();
        let run = copy(&fx, &src, &dest, &["--from", path_str(&lock)]);
        run.assert_failed();
        run.assert_stderr_line_has(&["error:", path_str(&lock), why]);
        assert!(files(&dest).is_empty(), "copied something\n{run}");
    }
}

#[test]
fn copying_from_an_oci_registry_is_refused() {
    let tmp = common::short_tempdir();
    let run = spackfs([
        "mirror",
        "copy",
        "oci://127.0.0.1:9/fixtures/buildcache",
        path_str(&tmp.path().join("copy")),
        "--unsigned",
        "fixture-greet",
    ]);
    run.assert_failed();
    run.assert_stderr_line_has(&[
        "copying from an OCI registry is not supported",
        "oci://127.0.0.1:9/fixtures/buildcache",
    ]);
}

/// A v2 source is copied at its v2 paths, byte for byte, and installs from the copy.
#[test]
fn a_v2_mirror_is_copied_at_its_v2_paths() {
    let Some(fx) = fixtures() else { return };
    let c = &V2_SIGNED;
    let src = fx.mirror(c.name);
    let tmp = common::short_tempdir();
    let dest = tmp.path().join("copy");
    let run = copy(&fx, &src, &dest, &["fixture-greet"]);
    run.assert_ok();
    let copied = files(&dest);
    let not_bulk: BTreeSet<String> = files(&src)
        .into_iter()
        .filter(|f| !f.contains(c.bulk_hash))
        .collect();
    assert_eq!(copied, not_bulk, "{run}");
    for rel in &copied {
        assert_same_bytes(&src, &dest, rel);
    }
    let root = tmp.path().join("root");
    let key = key_args(&fx);
    let mut extra: Vec<&str> = key.iter().map(String::as_str).collect();
    extra.push("--jobs=2");
    let run = common::install(&dest, &root, &extra, &["fixture-greet"]);
    run.assert_ok();
    let greet = c.greet_prefix(&root);
    let out = common::run_program(greet.join("bin/greet"), [] as [&str; 0]);
    assert_eq!(
        out.stdout,
        common::expected_greet_output(&greet, &c.libgreet_prefix(&root)),
        "{out}"
    );
}

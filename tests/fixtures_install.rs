//! Installs from the small fixture caches written by real Spack (v3 signed, v3 unsigned,
//! v2 signed): the relocated programs run and print the expected output, links are kept,
//! and `spackfs ls` lists each cache's packages with their signer.

mod common;

use std::path::Path;

use common::{
    expected_greet_output, fixtures, inode, path_str, run_program, spackfs, FixtureCache, Fixtures,
    FIXTURE_FPR, GREET_PROGRAMS, V2_SIGNED, V3_SIGNED, V3_UNSIGNED,
};

fn install_greet_and_bulk(cache: &FixtureCache, fx: &Fixtures, root: &Path) {
    let run = cache.install(fx, root, &["fixture-greet", "fixture-bulk"]);
    run.assert_ok();
    assert!(
        run.stdout
            .contains("installed 3 package(s), 0 already present, 0 failed"),
        "{run}"
    );
    for prefix in [
        cache.greet_prefix(root),
        cache.libgreet_prefix(root),
        cache.bulk_prefix(root),
    ] {
        assert!(prefix.is_dir(), "{} missing:\n{run}", prefix.display());
    }
}

fn check_greet_programs(cache: &FixtureCache, root: &Path) {
    let greet = cache.greet_prefix(root);
    let expected = expected_greet_output(&greet, &cache.libgreet_prefix(root));
    for program in GREET_PROGRAMS {
        let run = run_program(greet.join(program), [] as [&str; 0]);
        run.assert_ok();
        assert_eq!(run.stdout, expected, "output of {program}:\n{run}");
    }
}

fn check_links(cache: &FixtureCache, root: &Path) {
    let bin = cache.greet_prefix(root).join("bin");
    assert_eq!(
        inode(&bin.join("greet-hard")),
        inode(&bin.join("greet")),
        "bin/greet-hard must stay a hard link of bin/greet"
    );
    let abs = std::fs::read_link(bin.join("greet-abs")).expect("greet-abs is a symlink");
    assert_eq!(
        abs,
        bin.join("greet"),
        "greet-abs must point into the new root"
    );
    assert!(abs.starts_with(root));
    let rel = std::fs::read_link(bin.join("greet-rel")).expect("greet-rel is a symlink");
    assert_eq!(
        rel,
        Path::new("greet"),
        "relative symlinks are kept verbatim"
    );
}

fn check_cache(cache: &FixtureCache) {
    let Some(fx) = fixtures() else { return };
    let tmp = common::short_tempdir();
    let root = tmp.path().join("root");
    install_greet_and_bulk(cache, &fx, &root);
    check_greet_programs(cache, &root);
    check_links(cache, &root);
    assert!(root.join("bin/sbang").is_file(), "<root>/bin/sbang missing");
}

#[test]
fn v3_signed_greet_and_bulk_run_after_install() {
    check_cache(&V3_SIGNED);
}

#[test]
fn v3_unsigned_greet_and_bulk_run_after_install() {
    check_cache(&V3_UNSIGNED);
}

#[test]
fn v2_signed_greet_and_bulk_run_after_install() {
    check_cache(&V2_SIGNED);
}

#[test]
fn second_install_finds_packages_present() {
    let Some(fx) = fixtures() else { return };
    let tmp = common::short_tempdir();
    let root = tmp.path().join("root");
    V3_UNSIGNED
        .install(&fx, &root, &["fixture-greet"])
        .assert_ok();
    let again = V3_UNSIGNED.install(&fx, &root, &["fixture-greet"]);
    again.assert_ok();
    assert!(
        again
            .stdout
            .contains("installed 0 package(s), 2 already present, 0 failed"),
        "{again}"
    );
    check_greet_programs(&V3_UNSIGNED, &root);
}

fn check_ls(cache: &FixtureCache) {
    let Some(fx) = fixtures() else { return };
    let mut args = vec![
        "ls".to_string(),
        "--long".to_string(),
        path_str(&fx.mirror(cache.name)).to_string(),
    ];
    args.extend(cache.trust_args(&fx));
    let run = spackfs(&args);
    let signer = if cache.signed {
        FIXTURE_FPR
    } else {
        "unsigned"
    };
    cache.assert_listed(&run, signer);
}

#[test]
fn ls_v3_signed_shows_signer() {
    check_ls(&V3_SIGNED);
}

#[test]
fn ls_v3_unsigned_shows_unsigned() {
    check_ls(&V3_UNSIGNED);
}

#[test]
fn ls_v2_signed_shows_signer() {
    check_ls(&V2_SIGNED);
}

/// `spackfs ls` lists from the verified index alone: a package whose manifest was tampered
/// with is still listed (name, version, hash, prefix); `--long` reads every manifest and
/// marks that package UNTRUSTED, naming its manifest, while the others show their signer.
#[test]
fn ls_lists_from_the_index_and_long_verifies_every_manifest() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let mirror = fx.copy_mirror(V3_SIGNED.name, &tmp.path().join("m"));
    let manifest = mirror.join(format!(
        "v3/manifests/spec/fixture-bulk/fixture-bulk-1.0-{}.spec.manifest.json",
        V3_SIGNED.bulk_hash
    ));
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    std::fs::write(
        &manifest,
        text.replacen("\"contentLength\":1", "\"contentLength\":2", 1),
    )
    .expect("write");
    let trust = V3_SIGNED.trust_args(&fx);
    let mut args = vec!["ls".to_string(), path_str(&mirror).to_string()];
    args.extend(trust.iter().cloned());
    let short = spackfs(&args);
    short.assert_ok();
    let lines: Vec<&str> = short.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "three packages:\n{short}");
    for (name, hash) in [
        ("fixture-libgreet", V3_SIGNED.libgreet_hash),
        ("fixture-greet", V3_SIGNED.greet_hash),
        ("fixture-bulk", V3_SIGNED.bulk_hash),
    ] {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} listed:\n{short}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols.len(), 4, "name, version, hash, prefix: {line}");
        assert_eq!(cols[1], "1.0", "{line}");
        assert_eq!(cols[2], &hash[..7], "{line}");
        assert_eq!(
            cols[3],
            format!("/user-environment/linux-x86_64/{name}-1.0-{hash}"),
            "{line}"
        );
    }
    args.insert(1, "--long".into());
    let long = spackfs(&args);
    long.assert_ok();
    let bulk = long
        .stdout
        .lines()
        .find(|l| l.starts_with("fixture-bulk "))
        .unwrap_or_else(|| panic!("bulk listed:\n{long}"));
    assert!(
        bulk.contains("UNTRUSTED") && bulk.contains("fixture-bulk-1.0-"),
        "the tampered manifest is named: {bulk}"
    );
    for name in ["fixture-greet", "fixture-libgreet"] {
        let line = long
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} listed:\n{long}"));
        assert!(line.ends_with(FIXTURE_FPR), "{line}");
    }
}

/// A root of exactly `len` characters in a fresh temporary directory.
fn root_of_len(tmp: &Path, len: usize) -> std::path::PathBuf {
    let base = path_str(tmp).len() + 1;
    let root = tmp.join("r".repeat(len - base));
    assert_eq!(path_str(&root).len(), len);
    root
}

#[test]
fn v3_root_as_long_as_build_root_works() {
    let Some(fx) = fixtures() else { return };
    let tmp = common::short_tempdir();
    let root = root_of_len(tmp.path(), V3_SIGNED.buildpath.len());
    V3_SIGNED
        .install(&fx, &root, &["fixture-greet"])
        .assert_ok();
    check_greet_programs(&V3_SIGNED, &root);
}

#[test]
fn v3_root_longer_than_build_root_is_refused() {
    let Some(fx) = fixtures() else { return };
    let tmp = common::short_tempdir();
    let root = root_of_len(tmp.path(), V3_SIGNED.buildpath.len() + 1);
    let run = V3_SIGNED.install(&fx, &root, &["fixture-greet"]);
    run.assert_failed();
    let mirror = fx.mirror(V3_SIGNED.name);
    // The limit named is the build root's length (the test above shows that a root of
    // exactly that length works), not the sbang key's, which no binary holds.
    for (package, file) in [
        ("fixture-greet", "bin/greet"),
        ("fixture-libgreet", "lib/libgreet.so.1.0.0"),
    ] {
        run.assert_stderr_line_has(&[package, path_str(&mirror), file, "at most 128 characters"]);
    }
    let published = common::entries(&root.join("linux-x86_64"));
    assert!(published.is_empty(), "published {published:?}:\n{run}");
}

#[test]
fn specs_by_hash_prefix_and_version() {
    let Some(fx) = fixtures() else { return };
    let tmp = common::short_tempdir();
    let root = tmp.path().join("root");
    let run = V3_UNSIGNED.install(&fx, &root, &["/lvktxdb", "fixture-bulk@1.0"]);
    run.assert_ok();
    assert!(run.stdout.contains("installed 3 package(s)"), "{run}");
    check_greet_programs(&V3_UNSIGNED, &root);
    assert!(V3_UNSIGNED.bulk_prefix(&root).is_dir());
}

#[test]
fn unknown_spec_is_an_error_naming_it() {
    let Some(fx) = fixtures() else { return };
    let tmp = common::short_tempdir();
    let root = tmp.path().join("root");
    let run = V3_UNSIGNED.install(&fx, &root, &["no-such-package"]);
    run.assert_failed();
    run.assert_stderr_line_has(&["no-such-package", path_str(&fx.mirror(V3_UNSIGNED.name))]);
    assert!(common::entries(&root.join("linux-x86_64")).is_empty());
}

/// Dependencies are relocated to their projected prefixes too.
#[test]
fn custom_projection_installs_and_runs() {
    let Some(fx) = fixtures() else { return };
    let tmp = common::short_tempdir();
    let root = tmp.path().join("root");
    V3_UNSIGNED
        .install_with(
            &fx,
            &root,
            &["--projection", "{name}-{version}-{hash}"],
            &["fixture-greet"],
        )
        .assert_ok();
    let greet = root.join(format!("fixture-greet-1.0-{}", V3_UNSIGNED.greet_hash));
    let libgreet = root.join(format!(
        "fixture-libgreet-1.0-{}",
        V3_UNSIGNED.libgreet_hash
    ));
    let run = run_program(greet.join("bin/greet"), [] as [&str; 0]);
    run.assert_ok();
    assert_eq!(
        run.stdout,
        expected_greet_output(&greet, &libgreet),
        "{run}"
    );
}

/// Two installs racing into one root both succeed and leave one working copy.
#[test]
fn concurrent_installs_into_one_root() {
    let Some(fx) = fixtures() else { return };
    let tmp = common::short_tempdir();
    let root = tmp.path().join("root");
    let runs: Vec<common::Run> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| s.spawn(|| V3_UNSIGNED.install(&fx, &root, &["fixture-greet"])))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    for run in &runs {
        run.assert_ok();
    }
    check_greet_programs(&V3_UNSIGNED, &root);
    let staging = common::entries(&root.join(".spackfs-staging"));
    assert!(staging.is_empty(), "staging left behind: {staging:?}");
}

/// A copy of a fixture mirror with its index files removed (normal for Stackinator caches).
fn mirror_without_index(fx: &Fixtures, cache: &FixtureCache, dir: &Path) -> std::path::PathBuf {
    let copy = dir.join("mirror");
    fx.copy_mirror(cache.name, &copy);
    for index in [
        "v3/manifests/index",
        "build_cache/index.json",
        "build_cache/index.json.hash",
    ] {
        let p = copy.join(index);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).expect("remove index dir");
        } else if p.exists() {
            std::fs::remove_file(&p).expect("remove index file");
        }
    }
    assert!(
        !copy.join("v3/manifests/index").exists() && !copy.join("build_cache/index.json").exists()
    );
    copy
}

/// Without an index the packages are found by listing the manifests (v3) or spec files
/// (v2): all three are listed, and installing greet brings libgreet along.
#[test]
fn mirrors_without_an_index_are_listed_and_installed() {
    let Some(fx) = fixtures() else { return };
    for cache in [&V3_UNSIGNED, &V2_SIGNED] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mirror = mirror_without_index(&fx, cache, tmp.path());
        let trust = cache.trust_args(&fx);
        let mut args = vec!["ls", path_str(&mirror)];
        args.extend(trust.iter().map(String::as_str));
        let ls = spackfs(&args);
        ls.assert_ok();
        for name in ["fixture-greet", "fixture-libgreet", "fixture-bulk"] {
            assert_eq!(
                ls.stdout
                    .lines()
                    .filter(|l| l.starts_with(&format!("{name} ")))
                    .count(),
                1,
                "{name} listed once without an index:\n{ls}"
            );
        }
        let root = tmp.path().join("r");
        let mut extra: Vec<&str> = trust.iter().map(String::as_str).collect();
        extra.push("--jobs");
        extra.push("2");
        let run = common::install(&mirror, &root, &extra, &["fixture-greet"]);
        run.assert_ok();
        assert!(
            run.stdout.contains("installed 2 package(s)"),
            "greet and libgreet installed:\n{run}"
        );
        check_greet_programs(cache, &root);
    }
}

/// Staging left by an install that crashed (its process is gone) is removed by the next
/// install into the same root; staging of a live process is left alone.
#[test]
fn staging_abandoned_by_a_crashed_install_is_removed_by_the_next() {
    let Some(fx) = fixtures() else { return };
    let tmp = common::short_tempdir();
    let root = tmp.path().join("root");
    let staging = root.join(".spackfs-staging");
    // pid_max is at most 2^22: a staging directory of a process that cannot exist.
    let dead = staging.join("99999999.lvktxdbzy5xjz4y42kaknkq7gwcfi4qz.Abc123");
    std::fs::create_dir_all(dead.join("opt/half-extracted")).expect("dead staging");
    let live = staging.join(format!("{}.other.Xyz789", std::process::id()));
    std::fs::create_dir_all(&live).expect("live staging");
    V3_UNSIGNED
        .install(&fx, &root, &["fixture-greet"])
        .assert_ok();
    check_greet_programs(&V3_UNSIGNED, &root);
    assert!(!dead.exists(), "abandoned staging left behind");
    assert_eq!(
        common::entries(&staging),
        [live.file_name().unwrap().to_string_lossy()]
    );
}

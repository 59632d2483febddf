//! Errors a user can hit on the command line: each fails with a message naming the thing at
//! fault (mirror, key file, spec, size, mount point), and leaves nothing behind.

mod common;

use common::{fixtures, path_str, spackfs, V3_SIGNED, V3_UNSIGNED};

#[test]
fn a_missing_mirror_is_named_by_ls_install_and_mount() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mirror = tmp.path().join("no-such-mirror");
    let m = path_str(&mirror);
    spackfs(["ls", m, "--unsigned"])
        .assert_failed()
        .assert_stderr_line_has(&["no-such-mirror", "unreachable"]);
    let root = tmp.path().join("root");
    spackfs(["install", m, "--unsigned", "--root", path_str(&root), "x"])
        .assert_failed()
        .assert_stderr_line_has(&["no-such-mirror", "unreachable"]);
    assert!(
        std::fs::read_dir(&root).map_or(true, |mut d| d.next().is_none()),
        "nothing installed"
    );
    // A mount with no kept index to fall back on fails too, before mounting anything.
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let cache = tmp.path().join("cache");
    spackfs([
        "mount",
        m,
        path_str(&mnt),
        "--unsigned",
        "--cache-dir",
        path_str(&cache),
    ])
    .assert_failed()
    .assert_stderr_line_has(&["no-such-mirror", "unreachable"]);
    assert!(!common::mount::is_mounted(&mnt));
}

#[test]
fn a_bad_key_file_is_named() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("missing.asc");
    let not_a_key = tmp.path().join("not-a-key.asc");
    std::fs::write(&not_a_key, "hello\n").expect("write");
    let mirror = fx.mirror(V3_SIGNED.name);
    for key in [&missing, &not_a_key] {
        let name = key.file_name().unwrap().to_str().unwrap();
        spackfs(["ls", path_str(&mirror), "--key", path_str(key)])
            .assert_failed()
            .assert_stderr_line_has(&[name]);
    }
}

#[test]
fn an_ambiguous_or_unknown_hash_prefix_is_refused() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let mirror = fx.mirror(V3_UNSIGNED.name);
    let root = tmp.path().join("r");
    // Every hash is made of [a-z0-7]: "/" alone matches all three packages.
    spackfs([
        "install",
        path_str(&mirror),
        "--unsigned",
        "--root",
        path_str(&root),
        "/",
    ])
    .assert_failed()
    .assert_stderr_line_has(&["ambiguous", "fixture-greet", "fixture-bulk"]);
    spackfs([
        "install",
        path_str(&mirror),
        "--unsigned",
        "--root",
        path_str(&root),
        "/zzzzzzz",
    ])
    .assert_failed()
    .assert_stderr_line_has(&["/zzzzzzz", "no package"]);
    assert!(!root.join("linux-x86_64").exists(), "nothing installed");
}

#[test]
fn bad_sizes_and_mount_points_are_named() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    spackfs([
        "cache",
        "gc",
        "--to",
        "lots",
        "--cache-dir",
        path_str(&cache),
    ])
    .assert_failed()
    .assert_stderr_line_has(&["lots"]);
    let mirror = fx.mirror(V3_UNSIGNED.name);
    let mnt = tmp.path().join("no-such-dir");
    spackfs([
        "mount",
        path_str(&mirror),
        path_str(&mnt),
        "--unsigned",
        "--cache-dir",
        path_str(&cache),
    ])
    .assert_failed()
    .assert_stderr_line_has(&["no-such-dir"]);
    let empty = tmp.path().join("mnt");
    std::fs::create_dir(&empty).expect("mkdir");
    spackfs([
        "mount",
        path_str(&mirror),
        path_str(&empty),
        "--unsigned",
        "--cache-dir",
        path_str(&cache),
        "--cache-size",
        "150%",
    ])
    .assert_failed()
    .assert_stderr_line_has(&["150%"]);
    assert!(!common::mount::is_mounted(&empty));
}

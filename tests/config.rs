//! The mirrors.yaml admins already write, as the MIRROR argument: Spack's format and
//! Stackinator's (its `public_key` is the trust anchor, `mount_specific` appends the install
//! root to the URL).

mod common;

use common::{fixtures, path_str, run_program, spackfs, V3_SIGNED};

#[test]
fn spack_mirrors_yaml_with_a_signed_mirror() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let yaml = tmp.path().join("mirrors.yaml");
    std::fs::write(
        &yaml,
        format!(
            "mirrors:\n  sources:\n    url: file:///nonexistent\n    binary: false\n  fixtures: file://{}\n",
            path_str(&fx.mirror(V3_SIGNED.name))
        ),
    )
    .expect("write");
    let root = tmp.path().join("r");
    let key = fx.fixture_key();
    // Signed by default: without a key, nothing is trusted.
    spackfs([
        "install",
        path_str(&yaml),
        "--root",
        path_str(&root),
        "fixture-libgreet",
    ])
    .assert_failed()
    .assert_stderr_line_has(&["fixture-libgreet", "not among the trusted keys"]);
    let run = spackfs([
        "install",
        path_str(&yaml),
        "--root",
        path_str(&root),
        "--key",
        path_str(&key),
        "fixture-greet",
    ]);
    run.assert_ok();
    let greet = V3_SIGNED.greet_prefix(&root).join("bin/greet");
    run_program(&greet, [] as [&str; 0]).assert_ok();
}

#[test]
fn stackinator_mirrors_yaml_trusts_its_public_key_and_is_mount_specific() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("r");
    // mount_specific: the cache for root R lives at <url>/<R without its leading slash>.
    let cache = tmp.path().join("cache");
    let specific = cache.join(path_str(&root).trim_start_matches('/'));
    std::fs::create_dir_all(specific.parent().unwrap()).expect("mkdir");
    fx.copy_mirror(V3_SIGNED.name, &specific);
    std::fs::copy(fx.fixture_key(), tmp.path().join("fixture.pub.asc")).expect("copy key");
    let yaml = tmp.path().join("mirrors.yaml");
    std::fs::write(
        &yaml,
        format!(
            "buildcache:\n  url: file://{}\n  mount_specific: true\n  public_key: fixture.pub.asc\n  private_key: null\nbootstrap:\n  url: /nowhere\n",
            path_str(&cache)
        ),
    )
    .expect("write");
    let run = spackfs([
        "install",
        path_str(&yaml),
        "--root",
        path_str(&root),
        "fixture-greet",
    ]);
    run.assert_ok();
    run_program(
        V3_SIGNED.greet_prefix(&root).join("bin/greet"),
        [] as [&str; 0],
    )
    .assert_ok();
}

#[test]
fn a_broken_mirrors_yaml_is_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let yaml = tmp.path().join("mirrors.yaml");
    std::fs::write(&yaml, "mirrors:\n  broken:\n    signed: true\n").expect("write");
    spackfs(["ls", path_str(&yaml)])
        .assert_failed()
        .assert_stderr_line_has(&["mirrors.yaml", "broken", "url"]);
    std::fs::write(&yaml, "mirrors:\n  src:\n    url: /x\n    binary: false\n").expect("write");
    spackfs(["ls", path_str(&yaml)])
        .assert_failed()
        .assert_stderr_line_has(&["mirrors.yaml", "no binary mirror"]);
}

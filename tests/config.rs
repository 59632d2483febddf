//! The mirrors.yaml admins already write, as the MIRROR argument: Spack's format and
//! Stackinator's (its `public_key` is the trust anchor, `mount_specific` appends the install
//! root to the URL).

mod common;

use common::mount::{check_greet_programs, xattr_str, Daemon, MountDirs};
use common::servers::Nginx;
use common::{fixtures, path_str, run_program, spackfs, FIXTURE_FPR, V3_SIGNED, V3_UNSIGNED};

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

// ------------------------------------------------------------------ several mirrors

/// Spack's dialect with `fetch`/`push` blocks and an `access_pair`: an HTTP mirror, then a
/// directory, both mounted in that order. Packages come from the first; with its server
/// stopped, from the second.
#[test]
fn spack_dialect_with_fetch_push_and_access_pair_mounts_every_mirror_in_order() {
    let Some(fx) = fixtures() else { return };
    let mut nginx = Nginx::serve(&fx.mirror(V3_SIGNED.name));
    let tmp = common::short_tempdir();
    let yaml = tmp.path().join("mirrors.yaml");
    let local = format!("file://{}", path_str(&fx.mirror(V3_UNSIGNED.name)));
    std::fs::write(
        &yaml,
        format!(
            "mirrors:\n  site:\n    fetch:\n      url: {}\n      access_pair:\n        id_variable: SITE_USER\n        secret_variable: SITE_PASS\n    push:\n      url: s3://site-bucket/cache\n      access_pair: {{id: writer, secret_variable: PUSH_SECRET}}\n    signed: true\n  sources:\n    url: file:///nonexistent\n    binary: false\n  local:\n    url: {local}\n    signed: false\n    autopush: false\n",
            nginx.url()
        ),
    )
    .expect("write");
    let dirs = MountDirs::new();
    let keys = V3_SIGNED.trust_args(&fx);
    let args: Vec<&str> = keys.iter().map(String::as_str).collect();
    let d = Daemon::mount_with(&[path_str(&yaml)], &dirs.mnt, &dirs.cache, &args, &[]);
    assert!(
        !d.log_lines_with(&["mounting mirrors", &format!("{}, {local}", nginx.url())])
            .is_empty(),
        "both mirrors, in order\n{d}"
    );
    check_greet_programs(&V3_SIGNED, &dirs.mnt, &d);
    let greet = V3_SIGNED.greet_prefix(&dirs.mnt);
    assert_eq!(xattr_str(&greet, "user.spackfs.mirror"), nginx.url(), "{d}");
    assert_eq!(xattr_str(&greet, "user.spackfs.signer"), FIXTURE_FPR, "{d}");
    nginx.stop();
    let bulk = V3_SIGNED.bulk_prefix(&dirs.mnt);
    let dat = std::fs::metadata(bulk.join("share/fixture-bulk/bulk.dat")).expect("bulk.dat");
    assert!(dat.len() > 20_000_000, "{d}");
    assert_eq!(xattr_str(&bulk, "user.spackfs.mirror"), local, "{d}");
    assert_eq!(xattr_str(&bulk, "user.spackfs.signer"), "unsigned", "{d}");
}

/// Stackinator's dialect: `buildcache` over HTTP with `mount_specific: true` and an inline
/// (base64) `public_key`, then a `sourcemirror` that is also a binary mirror.
#[test]
fn stackinator_dialect_with_mount_specific_and_inline_key_mounts_every_mirror_in_order() {
    let Some(fx) = fixtures() else { return };
    let dirs = MountDirs::new();
    // The web root holds the cache for this mount point at <root>/cache/<mount point>.
    let www = dirs.path().join("www");
    let specific = www
        .join("cache")
        .join(path_str(&dirs.mnt).trim_start_matches('/'));
    std::fs::create_dir_all(specific.parent().unwrap()).expect("mkdir");
    std::os::unix::fs::symlink(fx.mirror(V3_SIGNED.name), &specific).expect("symlink");
    let mut nginx = Nginx::serve(&www);
    let key = data_encoding::BASE64.encode(&std::fs::read(fx.fixture_key()).expect("key"));
    let yaml = dirs.path().join("mirrors.yaml");
    let local = format!("file://{}", path_str(&fx.mirror(V3_UNSIGNED.name)));
    std::fs::write(
        &yaml,
        format!(
            "buildcache:\n  url: {}/cache\n  mount_specific: true\n  public_key: {key}\n  private_key: null\n  description: site cache\nsourcemirror:\n  local:\n    url: {local}\n    binary: true\n    source: false\n    signed: false\nbootstrap:\n  url: /nowhere\n",
            nginx.url()
        ),
    )
    .expect("write");
    let d = Daemon::mount_with(&[path_str(&yaml)], &dirs.mnt, &dirs.cache, &[], &[]);
    let site = format!("{}/cache{}", nginx.url(), path_str(&dirs.mnt));
    assert!(
        !d.log_lines_with(&["mounting mirrors", &format!("{site}, {local}")])
            .is_empty(),
        "both mirrors, in order\n{d}"
    );
    check_greet_programs(&V3_SIGNED, &dirs.mnt, &d);
    let greet = V3_SIGNED.greet_prefix(&dirs.mnt);
    assert_eq!(xattr_str(&greet, "user.spackfs.mirror"), site, "{d}");
    assert_eq!(xattr_str(&greet, "user.spackfs.signer"), FIXTURE_FPR, "{d}");
    nginx.stop();
    let bulk = V3_SIGNED.bulk_prefix(&dirs.mnt);
    std::fs::metadata(bulk.join("share/fixture-bulk/bulk.dat")).expect("bulk.dat");
    assert_eq!(xattr_str(&bulk, "user.spackfs.mirror"), local, "{d}");
}

/// Ten malformed configurations: each is refused with one line naming the file, the entry
/// and the field at fault.
#[test]
fn malformed_configs_name_the_file_the_entry_and_the_field() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cases: [(&str, &[&str]); 10] = [
        (
            "mirrors:\n  site:\n    signed: true\n",
            &["\"site\"", "url"],
        ),
        (
            "mirrors:\n  site:\n    url: /x\n    signed: \"yes\"\n",
            &["\"site\"", "`signed`"],
        ),
        (
            "mirrors:\n  site:\n    url: /x\n    sigend: false\n",
            &["\"site\"", "sigend"],
        ),
        (
            "mirrors:\n  site:\n    url: htp://mirror.example/cache\n",
            &["\"site\"", "`url`", "htp"],
        ),
        (
            "mirrors:\n  site:\n    url: /x\n    binary: maybe\n",
            &["\"site\"", "`binary`"],
        ),
        (
            "mirrors:\n  site:\n    url: s3://bucket\n    access_pair:\n      id_variable: AK\n",
            &["\"site\"", "access_pair", "secret_variable"],
        ),
        (
            "mirrors:\n  site:\n    url: /x\n    fetch: [/y]\n",
            &["\"site\"", "`fetch`"],
        ),
        (
            "buildcache:\n  url: /c\n  mount_specific: 1\n",
            &["buildcache", "`mount_specific`"],
        ),
        (
            "buildcache:\n  url: /c\n  public_key: not-a-key!\n",
            &["buildcache", "`public_key`"],
        ),
        (
            "buildcache:\n  url: /c\nsourcemirors:\n  s: {url: /s}\n",
            &["sourcemirors", "top-level"],
        ),
    ];
    for (i, (yaml, needles)) in cases.iter().enumerate() {
        let path = tmp.path().join(format!("mirrors-{i}.yaml"));
        std::fs::write(&path, yaml).expect("write");
        let mut all = vec![path_str(&path)];
        all.extend_from_slice(needles);
        for verb in ["ls", "mount"] {
            let mut args = vec![verb, path_str(&path)];
            if verb == "mount" {
                args.push(path_str(tmp.path()));
            }
            spackfs(&args).assert_failed().assert_stderr_line_has(&all);
        }
    }
}

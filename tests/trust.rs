//! Signatures: a signed mirror installs nothing without a trusted key, and a package whose
//! manifest is altered, signed by an untrusted or expired key, unsigned, or borrowed from
//! another package is refused while the other packages of the same run install.

mod common;

use std::time::{Duration, SystemTime};

use common::mirror::{good_pkg, key_fingerprints, GenPkg, Lists, Scenario, TestMirror};
use common::{entries, fixtures, install, path_str, FIXTURE_FPR};
use spackfs::writer::SigningKey;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn signed_fixture_without_key_is_refused(cache: &str, greet_hash: &str) {
    let Some(fx) = fixtures() else { return };
    let tmp = common::short_tempdir();
    let root = tmp.path().join("root");
    let mirror = fx.mirror(cache);
    let run = install(&mirror, &root, &[], &["fixture-greet"]);
    run.assert_failed();
    run.assert_stderr_line_has(&["fixture-greet", path_str(&mirror), FIXTURE_FPR]);
    let published = entries(&root.join("linux-x86_64"));
    assert!(published.is_empty(), "published {published:?}:\n{run}");
    assert!(
        !root
            .join(format!("linux-x86_64/fixture-greet-1.0-{greet_hash}"))
            .exists(),
        "{run}"
    );
}

#[test]
fn v3_signed_fixture_without_key_installs_nothing() {
    signed_fixture_without_key_is_refused("spack-v3-signed", "lvktxdbzy5xjz4y42kaknkq7gwcfi4qz");
}

#[test]
fn v2_signed_fixture_without_key_installs_nothing() {
    signed_fixture_without_key_is_refused("spack-v2-signed", "jxxazylvzmvqv664uxmpih7dzj7fbabp");
}

/// An `evil` package that would install fine if its manifest were accepted.
fn plausible_evil() -> (GenPkg, Vec<u8>) {
    let evil = GenPkg::new("evil");
    let tgz = evil.tgz(
        |t| {
            t.dir(&evil.member("bin"));
            t.file(
                &evil.member("bin/evil.sh"),
                0o755,
                b"#!/bin/sh\necho pwned\n",
            );
        },
        &Lists::default(),
    );
    (evil, tgz)
}

#[test]
fn manifest_changed_by_one_byte_is_refused() {
    let (evil, tgz) = plausible_evil();
    let s = Scenario::new(evil, &tgz);
    let path = s.mirror.manifest(&s.evil);
    let mut bytes = std::fs::read(&path).expect("manifest");
    // Join the first two JSON lines: same JSON, different signed text.
    let at = bytes
        .windows(2)
        .position(|w| w == b"{\n")
        .expect("manifest JSON starts with a line '{'")
        + 1;
    bytes[at] = b' ';
    std::fs::write(&path, &bytes).expect("write manifest");
    let run = s.install(&[]);
    s.assert_refused(&run, &["manifest", "bad signature"]);
}

#[test]
fn manifest_signed_by_untrusted_key_is_refused() {
    let (evil, tgz) = plausible_evil();
    let s = Scenario::new(evil, &tgz);
    let stranger = SigningKey::generate("Stranger <stranger@example.invalid>", None, None)
        .expect("key generation");
    s.mirror.resign(&s.evil, &stranger, None);
    let run = s.install(&[]);
    // The issuer named may be the certificate or its signing subkey.
    let fprs = key_fingerprints(&stranger);
    let named = fprs
        .iter()
        .find(|f| run.stderr.contains(f.as_str()))
        .unwrap_or_else(|| panic!("no fingerprint of the stranger's key {fprs:?} named:\n{run}"));
    s.assert_refused(&run, &[named, "not among the trusted keys"]);
}

#[test]
fn manifest_signed_by_expired_key_is_refused() {
    let (evil, tgz) = plausible_evil();
    let mut s = Scenario::new(evil, &tgz);
    let now = SystemTime::now();
    let expired = SigningKey::generate(
        "Expired <expired@example.invalid>",
        Some(now - 10 * DAY),
        Some(2 * DAY),
    )
    .expect("key generation");
    s.mirror.trust(&expired);
    s.mirror.resign(&s.evil, &expired, Some(now - 9 * DAY));
    let run = s.install(&[]);
    s.assert_refused(&run, &[&expired.fingerprint(), "expired"]);
}

#[test]
fn unsigned_manifest_in_signed_mirror_is_refused() {
    let (evil, tgz) = plausible_evil();
    let s = Scenario::new(evil, &tgz);
    let path = s.mirror.manifest(&s.evil);
    let text = common::mirror::clearsigned_text(&std::fs::read(&path).expect("manifest"));
    std::fs::write(&path, text).expect("write manifest");
    let run = s.install(&[]);
    s.assert_refused(&run, &["not signed"]);
}

#[test]
fn manifest_of_another_package_under_this_name_is_refused() {
    let (evil, tgz) = plausible_evil();
    let mut mirror = TestMirror::signed();
    let decoy = GenPkg::new("decoy");
    let decoy_tgz = decoy.tgz(
        |t| {
            t.file(&decoy.member("decoy.txt"), 0o644, b"decoy\n");
        },
        &Lists::default(),
    );
    mirror.add(&decoy, &decoy_tgz);
    let s = Scenario::in_mirror(mirror, evil, &tgz);
    // A validly signed manifest, but of decoy, stored under evil's name.
    std::fs::copy(s.mirror.manifest(&decoy), s.mirror.manifest(&s.evil)).expect("copy manifest");
    let run = s.install(&[]);
    s.assert_refused(&run, &["decoy"]);
    assert!(!decoy.installed_prefix(&s.root()).exists(), "{run}");
}

#[test]
fn trusted_key_directory_is_accepted() {
    let (good, _) = good_pkg();
    let mut mirror = TestMirror::signed();
    mirror.add_good();
    mirror.finish();
    let keyring = mirror.tmp().join("keyring");
    std::fs::create_dir(&keyring).expect("keyring dir");
    for arg in mirror.trust_args().iter().filter(|a| a.ends_with(".asc")) {
        let from = std::path::Path::new(arg);
        std::fs::copy(from, keyring.join(from.file_name().expect("name"))).expect("copy key");
    }
    let root = mirror.root();
    let run = install(
        &mirror.dir(),
        &root,
        &["--keyring", path_str(&keyring)],
        &["good"],
    );
    run.assert_ok();
    assert!(good.installed_prefix(&root).is_dir(), "{run}");
    common::mirror::assert_good_works(&root);
}

/// An index manifest that is clearsigned (Spack never signs it; a site may) is checked like
/// a spec manifest: signed by a trusted key, the mirror lists its packages; tampered with,
/// or signed by a key that is not trusted, the mirror lists nothing and says why.
#[test]
fn a_signed_index_manifest_must_carry_a_good_signature() {
    let mut tm = TestMirror::signed();
    tm.add_good();
    tm.finish();
    let key = SigningKey::generate("Index Key <index@example.invalid>", None, None).expect("key");
    let manifest = tm.dir().join("v3/manifests/index/index.manifest.json");
    let plain = std::fs::read(&manifest).expect("index manifest");
    let signed = key.clearsign(&plain, None).expect("clearsign");
    let ls = |tm: &TestMirror| {
        let mut args = vec!["ls".to_string(), path_str(&tm.dir()).to_string()];
        args.extend(tm.trust_args());
        common::spackfs(&args)
    };
    // Signed by a key that is not trusted: nothing is listed.
    std::fs::write(&manifest, &signed).expect("write");
    let run = ls(&tm);
    run.assert_failed()
        .assert_stderr_line_has(&["index is not trusted", "not among the trusted keys"]);
    assert!(
        key_fingerprints(&key)
            .iter()
            .any(|f| run.stderr.contains(f)),
        "the key is named:\n{run}"
    );
    assert!(!run.stdout.contains("good"), "{run}");
    // Trusted: listed.
    tm.trust(&key);
    let run = ls(&tm);
    run.assert_ok();
    assert!(run.stdout.contains("good"), "{run}");
    // Tampered with after signing: nothing is listed.
    let text = String::from_utf8(signed).expect("armour is text");
    let tampered = text.replacen("\"version\":3", "\"version\":3 ", 1);
    assert_ne!(tampered, text);
    std::fs::write(&manifest, tampered).expect("write");
    let run = ls(&tm);
    run.assert_failed()
        .assert_stderr_line_has(&["index is not trusted", "signature"]);
    assert!(!run.stdout.contains("good"), "{run}");
}

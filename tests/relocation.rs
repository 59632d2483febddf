//! Relocation checked file by file against the tarballs themselves: every listed text file
//! equals an independent reference of format doc 7.3 applied to its original bytes, listed
//! binaries keep their length, no listed file keeps an old prefix, unlisted files are
//! untouched, modes are those of the tarball. Plus the text rule's quirks through a
//! generated mirror.

mod common;

use std::path::{Path, PathBuf};

use common::mirror::{clearsigned_text, GenPkg, Lists, TestMirror};
use common::reference::{
    buildinfo_list, buildinfo_str, map_of, parse_buildinfo, relocate_text, relocation_map,
};
use common::tarball::{read_tgz, TarMember};
use common::{contains, count, fixtures, mode, path_str, FixtureCache, V2_SIGNED, V3_SIGNED};
use tar::EntryType;

/// The stored tarball blob of a package of a fixture cache.
fn tarball_blob(mirror: &Path, name: &str, hash: &str) -> Vec<u8> {
    let v3 = mirror.join(format!(
        "v3/manifests/spec/{name}/{name}-1.0-{hash}.spec.manifest.json"
    ));
    let path: PathBuf = if v3.is_file() {
        let text = clearsigned_text(&std::fs::read(&v3).expect("manifest"));
        let manifest: serde_json::Value = serde_json::from_slice(&text).expect("manifest JSON");
        let rec = manifest["data"]
            .as_array()
            .expect("data")
            .iter()
            .find(|r| r["mediaType"] == "application/vnd.spack.install.v2.tar+gzip")
            .expect("tarball record");
        let sum = rec["checksum"].as_str().expect("checksum");
        mirror.join(format!("blobs/sha256/{}/{sum}", &sum[..2]))
    } else {
        common::walk(&mirror.join("build_cache"))
            .into_iter()
            .find(|p| path_str(p).ends_with(&format!("-{hash}.spack")))
            .unwrap_or_else(|| panic!("no v2 tarball for {hash}"))
    };
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Members of a package tarball below its prefix, keyed by prefix-relative path.
struct Original {
    members: Vec<(String, TarMember)>,
    info: serde_yaml_ng::Value,
}

impl Original {
    fn read(blob: &[u8]) -> Self {
        let all = read_tgz(blob);
        let info_member = all.last().expect("members");
        assert!(
            info_member.name.ends_with("/.spack/binary_distribution"),
            "binary_distribution must be the last member, found {}",
            info_member.name
        );
        let prefix = info_member
            .name
            .strip_suffix("/.spack/binary_distribution")
            .expect("prefix")
            .to_string();
        let info = parse_buildinfo(&info_member.data);
        let members = all
            .into_iter()
            .filter_map(|m| {
                let rel = m.name.strip_prefix(&prefix)?.strip_prefix('/')?.to_string();
                Some((rel, m))
            })
            .collect();
        Original { members, info }
    }

    fn file(&self, rel: &str) -> &TarMember {
        &self
            .members
            .iter()
            .find(|(r, _)| r == rel)
            .unwrap_or_else(|| panic!("{rel} not in the tarball"))
            .1
    }
}

/// Check one installed package against its tarball.
fn check_package(cache: &FixtureCache, mirror: &Path, root: &Path, name: &str, hash: &str) {
    let orig = Original::read(&tarball_blob(mirror, name, hash));
    let prefix = cache.prefix(root, name, hash);
    let map = relocation_map(&orig.info, path_str(root));
    let texts = buildinfo_list(&orig.info, "relocate_textfiles");
    let binaries = buildinfo_list(&orig.info, "relocate_binaries");
    let old_store = cache.build_store.as_bytes();

    for rel in &texts {
        let installed = std::fs::read(prefix.join(rel)).expect("installed text file");
        let expected = relocate_text(&orig.file(rel).data, &map);
        assert!(
            installed == expected,
            "{name}: {rel} differs from the reference text relocation"
        );
        assert!(
            !contains(&installed, old_store),
            "{name}: {rel} still holds {}",
            cache.build_store
        );
    }
    for rel in &binaries {
        let installed = std::fs::read(prefix.join(rel)).expect("installed binary");
        assert_eq!(
            installed.len(),
            orig.file(rel).data.len(),
            "{name}: binary {rel} changed length"
        );
        assert!(
            !contains(&installed, old_store),
            "{name}: binary {rel} still holds {}",
            cache.build_store
        );
    }
    for (rel, m) in &orig.members {
        if m.kind != EntryType::Regular || rel == ".spack/binary_distribution" {
            continue;
        }
        let path = prefix.join(rel);
        assert_eq!(mode(&path), m.mode & 0o7777, "{name}: mode of {rel}");
        if !texts.contains(rel) && !binaries.contains(rel) {
            let installed = std::fs::read(&path).expect("installed file");
            assert!(installed == m.data, "{name}: unlisted {rel} was modified");
        }
    }
}

fn check_cache(cache: &FixtureCache) {
    let Some(fx) = fixtures() else { return };
    let tmp = common::short_tempdir();
    let root = tmp.path().join("root");
    cache
        .install(&fx, &root, &["fixture-greet", "fixture-bulk"])
        .assert_ok();
    let mirror = fx.mirror(cache.name);
    for (name, hash) in [
        ("fixture-libgreet", cache.libgreet_hash),
        ("fixture-greet", cache.greet_hash),
        ("fixture-bulk", cache.bulk_hash),
    ] {
        check_package(cache, &mirror, &root, name, hash);
    }
    // bulk.dat holds its prefix three times: it shrinks by three times the difference.
    let bulk = cache.bulk_prefix(&root);
    let info = Original::read(&tarball_blob(&mirror, "fixture-bulk", cache.bulk_hash)).info;
    let old_prefix = info["hash_to_prefix"][cache.bulk_hash]
        .as_str()
        .expect("bulk prefix");
    assert!(old_prefix.starts_with(cache.buildpath));
    let shrink = 3 * (old_prefix.len() - path_str(&bulk).len()) as u64;
    let len = std::fs::metadata(bulk.join("share/fixture-bulk/bulk.dat"))
        .expect("bulk.dat")
        .len();
    assert_eq!(len, 20_971_520 - shrink, "bulk.dat length");
    let data = std::fs::read(bulk.join("share/fixture-bulk/bulk.dat")).expect("bulk.dat");
    assert_eq!(count(&data, path_str(&bulk).as_bytes()), 3);
}

#[test]
fn v3_relocated_files_match_reference() {
    check_cache(&V3_SIGNED);
}

#[test]
fn v2_relocated_files_match_reference() {
    check_cache(&V2_SIGNED);
}

/// The reference reproduces the example observed with Spack's own function (doc 7.3).
#[test]
fn reference_matches_spack_observed_example() {
    let m = map_of(&[
        (
            "/opt/spack/linux-x86_64/zlib-1.3-abc",
            "/u/linux-x86_64/zlib-1.3-abc",
        ),
        ("/opt/spack", "/u"),
    ]);
    let input = b"a=/opt/spack/linux-x86_64/zlib-1.3-abc/lib b=/opt/spack/other c=/opt/spackle d=x/opt/spack e=-L/opt/spack/lib f=:/opt/spack";
    assert_eq!(
        String::from_utf8(relocate_text(input, &m)).unwrap(),
        "a=/u/linux-x86_64/zlib-1.3-abc/lib b=/u/other c=/ule d=x/u e=-L/u/lib f=:/u"
    );
    assert_eq!(
        relocate_text(b"/srv/opt/spack //opt/spack /opt/spack/a/opt/spack/b", &m),
        b"/srv/opt/spack //opt/spack /u/a/opt/spack/b"
    );
}

/// A text file full of the rule's quirks, relocated by the binary from a generated mirror
/// built in the unpadded store `/opt/spack`, equals the reference and the literal results.
#[test]
fn text_rule_quirks_through_the_binary() {
    let pkg = GenPkg::with_buildpath("quirks", "/opt/spack");
    let p = &pkg.prefix;
    let text = format!(
        "{p}/share/at-start\n\
         a={p}/lib\n\
         b=/opt/spack/other\n\
         c=/opt/spackle\n\
         d=x/opt/spack\n\
         e=-L/opt/spack/lib\n\
         f=:/opt/spack\n\
         g=/srv/opt/spack\n\
         h=//opt/spack\n\
         i=/opt/spack/a/opt/spack/b\n\
         j=#!/bin/sh /opt/spack/bin/sbang\n\
         k=/y/ab/opt/spack\n\
         l=ab-/opt/spack/x\n\
         m=\"{p}\" {p}.\n\
         end=/opt/spack"
    );
    let tgz = pkg.tgz(
        |t| {
            t.dir(&pkg.member("etc"));
            t.file(&pkg.member("etc/quirks.conf"), 0o644, text.as_bytes());
        },
        &Lists::texts(&["etc/quirks.conf"]),
    );
    let mut mirror = TestMirror::unsigned();
    mirror.add(&pkg, &tgz);
    mirror.finish();
    let root = mirror.root();
    mirror.install_into(&root, &[], &["quirks"]).assert_ok();

    let r = path_str(&root);
    let np = pkg.installed_prefix(&root);
    let np = path_str(&np);
    let installed = std::fs::read_to_string(pkg.installed_prefix(&root).join("etc/quirks.conf"))
        .expect("quirks.conf");
    let info = parse_buildinfo(pkg.buildinfo(&Lists::default()).as_bytes());
    assert_eq!(buildinfo_str(&info, "buildpath"), "/opt/spack");
    let reference = relocate_text(text.as_bytes(), &relocation_map(&info, r));
    assert_eq!(
        installed.as_bytes(),
        reference,
        "binary differs from the reference"
    );
    let expected = format!(
        "{np}/share/at-start\n\
         a={np}/lib\n\
         b={r}/other\n\
         c={r}le\n\
         d=x{r}\n\
         e=-L{r}/lib\n\
         f=:{r}\n\
         g=/srv/opt/spack\n\
         h=//opt/spack\n\
         i={r}/a/opt/spack/b\n\
         j=#!/bin/sh {r}/bin/sbang\n\
         k=/y/ab/opt/spack\n\
         l=ab-{r}/x\n\
         m=\"{np}\" {np}.\n\
         end={r}"
    );
    assert_eq!(installed, expected);
}

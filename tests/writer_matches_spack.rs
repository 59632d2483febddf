//! The mirror writer against Spack itself: re-packing each fixture package's tree with
//! `spackfs::writer` must give the same relocation lists Spack computed, and installing the
//! re-packed mirror must give the same tree as installing Spack's mirror.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use spackfs::buildcache::buildinfo::BuildInfo;
use spackfs::buildcache::manifest::{Manifest, MEDIA_SPEC, MEDIA_TARBALL};
use spackfs::mirror::maybe_gunzip;
use spackfs::writer::MirrorWriter;

fn fixtures() -> Option<PathBuf> {
    let dir = std::env::var_os("SPACKFS_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"));
    if dir.join("README.md").exists() {
        return Some(dir);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "fixtures not found at {} (required under CI=true)",
            dir.display()
        );
    }
    eprintln!("SKIP: fixtures not found at {}", dir.display());
    None
}

/// (spec nodes, tarball bytes) of a package of an unsigned v3 mirror.
fn read_package(mirror: &Path, name: &str) -> (Vec<Value>, Vec<u8>) {
    let dir = mirror.join("v3/manifests/spec").join(name);
    let manifest = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let m = Manifest::parse(&std::fs::read(&manifest).unwrap(), "m").unwrap();
    let blob = |t: &str| std::fs::read(mirror.join(m.find(t, "m").unwrap().path())).unwrap();
    let spec: Value =
        serde_json::from_slice(&maybe_gunzip(blob(MEDIA_SPEC), "spec").unwrap()).unwrap();
    let nodes = spec["spec"]["nodes"].as_array().unwrap().clone();
    (nodes, blob(MEDIA_TARBALL))
}

fn unpack(tarball: &[u8], into: &Path) {
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(tarball));
    a.set_preserve_permissions(true);
    a.unpack(into).unwrap();
}

fn list_set(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

fn install(mirror: &Path, root: &Path, specs: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_spackfs"))
        .arg("install")
        .arg(mirror)
        .arg("--unsigned")
        .arg("--root")
        .arg(root)
        .args(specs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "install failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tree(fixtures: &Path, root: &Path) -> String {
    let out = Command::new("python3")
        .arg(fixtures.join("tools/tree-manifest.py"))
        .arg(root)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn repacked_fixtures_have_spacks_lists_and_install_identically() {
    let Some(fx) = fixtures() else { return };
    let spack_mirror = fx.join("spack-v3-unsigned/mirror");
    let tmp = tempfile::tempdir().unwrap();
    let ours = tmp.path().join("mirror");
    let mut writer = MirrorWriter::new(&ours, None).unwrap();
    let names = ["fixture-libgreet", "fixture-greet", "fixture-bulk"];
    for name in names {
        let (nodes, tarball) = read_package(&spack_mirror, name);
        let raw = tmp.path().join("raw").join(name);
        unpack(&tarball, &raw);
        let hash = nodes[0]["hash"].as_str().unwrap();
        let prefix_member = walk_find(&raw, hash);
        let build_prefix = format!("/{}", prefix_member.strip_prefix(&raw).unwrap().display());
        let info_bytes = std::fs::read(prefix_member.join(".spack/binary_distribution")).unwrap();
        let info = BuildInfo::parse(&info_bytes, name).unwrap();
        let set: Vec<(String, String)> = info.hash_to_prefix.clone().unwrap().into_iter().collect();
        writer
            .add_package(
                &nodes,
                &prefix_member,
                info.buildpath.as_deref().unwrap(),
                &build_prefix,
                &set,
            )
            .unwrap();
        // The writer's classification equals Spack's lists.
        let (_, our_tarball) = read_package(&ours, name);
        let our_raw = tmp.path().join("ours").join(name);
        unpack(&our_tarball, &our_raw);
        let our_info = BuildInfo::parse(
            &std::fs::read(walk_find(&our_raw, hash).join(".spack/binary_distribution")).unwrap(),
            name,
        )
        .unwrap();
        assert_eq!(
            list_set(&our_info.relocate_binaries),
            list_set(&info.relocate_binaries),
            "{name}"
        );
        assert_eq!(
            list_set(&our_info.relocate_textfiles),
            list_set(&info.relocate_textfiles),
            "{name}"
        );
        assert_eq!(
            list_set(&our_info.relocate_links),
            list_set(&info.relocate_links),
            "{name}"
        );
    }
    writer.finish().unwrap();
    // Same root path for both installs, so that relocated bytes are comparable.
    let root = tmp.path().join("r");
    install(&spack_mirror, &root, &["fixture-greet", "fixture-bulk"]);
    let spack_tree = tree(&fx, &root);
    std::fs::remove_dir_all(&root).unwrap();
    install(&ours, &root, &["fixture-greet", "fixture-bulk"]);
    let our_tree = tree(&fx, &root);
    assert!(spack_tree.lines().count() > 500);
    assert_eq!(our_tree, spack_tree);
}

/// The directory whose name ends with `-<hash>` under `dir`.
fn walk_find(dir: &Path, hash: &str) -> PathBuf {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() && !p.is_symlink() {
                if p.file_name().unwrap().to_string_lossy().ends_with(hash) {
                    return p;
                }
                stack.push(p);
            }
        }
    }
    panic!("no prefix for {hash} under {}", dir.display());
}

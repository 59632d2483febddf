//! Hostile and broken packages in an otherwise valid signed mirror: each one is refused with
//! an error naming it, the mirror and the cause; nothing of it is published or escapes the
//! install root; the well-behaved package of the same run still installs and works.

mod common;

use std::path::Path;

use common::mirror::{GenPkg, Lists, Scenario, TestMirror};
use common::tarball::{gzip, gzip_stored, TarBuilder};
use common::{contains, mode, path_str, run_program};

/// The package under test.
fn evil() -> GenPkg {
    GenPkg::new("evil")
}

/// A scenario whose `evil` tarball holds the members `body` adds after its prefix dir;
/// `body` also gets the scenario's temporary directory (outside every install root).
fn scenario(lists: &Lists, body: impl FnOnce(&GenPkg, &Path, &mut TarBuilder)) -> Scenario {
    let pkg = evil();
    let mirror = TestMirror::signed();
    let tgz = pkg.tgz(|t| body(&pkg, mirror.tmp(), t), lists);
    Scenario::in_mirror(mirror, pkg, &tgz)
}

#[track_caller]
fn assert_absent(p: &Path) {
    assert!(
        std::fs::symlink_metadata(p).is_err(),
        "{} must not exist",
        p.display()
    );
}

// ---------------------------------------------------------------- blobs

/// The blob is swapped for another valid tarball of the same length (stored gzip keeps
/// the lengths equal) that would install cleanly: only the sha256 tells them apart.
#[test]
fn blob_with_wrong_sha256_is_refused() {
    let pkg = evil();
    let make = |word: &[u8]| {
        gzip_stored(&pkg.tar(
            |t| {
                t.file(&pkg.member("payload.txt"), 0o644, word);
            },
            Some(&pkg.buildinfo(&Lists::default())),
        ))
    };
    let (honest, swapped) = (make(b"honest\n"), make(b"swappd\n"));
    assert_eq!(honest.len(), swapped.len());
    let s = Scenario::new(pkg, &honest);
    std::fs::write(s.mirror.blob(&s.evil_rec), &swapped).expect("swap blob");
    let run = s.install(&[]);
    s.assert_refused(&run, &["sha256", &s.evil_rec.checksum.hex()]);
}

#[test]
fn truncated_blob_is_refused() {
    let s = scenario(&Lists::default(), |p, _, t| {
        t.file(&p.member("data.txt"), 0o644, &[b'x'; 4096]);
    });
    let path = s.mirror.blob(&s.evil_rec);
    let bytes = std::fs::read(&path).expect("blob");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate blob");
    let run = s.install(&[]);
    s.assert_refused(&run, &["truncated"]);
}

#[test]
fn missing_blob_is_refused() {
    let s = scenario(&Lists::default(), |p, _, t| {
        t.file(&p.member("data.txt"), 0o644, b"data\n");
    });
    std::fs::remove_file(s.mirror.blob(&s.evil_rec)).expect("remove blob");
    let run = s.install(&[]);
    s.assert_refused(&run, &["not found", &s.evil_rec.checksum.hex()]);
}

#[test]
fn non_gzip_blob_is_refused() {
    let pkg = evil();
    let tar = pkg.tar(
        |t| {
            t.file(&pkg.member("data.txt"), 0o644, b"data\n");
        },
        Some(&pkg.buildinfo(&Lists::default())),
    );
    let s = Scenario::new(pkg, &tar);
    let run = s.install(&[]);
    s.assert_refused(&run, &["not compressed with gzip"]);
}

#[test]
fn decompression_bomb_is_refused() {
    let s = scenario(&Lists::default(), |p, _, t| {
        t.file(&p.member("zeros.bin"), 0o644, &vec![0u8; 50 << 20]);
    });
    assert!(s.evil_rec.content_length < 1 << 20, "the bomb is small");
    let run = s.install(&["--max-unpacked-size", "10MB"]);
    s.assert_refused(&run, &["limit", "10000000"]);
}

// ---------------------------------------------------------------- tar members

#[test]
fn member_with_dotdot_is_refused() {
    let s = scenario(&Lists::default(), |p, tmp, t| {
        let escape = tmp.join("dotdot-escape.txt");
        let up = "../".repeat(64);
        let name = format!("{up}{}", path_str(&escape).trim_start_matches('/'));
        t.file(&p.member(&name), 0o644, b"escaped\n");
    });
    let run = s.install(&[]);
    s.assert_refused(&run, &["unsafe tar member", "\"..\""]);
    assert_absent(&s.mirror.tmp().join("dotdot-escape.txt"));
}

#[test]
fn unsigned_mirror_still_refuses_hostile_members() {
    let pkg = evil();
    let tgz = pkg.tgz(
        |t| {
            t.file(&pkg.member("../../escape.txt"), 0o644, b"escaped\n");
        },
        &Lists::default(),
    );
    let s = Scenario::in_mirror(TestMirror::unsigned(), pkg, &tgz);
    let run = s.install(&[]);
    s.assert_refused(&run, &["unsafe tar member", "\"..\""]);
}

#[test]
fn absolute_member_is_refused() {
    let s = scenario(&Lists::default(), |_, tmp, t| {
        t.file(
            path_str(&tmp.join("absolute-escape.txt")),
            0o644,
            b"escaped\n",
        );
    });
    let run = s.install(&[]);
    s.assert_refused(&run, &["unsafe tar member", "absolute"]);
    assert_absent(&s.mirror.tmp().join("absolute-escape.txt"));
}

#[test]
fn member_outside_the_prefix_is_refused() {
    let s = scenario(&Lists::default(), |_, _, t| {
        t.file("opt/fixture-store/outside.txt", 0o644, b"outside\n");
    });
    let run = s.install(&[]);
    s.assert_refused(
        &run,
        &[
            "opt/fixture-store/outside.txt",
            "outside the package prefix",
        ],
    );
    assert_absent(&s.root().join("outside.txt"));
}

#[test]
fn member_in_sibling_prefix_is_refused() {
    let s = scenario(&Lists::default(), |p, _, t| {
        t.file(
            &format!("{}X/sibling.txt", p.member_prefix()),
            0o644,
            b"x\n",
        );
    });
    let run = s.install(&[]);
    s.assert_refused(&run, &["X/sibling.txt", "outside the package prefix"]);
    let sibling = format!("{}X", path_str(&s.evil.installed_prefix(&s.root())));
    assert_absent(Path::new(&sibling));
}

#[test]
fn write_through_symlink_is_refused() {
    let s = scenario(&Lists::default(), |p, tmp, t| {
        t.symlink(&p.member("escape"), path_str(tmp));
        t.file(&p.member("escape/pwned.txt"), 0o644, b"pwned\n");
    });
    let run = s.install(&[]);
    s.assert_refused(&run, &["escape/pwned.txt", "symlink"]);
    assert_absent(&s.mirror.tmp().join("pwned.txt"));
}

#[test]
fn hard_link_to_absolute_path_is_refused() {
    let s = scenario(&Lists::default(), |p, _, t| {
        t.hardlink(&p.member("passwd"), "/etc/passwd");
    });
    let run = s.install(&[]);
    s.assert_refused(&run, &["passwd", "hard link"]);
}

#[test]
fn hard_link_to_non_member_is_refused() {
    let s = scenario(&Lists::default(), |p, _, t| {
        t.hardlink(&p.member("passwd"), "etc/passwd");
    });
    let run = s.install(&[]);
    s.assert_refused(
        &run,
        &["passwd", "hard link", "not an earlier regular file"],
    );
}

#[test]
fn hard_link_to_later_member_is_refused() {
    let s = scenario(&Lists::default(), |p, _, t| {
        t.hardlink(&p.member("early"), &p.member("late.txt"));
        t.file(&p.member("late.txt"), 0o644, b"late\n");
    });
    let run = s.install(&[]);
    s.assert_refused(&run, &["early", "hard link", "not an earlier regular file"]);
}

#[test]
fn char_device_member_is_refused() {
    let s = scenario(&Lists::default(), |p, _, t| {
        t.char_device(&p.member("null"), 1, 3);
    });
    let run = s.install(&[]);
    s.assert_refused(&run, &["null", "not allowed"]);
}

#[test]
fn fifo_member_is_refused() {
    let s = scenario(&Lists::default(), |p, _, t| {
        t.fifo(&p.member("pipe"));
    });
    let run = s.install(&[]);
    s.assert_refused(&run, &["pipe", "not allowed"]);
}

#[test]
fn special_mode_bits_are_stripped() {
    let pkg = GenPkg::new("modes");
    let tgz = pkg.tgz(
        |t| {
            t.raw(
                pkg.member("shared").as_bytes(),
                tar::EntryType::Directory,
                0o3777,
                None,
                b"",
            );
            t.file(&pkg.member("shared/setuid"), 0o4755, b"#!/bin/sh\n");
            t.file(&pkg.member("shared/setgid"), 0o2755, b"#!/bin/sh\n");
            t.file(&pkg.member("shared/sticky"), 0o1755, b"#!/bin/sh\n");
            t.file(&pkg.member("shared/writable"), 0o666, b"data\n");
        },
        &Lists::default(),
    );
    let mut mirror = TestMirror::signed();
    mirror.add(&pkg, &tgz);
    mirror.add_good();
    mirror.finish();
    let root = mirror.root();
    let run = mirror.install_into(&root, &[], &["modes", "good"]);
    run.assert_ok();
    let dir = pkg.installed_prefix(&root).join("shared");
    assert_eq!(mode(&dir), 0o755, "directory mode");
    for (file, want) in [
        ("setuid", 0o755),
        ("setgid", 0o755),
        ("sticky", 0o755),
        ("writable", 0o644),
    ] {
        assert_eq!(mode(&dir.join(file)), want, "mode of {file}:\n{run}");
    }
    common::mirror::assert_good_works(&root);
}

// ---------------------------------------------------------------- buildinfo and relocation

#[test]
fn missing_binary_distribution_is_refused() {
    let pkg = evil();
    let tgz = gzip(&pkg.tar(
        |t| {
            t.file(&pkg.member("data.txt"), 0o644, b"data\n");
        },
        None,
    ));
    let s = Scenario::new(pkg, &tgz);
    let run = s.install(&[]);
    s.assert_refused(&run, &["binary_distribution"]);
}

fn relocation_list_is_refused(listed: &str, cause: &str) {
    let pkg = evil();
    let mirror = TestMirror::signed();
    let tmp = mirror.tmp();
    let victim = tmp.join("victim.txt");
    let listed = listed
        .replace("/VICTIM", path_str(&victim))
        .replace("VICTIM", path_str(&victim));
    let tgz = pkg.tgz(
        |t| {
            t.dir(&pkg.member("share"));
            t.symlink(&pkg.member("share/victim-link"), path_str(&victim));
            t.symlink(&pkg.member("share/tmp-link"), path_str(tmp));
            t.file(&pkg.member("share/ok.txt"), 0o644, pkg.prefix.as_bytes());
        },
        &Lists::texts(&["share/ok.txt", &listed]),
    );
    let s = Scenario::in_mirror(mirror, pkg, &tgz);
    let before = format!("prefix={}\n", s.evil.prefix).into_bytes();
    std::fs::write(&victim, &before).expect("victim");
    let run = s.install(&[]);
    s.assert_refused(&run, &["relocation list", cause]);
    assert_eq!(
        std::fs::read(&victim).expect("victim"),
        before,
        "victim changed"
    );
}

#[test]
fn relocation_list_with_dotdot_path_is_refused() {
    let listed = format!("{}VICTIM", "../".repeat(40));
    relocation_list_is_refused(&listed, "outside the prefix");
}

#[test]
fn relocation_list_with_absolute_path_is_refused() {
    relocation_list_is_refused("VICTIM", "outside the prefix");
}

#[test]
fn relocation_list_naming_a_symlink_is_refused() {
    relocation_list_is_refused("share/victim-link", "symlink");
}

#[test]
fn relocation_list_below_a_symlink_is_refused() {
    relocation_list_is_refused("share/tmp-link/victim.txt", "symlink");
}

/// A fake ELF file holding the old prefix as a C string.
fn fake_binary(pkg: &GenPkg) -> Vec<u8> {
    let mut data = b"\x7fELF\x02\x01\x01\0".to_vec();
    data.extend_from_slice(&[0u8; 56]);
    data.extend_from_slice(format!("{}/share/data.txt\0", pkg.prefix).as_bytes());
    data.extend_from_slice(&[0u8; 64]);
    data
}

fn binary_scenario() -> Scenario {
    scenario(&Lists::binaries(&["bin/tool"]), |p, _, t| {
        t.dir(&p.member("bin"));
        t.file(&p.member("bin/tool"), 0o755, &fake_binary(p));
    })
}

/// The same fake binary relocates into a short root, so that its refusal below is due to
/// the root's length alone: same length, new prefix left-padded with `/`.
#[test]
fn binary_relocates_into_short_root() {
    let s = binary_scenario();
    let root = s.root();
    let run = s.install(&[]);
    run.assert_ok();
    let prefix = s.evil.installed_prefix(&root);
    let data = std::fs::read(prefix.join("bin/tool")).expect("tool");
    assert_eq!(data.len(), fake_binary(&s.evil).len());
    assert!(!contains(&data, b"/opt/fixture-store"));
    let pad = "/".repeat(s.evil.prefix.len() - path_str(&prefix).len());
    let want = format!("{pad}{}/share/data.txt\0", path_str(&prefix));
    assert!(contains(&data, want.as_bytes()), "padded C string expected");
}

#[test]
fn binary_into_root_longer_than_build_root_is_refused() {
    let s = binary_scenario();
    let root = s.mirror.tmp().join("r".repeat(140));
    assert!(path_str(&root).len() > 128);
    let run = s.install_into(&root, &[]);
    // Only keys the binary holds count: the sbang key (`…/bin/sbang`, absent from the
    // binary) would give a much shorter limit than the 128-character padded build root.
    s.assert_refused_in(
        &root,
        &run,
        &["bin/tool", "longer", "at most 128 characters"],
    );
}

// ------------------------------------------------------------------------ compression

/// A zstd-compressed tarball (chosen by its magic bytes, whatever the manifest says) is
/// installed and relocated like a gzip one.
#[test]
fn zstd_tarball_is_installed_and_relocated() {
    let pkg = GenPkg::new("zstdpkg");
    let script = format!("#!/bin/sh\necho \"zstd from {}\"\n", pkg.prefix);
    let tar = pkg.tar(
        |t| {
            t.dir(&pkg.member("bin"));
            t.file(&pkg.member("bin/hello.sh"), 0o755, script.as_bytes());
        },
        Some(&pkg.buildinfo(&Lists::texts(&["bin/hello.sh"]))),
    );
    let zst = zstd::encode_all(&tar[..], 3).expect("zstd");
    assert_eq!(&zst[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
    let mut mirror = TestMirror::unsigned();
    mirror.add(&pkg, &zst);
    mirror.finish();
    let root = mirror.root();
    let run = mirror.install_into(&root, &[], &["zstdpkg"]);
    run.assert_ok();
    let prefix = pkg.installed_prefix(&root);
    let out = run_program(prefix.join("bin/hello.sh"), [] as [&str; 0]);
    out.assert_ok();
    assert_eq!(
        out.stdout,
        format!("zstd from {}\n", prefix.display()),
        "{run}"
    );
}

// ------------------------------------------------------------------ metadata as paths

/// A projection that uses every field of a spec that becomes a path component.
const EVERY_FIELD: &str = "{namespace}/{architecture.platform}/{architecture.os}/{architecture.target}/{compiler.name}/{compiler.version}/{name}/{version}/{hash}";

/// A package whose spec field `path` (e.g. `["arch", "target"]`) is `value`; the other
/// fields are ordinary (a v4-style `compiler` object on the node).
fn evil_pkg(i: usize, path: &[&str], value: &str) -> GenPkg {
    let mut node = spackfs::writer::NodeDef::new(&format!("evil{i}"), "1.0").to_json();
    let obj = node.as_object_mut().expect("node");
    obj.remove("hash");
    obj.insert(
        "compiler".into(),
        serde_json::json!({"name": "gcc", "version": "12.2.0"}),
    );
    match path {
        [field] => {
            obj.insert((*field).into(), serde_json::Value::String(value.into()));
        }
        [outer, inner] => {
            obj[*outer][*inner] = serde_json::Value::String(value.into());
        }
        _ => unreachable!(),
    }
    let hash = spackfs::writer::dag_hash(&node);
    node["hash"] = serde_json::Value::String(hash.clone());
    let name = node["name"].as_str().expect("name").to_string();
    let buildpath = common::mirror::build_root();
    GenPkg {
        prefix: format!("{buildpath}/linux-x86_64/{name}-1.0-{hash}"),
        name,
        node,
        hash,
        buildpath,
    }
}

/// Every string of a spec that becomes a path component, set to `..` (or `.`, or empty):
/// `install` refuses each such package with an error naming it and installs the others;
/// nothing is written outside the root; the mount does not list them.
#[test]
fn spec_fields_that_would_leave_the_root_are_refused_in_install_and_mount() {
    let mut tm = TestMirror::unsigned();
    tm.add_good();
    let cases: [(&[&str], &str); 9] = [
        (&["namespace"], ".."),
        (&["namespace"], ""),
        (&["arch", "platform"], ".."),
        (&["arch", "platform_os"], "."),
        (&["arch", "target"], ".."),
        (&["compiler", "name"], ".."),
        (&["compiler", "version"], ".."),
        (&["version"], ".."),
        (&["name"], ".."),
    ];
    let mut evil = Vec::new();
    for (i, (path, value)) in cases.iter().enumerate() {
        let pkg = evil_pkg(i, path, value);
        if *path != ["name"] {
            // A complete package: manifest, spec and tarball.
            let (good, _) = common::mirror::good_pkg();
            let tgz = pkg.tgz(
                |t| {
                    t.file(&pkg.member("share/x"), 0o644, good.name.as_bytes());
                },
                &Lists::default(),
            );
            tm.add(&pkg, &tgz);
        }
        evil.push(pkg);
    }
    tm.finish();
    // A name no manifest path can hold: only the index lists it.
    let named = evil.last().expect("name case").clone();
    common::mirror::rewrite_index(&tm.dir(), |installs| {
        installs.insert(
            named.hash.clone(),
            serde_json::json!({"spec": named.node, "ref_count": 0, "in_buildcache": true}),
        );
    });
    let root = tm.root();
    let (good, _) = common::mirror::good_pkg();
    let mut specs = vec![format!("/{}", good.hash)];
    specs.extend(evil.iter().map(|p| format!("/{}", p.hash)));
    let spec_refs: Vec<&str> = specs.iter().map(String::as_str).collect();
    let run = tm.install_into(&root, &["--projection", EVERY_FIELD], &spec_refs);
    run.assert_failed();
    for p in &evil {
        run.assert_stderr_line_has(&[&p.hash[..7], "refused"]);
    }
    let placed = common::walk(&root);
    assert!(placed.iter().all(|p| p.starts_with(&root)), "{placed:?}");
    let good_dir = root.join(format!(
        "builtin/linux/debian12/x86_64/none/none/good/1.0/{}",
        good.hash
    ));
    run_program(good_dir.join("bin/hello.sh"), [] as [&str; 0]).assert_ok();
    // Nothing beside the mirror and the root in the test's directory.
    let mut beside = common::entries(tm.tmp());
    beside.sort();
    assert_eq!(beside, ["mirror", "root"], "{run}");

    // The mount lists the good package only.
    let dirs = common::mount::MountDirs::new();
    let d = common::mount::Daemon::mount(
        &tm.dir(),
        &dirs.mnt,
        &dirs.cache,
        &["--unsigned", "--projection", EVERY_FIELD],
    );
    let listed: Vec<String> = common::walk(&dirs.mnt)
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| n.len() == 32)
        .collect();
    assert_eq!(listed, std::slice::from_ref(&good.hash), "{d}");
    for p in &evil {
        assert!(
            !d.log_lines_with(&["not listing", &p.hash[..7]]).is_empty(),
            "{}\n{d}",
            p.hash
        );
    }
}

// ---------------------------------------------------------------- index records

/// A record whose dependency edge has no hash (an index a mirror got wrong, or a hostile
/// one). The mount reads the edges of a package only when it is used: the index is listed,
/// the other packages work, and a touch of this one fails with EIO naming the index
/// record and the edge, in the log and in `user.spackfs.error`; an install of it fails
/// with the same reason.
#[test]
fn a_record_with_a_bad_dependency_edge_fails_when_used() {
    use common::mount::{errno_of, xattr_str, Daemon, MountDirs};
    let mut tm = TestMirror::unsigned();
    let (good, good_tgz) = common::mirror::good_pkg();
    tm.add(&good, &good_tgz);
    let bad = GenPkg::new("bad");
    let bad_tgz = bad.tgz(
        |t| {
            t.file(&bad.member("share/x"), 0o644, b"x");
        },
        &Lists::default(),
    );
    tm.add(&bad, &bad_tgz);
    tm.finish();
    common::mirror::rewrite_index(&tm.dir(), |installs| {
        installs[&bad.hash]["spec"]["dependencies"] =
            serde_json::json!([{"name": "ghost", "parameters": {"deptypes": ["link"]}}]);
    });

    let dirs = MountDirs::new();
    let d = Daemon::mount(&tm.dir(), &dirs.mnt, &dirs.cache, &["--unsigned"]);
    let good_dir = good.installed_prefix(&dirs.mnt);
    run_program(good_dir.join("bin/hello.sh"), [] as [&str; 0]).assert_ok();
    let bad_dir = bad.installed_prefix(&dirs.mnt);
    assert!(bad_dir.is_dir(), "{} is listed\n{d}", bad_dir.display());
    let errno = errno_of(
        std::fs::read_dir(&bad_dir),
        "read_dir of the bad package",
        &d,
    );
    assert_eq!(errno, libc::EIO, "{d}");
    let why = xattr_str(&bad_dir, "user.spackfs.error");
    for needle in ["dependency ghost without hash", &bad.hash] {
        assert!(why.contains(needle), "{needle:?} not in {why:?}\n{d}");
    }
    assert!(
        !d.log_lines_with(&["dependency ghost without hash", &bad.hash[..7]])
            .is_empty(),
        "{d}"
    );
    drop(d);

    let run = tm.install_into(&tm.root(), &[], &[&format!("/{}", bad.hash)]);
    run.assert_failed();
    run.assert_stderr_line_has(&["dependency ghost without hash"]);
}

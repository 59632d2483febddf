//! Remote mirrors, against real servers that each test starts and stops itself: the signed
//! fixture mirror over HTTP and HTTPS (nginx, a CA made by the test), two "nodes" behind a
//! caching proxy (squid), failover between two mirrors when the first one is stopped,
//! answers 500, serves a changed byte or trickles, EIO within the timeout when both are
//! down, and the index: an altered one lists nothing, one larger than 64 MiB is read whole,
//! a package added while mounted appears within the TTL.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::mirror::{rewrite_index, write_index, GenPkg, Lists, TestMirror};
use common::mount::{check_greet_programs, errno_of, state, xattr_str, Daemon, MountDirs};
use common::servers::{Fault, FaultServer, Nginx, Squid, TestCa};
use common::{
    entries, expected_greet_output, fixtures, path_str, run_program, spackfs, FixtureCache,
    Fixtures, FIXTURE_FPR, V3_SIGNED, V3_UNSIGNED,
};

/// The fixture's blobs (tarballs and specs) of greet and libgreet, as nginx logs them.
const GREET_TARBALL: &str =
    "/blobs/sha256/1f/1fb0cc4222d6201935117c87d172a7e4ed5bf64d46a5fb14427f43106c1c3080";
const LIBGREET_TARBALL: &str =
    "/blobs/sha256/7e/7eca49826148483326e084fe8659b2d33932a24d6c2da738db625134a12b121f";
const INDEX_BLOB: &str =
    "blobs/sha256/16/16a5f9f53551fd98d35caffb0ba0d30f7490929b0df02ae2d3ee8224c04a589d";

/// `--key <fixture key>` as owned strings.
fn key_args(fx: &Fixtures) -> Vec<String> {
    V3_SIGNED.trust_args(fx)
}

/// Mount `mirrors` (URLs, in order) at a fresh mount point with the fixture key.
#[track_caller]
fn mount_urls(
    fx: &Fixtures,
    dirs: &MountDirs,
    mirrors: &[&str],
    extra: &[&str],
    env: &[(&str, &str)],
) -> Daemon {
    let keys = key_args(fx);
    let mut args: Vec<&str> = keys.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    Daemon::mount_with(mirrors, &dirs.mnt, &dirs.cache, &args, env)
}

/// Requests of `path` answered 200 by nginx.
fn served(nginx: &Nginx, path: &str) -> usize {
    nginx.count_where(|r| r.path == path && r.status == 200)
}

/// The mirror the mount says a ready package came from.
fn served_by(cache: &FixtureCache, root: &Path, name: &str) -> String {
    let dir = match name {
        "greet" => cache.greet_prefix(root),
        "libgreet" => cache.libgreet_prefix(root),
        _ => cache.bulk_prefix(root),
    };
    xattr_str(&dir, "user.spackfs.mirror")
}

/// A copy of the signed fixture mirror in `dir`, for tests that alter it.
fn signed_copy(fx: &Fixtures, dir: &Path) -> PathBuf {
    fx.copy_mirror(V3_SIGNED.name, &dir.join("copy"))
}

// ------------------------------------------------------------------ HTTP and HTTPS

/// The signed fixture mirror over plain HTTP: `ls` names every package with its signer,
/// the mount serves greet, and every blob is fetched exactly once.
#[test]
fn http_mirror_serves_greet_and_fetches_each_blob_once() {
    let Some(fx) = fixtures() else { return };
    let nginx = Nginx::serve(&fx.mirror(V3_SIGNED.name));
    let url = nginx.url();
    let keys = key_args(&fx);
    let mut ls = vec!["ls", "--long", url.as_str()];
    ls.extend(keys.iter().map(String::as_str));
    let run = spackfs(&ls);
    run.assert_ok();
    for name in ["fixture-greet", "fixture-libgreet", "fixture-bulk"] {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.contains(name) && l.contains(FIXTURE_FPR)),
            "{name} with its signer:\n{run}"
        );
    }
    nginx.clear_log();
    let dirs = MountDirs::new();
    let d = mount_urls(&fx, &dirs, &[&url], &[], &[]);
    // Sixteen processes touch greet at once, cold.
    let greet = V3_SIGNED.greet_prefix(&dirs.mnt).join("bin/greet");
    let runs: Vec<_> = (0..16)
        .map(|_| {
            let greet = greet.clone();
            std::thread::spawn(move || run_program(&greet, [] as [&str; 0]))
        })
        .collect();
    for r in runs {
        r.join().expect("greet thread").assert_ok();
    }
    check_greet_programs(&V3_SIGNED, &dirs.mnt, &d);
    assert_eq!(served_by(&V3_SIGNED, &dirs.mnt, "greet"), url, "{d}");
    let log = nginx.wait_requests(Duration::from_secs(5), |r| {
        r.iter().any(|r| r.path == LIBGREET_TARBALL)
    });
    for blob in [GREET_TARBALL, LIBGREET_TARBALL] {
        assert_eq!(
            served(&nginx, blob),
            1,
            "{blob} fetched once:\n{log:#?}\n{d}"
        );
    }
    assert!(
        log.iter().all(|r| r.user_agent.starts_with("spackfs/")),
        "{log:#?}"
    );
}

/// HTTPS with a site CA given by `--ca-file`: greet runs. Without it, or with another CA,
/// the mirror is refused with an error naming it and the certificate.
#[test]
fn https_mirror_with_a_site_ca() {
    let Some(fx) = fixtures() else { return };
    let ca = TestCa::new();
    let nginx = Nginx::serve_tls(&fx.mirror(V3_SIGNED.name), &ca);
    let url = nginx.url();
    assert!(url.starts_with("https://"), "{url}");
    let keys = key_args(&fx);
    let other = TestCa::new();
    for bad in [None, Some(other.ca_pem())] {
        let mut args = vec!["ls", url.as_str()];
        args.extend(keys.iter().map(String::as_str));
        if let Some(pem) = bad {
            args.extend(["--ca-file", path_str(pem)]);
        }
        spackfs(&args)
            .assert_failed()
            .assert_stderr_line_has(&[&url, "certificate"]);
    }
    let dirs = MountDirs::new();
    let d = mount_urls(
        &fx,
        &dirs,
        &[&url],
        &["--ca-file", path_str(ca.ca_pem())],
        &[],
    );
    check_greet_programs(&V3_SIGNED, &dirs.mnt, &d);
    assert_eq!(served(&nginx, GREET_TARBALL), 1, "{d}");
}

/// Two nodes (two mounts with their own caches) behind one squid: the second node's blobs
/// are cache hits, and nginx serves each blob once.
#[test]
fn two_nodes_behind_a_caching_proxy_fetch_each_blob_once_from_the_mirror() {
    let Some(fx) = fixtures() else { return };
    let nginx = Nginx::serve(&fx.mirror(V3_SIGNED.name));
    let squid = Squid::new();
    let proxy = squid.url();
    let env = [("HTTP_PROXY", proxy.as_str())];
    let url = nginx.url();
    let nodes = [MountDirs::new(), MountDirs::new()];
    for (i, dirs) in nodes.iter().enumerate() {
        let d = mount_urls(&fx, dirs, &[&url], &[], &env);
        check_greet_programs(&V3_SIGNED, &dirs.mnt, &d);
        // Wait until the proxy logged this node's tarball requests.
        squid.wait_requests(Duration::from_secs(5), |r| {
            [GREET_TARBALL, LIBGREET_TARBALL]
                .iter()
                .all(|b| r.iter().filter(|x| x.url.ends_with(b)).count() > i)
        });
        drop(d);
    }
    // Every blob the mirror served (index, specs, tarballs), it served once.
    let origin = nginx.requests();
    let blobs: std::collections::BTreeSet<&str> = origin
        .iter()
        .filter(|r| r.path.starts_with("/blobs/"))
        .map(|r| r.path.as_str())
        .collect();
    assert!(blobs.len() >= 5, "index, 2 specs, 2 tarballs: {origin:#?}");
    for blob in &blobs {
        assert_eq!(served(&nginx, blob), 1, "{blob}:\n{origin:#?}");
    }
    let log = squid.requests();
    for blob in [GREET_TARBALL, LIBGREET_TARBALL] {
        let seen: Vec<_> = log.iter().filter(|r| r.url.ends_with(blob)).collect();
        assert_eq!(seen.len(), 2, "{blob} through the proxy:\n{log:#?}");
        assert!(!seen[0].is_hit(), "first node: a miss\n{log:#?}");
        assert!(seen[1].is_hit(), "second node: a hit\n{log:#?}");
        assert_eq!(
            served(&nginx, blob),
            1,
            "{blob} fetched once from the mirror:\n{:#?}",
            nginx.requests()
        );
    }
}

// ------------------------------------------------------------------ failover

/// Mount the signed fixture from mirror `first` (a URL), then nginx serving the fixture
/// itself; run greet; it must come from the second mirror, and a warning must say why the
/// first was left (every needle on one line).
#[track_caller]
fn greet_fails_over(
    fx: &Fixtures,
    first: &str,
    extra: &[&str],
    after_mount: impl FnOnce(),
    why: &[&str],
) -> (Daemon, MountDirs, Nginx) {
    let second = Nginx::serve(&fx.mirror(V3_SIGNED.name));
    let dirs = MountDirs::new();
    let url2 = second.url();
    let d = mount_urls(fx, &dirs, &[first, &url2], extra, &[]);
    after_mount();
    check_greet_programs(&V3_SIGNED, &dirs.mnt, &d);
    assert_eq!(served_by(&V3_SIGNED, &dirs.mnt, "greet"), url2, "{d}");
    let mut needles = vec!["leaving mirror", first];
    needles.extend_from_slice(why);
    assert!(
        !d.log_lines_with(&needles).is_empty(),
        "no warning line with {needles:?}\n{d}"
    );
    (d, dirs, second)
}

#[test]
fn failover_when_the_first_server_is_stopped() {
    let Some(fx) = fixtures() else { return };
    let mut first = Nginx::serve(&fx.mirror(V3_SIGNED.name));
    let url = first.url();
    let (d, _dirs, _second) = greet_fails_over(&fx, &url, &[], || first.stop(), &["connect"]);
    // The failing mirror is skipped for a while: the log says so.
    assert!(
        !d.log_lines_with(&["mirror", &url, "skipped for"])
            .is_empty(),
        "{d}"
    );
}

#[test]
fn failover_when_the_first_answers_500() {
    let Some(fx) = fixtures() else { return };
    let first = Nginx::builder(&fx.mirror(V3_SIGNED.name))
        // The tarballs of greet and libgreet (the index and spec blobs are served).
        .location("location ~ ^/blobs/sha256/(1f|7e)/ { return 500; }")
        .spawn();
    let (d, _dirs, _second) = greet_fails_over(&fx, &first.url(), &[], || {}, &["500"]);
    assert!(
        first.count_where(|r| r.status == 500) >= 1,
        "{:#?}\n{d}",
        first.requests()
    );
}

/// One byte of greet's tarball changed on the first mirror: greet comes from the second
/// (its sha256 did not match), libgreet still from the first.
#[test]
fn failover_when_the_first_serves_a_changed_byte() {
    let Some(fx) = fixtures() else { return };
    let tmp = common::short_tempdir();
    let copy = signed_copy(&fx, tmp.path());
    let blob = copy.join(GREET_TARBALL.trim_start_matches('/'));
    let mut bytes = std::fs::read(&blob).expect("tarball");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&blob, bytes).expect("write tarball");
    let first = Nginx::serve(&copy);
    let url = first.url();
    let (d, dirs, _second) = greet_fails_over(&fx, &url, &[], || {}, &["sha256"]);
    assert_eq!(served_by(&V3_SIGNED, &dirs.mnt, "libgreet"), url, "{d}");
}

/// The first mirror trickles its blobs at 1 kB/s: the low-speed rule (here over a 3 s
/// window) gives it up and greet comes from the second mirror.
#[test]
fn failover_when_the_first_trickles() {
    let Some(fx) = fixtures() else { return };
    let first = FaultServer::with_fault(
        &fx.mirror(V3_SIGNED.name),
        "/blobs/sha256/1f/",
        Fault::Trickle {
            bytes_per_sec: 1000,
        },
    );
    first.set_fault(
        "/blobs/sha256/7e/",
        Fault::Trickle {
            bytes_per_sec: 1000,
        },
    );
    let start = Instant::now();
    let (d, _dirs, _second) = greet_fails_over(
        &fx,
        &first.url(),
        &["--low-speed-time", "3s"],
        || {},
        &["timed out"],
    );
    let took = start.elapsed();
    assert!(took < Duration::from_secs(20), "took {took:?}\n{d}");
}

/// Both mirrors stopped after the mount: the touching process gets EIO well within the
/// default timeouts, no hang, and nothing half-made is left in the cache.
#[test]
fn both_mirrors_down_give_eio_quickly_and_leave_nothing_behind() {
    let Some(fx) = fixtures() else { return };
    let mut a = Nginx::serve(&fx.mirror(V3_SIGNED.name));
    let mut b = Nginx::serve(&fx.mirror(V3_SIGNED.name));
    let dirs = MountDirs::new();
    let (ua, ub) = (a.url(), b.url());
    let d = mount_urls(&fx, &dirs, &[&ua, &ub], &["--retry-after", "300"], &[]);
    a.stop();
    b.stop();
    let greet = V3_SIGNED.greet_prefix(&dirs.mnt);
    let start = Instant::now();
    let e = errno_of(std::fs::read(greet.join("bin/greet")), "read greet", &d);
    let took = start.elapsed();
    assert_eq!(e, libc::EIO, "{d}");
    assert!(took < Duration::from_secs(30), "EIO took {took:?}\n{d}");
    assert_eq!(state(&greet), "failed", "{d}");
    let error = xattr_str(&greet, "user.spackfs.error");
    assert!(error.contains(&ua) && error.contains(&ub), "{error}");
    let lines = d.log_lines_with(&[" ERROR ", "fixture-greet@1.0", &ua, &ub]);
    assert_eq!(lines.len(), 1, "one ERROR line naming both mirrors\n{d}");
    for sub in ["prefixes", "staging"] {
        let left = entries(&dirs.cache.join(sub));
        assert!(left.is_empty(), "{sub} holds {left:?}\n{d}");
    }
}

/// Both mirrors accept connections but never answer for the tarballs: with the default
/// timeouts the touching process still gets EIO within 30 s.
#[test]
fn both_mirrors_stalling_give_eio_within_the_default_timeout() {
    let Some(fx) = fixtures() else { return };
    let stall = |_: ()| {
        let s = FaultServer::with_fault(
            &fx.mirror(V3_SIGNED.name),
            "/blobs/sha256/1f/",
            Fault::Stall,
        );
        s.set_fault("/blobs/sha256/7e/", Fault::Stall);
        s
    };
    let (a, b) = (stall(()), stall(()));
    let dirs = MountDirs::new();
    let d = mount_urls(
        &fx,
        &dirs,
        &[&a.url(), &b.url()],
        &["--retry-after", "300"],
        &[],
    );
    let greet = V3_SIGNED.greet_prefix(&dirs.mnt);
    let start = Instant::now();
    let e = errno_of(std::fs::read(greet.join("bin/greet")), "read greet", &d);
    let took = start.elapsed();
    assert_eq!(e, libc::EIO, "{d}");
    assert!(took < Duration::from_secs(30), "EIO took {took:?}\n{d}");
    assert!(
        !d.log_lines_with(&[
            " ERROR ",
            "fixture-greet@1.0",
            &a.url(),
            &b.url(),
            "timed out"
        ])
        .is_empty(),
        "{d}"
    );
    assert!(entries(&dirs.cache.join("prefixes")).is_empty(), "{d}");
}

/// A mirror without an index that HTTP cannot list is asked directly; a package it does
/// not hold is remembered as absent (no second request), and comes from the next mirror.
#[test]
fn a_mirror_without_an_index_is_asked_directly_and_absences_are_remembered() {
    let Some(fx) = fixtures() else { return };
    let tmp = common::short_tempdir();
    let copy = signed_copy(&fx, tmp.path());
    std::fs::remove_dir_all(copy.join("v3/manifests/index")).expect("remove the index");
    std::fs::remove_dir_all(copy.join("v3/manifests/spec/fixture-bulk")).expect("remove bulk");
    let direct = Nginx::serve(&copy);
    // The second mirror lists everything, but its bulk tarball is corrupt: bulk fails and
    // is tried again after the back-off.
    let second = fx.copy_mirror(V3_SIGNED.name, &tmp.path().join("second"));
    let bulk_tarball = second
        .join("blobs/sha256/1d/1d566e8cb51c2d19cd9b2b7273a97505c9d30544737df3e137bbeae1890f35e4");
    std::fs::write(&bulk_tarball, b"not a tarball").expect("corrupt bulk");
    let dirs = MountDirs::new();
    let d = mount_urls(
        &fx,
        &dirs,
        &[&direct.url(), path_str(&second)],
        &["--retry-after", "1"],
        &[],
    );
    assert!(
        !d.log_lines_with(&[&direct.url(), "no index"]).is_empty(),
        "{d}"
    );
    check_greet_programs(&V3_SIGNED, &dirs.mnt, &d);
    assert_eq!(
        served_by(&V3_SIGNED, &dirs.mnt, "greet"),
        direct.url(),
        "{d}"
    );
    let bulk = V3_SIGNED
        .bulk_prefix(&dirs.mnt)
        .join("share/fixture-bulk/bulk.dat");
    for _ in 0..2 {
        assert_eq!(
            errno_of(std::fs::read(&bulk), "read bulk", &d),
            libc::EIO,
            "{d}"
        );
        std::thread::sleep(Duration::from_millis(1500));
    }
    assert!(
        d.log_lines_with(&[" ERROR ", "fixture-bulk@1.0"]).len() >= 2,
        "bulk was tried twice\n{d}"
    );
    let asked = direct.count("/v3/manifests/spec/fixture-bulk/");
    assert_eq!(
        asked,
        1,
        "bulk asked of the unindexed mirror once\n{:#?}",
        direct.requests()
    );
}

/// Mirrors that are down when the command starts: `install` fails over to the next one
/// and says which it could not read.
#[test]
fn install_fails_over_to_a_mirror_that_answers() {
    let Some(fx) = fixtures() else { return };
    let dead = format!("http://127.0.0.1:{}", common::servers::free_port());
    let tmp = common::short_tempdir();
    let root = tmp.path().join("root");
    let keys = key_args(&fx);
    let mut args = vec!["install", dead.as_str(), "--root", path_str(&root)];
    let mirror = fx.mirror(V3_SIGNED.name);
    args.extend(["--mirror", path_str(&mirror), "fixture-greet"]);
    args.extend(keys.iter().map(String::as_str));
    let run = spackfs(&args);
    run.assert_ok().assert_stderr_line_has(&[&dead, "connect"]);
    let greet = V3_SIGNED.greet_prefix(&root);
    let out = run_program(greet.join("bin/greet"), [] as [&str; 0]);
    assert_eq!(
        out.stdout,
        expected_greet_output(&greet, &V3_SIGNED.libgreet_prefix(&root)),
        "{out}"
    );
}

// ------------------------------------------------------------------ the index

/// The index blob of a signed mirror altered (its sha256 no longer matches the manifest):
/// `ls` lists nothing from it and says why; a mount beside a good mirror lists only what
/// the good one says.
#[test]
fn an_altered_index_lists_nothing_and_says_why() {
    let Some(fx) = fixtures() else { return };
    let tmp = common::short_tempdir();
    let copy = signed_copy(&fx, tmp.path());
    let index = copy.join(INDEX_BLOB);
    let text = std::fs::read_to_string(&index).expect("index");
    std::fs::write(&index, text.replace("fixture-bulk", "fixture-bulx")).expect("write");
    let bad = Nginx::serve(&copy);
    let url = bad.url();
    let keys = key_args(&fx);
    let mut args = vec!["ls", url.as_str()];
    args.extend(keys.iter().map(String::as_str));
    let run = spackfs(&args);
    run.assert_failed()
        .assert_stderr_line_has(&[&url, "index", "sha256"]);
    assert!(!run.stdout.contains("fixture"), "{run}");

    let good = Nginx::serve(&fx.mirror(V3_SIGNED.name));
    let dirs = MountDirs::new();
    let d = mount_urls(&fx, &dirs, &[&url, &good.url()], &[], &[]);
    assert!(
        !d.log_lines_with(&[&url, "index", "sha256"]).is_empty(),
        "the log says why {url} lists nothing\n{d}"
    );
    let bulk = V3_SIGNED.bulk_prefix(&dirs.mnt);
    assert_eq!(
        xattr_str(&bulk, "user.spackfs.mirror"),
        good.url(),
        "only the good mirror lists it\n{d}"
    );
    check_greet_programs(&V3_SIGNED, &dirs.mnt, &d);
    assert_eq!(served_by(&V3_SIGNED, &dirs.mnt, "greet"), good.url(), "{d}");
}

/// An index of more than 64 MiB (filler records first, the fixture's own records last) is
/// read whole, uncompressed over HTTP and gzip-compressed from a directory.
#[test]
fn an_index_larger_than_64_mib_is_read_whole() {
    let Some(fx) = fixtures() else { return };
    let tmp = common::short_tempdir();
    let copy = fx.copy_mirror(V3_UNSIGNED.name, &tmp.path().join("copy"));
    let original: serde_json::Value =
        serde_json::from_slice(&std::fs::read(copy.join(INDEX_BLOB)).expect("index"))
            .expect("index JSON");
    let padding = "p".repeat(32 << 10);
    let mut db = String::from(r#"{"database":{"version":"8","installs":{"#);
    let fillers = 2300;
    for i in 0..fillers {
        let hash = format!("filler{i:026}");
        let rec = serde_json::json!({"spec": {"name": format!("filler-{i}"), "version": "1.0",
            "arch": {"platform": "linux", "platform_os": "debian12", "target": "x86_64"},
            "namespace": "builtin", "parameters": {"padding": padding}, "hash": hash},
            "ref_count": 0, "in_buildcache": i + 1 == fillers});
        db.push_str(&format!("{}:{rec},", serde_json::Value::String(hash)));
    }
    let installs = original["database"]["installs"]
        .as_object()
        .expect("installs");
    let real: Vec<String> = installs
        .iter()
        .map(|(k, v)| format!("{}:{v}", serde_json::Value::String(k.clone())))
        .collect();
    db.push_str(&real.join(","));
    db.push_str("}}}");
    assert!(db.len() > 64 << 20, "{} bytes", db.len());
    let last_filler = format!("filler-{}", fillers - 1);

    for gzipped in [false, true] {
        let blob = if gzipped {
            common::tarball::gzip(db.as_bytes())
        } else {
            db.clone().into_bytes()
        };
        write_index(&copy, &blob);
        let keys = ["--unsigned"];
        let nginx = (!gzipped).then(|| Nginx::serve(&copy));
        let mirror = match &nginx {
            Some(n) => n.url(),
            None => path_str(&copy).to_string(),
        };
        let mut args = vec!["ls", mirror.as_str()];
        args.extend(keys);
        let run = spackfs(&args);
        run.assert_ok();
        for name in [
            "fixture-greet",
            "fixture-libgreet",
            "fixture-bulk",
            &last_filler,
        ] {
            assert!(
                run.stdout.contains(name),
                "gzip {gzipped}: {name} listed:\n{}",
                run.stderr
            );
        }
        if let Some(nginx) = &nginx {
            let dirs = MountDirs::new();
            let d = Daemon::mount_with(&[&nginx.url()], &dirs.mnt, &dirs.cache, &keys, &[]);
            check_greet_programs(&V3_UNSIGNED, &dirs.mnt, &d);
            assert!(
                entries(&dirs.mnt.join("linux-x86_64"))
                    .iter()
                    .any(|e| e.starts_with(&last_filler)),
                "{d}"
            );
        }
    }
}

/// A package that prints its own prefix.
fn hello_pkg(name: &str) -> (GenPkg, Vec<u8>) {
    let pkg = GenPkg::new(name);
    let script = format!("#!/bin/sh\necho \"{name} from {}\"\n", pkg.prefix);
    let tgz = pkg.tgz(
        |t| {
            t.dir(&pkg.member("bin"));
            t.file(&pkg.member("bin/hello.sh"), 0o755, script.as_bytes());
        },
        &Lists::texts(&["bin/hello.sh"]),
    );
    (pkg, tgz)
}

/// A package pushed to the mirror (and its index updated) while it is mounted appears
/// under the mount within the index TTL, without a remount, even where the kernel had
/// cached its absence; unchanged refreshes are conditional requests answered 304.
#[test]
fn a_package_added_while_mounted_appears_within_the_ttl() {
    let mut tm = TestMirror::unsigned();
    let (first, tgz) = hello_pkg("first");
    tm.add(&first, &tgz);
    tm.finish();
    let nginx = Nginx::serve(&tm.dir());
    let dirs = MountDirs::new();
    let d = Daemon::mount_with(
        &[&nginx.url()],
        &dirs.mnt,
        &dirs.cache,
        &["--unsigned", "--index-ttl", "1s"],
        &[],
    );
    let (late, tgz) = hello_pkg("late");
    let late_dir = late.installed_prefix(&dirs.mnt);
    // The kernel remembers the absence (a negative entry with a long TTL).
    assert!(std::fs::metadata(&late_dir).is_err(), "{d}");
    // Unchanged refreshes: conditional requests answered 304.
    nginx.wait_requests(Duration::from_secs(10), |r| {
        r.iter()
            .any(|r| r.path.ends_with("index.manifest.json") && r.status == 304)
    });
    tm.add(&late, &tgz);
    tm.finish();
    let start = Instant::now();
    while std::fs::metadata(&late_dir).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{} did not appear\n{d}",
            late_dir.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let listed = entries(&dirs.mnt.join("linux-x86_64"));
    for p in [&first, &late] {
        assert!(
            listed
                .iter()
                .any(|e| e.starts_with(&format!("{}-1.0-", p.name))),
            "{listed:?}\n{d}"
        );
        let prefix = p.installed_prefix(&dirs.mnt);
        let run = run_program(prefix.join("bin/hello.sh"), [] as [&str; 0]);
        assert_eq!(
            run.stdout,
            format!("{} from {}\n", p.name, prefix.display()),
            "{run}\n{d}"
        );
    }
    let db = std::fs::read_to_string(dirs.mnt.join(".spack-db/index.json")).expect("db");
    assert!(db.contains(&late.hash), "{db}");
    assert!(
        !d.log_lines_with(&["index refresh", "1 package(s) appeared"])
            .is_empty(),
        "{d}"
    );

    // An index that no longer lists `first` (in use: it ran) nor `unused` (never touched):
    // `unused` leaves the mount, `first` stays and still runs.
    let (unused, tgz) = hello_pkg("unused");
    tm.add(&unused, &tgz);
    tm.finish();
    let unused_dir = unused.installed_prefix(&dirs.mnt);
    let start = Instant::now();
    while std::fs::metadata(&unused_dir).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "unused did not appear\n{d}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    rewrite_index(&tm.dir(), |installs| {
        installs.remove(&first.hash);
        installs.remove(&unused.hash);
    });
    let start = Instant::now();
    while std::fs::metadata(&unused_dir).is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "unused did not leave\n{d}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let listed = entries(&dirs.mnt.join("linux-x86_64"));
    assert!(
        !listed.iter().any(|e| e.starts_with("unused-")),
        "{listed:?}\n{d}"
    );
    assert!(
        listed.iter().any(|e| e.starts_with("first-")),
        "{listed:?}\n{d}"
    );
    let prefix = first.installed_prefix(&dirs.mnt);
    run_program(prefix.join("bin/hello.sh"), [] as [&str; 0]).assert_ok();
}

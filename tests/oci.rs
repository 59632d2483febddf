//! OCI build caches (`oci+http://`), against real registries each test starts and stops
//! itself (tests/common/registry.rs): docker-registry serving a copy of the fixture registry
//! storage (the same three packages, with the same hashes and tarballs, as the v3 fixture
//! mirrors), anonymous or behind htpasswd basic auth, and Docker token auth whose blob
//! downloads are redirected to another host. OCI caches are unsigned: they must be opted
//! into (`--unsigned`, or `signed: false` in mirrors.yaml). Last, failover over the three
//! kinds of remote mirror: an S3 mirror that is down, the registry, an HTTP mirror.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::mount::{check_greet_programs, is_mounted, xattr_str, Daemon, MountDirs};
use common::registry::{Registry, TokenRegistry, GREET_LAYER, LIBGREET_LAYER};
use common::servers::{free_port, Nginx};
use common::{fixtures, path_str, spackfs, V3_UNSIGNED};

/// How long a mount that must fail (bad credentials, a signed OCI mirror) may take to exit.
const FAIL_FAST: Duration = Duration::from_secs(15);

/// The fixture's tarballs of greet and libgreet as an HTTP mirror serves them.
const GREET_TARBALL: &str =
    "/blobs/sha256/1f/1fb0cc4222d6201935117c87d172a7e4ed5bf64d46a5fb14427f43106c1c3080";
const LIBGREET_TARBALL: &str =
    "/blobs/sha256/7e/7eca49826148483326e084fe8659b2d33932a24d6c2da738db625134a12b121f";

/// Write `mirrors.yaml` (Spack's format) with these entries (name, indented body) in `dir`.
fn write_mirrors_yaml(dir: &Path, entries: &[(&str, String)]) -> PathBuf {
    let mut yaml = String::from("mirrors:\n");
    for (name, body) in entries {
        yaml.push_str(&format!("  {name}:\n"));
        for line in body.lines() {
            yaml.push_str(&format!("    {line}\n"));
        }
    }
    let path = dir.join("mirrors.yaml");
    std::fs::write(&path, yaml).expect("write mirrors.yaml");
    path
}

/// The body of an OCI mirror entry: `url`, `signed: false`, optionally an `access_pair`
/// read from `REG_USER` / `REG_PASS`.
fn oci_entry(url: &str, credentials: bool) -> String {
    let mut s = format!("url: {url}\nsigned: false\n");
    if credentials {
        s.push_str("access_pair:\n  id_variable: REG_USER\n  secret_variable: REG_PASS\n");
    }
    s
}

/// Start `spackfs mount MIRRORS... MNT ARGS...` that must fail: it exits non-zero within
/// [`FAIL_FAST`] and leaves nothing mounted. The daemon (for its log).
#[track_caller]
fn mount_fails(mirrors: &[&str], args: &[&str], env: &[(&str, &str)]) -> (Daemon, MountDirs) {
    let dirs = MountDirs::new();
    let start = Instant::now();
    let d = Daemon::spawn_with(mirrors, &dirs.mnt, &dirs.cache, args, env);
    let status = d
        .wait_exit(FAIL_FAST)
        .unwrap_or_else(|| panic!("the mount must fail but still runs after {FAIL_FAST:?}\n{d}"));
    assert!(!status.success(), "the mount must fail ({status})\n{d}");
    assert!(!is_mounted(&dirs.mnt), "nothing may stay mounted\n{d}");
    eprintln!("mount failed in {:?} as it must", start.elapsed());
    (d, dirs)
}

/// Words of which a refused-credentials error must carry one (lower-cased).
const REFUSED: [&str; 5] = ["unauthorized", "401", "refused", "denied", "authentication"];

/// Some log line names `host` and says the registry refused the credentials.
#[track_caller]
fn assert_refused_by(d: &Daemon, host: &str) {
    let log = d.log();
    assert!(
        log.lines().any(|l| {
            let lower = l.to_lowercase();
            l.contains(host) && REFUSED.iter().any(|w| lower.contains(w))
        }),
        "no line names {host} with one of {REFUSED:?}\n{d}"
    );
}

/// The registry served each of greet's and libgreet's tarballs exactly once.
#[track_caller]
fn assert_tarballs_served_once(reg: &Registry, d: &Daemon) {
    let log = reg.wait_requests(Duration::from_secs(5), |r| {
        [GREET_LAYER, LIBGREET_LAYER]
            .iter()
            .all(|b| r.iter().any(|x| x.blob() == Some(b) && x.status == 200))
    });
    let served = reg.served_blobs();
    for layer in [GREET_LAYER, LIBGREET_LAYER] {
        assert_eq!(
            served.iter().filter(|b| *b == layer).count(),
            1,
            "{layer} served once:\n{log:#?}\n{d}"
        );
    }
}

// ------------------------------------------------------------------ anonymous registry

/// `oci+http://` on the command line with `--unsigned`, and in mirrors.yaml with
/// `signed: false`: `ls` lists the three packages, a mount runs greet, each tarball is
/// fetched once, and the packages say where they came from.
#[test]
fn oci_mirror_on_the_command_line_and_in_mirrors_yaml() {
    let Some(fx) = fixtures() else { return };
    let reg = Registry::serve(&fx);
    let url = reg.url();
    V3_UNSIGNED.assert_listed(
        &spackfs(["ls", "-l", url.as_str(), "--unsigned"]),
        "unsigned",
    );

    reg.clear_log();
    let dirs = MountDirs::new();
    let d = Daemon::mount_with(&[&url], &dirs.mnt, &dirs.cache, &["--unsigned"], &[]);
    check_greet_programs(&V3_UNSIGNED, &dirs.mnt, &d);
    let greet = V3_UNSIGNED.greet_prefix(&dirs.mnt);
    assert_eq!(xattr_str(&greet, "user.spackfs.mirror"), url, "{d}");
    assert_eq!(xattr_str(&greet, "user.spackfs.signer"), "unsigned", "{d}");
    assert_tarballs_served_once(&reg, &d);
    drop(d);
    drop(dirs);

    let tmp = common::short_tempdir();
    let yaml = write_mirrors_yaml(tmp.path(), &[("oci-fixtures", oci_entry(&url, false))]);
    V3_UNSIGNED.assert_listed(&spackfs(["ls", "--long", path_str(&yaml)]), "unsigned");
    reg.clear_log();
    let dirs = MountDirs::new();
    let d = Daemon::mount_with(&[path_str(&yaml)], &dirs.mnt, &dirs.cache, &[], &[]);
    check_greet_programs(&V3_UNSIGNED, &dirs.mnt, &d);
    let libgreet = V3_UNSIGNED.libgreet_prefix(&dirs.mnt);
    assert_eq!(xattr_str(&libgreet, "user.spackfs.mirror"), url, "{d}");
    assert_tarballs_served_once(&reg, &d);
}

// ------------------------------------------------------------------ basic auth

/// A registry behind htpasswd: the `access_pair` of mirrors.yaml, read from the daemon's
/// environment, lets greet run; a wrong password, or none, fails the mount at once with an
/// error naming the registry.
#[test]
fn oci_basic_auth_from_the_access_pair() {
    let Some(fx) = fixtures() else { return };
    let reg = Registry::serve_with_basic_auth(&fx, "spack-reader", "s3cret-pass");
    let url = reg.url();
    let tmp = common::short_tempdir();
    let yaml = write_mirrors_yaml(tmp.path(), &[("oci-fixtures", oci_entry(&url, true))]);
    let good = [("REG_USER", "spack-reader"), ("REG_PASS", "s3cret-pass")];
    let dirs = MountDirs::new();
    let d = Daemon::mount_with(&[path_str(&yaml)], &dirs.mnt, &dirs.cache, &[], &good);
    check_greet_programs(&V3_UNSIGNED, &dirs.mnt, &d);
    assert_tarballs_served_once(&reg, &d);
    drop(d);

    // The wrong password.
    let wrong = [
        ("REG_USER", "spack-reader"),
        ("REG_PASS", "not-the-password"),
    ];
    let (d, _dirs) = mount_fails(&[path_str(&yaml)], &[], &wrong);
    assert_refused_by(&d, &reg.host());
    // No credentials at all.
    let (d, _dirs) = mount_fails(&[&url], &["--unsigned"], &[]);
    assert_refused_by(&d, &reg.host());
    // Every refused request was answered 401: nothing was served without credentials.
    let refused = reg.requests();
    assert!(
        refused.iter().any(|r| r.status == 401),
        "the registry saw no refused request: {refused:#?}"
    );
}

// ------------------------------------------------------------------ OCI is unsigned

/// An OCI mirror must be declared unsigned: `signed: true`, no `signed` key without
/// `--unsigned`, or the URL on the command line without `--unsigned` are refused by `ls`
/// and `mount` with one line naming the mirror and the way out.
#[test]
fn oci_mirrors_must_be_declared_unsigned() {
    let Some(fx) = fixtures() else { return };
    let reg = Registry::serve(&fx);
    let url = reg.url();
    let tmp = common::short_tempdir();
    let signed = tmp.path().join("signed");
    let unset = tmp.path().join("unset");
    std::fs::create_dir(&signed).unwrap();
    std::fs::create_dir(&unset).unwrap();
    let cases = [
        write_mirrors_yaml(
            &signed,
            &[("oci-fixtures", format!("url: {url}\nsigned: true\n"))],
        ),
        write_mirrors_yaml(&unset, &[("oci-fixtures", format!("url: {url}\n"))]),
    ];
    let says_unsigned = |text: &str, names: &str| {
        text.lines().any(|l| {
            let lower = l.to_lowercase();
            l.contains(names)
                && lower.contains("oci")
                && lower.contains("unsigned")
                && l.contains("signed: false")
                && l.contains("--unsigned")
        })
    };
    for yaml in &cases {
        let ls = spackfs(["ls", path_str(yaml)]);
        ls.assert_failed();
        assert!(
            says_unsigned(&ls.stderr, "oci-fixtures"),
            "one line naming \"oci-fixtures\", saying OCI caches are unsigned and need `signed: false` or --unsigned:\n{ls}"
        );
        let (d, _dirs) = mount_fails(&[path_str(yaml)], &[], &[]);
        assert!(says_unsigned(&d.log(), "oci-fixtures"), "{d}");
    }
    // On the command line: the URL and --unsigned.
    let ls = spackfs(["ls", url.as_str()]);
    ls.assert_failed()
        .assert_stderr_line_has(&[&url, "--unsigned"]);
    let (d, _dirs) = mount_fails(&[&url], &[], &[]);
    assert!(
        !d.log_lines_with(&[&url, "--unsigned"]).is_empty(),
        "a line naming {url} and --unsigned\n{d}"
    );
}

// ------------------------------------------------------------------ token auth

/// Docker token auth with blobs redirected to another host: the credentials go to the
/// token endpoint (Basic), the registry gets the Bearer token, and the blob host serves
/// every blob without ever seeing an `Authorization` header. A wrong password fails the
/// mount naming the registry.
#[test]
fn oci_token_auth_with_blobs_redirected_to_another_host() {
    let Some(fx) = fixtures() else { return };
    let tr = TokenRegistry::serve(&fx, "tok-user", "tok-pass");
    let url = tr.url();
    let tmp = common::short_tempdir();
    let yaml = write_mirrors_yaml(tmp.path(), &[("oci-fixtures", oci_entry(&url, true))]);
    let good = [("REG_USER", "tok-user"), ("REG_PASS", "tok-pass")];
    let dirs = MountDirs::new();
    let d = Daemon::mount_with(&[path_str(&yaml)], &dirs.mnt, &dirs.cache, &[], &good);
    check_greet_programs(&V3_UNSIGNED, &dirs.mnt, &d);
    let greet = V3_UNSIGNED.greet_prefix(&dirs.mnt);
    assert_eq!(xattr_str(&greet, "user.spackfs.mirror"), url, "{d}");

    // The blob host served the tarballs, and never saw credentials.
    let blobs = tr.wait_blob_host(Duration::from_secs(5), |r| {
        [GREET_LAYER, LIBGREET_LAYER]
            .iter()
            .all(|b| r.iter().any(|x| x.blob() == Some(b) && x.status == 200))
    });
    for r in &blobs {
        assert!(
            r.header("authorization").is_none(),
            "the blob host {} got an Authorization header:\n{r:#?}\n{}\n{d}",
            tr.blob_host(),
            tr.logs_for_panic()
        );
        assert!(
            r.status == 200 || r.status == 206,
            "{r:#?}\n{}",
            tr.logs_for_panic()
        );
    }
    let served = tr.blob_host_served();
    for layer in [GREET_LAYER, LIBGREET_LAYER] {
        assert_eq!(
            served.iter().filter(|b| *b == layer).count(),
            1,
            "{layer} fetched once from the blob host\n{}",
            tr.logs_for_panic()
        );
    }
    // The token endpoint got the Basic credentials; the front got Bearer tokens and
    // redirected the blob GETs; the backing registry served no blob itself.
    let basic = tr.basic_header();
    assert!(
        tr.token_requests()
            .iter()
            .any(|r| r.status == 200 && r.header("authorization") == Some(basic.as_str())),
        "the token endpoint never got {basic}\n{}",
        tr.logs_for_panic()
    );
    let front = tr.front_requests();
    assert!(
        front.iter().filter(|r| r.status != 401).all(|r| r
            .header("authorization")
            .is_some_and(|a| a.starts_with("Bearer "))),
        "every authorised front request carries a Bearer token\n{}",
        tr.logs_for_panic()
    );
    assert!(
        front
            .iter()
            .any(|r| r.status == 307 && r.blob() == Some(GREET_LAYER)),
        "{}",
        tr.logs_for_panic()
    );
    assert!(
        tr.backend().served_blobs().is_empty(),
        "{:#?}",
        tr.backend().requests()
    );
    drop(d);

    let wrong = [("REG_USER", "tok-user"), ("REG_PASS", "wrong")];
    let (d, _dirs) = mount_fails(&[path_str(&yaml)], &[], &wrong);
    assert_refused_by(&d, &tr.host());
}

// ------------------------------------------------------------------ failover S3 → OCI → HTTP

/// One mirrors.yaml listing an S3 mirror that is down, the registry, then an HTTP mirror
/// (all unsigned): the packages come from the registry. With the registry stopped too, a
/// fresh mount (new cache) still runs greet, from the HTTP mirror.
#[test]
fn failover_from_a_dead_s3_mirror_to_the_registry_then_to_http() {
    let Some(fx) = fixtures() else { return };
    let mut reg = Registry::serve(&fx);
    let nginx = Nginx::serve(&fx.mirror(V3_UNSIGNED.name));
    let dead = format!("http://127.0.0.1:{}", free_port());
    let tmp = common::short_tempdir();
    let yaml = write_mirrors_yaml(
        tmp.path(),
        &[
            (
                "s3-down",
                format!(
                    "url: s3://spack-mirror/cache\nendpoint_url: {dead}\nsigned: false\naccess_pair:\n  id_variable: S3_KEY_ID\n  secret_variable: S3_SECRET\n"
                ),
            ),
            ("registry", oci_entry(&reg.url(), false)),
            ("web", format!("url: {}\nsigned: false\n", nginx.url())),
        ],
    );
    let env = [
        ("S3_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
        ("S3_SECRET", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];

    let start = Instant::now();
    let dirs = MountDirs::new();
    let d = Daemon::mount_with(&[path_str(&yaml)], &dirs.mnt, &dirs.cache, &[], &env);
    check_greet_programs(&V3_UNSIGNED, &dirs.mnt, &d);
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "mount and greet took {took:?}\n{d}"
    );
    for p in [
        V3_UNSIGNED.greet_prefix(&dirs.mnt),
        V3_UNSIGNED.libgreet_prefix(&dirs.mnt),
    ] {
        assert_eq!(xattr_str(&p, "user.spackfs.mirror"), reg.url(), "{d}");
    }
    assert_tarballs_served_once(&reg, &d);
    for tarball in [GREET_TARBALL, LIBGREET_TARBALL] {
        assert_eq!(
            nginx.count(tarball),
            0,
            "the HTTP mirror must not serve {tarball}:\n{:#?}\n{d}",
            nginx.requests()
        );
    }
    drop(d);
    drop(dirs);

    // The registry goes down too: a fresh mount gets everything from the HTTP mirror.
    reg.stop();
    let start = Instant::now();
    let dirs = MountDirs::new();
    let d = Daemon::mount_with(&[path_str(&yaml)], &dirs.mnt, &dirs.cache, &[], &env);
    check_greet_programs(&V3_UNSIGNED, &dirs.mnt, &d);
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "mount and greet took {took:?}\n{d}"
    );
    for p in [
        V3_UNSIGNED.greet_prefix(&dirs.mnt),
        V3_UNSIGNED.libgreet_prefix(&dirs.mnt),
    ] {
        assert_eq!(xattr_str(&p, "user.spackfs.mirror"), nginx.url(), "{d}");
    }
    let log = nginx.wait_requests(Duration::from_secs(5), |r| {
        [GREET_TARBALL, LIBGREET_TARBALL]
            .iter()
            .all(|t| r.iter().any(|x| x.path == *t && x.status == 200))
    });
    for tarball in [GREET_TARBALL, LIBGREET_TARBALL] {
        assert_eq!(
            log.iter().filter(|r| r.path == tarball).count(),
            1,
            "{tarball} fetched once:\n{log:#?}\n{d}"
        );
    }
}

//! A running mount watched and warmed from outside, with the real binary on the real
//! fixtures: `spackfs status --json` and the Prometheus endpoint report what the test did
//! (packages materialised, bytes fetched, hits, a failed package); `spackfs prefetch --from
//! spack.lock` makes two packages and their dependencies ready, after which touching them
//! fetches nothing.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use common::mount::{check_greet_programs, errno_of, Daemon, MountDirs};
use common::{fixtures, path_str, spackfs, V3_UNSIGNED};

/// Bytes of the tarball blob of package `name` in a v3 mirror (its manifest says).
fn tarball_size(mirror: &Path, name: &str, hash: &str) -> u64 {
    let rel = format!("v3/manifests/spec/{name}/{name}-1.0-{hash}.spec.manifest.json");
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(mirror.join(rel)).unwrap()).unwrap();
    m["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["mediaType"].as_str().unwrap().contains("install"))
        .and_then(|r| r["contentLength"].as_u64())
        .expect("a tarball record")
}

/// The address the daemon serves metrics on (from its log line), waiting for it.
fn metrics_addr(d: &Daemon) -> String {
    let start = Instant::now();
    loop {
        if let Some(line) = d.log_lines_with(&["metrics at http://"]).first() {
            let addr = line.split("http://").nth(1).unwrap();
            return addr.trim_end_matches("/metrics").trim().to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no metrics line\n{d}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One scrape: every sample `name{labels}` → value. Every sample carries the mount label.
fn scrape(addr: &str, mount: &Path) -> BTreeMap<String, f64> {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read metrics");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("openmetrics-text"), "{head}");
    let label = format!("mount=\"{}\"", mount.display());
    let mut out = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("a sample");
        assert!(series.contains(&label), "{series} lacks {label}");
        // The key without the mount label, for lookups.
        let key = series.replace(&format!("{label},"), "").replace(&label, "");
        let key = key.replace("{}", "");
        out.insert(key, value.parse::<f64>().expect("a number"));
    }
    out
}

fn sample(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no sample {key} among {:?}", m.keys()))
}

fn status(mount: &Path) -> serde_json::Value {
    let run = spackfs(["status", path_str(mount), "--json"]);
    run.assert_ok();
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}\n{run}"))
}

#[test]
fn status_and_metrics_report_what_the_mount_did() {
    let Some(fx) = fixtures() else { return };
    let c = &V3_UNSIGNED;
    let dirs = MountDirs::new();
    // A copy of the mirror whose fixture-bulk tarball is damaged: that package fails.
    let mirror = fx.copy_mirror(c.name, &dirs.path().join("mirror"));
    let bulk_manifest = mirror.join(format!(
        "v3/manifests/spec/fixture-bulk/fixture-bulk-1.0-{}.spec.manifest.json",
        c.bulk_hash
    ));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&bulk_manifest).unwrap()).unwrap();
    let sum = m["data"][0]["checksum"].as_str().unwrap();
    let blob = mirror.join(format!("blobs/sha256/{}/{sum}", &sum[..2]));
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();

    let args = [
        "--unsigned",
        "--metrics-addr",
        "127.0.0.1:0",
        "--retry-after",
        "600",
    ];
    let d = Daemon::mount(&mirror, &dirs.mnt, &dirs.cache, &args);
    let addr = metrics_addr(&d);
    let before = scrape(&addr, &dirs.mnt);
    assert_eq!(sample(&before, "spackfs_cache_misses_total"), 0.0);

    check_greet_programs(c, &dirs.mnt, &d);
    let bulk = c.bulk_prefix(&dirs.mnt);
    assert_eq!(
        errno_of(
            std::fs::read_dir(&bulk).map(|_| ()),
            "opening fixture-bulk",
            &d
        ),
        libc::EIO
    );

    let s = status(&dirs.mnt);
    assert_eq!(s["mount"], path_str(&dirs.mnt), "{s}");
    assert_eq!(s["packages"]["listed"], 3, "{s}");
    assert_eq!(s["packages"]["ready"], 2, "{s}");
    assert_eq!(s["packages"]["failed"], 1, "{s}");
    assert_eq!(s["cache"]["misses"], 2, "{s}");
    assert_eq!(s["cache"]["hits"], 0, "{s}");
    assert_eq!(s["cache"]["prefixes"], 2, "{s}");
    assert_eq!(
        s["fetched"]["blobs"], 3,
        "three tarballs were streamed: {s}"
    );
    let failed = &s["failed"][0];
    assert!(
        failed["package"]
            .as_str()
            .unwrap()
            .starts_with("fixture-bulk@1.0/"),
        "{s}"
    );
    assert_eq!(failed["kind"], "failed", "{s}");
    assert!(failed["error"].as_str().unwrap().contains("sha256"), "{s}");
    let mirror0 = &s["mirrors"][0];
    assert_eq!(mirror0["active"], true, "{s}");
    assert_eq!(mirror0["healthy"], true, "{s}");
    assert_eq!(mirror0["index"]["packages"], 3, "{s}");
    assert!(
        s["recent_errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["message"].as_str().unwrap().contains("fixture-bulk")),
        "{s}"
    );
    // Tarball bytes: exactly the two good packages' blobs (the damaged one is not counted
    // as fetched: its bytes were refused).
    let tarballs = tarball_size(&mirror, "fixture-greet", c.greet_hash)
        + tarball_size(&mirror, "fixture-libgreet", c.libgreet_hash);
    let after = scrape(&addr, &dirs.mnt);
    let url = mirror0["url"].as_str().unwrap();
    let fetched = sample(
        &after,
        &format!("spackfs_fetch_bytes_total{{mirror=\"{url}\",what=\"tarball\"}}"),
    );
    assert_eq!(fetched, tarballs as f64);
    let metadata = sample(
        &after,
        &format!("spackfs_fetch_bytes_total{{mirror=\"{url}\",what=\"metadata\"}}"),
    );
    assert_eq!(mirror0["bytes_fetched"], (fetched + metadata) as u64, "{s}");
    assert_eq!(sample(&after, "spackfs_cache_misses_total"), 2.0);
    assert_eq!(sample(&after, "spackfs_cache_hits_total"), 0.0);
    assert_eq!(
        sample(&after, "spackfs_package_failures_total{kind=\"failed\"}"),
        1.0
    );
    assert_eq!(sample(&after, "spackfs_packages{state=\"ready\"}"), 2.0);
    assert_eq!(sample(&after, "spackfs_cache_prefixes"), 2.0);
    assert!(sample(&after, "spackfs_fuse_requests_total{op=\"lookup\"}") > 0.0);
    assert!(
        sample(
            &after,
            "spackfs_materialise_phase_seconds_count{phase=\"total\"}"
        ) >= 2.0
    );
    // The human form says the same.
    let human = spackfs(["status", path_str(&dirs.mnt)]);
    human.assert_ok();
    assert!(human.stdout.contains("2 ready"), "{human}");
    assert!(human.stdout.contains("fixture-bulk@1.0/"), "{human}");
    // Prefetching the failed package names it and why.
    let run = spackfs(["prefetch", path_str(&dirs.mnt), "fixture-bulk"]);
    run.assert_failed()
        .assert_stderr_has(&["fixture-bulk@1.0/", "sha256"]);
    drop(d);

    // A second mount of the same cache: both prefixes come from it (hits), nothing fetched.
    let d = Daemon::mount(&mirror, &dirs.mnt, &dirs.cache, &args);
    check_greet_programs(c, &dirs.mnt, &d);
    let s = status(&dirs.mnt);
    assert_eq!(s["cache"]["hits"], 2, "{s}");
    assert_eq!(s["cache"]["misses"], 0, "{s}");
    assert_eq!(s["fetched"]["blobs"], 0, "{s}");
}

#[test]
fn prefetch_from_a_lock_file_warms_the_closure_and_touches_fetch_nothing() {
    let Some(fx) = fixtures() else { return };
    let c = &V3_UNSIGNED;
    let dirs = MountDirs::new();
    let mirror = fx.mirror(c.name);
    let d = Daemon::mount(
        &mirror,
        &dirs.mnt,
        &dirs.cache,
        &["--unsigned", "--metrics-addr", "127.0.0.1:0"],
    );
    let addr = metrics_addr(&d);
    // A lock naming fixture-greet and fixture-bulk; libgreet comes as greet's dependency.
    let lock = dirs.path().join("spack.lock");
    let json = serde_json::json!({
        "_meta": {"file-type": "spack-lockfile", "lockfile-version": 6, "specfile-version": 5},
        "roots": [{"hash": c.greet_hash, "spec": "fixture-greet"},
                  {"hash": c.bulk_hash, "spec": "fixture-bulk"}],
        "concrete_specs": {
            c.greet_hash: {"name": "fixture-greet", "version": "1.0"},
            c.bulk_hash: {"name": "fixture-bulk", "version": "1.0"},
        }
    });
    std::fs::write(&lock, serde_json::to_vec(&json).unwrap()).unwrap();
    let run = spackfs(["prefetch", path_str(&dirs.mnt), "--from", path_str(&lock)]);
    run.assert_ok();
    assert!(run.stdout.contains("3 package(s) ready, 0 failed"), "{run}");
    assert!(run.stderr.contains("[3/3]"), "plain progress lines: {run}");
    let warm = scrape(&addr, &dirs.mnt);
    assert_eq!(sample(&warm, "spackfs_cache_misses_total"), 3.0);
    assert_eq!(sample(&warm, "spackfs_packages{state=\"ready\"}"), 3.0);
    // Touching them now fetches nothing.
    check_greet_programs(c, &dirs.mnt, &d);
    assert!(std::fs::read_dir(c.bulk_prefix(&dirs.mnt)).is_ok());
    let after = scrape(&addr, &dirs.mnt);
    for key in ["spackfs_cache_misses_total", "spackfs_fetched_blobs_total"] {
        assert_eq!(sample(&after, key), sample(&warm, key), "{key}");
    }
    let s = status(&dirs.mnt);
    let url = s["mirrors"][0]["url"].as_str().unwrap();
    let tarball = format!("spackfs_fetch_bytes_total{{mirror=\"{url}\",what=\"tarball\"}}");
    assert_eq!(sample(&after, &tarball), sample(&warm, &tarball));
    // What the mount does not hold is named.
    let run = spackfs(["prefetch", path_str(&dirs.mnt), "no-such-package"]);
    run.assert_failed()
        .assert_stderr_has(&["no-such-package", "no such package"]);
    std::fs::write(&lock, b"{\"roots\": 3}").unwrap();
    let run = spackfs(["prefetch", path_str(&dirs.mnt), "--from", path_str(&lock)]);
    run.assert_failed().assert_stderr_has(&[path_str(&lock)]);
}

#[test]
fn status_of_a_directory_that_is_not_a_mount_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let run = spackfs(["status", path_str(dir.path())]);
    run.assert_failed()
        .assert_stderr_has(&[path_str(dir.path()), "is not a spackfs mount"]);
}

/// A listing gives the kernel the entries' attributes (readdirplus; in its first reply at
/// least, which holds every entry of this directory): a stat of each entry after the
/// listing costs no lookup, and the database at the root, listed, still has its real size
/// when it is looked at.
#[test]
fn a_listing_carries_the_attributes_so_stat_needs_no_lookup() {
    let Some(fx) = fixtures() else { return };
    let dirs = MountDirs::new();
    let args = ["--unsigned", "--metrics-addr", "127.0.0.1:0"];
    let d = Daemon::mount(&fx.mirror(V3_UNSIGNED.name), &dirs.mnt, &dirs.cache, &args);
    let addr = metrics_addr(&d);
    let lookups = |what: &str| {
        let m = scrape(&addr, &dirs.mnt);
        let n = sample(&m, "spackfs_fuse_requests_total{op=\"lookup\"}");
        eprintln!("{what}: {n} lookups");
        n
    };
    let dir = dirs.mnt.join("linux-x86_64");
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(entries.len() >= 3, "{entries:?}\n{d}");
    let before = lookups("listed");
    for p in &entries {
        assert!(
            std::fs::symlink_metadata(p).unwrap().is_dir(),
            "{}",
            p.display()
        );
        // `ls -l` asks for these too; none is an attribute of the file system.
        let e = common::mount::xattr(p, "security.selinux").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODATA), "{}", p.display());
    }
    assert_eq!(lookups("stat of every entry"), before, "{d}");

    let db_dir = dirs.mnt.join(".spack-db");
    let listed: Vec<_> = std::fs::read_dir(&db_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(listed, ["index.json"]);
    let db = db_dir.join("index.json");
    let size = std::fs::metadata(&db).unwrap().len();
    let bytes = std::fs::read(&db).unwrap();
    assert!(
        size > 0 && size == bytes.len() as u64,
        "{size} vs {}",
        bytes.len()
    );
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert!(v["database"]["installs"].as_object().unwrap().len() >= 3);
}

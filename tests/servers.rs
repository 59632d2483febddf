//! The loopback servers of tests/common/servers.rs checked with `curl`: nginx (logs,
//! ETag/304, Range, location snippets, stop and restart, HTTPS with the test CA), squid
//! caching a 1 MB file, and each fault of the FaultServer.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::servers::{port_answers, Fault, FaultServer, Nginx, Squid, TestCa, STOP_GRACE};
use common::{path_str, run_program, short_tempdir, Run};

fn curl(args: &[&str]) -> Run {
    let mut v = vec!["--silent", "--show-error", "--noproxy", "*"];
    v.extend_from_slice(args);
    run_program("curl", v)
}

/// `curl` printing only the status code (body to `out`).
fn status_of(url: &str, out: &Path, extra: &[&str]) -> (Run, u16) {
    let mut args = vec!["-o", path_str(out), "-w", "%{http_code}"];
    args.extend_from_slice(extra);
    args.push(url);
    let r = curl(&args);
    let code = r.stdout.trim().parse().unwrap_or(0);
    (r, code)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn nginx_serves_logs_etag_range_and_restarts() {
    let tmp = short_tempdir();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    let body = pattern(5000);
    std::fs::write(root.join("index.json"), &body).unwrap();
    std::fs::write(root.join("blobs/x"), b"never served").unwrap();
    let out = tmp.path().join("out");

    let mut nginx = Nginx::builder(&root)
        .location("location /blobs/ { return 500; }")
        .spawn();
    eprintln!("nginx started in {:?}", nginx.startup_time());
    let url = format!("{}/index.json", nginx.url());

    // A plain GET, logged with status and size.
    let hdr = tmp.path().join("headers");
    let (r, code) = status_of(&url, &out, &["-D", path_str(&hdr), "-A", "servers-test/1"]);
    assert_eq!(code, 200, "{r}");
    assert_eq!(std::fs::read(&out).unwrap(), body);
    let reqs = nginx.wait_requests(Duration::from_secs(5), |v| !v.is_empty());
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].path, "/index.json");
    assert_eq!(reqs[0].status, 200);
    assert_eq!(reqs[0].bytes, 5000);
    assert_eq!(reqs[0].user_agent, "servers-test/1");
    assert!(reqs[0].completed);

    // Conditional GET with the ETag: 304, no body.
    let headers = std::fs::read_to_string(&hdr).unwrap();
    let etag = headers
        .lines()
        .find_map(|l| {
            l.strip_prefix("ETag: ")
                .or_else(|| l.strip_prefix("etag: "))
        })
        .unwrap_or_else(|| panic!("no ETag in\n{headers}"))
        .trim()
        .to_string();
    let inm = format!("If-None-Match: {etag}");
    let (r, code) = status_of(&url, &out, &["-H", &inm]);
    assert_eq!(code, 304, "{r}");

    // A Range request: 206 and exactly those bytes.
    let (r, code) = status_of(&url, &out, &["-r", "100-199"]);
    assert_eq!(code, 206, "{r}");
    assert_eq!(std::fs::read(&out).unwrap(), &body[100..200]);

    // The location snippet, and a missing file.
    let (r, code) = status_of(&format!("{}/blobs/x", nginx.url()), &out, &[]);
    assert_eq!(code, 500, "{r}");
    let (_, code) = status_of(&format!("{}/missing", nginx.url()), &out, &[]);
    assert_eq!(code, 404);

    let reqs = nginx.wait_requests(Duration::from_secs(5), |v| v.len() == 5);
    assert_eq!(reqs[1].status, 304);
    assert_eq!(reqs[1].if_none_match.as_deref(), Some(etag.as_str()));
    assert_eq!(reqs[2].status, 206);
    assert_eq!(reqs[2].bytes, 100);
    assert_eq!(reqs[2].range.as_deref(), Some("bytes=100-199"));
    assert_eq!((reqs[3].path.as_str(), reqs[3].status), ("/blobs/x", 500));
    assert_eq!(nginx.count("/index.json"), 3);
    assert_eq!(nginx.count_where(|r| r.status == 404), 1);

    // Stop: the port refuses; the log stays; start again on the same port.
    let port = nginx.port();
    let t = Instant::now();
    nginx.stop();
    eprintln!("nginx stopped in {:?}", t.elapsed());
    assert!(!port_answers(port), "nginx still answers after stop()");
    let (r, _) = status_of(&url, &out, &[]);
    assert_eq!(r.code, Some(7), "connection refused expected:\n{r}");
    assert_eq!(nginx.requests().len(), 5);
    nginx.start();
    assert_eq!(nginx.port(), port);
    let (r, code) = status_of(&url, &out, &[]);
    assert_eq!(code, 200, "{r}");
    nginx.wait_requests(Duration::from_secs(5), |v| v.len() == 6);
    assert!(
        !nginx.error_log().contains("[emerg]"),
        "{}",
        nginx.error_log()
    );

    drop(nginx);
    assert!(!port_answers(port), "nginx still answers after drop");
}

#[test]
fn nginx_https_with_test_ca() {
    let tmp = short_tempdir();
    std::fs::write(tmp.path().join("f"), b"over tls\n").unwrap();
    let t = Instant::now();
    let ca = TestCa::new();
    let other = TestCa::new();
    eprintln!("two test CAs made in {:?}", t.elapsed());
    let nginx = Nginx::serve_tls(tmp.path(), &ca);
    eprintln!("nginx (TLS) started in {:?}", nginx.startup_time());
    assert!(nginx.url().starts_with("https://127.0.0.1:"));

    let ok = curl(&[
        "--cacert",
        path_str(ca.ca_pem()),
        &format!("{}/f", nginx.url()),
    ]);
    ok.assert_ok();
    assert_eq!(ok.stdout, "over tls\n");
    let by_name = curl(&[
        "--cacert",
        path_str(ca.ca_pem()),
        &format!("{}/f", nginx.url_localhost()),
    ]);
    by_name.assert_ok();

    // An unrelated CA: certificate verification fails (curl exit 60).
    let bad = curl(&[
        "--cacert",
        path_str(other.ca_pem()),
        &format!("{}/f", nginx.url()),
    ]);
    assert_eq!(bad.code, Some(60), "{bad}");
    // And so does a certificate of the right CA for another name.
    let (wrong_cert, wrong_key) = ca.issue("wrong", "DNS:wrong.invalid");
    let wrong = Nginx::builder(tmp.path())
        .tls(&wrong_cert, &wrong_key)
        .spawn();
    let mismatch = curl(&[
        "--cacert",
        path_str(ca.ca_pem()),
        &format!("{}/f", wrong.url()),
    ]);
    assert_eq!(mismatch.code, Some(60), "{mismatch}");

    let reqs = nginx.wait_requests(Duration::from_secs(5), |v| v.len() == 2);
    assert!(
        reqs.iter()
            .all(|r| r.status == 200 && r.path == "/f" && r.protocol == "HTTP/1.1"),
        "{reqs:?}"
    );

    // HTTP/2 by ALPN when asked for.
    let h2 = Nginx::builder(tmp.path()).tls_from(&ca).http2().spawn();
    let r = curl(&[
        "--http2",
        "--cacert",
        path_str(ca.ca_pem()),
        &format!("{}/f", h2.url()),
    ]);
    r.assert_ok();
    let reqs = h2.wait_requests(Duration::from_secs(5), |v| !v.is_empty());
    assert_eq!(reqs[0].protocol, "HTTP/2.0", "{reqs:?}");
}

#[test]
fn squid_caches_a_megabyte_file() {
    let tmp = short_tempdir();
    let body = pattern(1 << 20);
    std::fs::write(tmp.path().join("big.bin"), &body).unwrap();
    let nginx = Nginx::serve(tmp.path());
    let mut squid = Squid::new();
    eprintln!("squid started in {:?}", squid.startup_time());
    let url = format!("{}/big.bin", nginx.url());
    let out = tmp.path().join("out");
    for _ in 0..2 {
        let r = run_program(
            "curl",
            [
                "--silent",
                "--show-error",
                "-x",
                &squid.url(),
                "-o",
                path_str(&out),
                &url,
            ],
        );
        r.assert_ok();
        assert_eq!(std::fs::read(&out).unwrap(), body);
    }
    let seen = squid.wait_requests(Duration::from_secs(5), |v| v.len() == 2);
    assert_eq!(seen[0].url, url);
    assert!(!seen[0].is_hit(), "{seen:?}");
    assert!(seen[1].is_hit(), "second fetch not a hit: {seen:?}");
    assert_eq!(seen[1].status, 200);
    assert_eq!(squid.hits("/big.bin"), 1);
    let origin = nginx.wait_requests(Duration::from_secs(5), |v| !v.is_empty());
    assert_eq!(origin.len(), 1, "the origin saw {origin:?}");
    assert_eq!(origin[0].bytes, 1 << 20);

    // stop(): the port closes at once; start() again on the same port, cache empty.
    let port = squid.port();
    let t = Instant::now();
    squid.stop();
    eprintln!("squid stopped in {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(!port_answers(port));
    let refused = run_program(
        "curl",
        ["--silent", "-x", &squid.url(), "-o", "/dev/null", &url],
    );
    assert_eq!(refused.code, Some(7), "{refused}");
    squid.start();
    assert_eq!(squid.port(), port);
    let r = run_program(
        "curl",
        [
            "--silent",
            "--show-error",
            "-x",
            &squid.url(),
            "-o",
            path_str(&out),
            &url,
        ],
    );
    r.assert_ok();
    let seen = squid.wait_requests(Duration::from_secs(5), |v| v.len() == 3);
    assert!(
        !seen[2].is_hit(),
        "a restarted squid has an empty cache: {seen:?}"
    );
    nginx.wait_requests(Duration::from_secs(5), |v| v.len() == 2);

    // A clean shutdown, and no shared memory left behind.
    let t = Instant::now();
    squid.shutdown();
    eprintln!("squid shut down cleanly in {:?}", t.elapsed());
    assert!(t.elapsed() < STOP_GRACE + Duration::from_secs(1));
    let log = squid.error_log();
    assert!(log.contains("Exiting normally"), "{log}");
    let left: Vec<String> = common::entries(Path::new("/dev/shm"))
        .into_iter()
        .filter(|n| n.starts_with(&format!("{}-", squid.service_name())))
        .collect();
    assert!(left.is_empty(), "shared memory left behind: {left:?}");
}

#[test]
fn fault_server_faults() {
    let tmp = short_tempdir();
    let body = pattern(3000);
    for d in ["ok", "slow", "stall", "err", "cut"] {
        std::fs::create_dir_all(tmp.path().join(d)).unwrap();
        std::fs::write(tmp.path().join(d).join("f"), &body).unwrap();
    }
    let server = FaultServer::new(tmp.path());
    server.set_fault(
        "/slow/",
        Fault::Trickle {
            bytes_per_sec: 1000,
        },
    );
    server.set_fault("/stall/", Fault::Stall);
    server.set_fault("/err/", Fault::Status(500));
    server.set_fault("/cut/", Fault::Truncate { after: 1000 });
    let u = server.url();
    let out = tmp.path().join("out");

    // Normal service, Range, 404, HEAD; the headers are recorded.
    let (r, code) = status_of(&format!("{u}/ok/f"), &out, &["-H", "X-Probe: 42"]);
    assert_eq!(code, 200, "{r}");
    assert_eq!(std::fs::read(&out).unwrap(), body);
    let (r, code) = status_of(&format!("{u}/ok/f"), &out, &["-r", "10-19"]);
    assert_eq!(code, 206, "{r}");
    assert_eq!(std::fs::read(&out).unwrap(), &body[10..20]);
    let (_, code) = status_of(&format!("{u}/ok/nothing"), &out, &[]);
    assert_eq!(code, 404);
    let head = curl(&["-I", &format!("{u}/ok/f")]);
    head.assert_ok();
    assert!(head.stdout.contains("Content-Length: 3000"), "{head}");

    // 500 with an empty body.
    let (r, code) = status_of(&format!("{u}/err/f"), &out, &[]);
    assert_eq!(code, 500, "{r}");
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 0);

    // Truncation: curl sees fewer bytes than announced (exit 18).
    let cut = curl(&["-o", path_str(&out), &format!("{u}/cut/f")]);
    assert_eq!(cut.code, Some(18), "{cut}");
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 1000);

    // Stall: nothing comes back; curl gives up after its --max-time (exit 28).
    let t = Instant::now();
    let stall = curl(&[
        "--max-time",
        "1",
        "-o",
        path_str(&out),
        &format!("{u}/stall/f"),
    ]);
    assert_eq!(stall.code, Some(28), "{stall}");
    assert!(t.elapsed() >= Duration::from_millis(900));

    // Trickle at 1000 B/s: 3000 bytes take at least 2.5 s (and not much more than 3 s).
    let t = Instant::now();
    let (r, code) = status_of(&format!("{u}/slow/f"), &out, &[]);
    let took = t.elapsed();
    assert_eq!(code, 200, "{r}");
    assert_eq!(std::fs::read(&out).unwrap(), body);
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(5),
        "3000 bytes at 1000 B/s took {took:?}"
    );

    let reqs = server.requests();
    assert_eq!(reqs[0].header("x-probe"), Some("42"));
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[1].header("Range"), Some("bytes=10-19"));
    assert_eq!(reqs[3].method, "HEAD");
    assert_eq!(server.count("/stall/"), 1);
    assert_eq!(
        reqs.last().unwrap().fault,
        Some(Fault::Trickle {
            bytes_per_sec: 1000
        })
    );
}

#[test]
fn fault_server_limited_faults_stop_and_restart() {
    let tmp = short_tempdir();
    std::fs::write(tmp.path().join("f"), b"hello").unwrap();
    let mut server = FaultServer::new(tmp.path());
    server.set_fault_times("/", Fault::Status(503), 2);
    let url = format!("{}/f", server.url());
    let out = tmp.path().join("out");
    let codes: Vec<u16> = (0..3).map(|_| status_of(&url, &out, &[]).1).collect();
    assert_eq!(codes, [503, 503, 200]);

    // Close: the connection ends without an answer (curl: empty reply, exit 52).
    server.set_fault_times("/", Fault::Close, 1);
    let closed = curl(&["-o", path_str(&out), &url]);
    assert_eq!(closed.code, Some(52), "{closed}");
    // Delay: the answer comes, late.
    server.set_fault_times("/", Fault::Delay(Duration::from_millis(300)), 1);
    let t = Instant::now();
    let (r, code) = status_of(&url, &out, &[]);
    assert_eq!(code, 200, "{r}");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );

    // A stalled connection does not keep stop() waiting.
    server.set_fault("/", Fault::Stall);
    let mut child = std::process::Command::new("curl")
        .args([
            "--silent",
            "--noproxy",
            "*",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
            &url,
        ])
        .spawn()
        .expect("curl");
    let t = Instant::now();
    while server.open_connections() == 0 || server.count("/") < 6 {
        assert!(t.elapsed() < Duration::from_secs(5), "curl never connected");
        std::thread::sleep(Duration::from_millis(10));
    }
    let port = server.port();
    let t = Instant::now();
    server.stop();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "stop took {:?}",
        t.elapsed()
    );
    let status = child.wait().expect("curl");
    assert!(!status.success(), "curl of a stalled request succeeded");
    assert!(!port_answers(port));

    server.clear_faults();
    server.start();
    let (r, code) = status_of(&url, &out, &[]);
    assert_eq!(code, 200, "{r}");
    assert_eq!(std::fs::read(&out).unwrap(), b"hello");
}

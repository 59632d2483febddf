//! The loopback servers of tests/common/servers.rs checked with `curl`: nginx (logs,
//! ETag/304, Range, location snippets, stop and restart, HTTPS with the test CA), squid
//! caching a 1 MB file, and each fault of the FaultServer; the OCI registries of
//! tests/common/registry.rs (the fixture cache, basic auth, token auth with blobs
//! redirected to another host) and moto of tests/common/s3.rs (signatures checked).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::registry::{
    Registry, TokenRegistry, FIXTURE_REPO, FIXTURE_TAGS, GREET_LAYER, INDEX_LAYER, LIBGREET_LAYER,
};
use common::s3::{Credentials, Moto};
use common::servers::{port_answers, Fault, FaultServer, Nginx, Squid, TestCa, STOP_GRACE};
use common::{fixtures, path_str, run_program, short_tempdir, Run};
use sha2::Digest as _;

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

// ------------------------------------------------------------------ OCI registries

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The config blob `{}` of the index image.
const EMPTY_CONFIG: &str = "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

/// A GET (or `-I` HEAD) with curl, no redirects followed: status, response headers, body.
struct Fetched {
    status: u16,
    headers: String,
    body: Vec<u8>,
    run: Run,
}

impl Fetched {
    /// The first response header `name` (case-insensitive).
    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{e}: {}\n{}", String::from_utf8_lossy(&self.body), self.run)
        })
    }
}

fn fetch(url: &str, extra: &[&str]) -> Fetched {
    let tmp = short_tempdir();
    let (hdr, out) = (tmp.path().join("h"), tmp.path().join("b"));
    let mut args = vec![
        "-o",
        path_str(&out),
        "-D",
        path_str(&hdr),
        "-w",
        "%{http_code}",
        "--max-time",
        "10",
    ];
    args.extend_from_slice(extra);
    args.push(url);
    let run = curl(&args);
    let status = run.stdout.trim().parse().unwrap_or(0);
    let headers = std::fs::read_to_string(&hdr).unwrap_or_default();
    // With -L, the headers of the last response.
    let headers = match headers.rfind("\r\n\r\nHTTP/") {
        Some(i) => headers[i + 4..].to_string(),
        None => headers,
    };
    Fetched {
        status,
        headers,
        body: std::fs::read(&out).unwrap_or_default(),
        run,
    }
}

#[test]
fn registry_serves_the_fixture_cache_from_a_copy() {
    let Some(fx) = fixtures() else { return };
    let mut reg = Registry::serve(&fx);
    eprintln!("docker-registry started in {:?}", reg.startup_time());
    let port = reg.port();
    assert_eq!(
        reg.url(),
        format!("oci+http://127.0.0.1:{port}/fixtures/buildcache")
    );
    assert_eq!(reg.host(), format!("127.0.0.1:{port}"));
    assert!(!reg
        .storage()
        .starts_with(common::registry::fixture_storage(&fx)));
    assert!(reg.blob_file(GREET_LAYER).is_file());
    let base = format!("{}/v2/{FIXTURE_REPO}", reg.http_url());

    let v2 = fetch(&format!("{}/v2/", reg.http_url()), &[]);
    assert_eq!(v2.status, 200, "{}", v2.run);
    let accept = format!("Accept: {OCI_MANIFEST}");
    let index = fetch(&format!("{base}/manifests/index.spack"), &["-H", &accept]);
    assert_eq!(index.status, 200, "{}", index.run);
    assert_eq!(index.header("Content-Type").as_deref(), Some(OCI_MANIFEST));
    let m = index.json();
    assert_eq!(m["config"]["digest"], format!("sha256:{EMPTY_CONFIG}"));
    assert_eq!(m["layers"][0]["digest"], format!("sha256:{INDEX_LAYER}"));
    let db = fetch(&format!("{base}/blobs/sha256:{INDEX_LAYER}"), &[]);
    assert_eq!(db.status, 200, "{}", db.run);
    assert_eq!(db.body.len(), 7073);
    assert_eq!(sha256_hex(&db.body), INDEX_LAYER);
    assert!(db.json()["database"]["installs"].is_object());

    let tags = fetch(&format!("{base}/tags/list"), &[]).json();
    let tags: Vec<&str> = tags["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    for t in FIXTURE_TAGS.iter().chain(&["index.spack"]) {
        assert!(tags.contains(t), "{t} not in {tags:?}");
    }
    let greet = fetch(
        &format!("{base}/manifests/{}", FIXTURE_TAGS[1]),
        &["-H", &accept],
    )
    .json();
    let layers = greet["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "{greet}");
    assert_eq!(layers[0]["digest"], format!("sha256:{LIBGREET_LAYER}"));
    assert_eq!(layers[1]["digest"], format!("sha256:{GREET_LAYER}"));
    let missing = fetch(&format!("{base}/manifests/nothing.spack"), &["-H", &accept]);
    assert_eq!(missing.status, 404, "{}", missing.run);

    let log = reg.wait_requests(Duration::from_secs(5), |v| v.len() == 6);
    let seen: Vec<(&str, u16)> = log.iter().map(|r| (r.path.as_str(), r.status)).collect();
    assert_eq!(seen[0], ("/v2/", 200), "{log:#?}");
    assert_eq!(
        seen[1],
        ("/v2/fixtures/buildcache/manifests/index.spack", 200)
    );
    assert_eq!(seen[5].1, 404);
    assert!(log
        .iter()
        .all(|r| r.method == "GET" && r.user_agent.starts_with("curl/")));
    assert_eq!(reg.served_blobs(), [INDEX_LAYER]);
    reg.clear_log();
    assert!(reg.requests().is_empty());

    // Stop, start again on the same port; drop closes the port.
    reg.stop();
    assert!(!port_answers(port));
    reg.start();
    assert_eq!(fetch(&format!("{}/v2/", reg.http_url()), &[]).status, 200);
    drop(reg);
    assert!(
        !port_answers(port),
        "docker-registry still answers after drop"
    );
}

#[test]
fn registry_with_basic_auth_refuses_without_the_right_credentials() {
    let Some(fx) = fixtures() else { return };
    let reg = Registry::serve_with_basic_auth(&fx, "reader", "pa55-word");
    assert_eq!(reg.basic_auth(), Some(("reader", "pa55-word")));
    let url = format!("{}/v2/{FIXTURE_REPO}/manifests/index.spack", reg.http_url());
    let accept = format!("Accept: {OCI_MANIFEST}");
    let anon = fetch(&url, &["-H", &accept]);
    assert_eq!(anon.status, 401, "{}", anon.run);
    let challenge = anon.header("WWW-Authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Basic realm="), "{}", anon.headers);
    let wrong = fetch(&url, &["-H", &accept, "-u", "reader:wrong"]);
    assert_eq!(wrong.status, 401, "{}", wrong.run);
    let ok = fetch(&url, &["-H", &accept, "-u", "reader:pa55-word"]);
    assert_eq!(ok.status, 200, "{}", ok.run);
    assert_eq!(
        ok.json()["layers"][0]["digest"],
        format!("sha256:{INDEX_LAYER}")
    );
    let blob = fetch(
        &format!(
            "{}/v2/{FIXTURE_REPO}/blobs/sha256:{GREET_LAYER}",
            reg.http_url()
        ),
        &["-u", "reader:pa55-word"],
    );
    assert_eq!(blob.status, 200, "{}", blob.run);
    assert_eq!(sha256_hex(&blob.body), GREET_LAYER);
    let log = reg.wait_requests(Duration::from_secs(5), |v| v.len() == 4);
    let statuses: Vec<u16> = log.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [401, 401, 200, 200], "{log:#?}");
    assert_eq!(reg.served_blobs(), [GREET_LAYER]);
}

#[test]
fn token_registry_challenges_issues_tokens_and_redirects_blobs_to_another_host() {
    let Some(fx) = fixtures() else { return };
    let tr = TokenRegistry::serve(&fx, "tok-user", "tok-pass");
    let front = tr.http_url();
    assert_eq!(
        tr.url(),
        format!("oci+http://127.0.0.1:{}/fixtures/buildcache", tr.port())
    );
    assert_ne!(tr.blob_host(), tr.host());
    assert!(
        !tr.blob_host().starts_with("127.0.0.1:"),
        "another host: {}",
        tr.blob_host()
    );

    // No token: 401 with the Bearer challenge, for /v2/ and for a manifest.
    let v2 = fetch(&format!("{front}/v2/"), &[]);
    assert_eq!(v2.status, 401, "{}", v2.run);
    assert_eq!(v2.header("WWW-Authenticate"), Some(tr.challenge()));
    assert_eq!(
        tr.challenge(),
        format!(
            "Bearer realm=\"http://127.0.0.1:{}/token\",service=\"test-registry\",scope=\"repository:fixtures/buildcache:pull\"",
            tr.token_url().split(':').nth(2).unwrap().trim_end_matches("/token")
        )
    );
    let manifest_url = format!("{front}/v2/{FIXTURE_REPO}/manifests/{}", FIXTURE_TAGS[1]);
    let accept = format!("Accept: {OCI_MANIFEST}");
    assert_eq!(fetch(&manifest_url, &["-H", &accept]).status, 401);
    let bogus = fetch(
        &manifest_url,
        &["-H", &accept, "-H", "Authorization: Bearer made-up"],
    );
    assert_eq!(bogus.status, 401, "{}", bogus.run);

    // The token endpoint wants the right Basic credentials.
    let token_url = format!(
        "{}?service=test-registry&scope=repository:fixtures/buildcache:pull&client_id=spack",
        tr.token_url()
    );
    assert_eq!(fetch(&token_url, &[]).status, 401);
    assert_eq!(fetch(&token_url, &["-u", "tok-user:wrong"]).status, 401);
    let got = fetch(&token_url, &["-u", "tok-user:tok-pass"]);
    assert_eq!(got.status, 200, "{}", got.run);
    let t = got.json();
    let token = t["token"].as_str().expect("token").to_string();
    assert_eq!(t["access_token"].as_str(), Some(token.as_str()));
    let bearer = format!("Authorization: Bearer {token}");

    // With the token: manifests and tags come from the backing registry.
    assert_eq!(fetch(&format!("{front}/v2/"), &["-H", &bearer]).status, 200);
    let m = fetch(&manifest_url, &["-H", &accept, "-H", &bearer]);
    assert_eq!(m.status, 200, "{}", m.run);
    assert_eq!(m.header("Content-Type").as_deref(), Some(OCI_MANIFEST));
    assert_eq!(
        m.json()["layers"][1]["digest"],
        format!("sha256:{GREET_LAYER}")
    );
    let tags = fetch(
        &format!("{front}/v2/{FIXTURE_REPO}/tags/list"),
        &["-H", &bearer],
    );
    assert_eq!(tags.status, 200, "{}", tags.run);
    assert_eq!(tags.json()["tags"].as_array().unwrap().len(), 4);

    // A blob GET: 307 to the blob host, which serves the right bytes without credentials
    // and refuses a request that carries some.
    let blob_url = format!("{front}/v2/{FIXTURE_REPO}/blobs/sha256:{GREET_LAYER}");
    let redirect = fetch(&blob_url, &["-H", &bearer]);
    assert_eq!(redirect.status, 307, "{}", redirect.run);
    let location = redirect.header("Location").expect("Location");
    assert_eq!(location, tr.blob_location(GREET_LAYER));
    let bytes = fetch(&location, &[]);
    assert_eq!(bytes.status, 200, "{}", bytes.run);
    assert_eq!(sha256_hex(&bytes.body), GREET_LAYER);
    let part = fetch(&location, &["-r", "0-99"]);
    assert_eq!(part.status, 206, "{}", part.run);
    assert_eq!(part.body, bytes.body[..100]);
    let with_auth = fetch(&location, &["-H", &bearer]);
    assert_eq!(with_auth.status, 400, "{}", with_auth.run);
    // curl following the redirect drops the Authorization header for the other host.
    let followed = fetch(&blob_url, &["-L", "-H", &bearer]);
    assert_eq!(followed.status, 200, "{}", followed.run);
    assert_eq!(sha256_hex(&followed.body), GREET_LAYER);
    // HEAD of a blob is answered by the front (proxied).
    let head = fetch(
        &format!("{front}/v2/{FIXTURE_REPO}/blobs/sha256:{LIBGREET_LAYER}"),
        &["-I", "-H", &bearer],
    );
    assert_eq!(head.status, 200, "{}", head.run);

    // The logs: every request with its headers.
    let blobs = tr.wait_blob_host(Duration::from_secs(5), |v| v.len() == 4);
    let seen: Vec<(u16, bool)> = blobs
        .iter()
        .map(|r| (r.status, r.header("authorization").is_some()))
        .collect();
    assert_eq!(
        seen,
        [(200, false), (206, false), (400, true), (200, false)],
        "{}",
        tr.logs_for_panic()
    );
    assert!(blobs.iter().all(|r| r.blob() == Some(GREET_LAYER)));
    assert_eq!(tr.blob_host_served(), [GREET_LAYER, GREET_LAYER]);
    assert!(tr
        .blob_host_log()
        .contains(&format!("/blobs/sha256/{GREET_LAYER}")));
    let tokens = tr.token_requests();
    let auths: Vec<Option<&str>> = tokens.iter().map(|r| r.header("Authorization")).collect();
    assert_eq!(auths.len(), 3, "{}", tr.logs_for_panic());
    assert_eq!(auths[0], None);
    assert_eq!(auths[2], Some(tr.basic_header().as_str()));
    assert_eq!(tokens[2].status, 200);
    assert!(tokens[2]
        .query
        .as_deref()
        .is_some_and(|q| q.contains("service=test-registry")));
    let front_log = tr.front_requests();
    let redirects = front_log
        .iter()
        .filter(|r| r.status == 307 && r.blob() == Some(GREET_LAYER))
        .count();
    assert_eq!(redirects, 2, "{}", tr.logs_for_panic());
    // The backing registry saw only what was authorised (no blob GETs).
    let backend = tr.backend().requests();
    assert!(backend.iter().all(|r| r.status == 200), "{backend:#?}");
    assert!(tr.backend().served_blobs().is_empty(), "{backend:#?}");
}

// ------------------------------------------------------------------ S3 (moto)

#[test]
fn moto_lists_with_the_right_key_and_refuses_others() {
    let tmp = short_tempdir();
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a.txt"), b"alpha\n").unwrap();
    std::fs::write(tree.join("sub/b.bin"), pattern(3000)).unwrap();

    let moto = Moto::with_auth();
    eprintln!("moto started in {:?}", moto.startup_time());
    assert!(moto.checks_auth());
    assert_eq!(moto.bucket_with("spack-mirror", "cache", &tree), 2);
    let creds = moto.credentials().clone();
    assert!(creds.key_id.starts_with("AKIA"), "{creds:?}");
    assert_eq!(
        moto.list("spack-mirror", "cache/"),
        ["cache/a.txt", "cache/sub/b.bin"]
    );

    // Another key id, or the right id with another secret: 403.
    let e = moto
        .list_with(&Credentials::bogus(), "spack-mirror", "")
        .unwrap_err();
    assert_eq!((e.code.as_str(), e.status), ("InvalidAccessKeyId", 403));
    let wrong_secret = Credentials {
        key_id: creds.key_id.clone(),
        secret: "not-the-secret".into(),
    };
    let e = moto
        .list_with(&wrong_secret, "spack-mirror", "")
        .unwrap_err();
    assert_eq!((e.code.as_str(), e.status), ("SignatureDoesNotMatch", 403));

    // The same with curl's own SigV4 signing; unsigned requests are refused too.
    let url = format!("{}/spack-mirror/cache/sub/b.bin", moto.endpoint());
    // curl 7.88 signs `x-amz-content-sha256` only when it is given (moto, like S3, wants it).
    let sigv4 = "aws:amz:us-east-1:s3";
    let payload = "x-amz-content-sha256: UNSIGNED-PAYLOAD";
    let user = format!("{}:{}", creds.key_id, creds.secret);
    let good = fetch(
        &url,
        &["--aws-sigv4", sigv4, "--user", &user, "-H", payload],
    );
    assert_eq!(good.status, 200, "{}\n{}", good.run, moto.log());
    assert_eq!(good.body, pattern(3000));
    let bad_user = format!("{}:{}", creds.key_id, "nope");
    let bad = fetch(
        &url,
        &["--aws-sigv4", sigv4, "--user", &bad_user, "-H", payload],
    );
    assert_eq!(bad.status, 403, "{}", bad.run);
    let anon = fetch(&url, &[]);
    assert_eq!(anon.status, 403, "{}", anon.run);

    let log = moto.wait_requests(Duration::from_secs(5), |v| {
        v.iter()
            .filter(|r| r.path == "/spack-mirror/cache/sub/b.bin" && r.method == "GET")
            .count()
            == 3
    });
    let gets: Vec<u16> = log
        .iter()
        .filter(|r| r.path == "/spack-mirror/cache/sub/b.bin" && r.method == "GET")
        .map(|r| r.status)
        .collect();
    assert_eq!(gets, [200, 403, 403], "{log:#?}");
    assert_eq!(moto.served("/spack-mirror/cache/"), 1);
}

#[test]
fn moto_without_auth_accepts_any_key() {
    let tmp = short_tempdir();
    std::fs::write(tmp.path().join("f"), b"x").unwrap();
    let mut moto = Moto::new();
    assert!(!moto.checks_auth());
    assert_eq!(moto.bucket_with("any-key-bucket", "", tmp.path()), 1);
    assert_eq!(
        moto.list_with(&Credentials::bogus(), "any-key-bucket", "")
            .unwrap(),
        ["f"]
    );
    let port = moto.port();
    moto.stop();
    assert!(!moto.is_running());
    assert!(!port_answers(port));
}

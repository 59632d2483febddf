//! OCI registries on loopback that a test starts and stops itself, serving a temporary copy
//! of the fixture registry storage (`spack-oci/registry-storage`, repository
//! `fixtures/buildcache`):
//!
//! - [`Registry`]: the CNCF distribution registry (`docker-registry` 2.8, Debian), anonymous
//!   or behind htpasswd basic auth; its access log parsed.
//! - [`TokenRegistry`]: Docker token auth in front of an anonymous [`Registry`], with blob
//!   downloads redirected to another host, as registries with a CDN or S3 behind them do.
//!   Three small stdlib-only Python servers in one process: the front (`/v2/...`: 401 with
//!   a `Bearer` challenge without a valid token, manifests and tags proxied to the backing
//!   registry, blob GETs answered `307` to the blob host), the token endpoint (checks
//!   `Authorization: Basic`, answers `{"token", "access_token"}`) and the blob host (on
//!   127.0.0.2: another host, so clients drop `Authorization` on the redirect; it refuses a
//!   request that carries one with 400, as S3 does with a presigned URL). Every request to
//!   each of them is logged with all its headers ([`LoggedRequest`]).
//!
//! Same conventions as servers.rs: free ports on 127.0.0.1, processes tied to the test
//! process (`PR_SET_PDEATHSIG`), stopped on drop, every wait bounded, every file under its
//! own directory in /tmp. The fixtures are never written: the storage is copied first.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::servers::{
    find_program, free_port, read_lossy, server_dir, show_all, wait_for_port_closed, wait_until,
    Proc, START_TIMEOUT, STOP_GRACE,
};
use super::{path_str, run_program, Fixtures};

/// The repository that holds the fixture build cache.
pub const FIXTURE_REPO: &str = "fixtures/buildcache";
/// sha256 of fixture-greet's tarball (`layers[-1]` of its image; same blob as in the v3 mirror).
pub const GREET_LAYER: &str = "1fb0cc4222d6201935117c87d172a7e4ed5bf64d46a5fb14427f43106c1c3080";
/// sha256 of fixture-libgreet's tarball.
pub const LIBGREET_LAYER: &str = "7eca49826148483326e084fe8659b2d33932a24d6c2da738db625134a12b121f";
/// sha256 of fixture-bulk's tarball.
pub const BULK_LAYER: &str = "1d566e8cb51c2d19cd9b2b7273a97505c9d30544737df3e137bbeae1890f35e4";
/// sha256 of the index layer of `index.spack` (the plain-JSON database, 7073 bytes).
pub const INDEX_LAYER: &str = "17d9e796c0d85cb806472f2c4bbc56023476203648855ba591c3cc8fb859200c";
/// The package tags of the fixture repository.
pub const FIXTURE_TAGS: [&str; 3] = [
    "fixture-libgreet-1.0-guhtpijvlvr3tcgzl5zl3c6avrmpy6cw.spack",
    "fixture-greet-1.0-lvktxdbzy5xjz4y42kaknkq7gwcfi4qz.spack",
    "fixture-bulk-1.0-tskn7etrx423ghxutm3juzx3ekk5qgfs.spack",
];

/// The fixture registry storage (read only: serve a copy).
pub fn fixture_storage(fx: &Fixtures) -> PathBuf {
    fx.dir.join("spack-oci/registry-storage")
}

/// Where a registry storage root keeps the bytes of blob `sha256:<hex>`.
pub fn blob_file(storage: &Path, hex: &str) -> PathBuf {
    storage.join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ))
}

/// The hex digest in a `/v2/<name>/blobs/sha256:<hex>` path.
pub fn blob_digest_of(path: &str) -> Option<&str> {
    let (_, hex) = path.rsplit_once("/blobs/sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

fn copy_storage(src: &Path, dest: &Path) {
    run_program("cp", ["-a", path_str(src), path_str(dest)]).assert_ok();
}

// ---------------------------------------------------------------------------------------
// docker-registry
// ---------------------------------------------------------------------------------------

/// One line of docker-registry's access log (Apache combined format, on its stdout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRequest {
    pub method: String,
    /// The request path (without the query).
    pub path: String,
    pub query: Option<String>,
    pub status: u16,
    /// Body bytes sent.
    pub bytes: u64,
    /// The authenticated user, if the log names one.
    pub user: Option<String>,
    pub user_agent: String,
}

impl RegistryRequest {
    /// `127.0.0.1 - - [02/Dec/2026:05:15:42 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"`
    fn parse(line: &str) -> Option<RegistryRequest> {
        let (head, rest) = line.split_once(" \"")?;
        let mut hf = head.split(' ');
        let _ip = hf.next()?;
        let _ident = hf.next()?;
        let user = hf.next()?;
        if !hf.next()?.starts_with('[') {
            return None;
        }
        let (request, rest) = rest.split_once("\" ")?;
        let mut rf = request.split(' ');
        let method = rf.next()?.to_string();
        let target = rf.next()?;
        if !rf.next()?.starts_with("HTTP/") {
            return None;
        }
        let mut f = rest.splitn(3, ' ');
        let status = f.next()?.parse().ok()?;
        let bytes = f.next()?.parse().unwrap_or(0);
        let quoted: Vec<&str> = f.next().unwrap_or("").split('"').collect();
        let user_agent = quoted.get(3).copied().unwrap_or("").to_string();
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (target.to_string(), None),
        };
        Some(RegistryRequest {
            method,
            path,
            query,
            status,
            bytes,
            user: (user != "-").then(|| user.to_string()),
            user_agent,
        })
    }

    /// The blob digest (hex) when this is a blob request.
    pub fn blob(&self) -> Option<&str> {
        blob_digest_of(&self.path)
    }
}

/// Options of a [`Registry`]; [`RegistryBuilder::spawn`] starts it.
pub struct RegistryBuilder {
    storage: PathBuf,
    basic_auth: Option<(String, String)>,
}

impl RegistryBuilder {
    /// Require `Authorization: Basic` with this user and password (htpasswd, bcrypt).
    pub fn basic_auth(mut self, user: &str, password: &str) -> Self {
        self.basic_auth = Some((user.to_string(), password.to_string()));
        self
    }

    /// Copy the storage, start the registry on a free port and wait until it answers.
    #[track_caller]
    pub fn spawn(self) -> Registry {
        let dir = server_dir("sfsreg");
        let d = dir.path().to_path_buf();
        let storage = d.join("storage");
        copy_storage(&self.storage, &storage);
        if let Some((user, password)) = &self.basic_auth {
            let out = std::process::Command::new(find_program("htpasswd"))
                .args(["-Bbn", user, password])
                .output()
                .unwrap_or_else(|e| {
                    panic!("cannot run htpasswd ({e}); scripts/setup.sh installs apache2-utils")
                });
            assert!(
                out.status.success(),
                "htpasswd: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::write(d.join("htpasswd"), &out.stdout).expect("htpasswd file");
        }
        let conf = d.join("config.yml");
        let mut reg = Registry {
            port: 0,
            storage,
            conf: conf.clone(),
            proc: Proc::new(
                find_program("docker-registry"),
                vec!["serve".into(), conf.clone().into()],
                d.join("output.log"),
            ),
            basic_auth: self.basic_auth,
            skip: AtomicUsize::new(0),
            startup: Duration::ZERO,
            dir,
        };
        for attempt in 0..3 {
            reg.port = free_port();
            std::fs::write(&conf, reg.config()).expect("config.yml");
            match reg.try_start() {
                Ok(()) => return reg,
                Err(status) => {
                    let log = reg.log();
                    if attempt < 2 && log.contains("address already in use") {
                        continue;
                    }
                    panic!(
                        "docker-registry exited ({status}) before answering on 127.0.0.1:{}\n$ {}\n{log}",
                        reg.port,
                        reg.proc.cmdline(),
                    );
                }
            }
        }
        unreachable!()
    }
}

/// A running (or stopped) docker-registry on 127.0.0.1 serving its own copy of a registry
/// storage; stopped on drop.
pub struct Registry {
    port: u16,
    storage: PathBuf,
    conf: PathBuf,
    proc: Proc,
    basic_auth: Option<(String, String)>,
    /// Access-log entries before this index are forgotten ([`clear_log`](Self::clear_log)).
    skip: AtomicUsize,
    startup: Duration,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Options for serving a copy of the registry storage root `storage`.
    pub fn builder(storage: &Path) -> RegistryBuilder {
        RegistryBuilder {
            storage: storage.to_path_buf(),
            basic_auth: None,
        }
    }

    /// The fixture registry, anonymous.
    #[track_caller]
    pub fn serve(fx: &Fixtures) -> Registry {
        Registry::builder(&fixture_storage(fx)).spawn()
    }

    /// The fixture registry behind basic auth with `user` and `password`.
    #[track_caller]
    pub fn serve_with_basic_auth(fx: &Fixtures, user: &str, password: &str) -> Registry {
        Registry::builder(&fixture_storage(fx))
            .basic_auth(user, password)
            .spawn()
    }

    fn config(&self) -> String {
        let auth = if self.basic_auth.is_some() {
            format!(
                "auth:\n  htpasswd:\n    realm: spackfs-test-registry\n    path: {}\n",
                path_str(&self.dir.path().join("htpasswd"))
            )
        } else {
            String::new()
        };
        format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
             \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: spackfs-test-secret\n\
             {auth}",
            storage = path_str(&self.storage),
            port = self.port,
        )
    }

    fn try_start(&mut self) -> Result<(), ExitStatus> {
        let start = Instant::now();
        self.proc.spawn();
        let out = self.proc.stderr_path.clone();
        let log = move || read_lossy(&out);
        self.proc.wait_ready(self.port, "docker-registry", &log)?;
        self.startup = start.elapsed();
        Ok(())
    }

    /// Start again (same port, same storage) after [`stop`](Self::stop) or
    /// [`kill`](Self::kill). The log of the earlier run is replaced.
    #[track_caller]
    pub fn start(&mut self) {
        if self.proc.is_running() {
            return;
        }
        self.skip.store(0, Ordering::SeqCst);
        if let Err(status) = self.try_start() {
            panic!(
                "docker-registry exited ({status}) on restart before answering on 127.0.0.1:{}\n{}",
                self.port,
                self.log()
            );
        }
    }

    /// SIGTERM (SIGKILL after [`STOP_GRACE`]); the port is closed when this returns.
    pub fn stop(&mut self) {
        self.proc.stop(libc::SIGTERM, STOP_GRACE);
        wait_for_port_closed(self.port, "docker-registry", STOP_GRACE);
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.proc.stop(libc::SIGKILL, Duration::ZERO);
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// `oci+http://127.0.0.1:PORT/fixtures/buildcache`: the build cache as a mirror URL.
    pub fn url(&self) -> String {
        format!("oci+http://{}/{FIXTURE_REPO}", self.host())
    }

    /// `http://127.0.0.1:PORT` (for curl: `<this>/v2/...`).
    pub fn http_url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// `127.0.0.1:PORT`: the registry as error messages should name it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user and password the registry requires, if any.
    pub fn basic_auth(&self) -> Option<(&str, &str)> {
        self.basic_auth
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The storage root this registry serves (a copy: tests may alter it).
    pub fn storage(&self) -> &Path {
        &self.storage
    }

    /// The file holding the bytes of blob `sha256:<hex>` in this registry's storage.
    pub fn blob_file(&self, hex: &str) -> PathBuf {
        blob_file(&self.storage, hex)
    }

    /// The registry's own directory (configuration, htpasswd, output).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.conf
    }

    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// Everything the registry printed (its log and the access log).
    pub fn log(&self) -> String {
        read_lossy(&self.proc.stderr_path)
    }

    /// The access log so far (since the last [`clear_log`](Self::clear_log)), oldest first.
    pub fn requests(&self) -> Vec<RegistryRequest> {
        let all: Vec<RegistryRequest> = self
            .log()
            .lines()
            .filter_map(RegistryRequest::parse)
            .collect();
        let skip = self.skip.load(Ordering::SeqCst).min(all.len());
        all[skip..].to_vec()
    }

    /// Forget the requests logged so far.
    pub fn clear_log(&self) {
        let n = self
            .log()
            .lines()
            .filter_map(RegistryRequest::parse)
            .count();
        self.skip.store(n, Ordering::SeqCst);
    }

    /// Digests (hex) of the blobs served by a GET answered 200, in order (with repeats).
    pub fn served_blobs(&self) -> Vec<String> {
        self.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.status == 200)
            .filter_map(|r| r.blob().map(str::to_string))
            .collect()
    }

    /// Wait (up to `timeout`) until `cond` holds for the access log (a line is written when
    /// the response is done, which may be just after the client has its last byte).
    #[track_caller]
    pub fn wait_requests(
        &self,
        timeout: Duration,
        cond: impl Fn(&[RegistryRequest]) -> bool,
    ) -> Vec<RegistryRequest> {
        wait_until(
            &format!("docker-registry on port {}", self.port),
            timeout,
            || self.requests(),
            cond,
            |v| format!("{}--- registry output ---\n{}", show_all(v), self.log()),
        )
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.proc.stop(libc::SIGTERM, STOP_GRACE);
    }
}

// ---------------------------------------------------------------------------------------
// Token auth with blob redirects to another host
// ---------------------------------------------------------------------------------------

/// The service name of the token challenge.
pub const TOKEN_SERVICE: &str = "test-registry";

/// The Python servers of [`TokenRegistry`] (stdlib only).
const TOKEN_SERVERS_PY: &str = r#"
import base64, http.client, http.server, json, os, re, secrets, sys, threading, time, urllib.parse

(logdir, backend_port, blobs, user, password, repo, service) = sys.argv[1:8]
backend_port = int(backend_port)
tokens = set()
lock = threading.Lock()
state = {}

def log(name, handler, status, nbytes):
    q = handler.path.split("?", 1)
    rec = {
        "t": time.time(),
        "method": handler.command,
        "path": q[0],
        "query": q[1] if len(q) > 1 else None,
        "headers": [[k, v] for k, v in handler.headers.items()],
        "status": status,
        "bytes": nbytes,
    }
    line = json.dumps(rec) + "\n"
    with lock:
        with open(os.path.join(logdir, name + ".log"), "a") as f:
            f.write(line)

class Base(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "spackfs-test"
    sys_version = ""
    NAME = "?"

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, headers=(), body=b""):
        self.send_response(status)
        sent_len = False
        for k, v in headers:
            if k.lower() == "content-length":
                sent_len = True
            self.send_header(k, v)
        if not sent_len:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        log(self.NAME, self, status, 0 if self.command == "HEAD" else len(body))

    def do_HEAD(self):
        self.handle_any()

    def do_GET(self):
        self.handle_any()

    def error_json(self, status, code, message, extra=()):
        body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
        self.reply(status, [("Content-Type", "application/json")] + list(extra), body)

class Token(Base):
    NAME = "token"

    def handle_any(self):
        path, _, query = self.path.partition("?")
        params = urllib.parse.parse_qs(query)
        if path != "/token":
            return self.error_json(404, "NOT_FOUND", "no such endpoint")
        auth = self.headers.get("Authorization", "")
        want = "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()
        if auth != want:
            return self.error_json(401, "UNAUTHORIZED", "authentication required: bad or missing credentials",
                                   [("WWW-Authenticate", 'Basic realm="test-token-server"')])
        if params.get("service", [""])[0] != service:
            return self.error_json(400, "INVALID_REQUEST", "unknown service")
        tok = secrets.token_urlsafe(24)
        with lock:
            tokens.add(tok)
        body = json.dumps({"token": tok, "access_token": tok, "expires_in": 300,
                           "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode()
        self.reply(200, [("Content-Type", "application/json")], body)

BLOB = re.compile(r"^/v2/(.+)/blobs/sha256:([0-9a-f]{64})$")

class Front(Base):
    NAME = "front"

    def handle_any(self):
        path = self.path.partition("?")[0]
        if not (path == "/v2" or path.startswith("/v2/")):
            return self.error_json(404, "NOT_FOUND", "not a registry path")
        auth = self.headers.get("Authorization", "")
        ok = False
        if auth.startswith("Bearer "):
            with lock:
                ok = auth[len("Bearer "):].strip() in tokens
        if not ok:
            challenge = 'Bearer realm="http://127.0.0.1:%d/token",service="%s",scope="repository:%s:pull"' % (
                state["token_port"], service, repo)
            return self.error_json(401, "UNAUTHORIZED", "authentication required",
                                   [("WWW-Authenticate", challenge),
                                    ("Docker-Distribution-Api-Version", "registry/2.0")])
        m = BLOB.match(path)
        if m and self.command == "GET":
            loc = "http://%s:%d/blobs/sha256/%s" % (state["blob_host"], state["blob_port"], m.group(2))
            return self.reply(307, [("Location", loc),
                                    ("Docker-Distribution-Api-Version", "registry/2.0")])
        # Manifests, tags, HEAD of blobs: the backing registry answers.
        fwd = {}
        for k in ("Accept", "Range", "If-None-Match", "User-Agent"):
            vs = self.headers.get_all(k)
            if vs:
                fwd[k] = ", ".join(vs)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", backend_port, timeout=10)
            conn.request(self.command, self.path, headers=fwd)
            r = conn.getresponse()
            body = r.read()
            conn.close()
        except Exception as e:
            return self.error_json(502, "BAD_GATEWAY", "backing registry: %s" % e)
        keep = []
        for k in ("Content-Type", "Content-Length", "Docker-Content-Digest", "ETag", "Link",
                  "Docker-Distribution-Api-Version", "Content-Range", "Accept-Ranges"):
            v = r.getheader(k)
            if v is not None:
                keep.append((k, v))
        if self.command == "HEAD":
            self.send_response(r.status)
            for k, v in keep:
                self.send_header(k, v)
            if r.getheader("Content-Length") is None:
                self.send_header("Content-Length", "0")
            self.end_headers()
            log(self.NAME, self, r.status, 0)
            return
        keep = [(k, v) for k, v in keep if k != "Content-Length"]
        self.reply(r.status, keep, body)

BLOBFILE = re.compile(r"^/blobs/sha256/([0-9a-f]{64})$")

class Blobs(Base):
    NAME = "blobs"

    def handle_any(self):
        path = self.path.partition("?")[0]
        if self.headers.get("Authorization") is not None:
            body = b"<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism allowed</Message></Error>"
            return self.reply(400, [("Content-Type", "application/xml")], body)
        m = BLOBFILE.match(path)
        if not m:
            return self.reply(404, [("Content-Type", "text/plain")], b"not found\n")
        h = m.group(1)
        f = os.path.join(blobs, h[:2], h, "data")
        try:
            with open(f, "rb") as fh:
                data = fh.read()
        except OSError:
            return self.reply(404, [("Content-Type", "text/plain")], b"not found\n")
        rng = self.headers.get("Range")
        mm = re.match(r"^bytes=(\d+)-(\d*)$", rng.strip()) if rng else None
        if mm:
            a = int(mm.group(1))
            b = int(mm.group(2)) + 1 if mm.group(2) else len(data)
            b = min(b, len(data))
            if a >= len(data) or b <= a:
                return self.reply(416, [("Content-Range", "bytes */%d" % len(data))])
            return self.reply(206, [("Content-Type", "application/octet-stream"),
                                    ("Accept-Ranges", "bytes"),
                                    ("Content-Range", "bytes %d-%d/%d" % (a, b - 1, len(data)))],
                              data[a:b])
        self.reply(200, [("Content-Type", "application/octet-stream"), ("Accept-Ranges", "bytes"),
                         ("ETag", '"sha256:%s"' % h)], data)

class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

front = Server(("127.0.0.1", 0), Front)
token = Server(("127.0.0.1", 0), Token)
try:
    blob = Server(("127.0.0.2", 0), Blobs)
    state["blob_host"] = "127.0.0.2"
except OSError:
    blob = Server(("127.0.0.1", 0), Blobs)
    state["blob_host"] = "localhost"
state["front_port"] = front.server_address[1]
state["token_port"] = token.server_address[1]
state["blob_port"] = blob.server_address[1]
for s in (token, blob):
    threading.Thread(target=s.serve_forever, daemon=True).start()
tmp = os.path.join(logdir, "ports.json.tmp")
with open(tmp, "w") as f:
    json.dump(state, f)
os.rename(tmp, os.path.join(logdir, "ports.json"))
front.serve_forever()
"#;

/// A request as one of [`TokenRegistry`]'s Python servers saw it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct LoggedRequest {
    pub method: String,
    /// The path (without the query).
    pub path: String,
    pub query: Option<String>,
    /// Every header, in order, names as sent.
    pub headers: Vec<(String, String)>,
    pub status: u16,
    /// Body bytes sent.
    pub bytes: u64,
}

impl LoggedRequest {
    /// The first header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The blob digest (hex) of a front request `/v2/<name>/blobs/sha256:<hex>` or a blob
    /// host request `/blobs/sha256/<hex>`.
    pub fn blob(&self) -> Option<&str> {
        blob_digest_of(&self.path).or_else(|| {
            let hex = self.path.strip_prefix("/blobs/sha256/")?;
            (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
        })
    }
}

#[derive(serde::Deserialize)]
struct Ports {
    front_port: u16,
    token_port: u16,
    blob_port: u16,
    blob_host: String,
}

/// Docker token auth in front of a [`Registry`], blobs redirected to another host (see the
/// module documentation); stopped on drop (the Python servers and the backing registry).
pub struct TokenRegistry {
    backend: Registry,
    user: String,
    password: String,
    ports: Ports,
    proc: Proc,
    dir: tempfile::TempDir,
}

impl TokenRegistry {
    /// The fixture registry behind token auth: the token endpoint accepts `user` and
    /// `password` (Basic) only.
    #[track_caller]
    pub fn serve(fx: &Fixtures, user: &str, password: &str) -> TokenRegistry {
        let backend = Registry::serve(fx);
        let dir = server_dir("sfstok");
        let d = dir.path().to_path_buf();
        let script = d.join("token_servers.py");
        std::fs::write(&script, TOKEN_SERVERS_PY).expect("token server script");
        let blobs = backend.storage().join("docker/registry/v2/blobs/sha256");
        let args: Vec<OsString> = vec![
            "-u".into(),
            script.into(),
            d.clone().into(),
            backend.port().to_string().into(),
            blobs.into(),
            user.into(),
            password.into(),
            FIXTURE_REPO.into(),
            TOKEN_SERVICE.into(),
        ];
        // Debian's python3 (a version manager's shim on PATH would only add start-up time).
        let python = if Path::new("/usr/bin/python3").is_file() {
            "/usr/bin/python3".to_string()
        } else {
            find_program("python3")
        };
        let mut proc = Proc::new(python, args, d.join("output.log"));
        proc.spawn();
        let ports_file = d.join("ports.json");
        let start = Instant::now();
        let ports: Ports = loop {
            if let Ok(text) = std::fs::read_to_string(&ports_file) {
                break serde_json::from_str(&text).expect("ports.json");
            }
            if let Some(status) = proc.exited() {
                panic!(
                    "token servers exited ({status}) before starting\n$ {}\n{}",
                    proc.cmdline(),
                    read_lossy(&proc.stderr_path)
                );
            }
            if start.elapsed() > START_TIMEOUT {
                proc.stop(libc::SIGKILL, Duration::ZERO);
                panic!(
                    "token servers not started after {START_TIMEOUT:?}\n$ {}\n{}",
                    proc.cmdline(),
                    read_lossy(&proc.stderr_path)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let out = proc.stderr_path.clone();
        let log = move || read_lossy(&out);
        if let Err(status) = proc.wait_ready(ports.front_port, "token registry front", &log) {
            panic!("token servers exited ({status})\n{}", log());
        }
        TokenRegistry {
            backend,
            user: user.to_string(),
            password: password.to_string(),
            ports,
            proc,
            dir,
        }
    }

    /// `oci+http://127.0.0.1:FRONT/fixtures/buildcache`.
    pub fn url(&self) -> String {
        format!("oci+http://{}/{FIXTURE_REPO}", self.host())
    }

    /// `http://127.0.0.1:FRONT`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// `127.0.0.1:FRONT`: the registry as clients see it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.ports.front_port)
    }

    pub fn port(&self) -> u16 {
        self.ports.front_port
    }

    /// The realm of the challenge: `http://127.0.0.1:TOKEN/token`.
    pub fn token_url(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.ports.token_port)
    }

    /// The full `WWW-Authenticate` value the front answers with.
    pub fn challenge(&self) -> String {
        format!(
            "Bearer realm=\"{}\",service=\"{TOKEN_SERVICE}\",scope=\"repository:{FIXTURE_REPO}:pull\"",
            self.token_url()
        )
    }

    /// `127.0.0.2:PORT` (or `localhost:PORT` where 127.0.0.2 cannot be bound): where blob
    /// GETs are redirected.
    pub fn blob_host(&self) -> String {
        format!("{}:{}", self.ports.blob_host, self.ports.blob_port)
    }

    /// `http://<blob host>/blobs/sha256/<hex>`: where the front redirects a blob GET.
    pub fn blob_location(&self, hex: &str) -> String {
        format!("http://{}/blobs/sha256/{hex}", self.blob_host())
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// `Basic base64(user:password)`: what the token endpoint must receive.
    pub fn basic_header(&self) -> String {
        format!(
            "Basic {}",
            data_encoding::BASE64.encode(format!("{}:{}", self.user, self.password).as_bytes())
        )
    }

    /// The anonymous registry behind the front.
    pub fn backend(&self) -> &Registry {
        &self.backend
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn read_log(&self, name: &str) -> Vec<LoggedRequest> {
        read_lossy(&self.dir.path().join(format!("{name}.log")))
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Requests to the front (`/v2/...`), oldest first.
    pub fn front_requests(&self) -> Vec<LoggedRequest> {
        self.read_log("front")
    }

    /// Requests to the token endpoint.
    pub fn token_requests(&self) -> Vec<LoggedRequest> {
        self.read_log("token")
    }

    /// Requests to the blob host (the target of the redirects).
    pub fn blob_host_requests(&self) -> Vec<LoggedRequest> {
        self.read_log("blobs")
    }

    /// The blob host's log as written (one JSON object per request: request line and every
    /// header).
    pub fn blob_host_log(&self) -> String {
        read_lossy(&self.dir.path().join("blobs.log"))
    }

    /// Digests (hex) the blob host served with 200, in order.
    pub fn blob_host_served(&self) -> Vec<String> {
        self.blob_host_requests()
            .iter()
            .filter(|r| r.method == "GET" && r.status == 200)
            .filter_map(|r| r.blob().map(str::to_string))
            .collect()
    }

    /// Wait (up to `timeout`) until `cond` holds for the blob host's log.
    #[track_caller]
    pub fn wait_blob_host(
        &self,
        timeout: Duration,
        cond: impl Fn(&[LoggedRequest]) -> bool,
    ) -> Vec<LoggedRequest> {
        wait_until(
            &format!("blob host {}", self.blob_host()),
            timeout,
            || self.blob_host_requests(),
            cond,
            |v| format!("{}{}", show_all(v), self.output()),
        )
    }

    /// What the Python servers printed (tracebacks, if any).
    pub fn output(&self) -> String {
        format!(
            "--- token servers output ---\n{}",
            read_lossy(&self.proc.stderr_path)
        )
    }

    /// All four logs, for a failure message.
    pub fn logs_for_panic(&self) -> String {
        format!(
            "--- front ---\n{}--- token ---\n{}--- blob host ---\n{}{}",
            show_all(&self.front_requests()),
            show_all(&self.token_requests()),
            show_all(&self.blob_host_requests()),
            self.output()
        )
    }

    /// Stop the Python servers (the backing registry stops on drop).
    pub fn stop(&mut self) {
        self.proc.stop(libc::SIGTERM, STOP_GRACE);
        wait_for_port_closed(self.ports.front_port, "token registry front", STOP_GRACE);
    }
}

impl Drop for TokenRegistry {
    fn drop(&mut self) {
        self.proc.stop(libc::SIGTERM, STOP_GRACE);
    }
}

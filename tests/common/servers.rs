//! Real HTTP servers on loopback that a test starts and stops itself: nginx (static files
//! with ETag/304 and Range, optionally HTTPS), squid (a caching forward proxy), a test CA
//! made with the `openssl` tool, and a small HTTP/1.1 server in Rust with injected faults
//! (trickle, stall, status, truncation).
//!
//! Every server is a guard: dropping it stops the server (SIGTERM, a short bounded wait,
//! SIGKILL), also when the test panics. Every wait is bounded and its panic names the server
//! and shows its error log. Everything listens on 127.0.0.1 only; every file a server writes
//! (configuration, logs, pid file, temporary files) lives in its own directory under /tmp.
//!
//! The child processes are started from one long-lived thread with `PR_SET_PDEATHSIG`, so a
//! test binary that is killed outright leaves no server behind. (Squid refuses to run as root
//! and would switch to `proxy` itself, which clears that setting: as root it is started as
//! `proxy` instead.)
//!
//! The process plumbing (`Proc`, `server_dir`, `wait_until`, ...) is shared with the OCI
//! registry (registry.rs) and S3 (s3.rs) servers.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::path_str;

/// How long a server may take to answer on its port after it was started.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a stopped server may take to exit before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long [`Squid::stop`] and drop wait after SIGTERM before they kill squid.
pub const SQUID_STOP_GRACE: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------
// Ports and processes
// ---------------------------------------------------------------------------------------

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local address").port()
}

/// Does something accept connections on 127.0.0.1:`port`?
pub fn port_answers(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Wait until 127.0.0.1:`port` accepts connections; panics after `timeout` naming `what`.
#[track_caller]
pub fn wait_for_port(port: u16, what: &str, timeout: Duration) {
    let start = Instant::now();
    while !port_answers(port) {
        if start.elapsed() > timeout {
            panic!("{what}: nothing accepts connections on 127.0.0.1:{port} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Wait until nothing accepts connections on 127.0.0.1:`port` any more.
#[track_caller]
pub fn wait_for_port_closed(port: u16, what: &str, timeout: Duration) {
    let start = Instant::now();
    while port_answers(port) {
        if start.elapsed() > timeout {
            panic!("{what}: 127.0.0.1:{port} still accepts connections after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Start `cmd` from a thread that lives as long as the test binary, with
/// `PR_SET_PDEATHSIG = SIGKILL`: the child dies with the test process even when that is
/// killed (the parent-death signal fires when the *thread* that forked exits, so forking
/// from the test's own thread would kill a server shared between tests).
pub(crate) fn spawn_tied(cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let tx = SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<SpawnRequest>();
            std::thread::Builder::new()
                .name("server-spawner".into())
                .spawn(move || {
                    for (mut cmd, reply) in rx {
                        // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
                        unsafe {
                            cmd.pre_exec(|| {
                                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                                Ok(())
                            });
                        }
                        let _ = reply.send(cmd.spawn());
                    }
                })
                .expect("spawner thread");
            Mutex::new(tx)
        })
        .lock()
        .unwrap()
        .clone();
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.send((cmd, reply_tx)).expect("spawner thread alive");
    reply_rx.recv().expect("spawner thread answers")
}

/// A server child process: started from a fixed command line, stdout and stderr into a file.
pub(crate) struct Proc {
    pub(crate) program: String,
    pub(crate) args: Vec<OsString>,
    pub(crate) stderr_path: PathBuf,
    /// Run as this user and group (set before the parent-death signal, which survives).
    pub(crate) run_as: Option<(libc::uid_t, libc::gid_t)>,
    /// Extra environment variables of the child.
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) child: Option<Child>,
}

impl Proc {
    /// `program ARGS...` with output into `stderr_path`, not started yet.
    pub(crate) fn new(program: String, args: Vec<OsString>, stderr_path: PathBuf) -> Proc {
        Proc {
            program,
            args,
            stderr_path,
            run_as: None,
            env: Vec::new(),
            child: None,
        }
    }

    pub(crate) fn cmdline(&self) -> String {
        let mut s = self.program.clone();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    pub(crate) fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.program);
        let out = File::create(&self.stderr_path).expect("server output file");
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("server output file"))
            .stderr(out)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        let child = spawn_tied(cmd).unwrap_or_else(|e| {
            panic!(
                "cannot start {} ({e}); is it installed? (scripts/setup.sh installs it)",
                self.cmdline()
            )
        });
        self.child = Some(child);
    }

    /// The exit status if the child has exited (reaping it).
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = child.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }

    pub(crate) fn is_running(&mut self) -> bool {
        self.exited();
        self.child.is_some()
    }

    /// Send `sig`, wait up to `grace` for the exit, then SIGKILL; always reaped.
    pub(crate) fn stop(&mut self, sig: i32, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        let Some(child) = self.child.as_mut() else {
            return;
        };
        // SAFETY: kill(2) on our own child, not yet reaped (its pid cannot be reused).
        unsafe { libc::kill(child.id() as i32, sig) };
        let start = Instant::now();
        while start.elapsed() < grace {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Wait until the child answers on `port`. `Err` with the exit status when it exited
    /// first; panics (with `log`) on timeout.
    pub(crate) fn wait_ready(
        &mut self,
        port: u16,
        what: &str,
        log: &dyn Fn() -> String,
    ) -> Result<(), ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                return Err(status);
            }
            if port_answers(port) {
                // The port may belong to someone else when our child just failed to bind.
                if let Some(status) = self.exited() {
                    return Err(status);
                }
                return Ok(());
            }
            if start.elapsed() > START_TIMEOUT {
                let cmdline = self.cmdline();
                self.stop(libc::SIGKILL, Duration::ZERO);
                panic!(
                    "{what} does not answer on 127.0.0.1:{port} after {START_TIMEOUT:?}\n$ {cmdline}\n{}",
                    log()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// `name` on `PATH`, else in /usr/sbin or /sbin (not on a non-root user's `PATH`, and where
/// nginx and squid are); `name` itself when it is nowhere (starting it then fails clearly).
pub fn find_program(name: &str) -> String {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .map(|p| path_str(&p).to_string())
        .unwrap_or_else(|| name.to_string())
}

/// A directory under /tmp with a short name.
pub(crate) fn server_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("server directory")
}

pub(crate) fn read_lossy(p: &Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Poll `cond` on fresh values of `get` until it holds; panics after `timeout`.
pub(crate) fn wait_until<T>(
    what: &str,
    timeout: Duration,
    get: impl Fn() -> Vec<T>,
    cond: impl Fn(&[T]) -> bool,
    show: impl Fn(&[T]) -> String,
) -> Vec<T> {
    let start = Instant::now();
    loop {
        let v = get();
        if cond(&v) {
            return v;
        }
        if start.elapsed() > timeout {
            panic!(
                "{what}: condition not met after {timeout:?}; log so far:\n{}",
                show(&v)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub(crate) fn show_all<T: fmt::Debug>(v: &[T]) -> String {
    v.iter().map(|r| format!("  {r:?}\n")).collect()
}

// ---------------------------------------------------------------------------------------
// nginx
// ---------------------------------------------------------------------------------------

/// One line of nginx's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request URI's path as the client sent it (percent-encoded, without the query).
    pub path: String,
    /// The query string (without `?`), if any.
    pub query: Option<String>,
    pub status: u16,
    /// Body bytes sent (`$body_bytes_sent`).
    pub bytes: u64,
    /// `HTTP/1.1`, `HTTP/2.0`, ...
    pub protocol: String,
    /// Was the response sent completely (`$request_completion`)?
    pub completed: bool,
    /// The request's `Range` header.
    pub range: Option<String>,
    /// The request's `If-None-Match` header.
    pub if_none_match: Option<String>,
    /// The request's `User-Agent` header (empty when absent).
    pub user_agent: String,
}

const NGINX_LOG_FORMAT: &str = "$request_method\\t$request_uri\\t$status\\t$body_bytes_sent\\t$server_protocol\\t$request_completion\\t$http_range\\t$http_if_none_match\\t$http_user_agent";

/// Undo nginx's default log escaping (`"`, `\\`, control and non-ASCII bytes as `\xHH`).
fn nginx_unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') {
            if let Some(v) = s
                .get(i + 2..i + 4)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Request {
    fn parse(line: &str) -> Option<Request> {
        let f: Vec<String> = line.split('\t').map(nginx_unescape).collect();
        if f.len() != 9 {
            return None;
        }
        let opt = |s: &str| (!s.is_empty() && s != "-").then(|| s.to_string());
        let (path, query) = match f[1].split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (f[1].to_string(), None),
        };
        Some(Request {
            method: f[0].clone(),
            path,
            query,
            status: f[2].parse().ok()?,
            bytes: f[3].parse().ok()?,
            protocol: f[4].clone(),
            completed: f[5] == "OK",
            range: opt(&f[6]),
            if_none_match: opt(&f[7]),
            user_agent: opt(&f[8]).unwrap_or_default(),
        })
    }
}

/// Options of an nginx server; [`NginxBuilder::spawn`] starts it.
pub struct NginxBuilder {
    root: PathBuf,
    tls: Option<(PathBuf, PathBuf)>,
    http2: bool,
    server_snippets: Vec<String>,
    http_snippets: Vec<String>,
}

impl NginxBuilder {
    /// Serve HTTPS (only) with this certificate chain and key (PEM).
    pub fn tls(mut self, cert_pem: &Path, key_pem: &Path) -> Self {
        self.tls = Some((cert_pem.to_path_buf(), key_pem.to_path_buf()));
        self
    }

    /// Serve HTTPS with the server certificate of `ca`.
    pub fn tls_from(self, ca: &TestCa) -> Self {
        self.tls(ca.cert_pem(), ca.key_pem())
    }

    /// Offer HTTP/2 (over TLS, by ALPN).
    pub fn http2(mut self) -> Self {
        self.http2 = true;
        self
    }

    /// Configuration text inside `server { }`: `location` blocks, `limit_rate 1000;`, ...
    pub fn server_config(mut self, snippet: &str) -> Self {
        self.server_snippets.push(snippet.to_string());
        self
    }

    /// A `location` block (e.g. `location /blobs/ { return 500; }`); same as
    /// [`server_config`](Self::server_config).
    pub fn location(self, block: &str) -> Self {
        self.server_config(block)
    }

    /// Configuration text inside `http { }` (outside the server).
    pub fn http_config(mut self, snippet: &str) -> Self {
        self.http_snippets.push(snippet.to_string());
        self
    }

    /// Start nginx on a free port and wait until it answers.
    #[track_caller]
    pub fn spawn(self) -> Nginx {
        let dir = server_dir("sfsngx");
        let d = dir.path().to_path_buf();
        for t in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(d.join("tmp").join(t)).expect("nginx temp dir");
        }
        let conf = d.join("nginx.conf");
        let mut nginx = Nginx {
            root: self.root.clone(),
            port: 0,
            tls: self.tls.is_some(),
            access_log: d.join("access.log"),
            error_log: d.join("error.log"),
            proc: Proc {
                program: find_program("nginx"),
                args: vec![
                    "-p".into(),
                    d.clone().into(),
                    "-e".into(),
                    d.join("error.log").into(),
                    "-c".into(),
                    conf.clone().into(),
                ],
                stderr_path: d.join("stderr.log"),
                run_as: None,
                env: Vec::new(),
                child: None,
            },
            startup: Duration::ZERO,
            options: self,
            dir,
        };
        // A free port can be taken by someone else before nginx binds it: try another.
        for attempt in 0..3 {
            nginx.port = free_port();
            std::fs::write(&conf, nginx.config()).expect("nginx.conf");
            match nginx.try_start() {
                Ok(()) => return nginx,
                Err(status) => {
                    let log = nginx.error_log();
                    if attempt < 2 && log.contains("Address already in use") {
                        continue;
                    }
                    panic!(
                        "nginx exited ({status}) before answering on 127.0.0.1:{}\n$ {}\n{}",
                        nginx.port,
                        nginx.proc.cmdline(),
                        nginx.logs_for_panic()
                    );
                }
            }
        }
        unreachable!()
    }
}

/// A running (or stopped) nginx serving a directory on 127.0.0.1; stopped on drop.
///
/// nginx runs in the foreground as a single process (`master_process off`): no worker
/// processes that could outlive a killed master and keep the port.
pub struct Nginx {
    root: PathBuf,
    port: u16,
    tls: bool,
    access_log: PathBuf,
    error_log: PathBuf,
    proc: Proc,
    startup: Duration,
    options: NginxBuilder,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Options for serving `root`.
    pub fn builder(root: &Path) -> NginxBuilder {
        NginxBuilder {
            root: root.to_path_buf(),
            tls: None,
            http2: false,
            server_snippets: Vec::new(),
            http_snippets: Vec::new(),
        }
    }

    /// Serve `root` over plain HTTP.
    #[track_caller]
    pub fn serve(root: &Path) -> Nginx {
        Nginx::builder(root).spawn()
    }

    /// Serve `root` over HTTPS with the server certificate of `ca`.
    #[track_caller]
    pub fn serve_tls(root: &Path, ca: &TestCa) -> Nginx {
        Nginx::builder(root).tls_from(ca).spawn()
    }

    fn config(&self) -> String {
        let d = path_str(self.dir.path());
        let o = &self.options;
        let mut listen = format!("127.0.0.1:{}", self.port);
        let mut tls = String::new();
        if let Some((cert, key)) = &o.tls {
            listen.push_str(" ssl");
            if o.http2 {
                listen.push_str(" http2");
            }
            tls = format!(
                "    ssl_certificate {};\n    ssl_certificate_key {};\n",
                path_str(cert),
                path_str(key)
            );
        }
        format!(
            "daemon off;\n\
             master_process off;\n\
             worker_processes 1;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log notice;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
             \x20 default_type application/octet-stream;\n\
             \x20 client_body_temp_path {d}/tmp/body;\n\
             \x20 proxy_temp_path {d}/tmp/proxy;\n\
             \x20 fastcgi_temp_path {d}/tmp/fastcgi;\n\
             \x20 uwsgi_temp_path {d}/tmp/uwsgi;\n\
             \x20 scgi_temp_path {d}/tmp/scgi;\n\
             \x20 log_format spackfs '{NGINX_LOG_FORMAT}';\n\
             \x20 access_log {d}/access.log spackfs;\n\
             \x20 server_tokens off;\n\
             {http}\n\
             \x20 server {{\n\
             \x20   listen {listen};\n\
             \x20   server_name localhost 127.0.0.1;\n\
             \x20   root {root};\n\
             {tls}\
             {server}\n\
             \x20 }}\n\
             }}\n",
            http = o.http_snippets.join("\n"),
            root = path_str(&self.root),
            server = o.server_snippets.join("\n"),
        )
    }

    fn try_start(&mut self) -> Result<(), ExitStatus> {
        let start = Instant::now();
        self.proc.spawn();
        let (err, out) = (self.error_log.clone(), self.proc.stderr_path.clone());
        let what = format!("nginx for {}", self.root.display());
        let log = move || nginx_logs(&err, &out);
        self.proc.wait_ready(self.port, &what, &log)?;
        self.startup = start.elapsed();
        Ok(())
    }

    fn logs_for_panic(&self) -> String {
        nginx_logs(&self.error_log, &self.proc.stderr_path)
    }

    /// Start again (on the same port) after [`stop`](Self::stop) or [`kill`](Self::kill).
    #[track_caller]
    pub fn start(&mut self) {
        if self.proc.is_running() {
            return;
        }
        if let Err(status) = self.try_start() {
            panic!(
                "nginx exited ({status}) on restart before answering on 127.0.0.1:{}\n$ {}\n{}",
                self.port,
                self.proc.cmdline(),
                self.logs_for_panic()
            );
        }
    }

    /// Stop now (SIGTERM: nginx's fast shutdown; SIGKILL after [`STOP_GRACE`]). The logs
    /// stay readable; [`start`](Self::start) starts it again.
    pub fn stop(&mut self) {
        self.proc.stop(libc::SIGTERM, STOP_GRACE);
    }

    /// SIGKILL (a crash: open connections are reset).
    pub fn kill(&mut self) {
        self.proc.stop(libc::SIGKILL, Duration::ZERO);
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The same with `localhost` as the host (the test certificate names both).
    pub fn url_localhost(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://localhost:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The document root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// nginx's own directory (configuration, logs, temporary files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// How long the last start took until the port answered.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// The access log so far, parsed, oldest first.
    pub fn requests(&self) -> Vec<Request> {
        read_lossy(&self.access_log)
            .lines()
            .filter_map(Request::parse)
            .collect()
    }

    /// Requests whose path starts with `path_prefix`.
    pub fn count(&self, path_prefix: &str) -> usize {
        self.count_where(|r| r.path.starts_with(path_prefix))
    }

    /// Requests for which `pred` holds.
    pub fn count_where(&self, pred: impl Fn(&Request) -> bool) -> usize {
        self.requests().iter().filter(|r| pred(r)).count()
    }

    /// Wait (up to `timeout`) until `cond` holds for the access log: nginx writes a line
    /// just after the response's last byte, so a client may be done a moment before.
    #[track_caller]
    pub fn wait_requests(
        &self,
        timeout: Duration,
        cond: impl Fn(&[Request]) -> bool,
    ) -> Vec<Request> {
        wait_until(
            &format!("nginx on port {}", self.port),
            timeout,
            || self.requests(),
            cond,
            |v| format!("{}{}", show_all(v), self.logs_for_panic()),
        )
    }

    /// Forget the requests logged so far.
    pub fn clear_log(&self) {
        // nginx appends (O_APPEND): after truncation it writes from the start.
        let _ = File::create(&self.access_log);
    }

    /// nginx's error log (and anything it printed).
    pub fn error_log(&self) -> String {
        nginx_logs(&self.error_log, &self.proc.stderr_path)
    }
}

fn nginx_logs(error_log: &Path, stderr: &Path) -> String {
    let mut s = format!("--- nginx error.log ---\n{}", read_lossy(error_log));
    let out = read_lossy(stderr);
    if !out.trim().is_empty() {
        s.push_str("--- nginx stderr ---\n");
        s.push_str(&out);
    }
    s
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.proc.stop(libc::SIGTERM, STOP_GRACE);
    }
}

// ---------------------------------------------------------------------------------------
// squid
// ---------------------------------------------------------------------------------------

/// One line of squid's access log (native format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRequest {
    pub method: String,
    /// The URL asked for (`host:port` for CONNECT).
    pub url: String,
    /// `TCP_MISS`, `TCP_MEM_HIT`, `TCP_HIT`, `TCP_REFRESH_UNMODIFIED`, `TCP_TUNNEL`, ...
    pub result_code: String,
    pub status: u16,
    /// Bytes sent to the client (headers included).
    pub bytes: u64,
    /// `HIER_DIRECT/127.0.0.1` (asked the origin) or `HIER_NONE/-` (answered from cache).
    pub hierarchy: String,
}

impl ProxyRequest {
    /// Answered from the cache (any `*HIT*` result code).
    pub fn is_hit(&self) -> bool {
        self.result_code.contains("HIT")
    }

    fn parse(line: &str) -> Option<ProxyRequest> {
        // time elapsed client code/status bytes method URL ident hierarchy/peer type
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 9 {
            return None;
        }
        let (code, status) = f[3].split_once('/')?;
        // Connections closed before a request (e.g. port probes) log a pseudo-URL.
        if f[6].starts_with("error:") {
            return None;
        }
        Some(ProxyRequest {
            method: f[5].to_string(),
            url: f[6].to_string(),
            result_code: code.to_string(),
            status: status.parse().ok()?,
            bytes: f[4].parse().ok()?,
            hierarchy: f[8].to_string(),
        })
    }
}

/// Options of a squid proxy; [`SquidBuilder::spawn`] starts it.
pub struct SquidBuilder {
    refresh_pattern: String,
    extra: Vec<String>,
}

impl SquidBuilder {
    /// Replace the default `refresh_pattern . 240 100% 240` (every response is fresh for
    /// 4 hours even with only Last-Modified/ETag).
    pub fn refresh_pattern(mut self, line: &str) -> Self {
        self.refresh_pattern = line.to_string();
        self
    }

    /// More squid.conf lines (after the defaults; `http_access` rules go before the final
    /// `http_access allow all`).
    pub fn config(mut self, lines: &str) -> Self {
        self.extra.push(lines.to_string());
        self
    }

    /// Start squid on a free port and wait until it answers.
    #[track_caller]
    pub fn spawn(self) -> Squid {
        static SERIAL: AtomicUsize = AtomicUsize::new(0);
        let dir = server_dir("sfssq");
        let d = dir.path().to_path_buf();
        // Squid names its shared-memory segments (/dev/shm/<service>-*.shm) after the service
        // name: parallel instances need their own, and a killed squid leaves them behind.
        let service = format!(
            "sfs{}n{}",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::SeqCst)
        );
        // Squid refuses to work as root ("Don't run Squid as root"): as root, start it as
        // `proxy` (its Debian default user), which must be able to write the logs and the pid
        // file in its directory.
        let run_as = if is_root() {
            let (uid, gid) = user_ids("proxy").unwrap_or_else(|| {
                panic!("squid must run as user `proxy` when the tests run as root, but there is no such user (Debian's squid package creates it)")
            });
            let c = std::ffi::CString::new(path_str(&d)).unwrap();
            // SAFETY: a valid NUL-terminated path.
            let r = unsafe { libc::chown(c.as_ptr(), uid, gid) };
            assert_eq!(
                r,
                0,
                "chown {}: {}",
                d.display(),
                io::Error::last_os_error()
            );
            Some((uid, gid))
        } else {
            None
        };
        let conf = d.join("squid.conf");
        let mut squid = Squid {
            port: 0,
            access_log: d.join("access.log"),
            cache_log: d.join("cache.log"),
            service: service.clone(),
            proc: Proc {
                program: find_program("squid"),
                args: vec![
                    "-N".into(),
                    "-d".into(),
                    "1".into(),
                    "-n".into(),
                    service.into(),
                    "-f".into(),
                    conf.clone().into(),
                ],
                stderr_path: d.join("stderr.log"),
                run_as,
                env: Vec::new(),
                child: None,
            },
            startup: Duration::ZERO,
            options: self,
            dir,
        };
        for attempt in 0..3 {
            squid.port = free_port();
            std::fs::write(&conf, squid.config()).expect("squid.conf");
            match squid.try_start() {
                Ok(()) => return squid,
                Err(status) => {
                    let log = squid.error_log();
                    if attempt < 2 && log.contains("Address already in use") {
                        continue;
                    }
                    panic!(
                        "squid exited ({status}) before answering on 127.0.0.1:{}\n$ {}\n{}",
                        squid.port,
                        squid.proc.cmdline(),
                        log
                    );
                }
            }
        }
        unreachable!()
    }
}

/// Remove the shared memory segments of squids of test processes that no longer exist
/// (`sfs<pid>n<serial>-*.shm`: a test binary killed outright cannot clean up).
fn remove_stale_shm() {
    for name in super::entries(Path::new("/dev/shm")) {
        let Some(rest) = name.strip_prefix("sfs") else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('n') else {
            continue;
        };
        if !name.ends_with(".shm") || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_file(Path::new("/dev/shm").join(&name));
        }
    }
}

/// The uid and gid of user `name`.
fn user_ids(name: &str) -> Option<(libc::uid_t, libc::gid_t)> {
    let c = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value (null pointers, zero ids).
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: valid name, output struct, buffer of the length given and result pointer.
    let r = unsafe {
        libc::getpwnam_r(
            c.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (r == 0 && !result.is_null()).then_some((pw.pw_uid, pw.pw_gid))
}

/// A running (or stopped) caching forward proxy on 127.0.0.1; stopped on drop.
///
/// Memory cache only: objects up to 64 MB, 256 MB in all; the cache is empty after every
/// start. Squid's clean shutdown takes about 2 s whatever `shutdown_lifetime` says (it waits
/// `shutdown_lifetime` + 1 s on a one-second event loop), so [`stop`](Self::stop) and drop
/// give it [`SQUID_STOP_GRACE`] after SIGTERM (it closes its port at once) and then kill it;
/// [`shutdown`](Self::shutdown) waits for the clean exit.
pub struct Squid {
    port: u16,
    access_log: PathBuf,
    cache_log: PathBuf,
    service: String,
    proc: Proc,
    startup: Duration,
    options: SquidBuilder,
    dir: tempfile::TempDir,
}

impl Squid {
    pub fn builder() -> SquidBuilder {
        SquidBuilder {
            refresh_pattern: "refresh_pattern . 240 100% 240".into(),
            extra: Vec::new(),
        }
    }

    /// Start a proxy with the default options.
    #[track_caller]
    pub fn new() -> Squid {
        Squid::builder().spawn()
    }

    fn config(&self) -> String {
        let d = path_str(self.dir.path());
        format!(
            "http_port 127.0.0.1:{port}\n\
             visible_hostname spackfs-test-proxy\n\
             pid_filename {d}/squid.pid\n\
             cache_log {d}/cache.log\n\
             access_log stdio:{d}/access.log squid\n\
             cache_store_log none\n\
             logfile_rotate 0\n\
             coredump_dir {d}\n\
             netdb_filename none\n\
             icp_port 0\n\
             htcp_port 0\n\
             pinger_enable off\n\
             digest_generation off\n\
             client_db off\n\
             strip_query_terms off\n\
             dns_nameservers 127.0.0.1\n\
             cache_mem 256 MB\n\
             maximum_object_size_in_memory 64 MB\n\
             maximum_object_size 64 MB\n\
             {refresh}\n\
             shutdown_lifetime 0 seconds\n\
             {extra}\n\
             http_access allow all\n",
            port = self.port,
            refresh = self.options.refresh_pattern,
            extra = self.options.extra.join("\n"),
        )
    }

    fn try_start(&mut self) -> Result<(), ExitStatus> {
        let start = Instant::now();
        self.remove_shm();
        self.proc.spawn();
        let (cache, out) = (self.cache_log.clone(), self.proc.stderr_path.clone());
        let log = move || {
            let o = read_lossy(&out);
            if o.trim().is_empty() {
                read_lossy(&cache)
            } else {
                o
            }
        };
        let r = self.proc.wait_ready(self.port, "squid", &log);
        if r.is_err() {
            self.remove_shm();
        }
        r?;
        self.startup = start.elapsed();
        Ok(())
    }

    /// Squid removes its shared memory segments on a clean exit only.
    fn remove_shm(&self) {
        remove_stale_shm();
        let prefix = format!("{}-", self.service);
        for name in super::entries(Path::new("/dev/shm")) {
            if name.starts_with(&prefix) && name.ends_with(".shm") {
                let _ = std::fs::remove_file(Path::new("/dev/shm").join(name));
            }
        }
    }

    /// Start again (on the same port, with an empty cache) after a stop.
    #[track_caller]
    pub fn start(&mut self) {
        if self.proc.is_running() {
            return;
        }
        if let Err(status) = self.try_start() {
            panic!(
                "squid exited ({status}) on restart before answering on 127.0.0.1:{}\n$ {}\n{}",
                self.port,
                self.proc.cmdline(),
                self.error_log()
            );
        }
    }

    /// Stop now: SIGTERM (squid closes its port at once), SIGKILL after
    /// [`SQUID_STOP_GRACE`]. The logs stay readable; [`start`](Self::start) starts it again.
    pub fn stop(&mut self) {
        self.proc.stop(libc::SIGTERM, SQUID_STOP_GRACE);
        self.remove_shm();
    }

    /// Clean shutdown: SIGTERM and wait for the exit (about 2 s; SIGKILL after
    /// [`STOP_GRACE`]).
    pub fn shutdown(&mut self) {
        self.proc.stop(libc::SIGTERM, STOP_GRACE);
        self.remove_shm();
    }

    /// SIGKILL (a crash; immediate).
    pub fn kill(&mut self) {
        self.proc.stop(libc::SIGKILL, Duration::ZERO);
        self.remove_shm();
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// The service name (`squid -n`), which names its shared memory segments
    /// (`/dev/shm/<name>-*.shm`).
    pub fn service_name(&self) -> &str {
        &self.service
    }

    /// squid's own directory (configuration, logs, pid file).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `http://127.0.0.1:PORT`, for `HTTP_PROXY` / `curl -x`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// How long the last start took until the port answered.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// The access log so far, parsed, oldest first.
    pub fn requests(&self) -> Vec<ProxyRequest> {
        read_lossy(&self.access_log)
            .lines()
            .filter_map(ProxyRequest::parse)
            .collect()
    }

    /// Requests whose URL contains `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.url.contains(needle))
            .count()
    }

    /// Cache hits among the requests whose URL contains `needle`.
    pub fn hits(&self, needle: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.url.contains(needle) && r.is_hit())
            .count()
    }

    /// Wait (up to `timeout`) until `cond` holds for the access log (squid logs a
    /// transaction when it ends, which may be just after the client has its last byte).
    #[track_caller]
    pub fn wait_requests(
        &self,
        timeout: Duration,
        cond: impl Fn(&[ProxyRequest]) -> bool,
    ) -> Vec<ProxyRequest> {
        wait_until(
            &format!("squid on port {}", self.port),
            timeout,
            || self.requests(),
            cond,
            |v| format!("{}--- cache.log ---\n{}", show_all(v), self.error_log()),
        )
    }

    /// Forget the requests logged so far.
    pub fn clear_log(&self) {
        let _ = File::create(&self.access_log);
    }

    /// squid's cache.log (what it printed with `-d 1`; the file itself if that is empty).
    pub fn error_log(&self) -> String {
        let out = read_lossy(&self.proc.stderr_path);
        if out.trim().is_empty() {
            read_lossy(&self.cache_log)
        } else {
            out
        }
    }
}

impl Default for Squid {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------
// Test CA
// ---------------------------------------------------------------------------------------

/// A CA and a server certificate for `127.0.0.1` and `localhost` signed by it (ECDSA P-256,
/// valid 30 days), made with `openssl` in a temporary directory. Every `TestCa::new()` is
/// a new, unrelated CA: a second one is the "wrong CA" of a test.
pub struct TestCa {
    dir: tempfile::TempDir,
    ca_pem: PathBuf,
    ca_key: PathBuf,
    cert_pem: PathBuf,
    key_pem: PathBuf,
}

static CA_SERIAL: AtomicU64 = AtomicU64::new(1);

/// Run `openssl` in `dir` with the whitespace-separated `args` (file names relative to it).
#[track_caller]
fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args.split_whitespace())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run openssl ({e}); is it installed? (scripts/setup.sh installs it)")
        });
    assert!(
        out.status.success(),
        "openssl {args} (in {}): {}\n{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCa {
    #[track_caller]
    pub fn new() -> TestCa {
        let dir = server_dir("sfsca");
        let d = dir.path();
        let n = CA_SERIAL.fetch_add(1, Ordering::SeqCst);
        std::fs::write(
            d.join("openssl.cnf"),
            format!(
                "[req]\n\
                 distinguished_name = dn\n\
                 prompt = no\n\
                 x509_extensions = v3_ca\n\
                 [dn]\n\
                 CN = spackfs test CA {} {n}\n\
                 [v3_ca]\n\
                 basicConstraints = critical,CA:TRUE\n\
                 keyUsage = critical,keyCertSign,cRLSign\n\
                 subjectKeyIdentifier = hash\n\
                 authorityKeyIdentifier = keyid:always\n",
                std::process::id()
            ),
        )
        .expect("openssl.cnf");
        openssl(
            d,
            "req -x509 -new -config openssl.cnf -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
             -nodes -keyout ca.key -out ca.pem -days 30 -sha256",
        );
        let mut ca = TestCa {
            ca_pem: d.join("ca.pem"),
            ca_key: d.join("ca.key"),
            cert_pem: PathBuf::new(),
            key_pem: PathBuf::new(),
            dir,
        };
        let (cert, key) = ca.issue("server", "IP:127.0.0.1,DNS:localhost");
        ca.cert_pem = cert;
        ca.key_pem = key;
        ca
    }

    /// Issue another server certificate signed by this CA, for the subjectAltName `san`
    /// (e.g. `DNS:wrong.invalid`): `(cert, key)`, named `<name>.pem` and `<name>.key` in
    /// [`dir`](Self::dir). `name` is a plain file name (letters, digits, `-`, `_`).
    #[track_caller]
    pub fn issue(&self, name: &str, san: &str) -> (PathBuf, PathBuf) {
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "certificate name {name:?}"
        );
        let d = self.dir.path();
        std::fs::write(
            d.join(format!("{name}.ext")),
            format!(
                "basicConstraints = critical,CA:FALSE\n\
                 keyUsage = critical,digitalSignature,keyEncipherment\n\
                 extendedKeyUsage = serverAuth\n\
                 subjectAltName = {san}\n\
                 subjectKeyIdentifier = hash\n\
                 authorityKeyIdentifier = keyid,issuer\n"
            ),
        )
        .expect("extension file");
        openssl(
            d,
            &format!(
                "req -new -config openssl.cnf -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
                 -nodes -keyout {name}.key -out {name}.csr -subj /CN={name}"
            ),
        );
        let serial = format!(
            "0x{:x}{:04x}{:x}",
            std::process::id(),
            CA_SERIAL.fetch_add(1, Ordering::SeqCst),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        openssl(
            d,
            &format!(
                "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -set_serial {serial} -days 30 \
                 -sha256 -extfile {name}.ext -out {name}.pem"
            ),
        );
        (d.join(format!("{name}.pem")), d.join(format!("{name}.key")))
    }

    /// The CA certificate (PEM): what a client trusts.
    pub fn ca_pem(&self) -> &Path {
        &self.ca_pem
    }

    /// The server certificate for 127.0.0.1 and localhost (PEM).
    pub fn cert_pem(&self) -> &Path {
        &self.cert_pem
    }

    /// The server certificate's private key (PEM, PKCS#8, unencrypted).
    pub fn key_pem(&self) -> &Path {
        &self.key_pem
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------------------------------
// FaultServer
// ---------------------------------------------------------------------------------------

/// What [`FaultServer`] does to a request instead of answering it normally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Send the body in pieces (a tenth of the rate every 100 ms; one byte at a time below
    /// 10 B/s), each piece no earlier than the rate allows: after `t` seconds at most
    /// `bytes_per_sec * t` body bytes were sent. Headers go out at once.
    Trickle { bytes_per_sec: u64 },
    /// Read the request, then never answer (until the server stops).
    Stall,
    /// Answer this status with an empty body.
    Status(u16),
    /// Announce the full Content-Length, send `after` body bytes, close.
    Truncate { after: usize },
    /// Read the request, then close the connection without answering.
    Close,
    /// Wait this long, then answer normally.
    Delay(Duration),
}

/// A request as [`FaultServer`] saw it.
#[derive(Debug, Clone)]
pub struct FaultRequest {
    pub method: String,
    /// The request target as sent (percent-encoded, with the query).
    pub target: String,
    /// The decoded path, without the query.
    pub path: String,
    /// The headers in order, names in lower case.
    pub headers: Vec<(String, String)>,
    /// When it arrived, since the server was created.
    pub at: Duration,
    /// The fault applied to it, if any.
    pub fault: Option<Fault>,
}

impl FaultRequest {
    /// The first header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Rule {
    prefix: String,
    fault: Fault,
    /// Applies to this many more requests (`None`: to all).
    remaining: Option<usize>,
}

struct FaultShared {
    root: PathBuf,
    created: Instant,
    /// Incremented by every stop: threads of an older generation end.
    generation: AtomicU64,
    rules: Mutex<Vec<Rule>>,
    requests: Mutex<Vec<FaultRequest>>,
    /// Open connections, to shut them down on stop.
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl FaultShared {
    fn stopped(&self, generation: u64) -> bool {
        self.generation.load(Ordering::SeqCst) != generation
    }

    /// The fault of the longest matching prefix (using up one of a limited rule).
    fn pick(&self, path: &str) -> Option<Fault> {
        let mut rules = self.rules.lock().unwrap();
        let rule = rules
            .iter_mut()
            .filter(|r| path.starts_with(&r.prefix) && r.remaining != Some(0))
            .max_by_key(|r| r.prefix.len())?;
        if let Some(n) = rule.remaining.as_mut() {
            *n -= 1;
        }
        Some(rule.fault.clone())
    }

    /// Sleep up to `d` in small steps; false when the server stopped meanwhile.
    fn sleep(&self, generation: u64, d: Duration) -> bool {
        let end = Instant::now() + d;
        loop {
            if self.stopped(generation) {
                return false;
            }
            let now = Instant::now();
            if now >= end {
                return true;
            }
            std::thread::sleep((end - now).min(Duration::from_millis(20)));
        }
    }
}

/// A small HTTP/1.1 server (std::net, a thread per connection, `Connection: close`) that
/// serves the files of a directory (GET and HEAD, single `Range`s, 404 for missing files)
/// and applies a [`Fault`] to the paths under chosen prefixes. It records every request.
/// Stopped on drop: open connections are shut down and the threads joined (bounded).
pub struct FaultServer {
    shared: Arc<FaultShared>,
    port: u16,
    accept: Option<JoinHandle<()>>,
}

impl FaultServer {
    /// Serve `root` on a free port (no faults yet).
    pub fn new(root: &Path) -> FaultServer {
        let shared = Arc::new(FaultShared {
            root: root.to_path_buf(),
            created: Instant::now(),
            generation: AtomicU64::new(0),
            rules: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            threads: Mutex::new(Vec::new()),
        });
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local address").port();
        let mut s = FaultServer {
            shared,
            port,
            accept: None,
        };
        s.run(listener);
        s
    }

    /// Serve `root` with one fault for the paths under `prefix`.
    pub fn with_fault(root: &Path, prefix: &str, fault: Fault) -> FaultServer {
        let s = FaultServer::new(root);
        s.set_fault(prefix, fault);
        s
    }

    fn run(&mut self, listener: TcpListener) {
        let shared = self.shared.clone();
        let generation = shared.generation.load(Ordering::SeqCst);
        let handle = std::thread::Builder::new()
            .name(format!("fault-accept-{}", self.port))
            .spawn(move || {
                for conn in listener.incoming() {
                    if shared.stopped(generation) {
                        break;
                    }
                    let Ok(stream) = conn else { continue };
                    let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
                    if let Ok(clone) = stream.try_clone() {
                        shared.conns.lock().unwrap().insert(id, clone);
                    }
                    let sh = shared.clone();
                    let t =
                        std::thread::Builder::new()
                            .name("fault-conn".into())
                            .spawn(move || {
                                handle_connection(&sh, stream, generation);
                                sh.conns.lock().unwrap().remove(&id);
                            });
                    let mut threads = shared.threads.lock().unwrap();
                    threads.retain(|t| !t.is_finished());
                    if let Ok(t) = t {
                        threads.push(t);
                    }
                }
            })
            .expect("accept thread");
        self.accept = Some(handle);
    }

    /// Apply `fault` to every request whose decoded path starts with `prefix` (replacing an
    /// earlier rule of that prefix; the longest matching prefix wins).
    pub fn set_fault(&self, prefix: &str, fault: Fault) {
        self.add_rule(prefix, fault, None);
    }

    /// Apply `fault` to the next `times` requests under `prefix` only.
    pub fn set_fault_times(&self, prefix: &str, fault: Fault, times: usize) {
        self.add_rule(prefix, fault, Some(times));
    }

    fn add_rule(&self, prefix: &str, fault: Fault, remaining: Option<usize>) {
        let mut rules = self.shared.rules.lock().unwrap();
        rules.retain(|r| r.prefix != prefix);
        rules.push(Rule {
            prefix: prefix.to_string(),
            fault,
            remaining,
        });
    }

    /// Serve everything normally again.
    pub fn clear_faults(&self) {
        self.shared.rules.lock().unwrap().clear();
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The requests so far, in order of arrival.
    pub fn requests(&self) -> Vec<FaultRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Requests whose path starts with `path_prefix`.
    pub fn count(&self, path_prefix: &str) -> usize {
        self.shared
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path.starts_with(path_prefix))
            .count()
    }

    /// Connections open right now.
    pub fn open_connections(&self) -> usize {
        self.shared.conns.lock().unwrap().len()
    }

    /// Stop accepting and drop every open connection (stalled ones included); the requests
    /// stay readable and [`start`](Self::start) serves again on the same port.
    pub fn stop(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        // Unblock accept().
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
        for s in self.shared.conns.lock().unwrap().values() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        join_bounded(accept, deadline, self.port);
        let threads = std::mem::take(&mut *self.shared.threads.lock().unwrap());
        for t in threads {
            join_bounded(t, deadline, self.port);
        }
    }

    /// Serve again on the same port after [`stop`](Self::stop).
    #[track_caller]
    pub fn start(&mut self) {
        if self.accept.is_some() {
            return;
        }
        let start = Instant::now();
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) if start.elapsed() < Duration::from_secs(5) => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!(
                    "FaultServer: cannot bind 127.0.0.1:{} again: {e}",
                    self.port
                ),
            }
        };
        self.run(listener);
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn join_bounded(t: JoinHandle<()>, deadline: Instant, port: u16) {
    while !t.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if t.is_finished() {
        let _ = t.join();
    } else {
        // Not a panic: this may run while a test unwinds.
        eprintln!("FaultServer on port {port}: a thread did not stop in time; left behind");
    }
}

/// Read up to the end of the request head; `None` when the client or the server went away.
fn read_head(sh: &FaultShared, stream: &mut TcpStream, generation: u64) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end);
            return Some(buf);
        }
        if buf.len() > 64 * 1024 || sh.stopped(generation) {
            return None;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return None,
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// A single `bytes=` range of a body of `len` bytes: `Some(Ok((start, end_exclusive)))`,
/// `Some(Err(()))` when unsatisfiable, `None` when absent or not a single byte range.
fn parse_range(h: Option<&str>, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = h?.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let r = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 {
            return Some(Err(()));
        }
        (len.saturating_sub(n), len)
    } else {
        let start: u64 = a.parse().ok()?;
        let end = if b.is_empty() {
            len
        } else {
            b.parse::<u64>().ok()?.saturating_add(1).min(len)
        };
        if start >= len || end <= start {
            return Some(Err(()));
        }
        (start, end)
    };
    Some(Ok(r))
}

fn handle_connection(sh: &FaultShared, mut stream: TcpStream, generation: u64) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = stream.set_nodelay(true);
    let Some(head) = read_head(sh, &mut stream, generation) else {
        return;
    };
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    // Absolute form (through a proxy): keep the path.
    let origin_form = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]).to_string(),
        None => target.clone(),
    };
    let path = percent_decode(origin_form.split('?').next().unwrap_or(""));
    let fault = sh.pick(&path);
    let req = FaultRequest {
        method: method.clone(),
        target,
        path: path.clone(),
        headers,
        at: sh.created.elapsed(),
        fault: fault.clone(),
    };
    let range = req.header("range").map(str::to_string);
    sh.requests.lock().unwrap().push(req);

    let respond =
        |stream: &mut TcpStream, status: u16, extra: &str, body: &[u8], head_only: bool| {
            let h = format!(
                "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
                reason(status),
                body.len()
            );
            let _ = stream.write_all(h.as_bytes());
            if !head_only {
                let _ = stream.write_all(body);
            }
        };

    match &fault {
        Some(Fault::Stall) => {
            while sh.sleep(generation, Duration::from_secs(1)) {}
            return;
        }
        Some(Fault::Close) => return,
        Some(Fault::Status(code)) => {
            respond(&mut stream, *code, "", b"", true);
            let _ = stream.shutdown(Shutdown::Write);
            return;
        }
        Some(Fault::Delay(d)) => {
            let still_running = sh.sleep(generation, *d);
            if !still_running {
                return;
            }
        }
        _ => {}
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        respond(&mut stream, 405, "Allow: GET, HEAD\r\n", b"", false);
        return;
    }
    let rel = path.trim_start_matches('/');
    let file = sh.root.join(rel);
    let body = if rel.split('/').any(|c| c == "..") {
        None
    } else {
        std::fs::read(&file).ok()
    };
    let Some(body) = body else {
        respond(
            &mut stream,
            404,
            "Content-Type: text/plain\r\n",
            b"not found\n",
            head_only,
        );
        return;
    };
    let len = body.len() as u64;
    let (status, part, extra) = match parse_range(range.as_deref(), len) {
        Some(Ok((a, b))) => (
            206,
            &body[a as usize..b as usize],
            format!("Content-Range: bytes {a}-{}/{len}\r\n", b - 1),
        ),
        Some(Err(())) => {
            respond(
                &mut stream,
                416,
                &format!("Content-Range: bytes */{len}\r\n"),
                b"",
                head_only,
            );
            return;
        }
        None => (200, &body[..], String::new()),
    };
    let h = format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nAccept-Ranges: bytes\r\n{extra}Connection: close\r\n\r\n",
        reason(status),
        part.len()
    );
    if stream.write_all(h.as_bytes()).is_err() || head_only {
        return;
    }
    match fault {
        Some(Fault::Truncate { after }) => {
            let _ = stream.write_all(&part[..after.min(part.len())]);
            let _ = stream.flush();
            let _ = stream.shutdown(Shutdown::Write);
        }
        Some(Fault::Trickle { bytes_per_sec }) => {
            let rate = bytes_per_sec.max(1);
            let piece = (rate / 10).max(1) as usize;
            let start = Instant::now();
            let mut sent = 0usize;
            while sent < part.len() {
                let n = piece.min(part.len() - sent);
                // The earliest moment at which sent + n bytes keep within the rate.
                let due = start + Duration::from_secs_f64((sent + n) as f64 / rate as f64);
                let now = Instant::now();
                if due > now && !sh.sleep(generation, due - now) {
                    return;
                }
                if stream.write_all(&part[sent..sent + n]).is_err() {
                    return;
                }
                sent += n;
            }
        }
        _ => {
            let _ = stream.write_all(part);
        }
    }
}

//! An S3 server on loopback that a test starts and stops itself: moto's standalone server
//! (`moto_server`, from the virtual environment scripts/setup.sh makes at `$SPACKFS_VENV`,
//! default `~/.cache/spackfs-venv`), with buckets filled through boto3 from the same
//! environment.
//!
//! moto checks request signatures (SigV4) only when `INITIAL_NO_AUTH_ACTION_COUNT` is set
//! for the server: the first that many requests are free, every later one must be signed
//! by an access key that exists in moto's IAM *and* whose user has a policy allowing the
//! action (else `AccessDenied`). [`Moto::with_auth`] spends its three free requests on
//! `iam create_user`, `put_user_policy` (allow `*`) and `create_access_key`, and hands that
//! key to the test ([`Moto::credentials`]); a wrong key id then gets 403
//! `InvalidAccessKeyId`, a wrong secret 403 `SignatureDoesNotMatch`, an unsigned request
//! 403 (curl; boto3's unsigned client gets a 500 from a moto bug). The state lives in
//! memory: a stopped moto has forgotten its buckets.
//!
//! Same conventions as servers.rs: a free port on 127.0.0.1, the process tied to the test
//! process, stopped on drop, every wait bounded.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use super::servers::{free_port, read_lossy, server_dir, show_all, wait_until, Proc, STOP_GRACE};
use super::{path_str, strip_ansi, Run};

/// The region the helper scripts use (moto accepts any).
pub const REGION: &str = "us-east-1";

/// The virtual environment holding moto and boto3 (`SPACKFS_VENV`, else
/// `$HOME/.cache/spackfs-venv`).
pub fn venv() -> PathBuf {
    if let Some(v) = std::env::var_os("SPACKFS_VENV") {
        return PathBuf::from(v);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/spackfs-venv")
}

/// Run the real `spackfs` binary (as `super::spackfs` does) with extra environment
/// variables (credentials named by a mirrors.yaml); the proxy variables are removed.
pub fn spackfs_with_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spackfs"));
    cmd.args(args)
        .env_remove("LD_LIBRARY_PATH")
        .env("NO_COLOR", "1")
        .env("SPACKFS_LOG", "info");
    for v in super::mount::PROXY_VARS {
        cmd.env_remove(v);
    }
    cmd.envs(env.iter().copied());
    let cmdline = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmdline}: {e}"));
    Run {
        cmdline,
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: strip_ansi(&String::from_utf8_lossy(&out.stderr)),
    }
}

/// An access key pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub key_id: String,
    pub secret: String,
}

impl Credentials {
    /// Keys that exist nowhere.
    pub fn bogus() -> Credentials {
        Credentials {
            key_id: "AKIAIOSFODNN7BOGUS00".into(),
            secret: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYBOGUSKEY00".into(),
        }
    }
}

/// One line of moto's (werkzeug's) request log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MotoRequest {
    pub method: String,
    /// Path-style: `/<bucket>/<key>`, percent-encoded as sent, without the query.
    pub path: String,
    pub query: Option<String>,
    pub status: u16,
}

impl MotoRequest {
    /// `127.0.0.1 - - [02/Dec/2026 05:16:06] "GET /b/k HTTP/1.1" 403 -` (colours removed).
    fn parse(line: &str) -> Option<MotoRequest> {
        let line = strip_ansi(line);
        let (head, rest) = line.split_once("] \"")?;
        if !head.starts_with("127.0.0.1 ") {
            return None;
        }
        let (request, rest) = rest.split_once("\" ")?;
        let mut rf = request.split(' ');
        let method = rf.next()?.to_string();
        let target = rf.next()?;
        if !rf.next()?.starts_with("HTTP/") {
            return None;
        }
        let status = rest.split(' ').next()?.parse().ok()?;
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (target.to_string(), None),
        };
        Some(MotoRequest {
            method,
            path,
            query,
            status,
        })
    }
}

/// boto3 helpers run by the environment's Python: `auth`, `mkbucket`, `upload`, `list`.
const S3_HELPER_PY: &str = r#"
import json, os, sys
import boto3, botocore
from botocore.config import Config

ep = os.environ["MOTO_ENDPOINT"]
region = os.environ.get("MOTO_REGION", "us-east-1")
cfg = Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=15,
             s3={"addressing_style": "path"})

def client(svc):
    return boto3.client(svc, endpoint_url=ep, region_name=region, config=cfg,
                        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"])

cmd = sys.argv[1]
if cmd == "auth":
    iam = client("iam")
    iam.create_user(UserName="spackfs-test")
    iam.put_user_policy(UserName="spackfs-test", PolicyName="everything", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    k = iam.create_access_key(UserName="spackfs-test")["AccessKey"]
    print(json.dumps({"key_id": k["AccessKeyId"], "secret": k["SecretAccessKey"]}))
elif cmd == "mkbucket":
    client("s3").create_bucket(Bucket=sys.argv[2])
elif cmd == "upload":
    bucket, prefix, top = sys.argv[2], sys.argv[3].strip("/"), sys.argv[4]
    s3 = client("s3")
    n = 0
    for d, dirs, files in os.walk(top, followlinks=True):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(d, f)
            rel = os.path.relpath(p, top)
            key = prefix + "/" + rel if prefix else rel
            with open(p, "rb") as fh:
                s3.put_object(Bucket=bucket, Key=key, Body=fh.read())
            n += 1
    print(n)
elif cmd == "list":
    bucket, prefix = sys.argv[2], sys.argv[3]
    try:
        keys = []
        for page in client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", [])]
        print(json.dumps({"keys": keys}))
    except botocore.exceptions.ClientError as e:
        print(json.dumps({"error": e.response["Error"].get("Code", ""),
                          "status": e.response["ResponseMetadata"].get("HTTPStatusCode", 0)}))
else:
    sys.exit("unknown command " + cmd)
"#;

/// Why a listing was refused: S3's error code and the HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Error {
    pub code: String,
    pub status: u16,
}

/// A running (or stopped) moto S3 server on 127.0.0.1; stopped on drop.
pub struct Moto {
    port: u16,
    creds: Credentials,
    auth: bool,
    proc: Proc,
    helper: PathBuf,
    startup: Duration,
    dir: tempfile::TempDir,
}

impl Moto {
    /// moto without credential checking (any key, or none, is accepted).
    #[track_caller]
    pub fn new() -> Moto {
        Moto::spawn(false)
    }

    /// moto checking SigV4 signatures against its IAM: only [`credentials`](Self::credentials)
    /// are accepted.
    #[track_caller]
    pub fn with_auth() -> Moto {
        Moto::spawn(true)
    }

    #[track_caller]
    fn spawn(auth: bool) -> Moto {
        let venv = venv();
        let program = venv.join("bin/moto_server");
        assert!(
            program.is_file(),
            "{} does not exist: scripts/setup.sh installs moto there (or set SPACKFS_VENV)",
            program.display()
        );
        let dir = server_dir("sfsmoto");
        let d = dir.path().to_path_buf();
        let helper = d.join("s3_helper.py");
        std::fs::write(&helper, S3_HELPER_PY).expect("helper script");
        let mut proc = Proc::new(
            path_str(&program).to_string(),
            Vec::new(),
            d.join("output.log"),
        );
        if auth {
            proc.env
                .push(("INITIAL_NO_AUTH_ACTION_COUNT".into(), "3".into()));
        }
        let mut moto = Moto {
            port: 0,
            creds: Credentials {
                key_id: "testing".into(),
                secret: "testing".into(),
            },
            auth,
            proc,
            helper,
            startup: Duration::ZERO,
            dir,
        };
        for attempt in 0..3 {
            moto.port = free_port();
            moto.proc.args = ["-H", "127.0.0.1", "-p"]
                .iter()
                .map(OsString::from)
                .chain([OsString::from(moto.port.to_string())])
                .collect();
            match moto.try_start() {
                Ok(()) => break,
                Err(status) => {
                    let log = moto.log();
                    if attempt < 2 && log.contains("Address already in use") {
                        continue;
                    }
                    panic!(
                        "moto_server exited ({status}) before answering on 127.0.0.1:{}\n$ {}\n{log}",
                        moto.port,
                        moto.proc.cmdline()
                    );
                }
            }
        }
        if auth {
            let run = moto.helper_run(&moto.creds.clone(), &["auth"]);
            assert_eq!(run.code, Some(0), "creating moto's IAM access key:\n{run}");
            let v: serde_json::Value =
                serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {run}"));
            moto.creds = Credentials {
                key_id: v["key_id"].as_str().expect("key_id").to_string(),
                secret: v["secret"].as_str().expect("secret").to_string(),
            };
        }
        moto
    }

    fn try_start(&mut self) -> Result<(), ExitStatus> {
        let start = Instant::now();
        self.proc.spawn();
        let out = self.proc.stderr_path.clone();
        let log = move || read_lossy(&out);
        self.proc.wait_ready(self.port, "moto_server", &log)?;
        self.startup = start.elapsed();
        Ok(())
    }

    /// Run the boto3 helper with `creds`.
    fn helper_run(&self, creds: &Credentials, args: &[&str]) -> Run {
        let python = venv().join("bin/python");
        let mut cmd = Command::new(&python);
        cmd.arg(&self.helper)
            .args(args)
            .env("MOTO_ENDPOINT", self.endpoint())
            .env("MOTO_REGION", REGION)
            .env("AWS_ACCESS_KEY_ID", &creds.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &creds.secret)
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("NO_PROXY", "*")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy");
        let cmdline = format!("{cmd:?}");
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmdline}: {e}"));
        Run {
            cmdline,
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Create `bucket` (with the test's credentials).
    #[track_caller]
    pub fn create_bucket(&self, bucket: &str) {
        let run = self.helper_run(&self.creds, &["mkbucket", bucket]);
        assert_eq!(
            run.code,
            Some(0),
            "create bucket {bucket}:\n{run}\n{}",
            self.log()
        );
    }

    /// Upload every file under `dir` (following symlinks) to `bucket`, keyed by its path
    /// relative to `dir` under `prefix` (`""`: at the top); the number of files.
    #[track_caller]
    pub fn upload_dir(&self, bucket: &str, prefix: &str, dir: &Path) -> usize {
        let run = self.helper_run(&self.creds, &["upload", bucket, prefix, path_str(dir)]);
        assert_eq!(
            run.code,
            Some(0),
            "upload {}:\n{run}\n{}",
            dir.display(),
            self.log()
        );
        run.stdout.trim().parse().expect("file count")
    }

    /// Create `bucket` and upload `dir` into it under `prefix`; the number of files.
    #[track_caller]
    pub fn bucket_with(&self, bucket: &str, prefix: &str, dir: &Path) -> usize {
        self.create_bucket(bucket);
        self.upload_dir(bucket, prefix, dir)
    }

    /// The keys under `prefix` in `bucket`, listed with `creds` (`Err`: refused).
    #[track_caller]
    pub fn list_with(
        &self,
        creds: &Credentials,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<String>, S3Error> {
        let run = self.helper_run(creds, &["list", bucket, prefix]);
        assert_eq!(run.code, Some(0), "list {bucket}:\n{run}");
        let v: serde_json::Value =
            serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {run}"));
        if let Some(keys) = v.get("keys") {
            Ok(keys
                .as_array()
                .expect("keys")
                .iter()
                .map(|k| k.as_str().expect("key").to_string())
                .collect())
        } else {
            Err(S3Error {
                code: v["error"].as_str().unwrap_or("").to_string(),
                status: v["status"].as_u64().unwrap_or(0) as u16,
            })
        }
    }

    /// The keys under `prefix`, listed with the test's credentials.
    #[track_caller]
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<String> {
        self.list_with(&self.creds, bucket, prefix)
            .unwrap_or_else(|e| panic!("list {bucket}/{prefix}: {e:?}\n{}", self.log()))
    }

    /// The access key that moto accepts (with [`with_auth`](Self::with_auth): the only
    /// one; else anything goes and this is `testing`/`testing`).
    pub fn credentials(&self) -> &Credentials {
        &self.creds
    }

    /// Are signatures checked?
    pub fn checks_auth(&self) -> bool {
        self.auth
    }

    /// `http://127.0.0.1:PORT`: the `endpoint_url`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// Everything moto printed (werkzeug's request lines, tracebacks).
    pub fn log(&self) -> String {
        strip_ansi(&read_lossy(&self.proc.stderr_path))
    }

    /// The requests so far, oldest first (the helper's own included).
    pub fn requests(&self) -> Vec<MotoRequest> {
        read_lossy(&self.proc.stderr_path)
            .lines()
            .filter_map(MotoRequest::parse)
            .collect()
    }

    /// GETs of keys whose path starts with `/<bucket>/<key prefix>` answered 200.
    pub fn served(&self, path_prefix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.status == 200 && r.path.starts_with(path_prefix))
            .count()
    }

    /// Wait (up to `timeout`) until `cond` holds for the request log (werkzeug logs a
    /// request when its response is done).
    #[track_caller]
    pub fn wait_requests(
        &self,
        timeout: Duration,
        cond: impl Fn(&[MotoRequest]) -> bool,
    ) -> Vec<MotoRequest> {
        wait_until(
            &format!("moto on port {}", self.port),
            timeout,
            || self.requests(),
            cond,
            |v| format!("{}--- moto output ---\n{}", show_all(v), self.log()),
        )
    }

    /// Stop (SIGTERM, SIGKILL after [`STOP_GRACE`]); its state is gone.
    pub fn stop(&mut self) {
        self.proc.stop(libc::SIGTERM, STOP_GRACE);
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }
}

impl Default for Moto {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.proc.stop(libc::SIGTERM, STOP_GRACE);
    }
}

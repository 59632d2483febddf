//! Shared helpers of the integration tests: where the fixtures are, running the real
//! `spackfs` binary and the programs it installs, reading and writing tarballs, generated
//! (hostile) mirrors, independent references of the text and binary relocation rules, and
//! the mutations of valid inputs that the property tests feed the parsers.
//!
//! Every test binary includes this module and uses only part of it.
#![allow(dead_code)]

pub mod binary_reference;
pub mod cache;
pub mod mirror;
pub mod mount;
pub mod mutate;
pub mod reference;
pub mod registry;
pub mod s3;
pub mod servers;
pub mod tarball;

use std::ffi::OsStr;
use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Fingerprint of the key that signed the small fixture mirrors (v3 and v2).
pub const FIXTURE_FPR: &str = "3B013CE4DA967E28C2F5EB993B65F4B5EC0AB260";
/// Fingerprint of the realstack signing key.
pub const REALSTACK_FPR: &str = "9AD9772D2BF3B1C8F189FCE52991C9D17E6614CE";

/// The shared fixtures directory.
pub struct Fixtures {
    pub dir: PathBuf,
}

/// Locate the fixtures (`SPACKFS_FIXTURES`, else `<manifest dir>/../shared/fixtures`).
/// Absent fixtures fail the test under `CI=true`; otherwise the test is skipped visibly.
pub fn fixtures() -> Option<Fixtures> {
    let dir = std::env::var_os("SPACKFS_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"));
    if dir.join("spack-v3-signed/mirror").is_dir() {
        return Some(Fixtures { dir });
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("fixtures not found at {} (CI=true)", dir.display());
    }
    // Written to the stderr handle directly, which libtest does not capture.
    let _ = writeln!(
        std::io::stderr().lock(),
        "SKIP: fixtures not found at {}",
        dir.display()
    );
    None
}

impl Fixtures {
    pub fn mirror(&self, cache: &str) -> PathBuf {
        self.dir.join(cache).join("mirror")
    }

    /// Public key of the small fixture mirrors.
    pub fn fixture_key(&self) -> PathBuf {
        self.dir.join("spack-v3-signed/fixture-signing-key.pub.asc")
    }

    /// Copy the mirror of fixture cache `cache` to `dest` (for tests that alter a mirror:
    /// the fixtures themselves are never touched).
    pub fn copy_mirror(&self, cache: &str, dest: &Path) -> PathBuf {
        run_program("cp", ["-a", path_str(&self.mirror(cache)), path_str(dest)]).assert_ok();
        dest.to_path_buf()
    }

    pub fn realstack_key(&self) -> PathBuf {
        self.dir
            .join("spack-v3-realstack/realstack-signing-key.pub.asc")
    }
}

/// One of the three small fixture caches, with the facts from the fixtures README.
pub struct FixtureCache {
    /// Directory under the fixtures (holding `mirror/`).
    pub name: &'static str,
    pub signed: bool,
    pub libgreet_hash: &'static str,
    pub greet_hash: &'static str,
    pub bulk_hash: &'static str,
    /// The unpadded store root the packages were built in.
    pub build_store: &'static str,
    /// The padded build root (`buildpath`).
    pub buildpath: &'static str,
}

pub const V3_SIGNED: FixtureCache = FixtureCache {
    name: "spack-v3-signed",
    signed: true,
    libgreet_hash: "guhtpijvlvr3tcgzl5zl3c6avrmpy6cw",
    greet_hash: "lvktxdbzy5xjz4y42kaknkq7gwcfi4qz",
    bulk_hash: "tskn7etrx423ghxutm3juzx3ekk5qgfs",
    build_store: "/opt/fixture-store",
    buildpath: "/opt/fixture-store/__spack_path_placeholder__/__spack_path_placeholder__/__spack_path_placeholder__/__spack_path_placeholder__/_",
};

pub const V3_UNSIGNED: FixtureCache = FixtureCache {
    name: "spack-v3-unsigned",
    signed: false,
    ..V3_SIGNED
};

pub const V2_SIGNED: FixtureCache = FixtureCache {
    name: "spack-v2-signed",
    signed: true,
    libgreet_hash: "fr7vhydcwod6mpsytckc7bwea3mewvip",
    greet_hash: "jxxazylvzmvqv664uxmpih7dzj7fbabp",
    bulk_hash: "nr3guqlfmqz2rj5haer4uit52m4vb3is",
    build_store: "/opt/fixture-store-v2",
    buildpath: "/opt/fixture-store-v2/__spack_path_placeholder__/__spack_path_placeholder__/__spack_path_placeholder__/__spack_path_placeholder_",
};

impl FixtureCache {
    /// `spackfs ls` of this cache's packages succeeded and listed the three fixture
    /// packages, one line each, with their version and short hash, each line ending with
    /// `signer` (a fingerprint or `unsigned`).
    #[track_caller]
    pub fn assert_listed(&self, run: &Run, signer: &str) {
        run.assert_ok();
        let lines: Vec<&str> = run.stdout.lines().collect();
        assert_eq!(lines.len(), 3, "three packages expected:\n{run}");
        for (name, hash) in [
            ("fixture-libgreet", self.libgreet_hash),
            ("fixture-greet", self.greet_hash),
            ("fixture-bulk", self.bulk_hash),
        ] {
            let line = lines
                .iter()
                .find(|l| l.split_whitespace().next() == Some(name))
                .unwrap_or_else(|| panic!("{name} not listed:\n{run}"));
            assert!(
                line.contains(&hash[..7]),
                "{name}: short hash missing: {line}\n{run}"
            );
            assert!(
                line.contains("1.0"),
                "{name}: version missing: {line}\n{run}"
            );
            assert!(
                line.trim_end().ends_with(signer),
                "{name}: signer {signer} expected: {line}\n{run}"
            );
        }
    }

    /// `--key <fixture key>` or `--unsigned`.
    pub fn trust_args(&self, fx: &Fixtures) -> Vec<String> {
        if self.signed {
            vec!["--key".into(), path_str(&fx.fixture_key()).into()]
        } else {
            vec!["--unsigned".into()]
        }
    }

    /// Prefix of a package under `root` with the default projection.
    pub fn prefix(&self, root: &Path, name: &str, hash: &str) -> PathBuf {
        root.join(format!("linux-x86_64/{name}-1.0-{hash}"))
    }

    pub fn greet_prefix(&self, root: &Path) -> PathBuf {
        self.prefix(root, "fixture-greet", self.greet_hash)
    }

    pub fn libgreet_prefix(&self, root: &Path) -> PathBuf {
        self.prefix(root, "fixture-libgreet", self.libgreet_hash)
    }

    pub fn bulk_prefix(&self, root: &Path) -> PathBuf {
        self.prefix(root, "fixture-bulk", self.bulk_hash)
    }

    /// Install `specs` from this cache into `root`.
    pub fn install(&self, fx: &Fixtures, root: &Path, specs: &[&str]) -> Run {
        self.install_with(fx, root, &[], specs)
    }

    /// Install with `extra` options.
    pub fn install_with(&self, fx: &Fixtures, root: &Path, extra: &[&str], specs: &[&str]) -> Run {
        let trust = self.trust_args(fx);
        let mut args: Vec<&str> = trust.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        install(&fx.mirror(self.name), root, &args, specs)
    }
}

/// A path as `&str` (all test paths are UTF-8).
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// A fresh temporary directory directly under `/tmp` (short install roots).
pub fn short_tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sfs")
        .tempdir_in("/tmp")
        .expect("temporary directory")
}

/// The outcome of running a program.
pub struct Run {
    pub cmdline: String,
    pub code: Option<i32>,
    pub stdout: String,
    /// Standard error with ANSI colour codes removed.
    pub stderr: String,
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "$ {}\nexit: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline, self.code, self.stdout, self.stderr
        )
    }
}

impl Run {
    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "expected success:\n{self}");
        self
    }

    #[track_caller]
    pub fn assert_failed(&self) -> &Self {
        assert!(
            matches!(self.code, Some(c) if c != 0),
            "expected a non-zero exit:\n{self}"
        );
        self
    }

    /// Every needle appears in stderr.
    #[track_caller]
    pub fn assert_stderr_has(&self, needles: &[&str]) -> &Self {
        for n in needles {
            assert!(self.stderr.contains(n), "stderr lacks {n:?}:\n{self}");
        }
        self
    }

    /// Some stderr line names all of the needles together (one error message).
    #[track_caller]
    pub fn assert_stderr_line_has(&self, needles: &[&str]) -> &Self {
        assert!(
            self.stderr
                .lines()
                .any(|l| needles.iter().all(|n| l.contains(n))),
            "no stderr line contains all of {needles:?}:\n{self}"
        );
        self
    }
}

/// Remove ANSI escape sequences (`ESC [ ... letter`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Run a program with a clean library path and no colours.
pub fn run_program<I, S>(program: impl AsRef<OsStr>, args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program.as_ref());
    cmd.args(args)
        .env_remove("LD_LIBRARY_PATH")
        .env("NO_COLOR", "1")
        .env("SPACKFS_LOG", "info");
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

/// Run the real `spackfs` binary.
pub fn spackfs<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_program(env!("CARGO_BIN_EXE_spackfs"), args)
}

/// `spackfs install MIRROR --root ROOT EXTRA... SPECS...`
pub fn install(mirror: &Path, root: &Path, extra: &[&str], specs: &[&str]) -> Run {
    let mut args = vec!["install", path_str(mirror), "--root", path_str(root)];
    args.extend_from_slice(extra);
    args.extend_from_slice(specs);
    spackfs(args)
}

/// Collapse runs of `/` to one, as `bin/greet` does in its path lines.
pub fn collapse_slashes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

/// The programs of fixture-greet that must all print the greeting.
pub const GREET_PROGRAMS: [&str; 5] = [
    "bin/greet",
    "bin/greet-hard",
    "bin/greet-abs",
    "bin/greet-rel",
    "bin/greet-wrapper.sh",
];

/// The five lines `bin/greet` prints after correct relocation (fixtures README).
pub fn expected_greet_output(greet_prefix: &Path, libgreet_prefix: &Path) -> String {
    format!(
        "Hello from fixture-libgreet 1.0.0 (message.txt read at run time)\n\
         libgreet version: 1.0.0\n\
         greet prefix: {}\n\
         libgreet datadir: {}/share/greet\n\
         selfcheck: fixture-greet 1.0 selfcheck ok\n",
        collapse_slashes(path_str(greet_prefix)),
        collapse_slashes(path_str(libgreet_prefix)),
    )
}

/// `(st_dev, st_ino)` of a path (not following symlinks).
pub fn inode(p: &Path) -> (u64, u64) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.dev(), m.ino())
}

/// Permission bits (including setuid/setgid/sticky) of a path, not following symlinks.
pub fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

/// Is `needle` somewhere in `hay`?
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Number of (possibly overlapping) occurrences of `needle` in `hay`.
pub fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

/// Entries directly in `dir` (empty when it does not exist).
pub fn entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Every path below `dir` (recursively, not following symlinks).
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.expect("dir entry").path();
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

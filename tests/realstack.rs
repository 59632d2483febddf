//! Real software (`file` and its dependencies, built by Spack) installed into the fixed root
//! `/tmp/realstack-root`, compared entry by entry with the tree Spack itself produced there,
//! and run. The root is fixed by the ground truth, so one test holds a file lock on it.

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use common::{fixtures, install, path_str, run_program};

const ROOT: &str = "/tmp/realstack-root";

/// An exclusive lock on `/tmp/realstack-root.lock`, held while the value lives.
struct RootLock {
    _file: File,
}

impl RootLock {
    fn acquire() -> Self {
        let f = File::create(format!("{ROOT}.lock")).expect("lock file");
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
        RootLock { _file: f }
    }
}

#[test]
fn realstack_file_installs_like_spack_and_runs() {
    let Some(fx) = fixtures() else { return };
    let _lock = RootLock::acquire();
    let root = Path::new(ROOT);
    if root.exists() {
        std::fs::remove_dir_all(root).expect("remove old realstack root");
    }
    let key = fx.realstack_key();
    let run = install(
        &fx.mirror("spack-v3-realstack"),
        root,
        &["--key", path_str(&key)],
        &["file"],
    );
    run.assert_ok();
    assert!(
        run.stdout.contains("installed 6 package(s)"),
        "file and its five dependencies:\n{run}"
    );

    let tree = run_program(
        "python3",
        [path_str(&fx.dir.join("tools/tree-manifest.py")), ROOT],
    );
    tree.assert_ok();
    let expected =
        std::fs::read_to_string(fx.dir.join("spack-v3-realstack/spack-installed-tree.txt"))
            .expect("spack-installed-tree.txt");
    let ours: Vec<&str> = tree.stdout.lines().collect();
    let spack: Vec<&str> = expected.lines().collect();
    for (i, (a, b)) in ours.iter().zip(&spack).enumerate() {
        assert_eq!(a, b, "tree line {} differs (ours, then Spack's)", i + 1);
    }
    assert_eq!(ours.len(), spack.len(), "number of tree entries");

    let file = run_program(
        root.join("linux-x86_64/file-5.44-bf57zikkqvfnjy2z6hskq4e5iftfafgn/bin/file"),
        ["/bin/ls"],
    );
    file.assert_ok();
    assert!(file.stdout.starts_with("/bin/ls: ELF 64-bit LSB"), "{file}");
    let zstd = run_program(
        root.join("linux-x86_64/zstd-1.5.4-4pk5gwx3qursby6fl7ryplex4eeuz73b/bin/zstd"),
        ["--version"],
    );
    zstd.assert_ok();
    assert!(
        zstd.stdout
            .contains("*** Zstandard CLI (64-bit) v1.5.4, by Yann Collet ***"),
        "{zstd}"
    );
}

//! The benchmark generators (examples/) work when given a relative output directory: they
//! run compilers in other directories, so the path must be made absolute first.

mod common;

use std::path::PathBuf;
use std::process::Command;

/// An example binary `cargo test` built beside this test (target/<profile>/examples/).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let path = dir.join("examples").join(name);
    assert!(
        path.is_file(),
        "{} was not built (cargo test builds the examples)",
        path.display()
    );
    path
}

#[track_caller]
fn generates_into_a_relative_directory(name: &str, args: &[&str]) {
    let tmp = common::short_tempdir();
    let out = Command::new(example(name))
        .arg("out")
        .args(args)
        .current_dir(tmp.path())
        .output()
        .expect("run the generator");
    assert!(
        out.status.success(),
        "{name} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let index = tmp
        .path()
        .join("out/mirror/v3/manifests/index/index.manifest.json");
    assert!(
        index.is_file(),
        "{name}: no mirror in the relative directory"
    );
}

#[test]
fn bench_mirror_accepts_a_relative_output_directory() {
    generates_into_a_relative_directory(
        "bench_mirror",
        &[
            "--packages",
            "2",
            "--mb-per-package",
            "0.05",
            "--small-files",
            "3",
        ],
    );
}

#[test]
fn bench_read_mirror_accepts_a_relative_output_directory() {
    generates_into_a_relative_directory(
        "bench_read_mirror",
        &[
            "--big-mib",
            "1",
            "--small-files",
            "5",
            "--deps",
            "1",
            "--dep-mb",
            "0.05",
        ],
    );
}

#[test]
fn bench_remote_mirror_accepts_a_relative_output_directory() {
    generates_into_a_relative_directory("bench_remote_mirror", &["--files", "20"]);
}

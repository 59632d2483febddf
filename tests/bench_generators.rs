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

/// The python-shaped stack of `bench/first-touch` and `bench/install`: generated small, it
/// installs, and its `bin/python3` runs from the relocated prefix, loading its libraries
/// from the dependencies' prefixes and naming its own prefix.
#[test]
fn bench_stack_mirror_installs_and_its_python3_runs() {
    let args = [
        "--python-mb",
        "2",
        "--py-files",
        "120",
        "--extensions",
        "3",
        "--small-mb",
        "0.5",
    ];
    generates_into_a_relative_directory("bench_stack_mirror", &args);
    let tmp = common::short_tempdir();
    let out = Command::new(example("bench_stack_mirror"))
        .arg(tmp.path().join("out"))
        .args(args)
        .output()
        .expect("run the generator");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = tmp.path().join("r");
    let mirror = tmp.path().join("out/mirror");
    let run = common::install(&mirror, &root, &["--unsigned"], &["python"]);
    run.assert_ok();
    let bins: Vec<PathBuf> = std::fs::read_dir(root.join("linux-x86_64"))
        .expect("projection dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin/python3"))
        .filter(|p| p.is_file())
        .collect();
    assert_eq!(bins.len(), 1, "one python3 installed:\n{run}");
    let py = Command::new(&bins[0]).output().expect("run python3");
    let stdout = String::from_utf8_lossy(&py.stdout);
    assert!(
        py.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&py.stderr)
    );
    assert!(
        stdout.starts_with("python3: 5 libraries loaded"),
        "python3 said: {stdout}"
    );
    let prefix = bins[0].parent().and_then(|b| b.parent()).expect("prefix");
    assert!(
        common::collapse_slashes(&stdout).contains(common::path_str(prefix)),
        "python3 names its relocated prefix {}: {stdout}",
        prefix.display()
    );
}

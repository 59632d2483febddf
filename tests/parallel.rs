//! Many packages installed in parallel, by one process and by several processes sharing
//! one root: every package lands once, complete, and no staging is left behind.

mod common;

use common::mirror::{GenPkg, Lists, TestMirror};
use common::{entries, Run};

const PACKAGES: usize = 40;

/// A mirror of `PACKAGES` small packages `p00`, `p01`, ... each with a relocated script.
fn many_packages() -> (TestMirror, Vec<GenPkg>) {
    let mut mirror = TestMirror::unsigned();
    let mut pkgs = Vec::new();
    for i in 0..PACKAGES {
        let pkg = GenPkg::new(&format!("p{i:02}"));
        let script = format!("#!/bin/sh\necho {}\n", pkg.prefix);
        let tgz = pkg.tgz(
            |t| {
                t.dir(&pkg.member("bin"));
                t.file(&pkg.member("bin/where.sh"), 0o755, script.as_bytes());
            },
            &Lists::texts(&["bin/where.sh"]),
        );
        mirror.add(&pkg, &tgz);
        pkgs.push(pkg);
    }
    mirror.finish();
    (mirror, pkgs)
}

fn names(pkgs: &[GenPkg]) -> Vec<String> {
    pkgs.iter().map(|p| p.name.clone()).collect()
}

#[track_caller]
fn assert_all_installed(mirror: &TestMirror, pkgs: &[GenPkg], runs: &[Run]) {
    let root = mirror.root();
    for pkg in pkgs {
        let prefix = pkg.installed_prefix(&root);
        let script = std::fs::read_to_string(prefix.join("bin/where.sh"))
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", prefix.display(), runs[0]));
        assert_eq!(script, format!("#!/bin/sh\necho {}\n", prefix.display()));
    }
    assert_eq!(entries(&root.join("linux-x86_64")).len(), pkgs.len());
    let staging = entries(&root.join(".spackfs-staging"));
    assert!(staging.is_empty(), "staging left behind: {staging:?}");
}

#[test]
fn many_packages_in_parallel() {
    let (mirror, pkgs) = many_packages();
    let names = names(&pkgs);
    let specs: Vec<&str> = names.iter().map(String::as_str).collect();
    let run = mirror.install_into(&mirror.root(), &["--jobs", "8"], &specs);
    run.assert_ok();
    assert!(
        run.stdout
            .contains(&format!("installed {PACKAGES} package(s)")),
        "{run}"
    );
    assert_all_installed(&mirror, &pkgs, &[run]);
}

#[test]
fn several_processes_share_one_root() {
    let (mirror, pkgs) = many_packages();
    let names = names(&pkgs);
    let specs: Vec<&str> = names.iter().map(String::as_str).collect();
    let root = mirror.root();
    let runs: Vec<Run> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| mirror.install_into(&root, &["--jobs", "4"], &specs)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    for run in &runs {
        run.assert_ok();
    }
    assert_all_installed(&mirror, &pkgs, &runs);
}

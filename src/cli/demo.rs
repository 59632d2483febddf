//! `spackfs demo`: builds an example mirror (a C library and a program compiled for a padded
//! build prefix, packed in Spack's v3 format and signed with a key generated on the spot),
//! installs it into a temporary root and runs the relocated program.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

use spackfs::config::MirrorConfig;
use spackfs::install::Limits;
use spackfs::writer::{padded_root, MirrorWriter, NodeDef, SigningKey};

const LIB_C: &str = r#"
#include <stdio.h>
#include <string.h>
const char *hello_datadir(void) { return DATADIR; }
int hello_message(char *buf, int len) {
    FILE *f = fopen(DATADIR "/message.txt", "r");
    if (!f) return -1;
    int n = (int)fread(buf, 1, len - 1, f);
    fclose(f);
    buf[n > 0 && buf[n - 1] == '\n' ? n - 1 : n] = 0;
    return 0;
}
"#;

const MAIN_C: &str = r#"
#include <stdio.h>
const char *hello_datadir(void);
int hello_message(char *buf, int len);
int main(void) {
    char msg[256];
    if (hello_message(msg, sizeof msg) != 0) {
        fprintf(stderr, "hello: cannot read %s/message.txt\n", hello_datadir());
        return 1;
    }
    printf("%s\n", msg);
    printf("hello prefix: %s\n", PREFIX);
    printf("libhello datadir: %s\n", hello_datadir());
    return 0;
}
"#;

fn cc() -> Result<String> {
    for c in ["cc", "gcc"] {
        if Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Ok(c.to_string());
        }
    }
    bail!("spackfs demo compiles a small C program and needs a C compiler: none of cc, gcc works (on Debian: apt-get install gcc)")
}

fn run_cc(cc: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(cc)
        .args(args)
        .output()
        .with_context(|| format!("running {cc}"))?;
    if !out.status.success() {
        bail!(
            "{cc} {} failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Build the example mirror at `dir/mirror`; returns the key file path and the root hash.
pub fn build_mirror(dir: &Path) -> Result<(PathBuf, String)> {
    let cc = cc()?;
    let buildpath = padded_root("/opt/spackfs-demo", 128);
    let lib = NodeDef::new("demo-libhello", "1.0").to_json();
    let lib_hash = lib["hash"].as_str().unwrap_or_default().to_string();
    let app = NodeDef::new("demo-hello", "1.0")
        .dep("demo-libhello", &lib_hash, &["build", "link"])
        .to_json();
    let app_hash = app["hash"].as_str().unwrap_or_default().to_string();
    let lib_prefix = format!("{buildpath}/linux-x86_64/demo-libhello-1.0-{lib_hash}");
    let app_prefix = format!("{buildpath}/linux-x86_64/demo-hello-1.0-{app_hash}");

    let src = dir.join("src");
    let lib_dir = dir.join("build/libhello");
    let app_dir = dir.join("build/hello");
    for d in [
        &src,
        &lib_dir.join("lib"),
        &lib_dir.join("share/hello"),
        &lib_dir.join(".spack"),
        &app_dir.join("bin"),
        &app_dir.join(".spack"),
    ] {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(src.join("libhello.c"), LIB_C)?;
    std::fs::write(src.join("hello.c"), MAIN_C)?;
    std::fs::write(
        lib_dir.join("share/hello/message.txt"),
        "Hello from a relocated Spack package served by spackfs!\n",
    )?;
    std::fs::write(
        lib_dir.join("lib/hello.pc"),
        format!("prefix={lib_prefix}\nlibdir=${{prefix}}/lib\nName: hello\nVersion: 1.0\n"),
    )?;
    std::fs::write(lib_dir.join(".spack/spec.json"), "{}")?;
    std::fs::write(app_dir.join(".spack/spec.json"), "{}")?;
    let so = lib_dir.join("lib/libhello.so");
    run_cc(
        &cc,
        &[
            "-shared",
            "-fPIC",
            "-O2",
            &format!("-DDATADIR=\"{lib_prefix}/share/hello\""),
            "-Wl,-soname,libhello.so",
            "-o",
            so.to_str().context("path")?,
            src.join("libhello.c").to_str().context("path")?,
        ],
    )?;
    let exe = app_dir.join("bin/hello");
    run_cc(
        &cc,
        &[
            "-O2",
            &format!("-DPREFIX=\"{app_prefix}\""),
            "-o",
            exe.to_str().context("path")?,
            src.join("hello.c").to_str().context("path")?,
            "-L",
            lib_dir.join("lib").to_str().context("path")?,
            "-lhello",
            &format!("-Wl,-rpath,{lib_prefix}/lib"),
            "-Wl,--disable-new-dtags",
        ],
    )?;
    std::fs::write(
        app_dir.join("bin/hello-wrapper.sh"),
        format!("#!/bin/sh\nexec {app_prefix}/bin/hello \"$@\"\n"),
    )?;
    set_exec(&app_dir.join("bin/hello-wrapper.sh"))?;
    std::os::unix::fs::symlink(
        format!("{app_prefix}/bin/hello"),
        app_dir.join("bin/hello-abs"),
    )?;

    let key = SigningKey::generate("spackfs demo <demo@example.invalid>", None, None)?;
    let key_file = dir.join("demo-signing-key.pub.asc");
    std::fs::write(&key_file, key.public_armored()?)?;
    let mut w = MirrorWriter::new(&dir.join("mirror"), Some(key))?;
    w.add_package(
        std::slice::from_ref(&lib),
        &lib_dir,
        &buildpath,
        &lib_prefix,
        &[(lib_hash.clone(), lib_prefix.clone())],
    )?;
    w.add_package(
        &[app.clone(), lib.clone()],
        &app_dir,
        &buildpath,
        &app_prefix,
        &[
            (app_hash.clone(), app_prefix.clone()),
            (lib_hash, lib_prefix.clone()),
        ],
    )?;
    w.finish()?;
    Ok((key_file, app_hash))
}

fn set_exec(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

pub async fn run(workdir: Option<PathBuf>) -> Result<ExitCode> {
    let tmp;
    let dir = match workdir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            d
        }
        None => {
            tmp = tempfile::Builder::new().prefix("spackfs-demo-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    println!(
        "==> building an example mirror in {} (C library + program, padded build prefix, signed v3)",
        dir.display()
    );
    let (key_file, app_hash) = build_mirror(&dir)?;
    let cfg = MirrorConfig {
        url: dir.join("mirror").to_string_lossy().into_owned(),
        signed: true,
        key_files: vec![key_file],
        keyring_dirs: vec![],
        ..Default::default()
    };
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt)?;
    let opts = super::mount::MountArgs {
        cache_dir: dir.join("cache"),
        bound: None,
        projection: spackfs::buildcache::projection::DEFAULT_PROJECTION.into(),
        threads: 2,
        read_mode: spackfs::fs::ReadMode::Passthrough,
        retry_after: std::time::Duration::from_secs(5),
        limits: Limits::default(),
        remote: Default::default(),
        backoff: Default::default(),
        index_ttl: std::time::Duration::from_secs(600),
        metrics_addr: None,
        access: Default::default(),
    };
    println!(
        "==> mounting it at {} (nothing is fetched yet)",
        mnt.display()
    );
    let mounted = super::mount::mount(std::slice::from_ref(&cfg), &mnt, &opts).await.context(
        "spackfs demo mounts a FUSE file system: it needs /dev/fuse and root (or fusermount3 from the fuse3 package)",
    )?;
    let exe = mnt.join(format!("linux-x86_64/demo-hello-1.0-{app_hash}/bin/hello"));
    println!(
        "==> running {} (first touch: fetch, verify, extract, relocate)",
        exe.display()
    );
    let started = std::time::Instant::now();
    let out = tokio::process::Command::new(&exe)
        .output()
        .await
        .with_context(|| format!("running {}", exe.display()));
    let elapsed = started.elapsed();
    let result = match out {
        Ok(out) => {
            print!("{}", String::from_utf8_lossy(&out.stdout));
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
            if out.status.success() {
                Ok(())
            } else {
                Err(anyhow::anyhow!(
                    "the relocated program failed ({})",
                    out.status
                ))
            }
        }
        Err(e) => Err(e),
    };
    println!(
        "    (the leading slashes are Spack's relocation at work: a C string compiled in for the\n     longer build prefix keeps its length, padded with '/', which paths ignore)"
    );
    println!(
        "==> first run took {:.3}s; per package:",
        elapsed.as_secs_f64()
    );
    for p in mounted.live.packages() {
        if let spackfs::catalog::live::State::Ready {
            timings: Some(t), ..
        } = mounted.live.state(p.node.hash())
        {
            println!("  {}\n    {t}", p.node.display());
        }
    }
    println!("==> unmounting {}", mnt.display());
    mounted.unmount()?;
    result?;
    Ok(ExitCode::SUCCESS)
}

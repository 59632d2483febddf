//! Helpers shared by the benchmark mirror generators `bench_mirror` (for `bench/install`) and
//! `bench_read_mirror` (for `bench/read` and `bench/first-touch`): a deterministic
//! pseudo-random generator, filler text and semi-compressible bulk bytes, running commands
//! (gcc, objcopy), writing files and measuring packed tarballs.
//!
//! Each example includes this module with `mod common;`; the directory has no `main.rs`, so
//! Cargo does not build it as an example of its own. Whatever changes here changes the bytes
//! of both generated mirrors.

use std::io::Read;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// splitmix64: small, fast and deterministic.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Vocabulary of the generated text files.
pub const WORDS: &[&str] = &[
    "buffer", "config", "stream", "vector", "matrix", "handle", "status", "option", "result",
    "thread", "kernel", "solver", "domain", "engine", "cache", "parse", "layout", "region",
    "record", "policy", "device", "signal", "factor", "sparse", "dense", "index", "block",
];

/// `n` words of `WORDS`, separated by spaces.
pub fn words(rng: &mut Rng, n: usize) -> String {
    (0..n)
        .map(|_| *rng.pick(WORDS))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Semi-compressible bytes (gzip -6 ratio about 3.5×): back-references into the last 32 KB
/// mixed with short literal runs drawn half from a small vocabulary, half uniformly. Unless
/// `prefixes` is empty, an old-prefix C string (`\0PREFIX/share/blob-NNNNN.dat\0`, cycling
/// through `prefixes`) is embedded about every 256 KiB, for the binary relocation rule.
pub fn bulk_data(rng: &mut Rng, n: usize, prefixes: &[String]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(n + 64);
    let vocab: Vec<u8> = (0..24).map(|_| rng.next() as u8).collect();
    while out.len() < n {
        let r = rng.next();
        let pos = out.len();
        if pos > 4096 && r % 100 < 30 {
            let len = 8 + ((r >> 8) % 56) as usize;
            let dist = 1 + ((r >> 16) % pos.min(32_000) as u64) as usize;
            for k in 0..len {
                let b = out[pos - dist + k];
                out.push(b);
            }
        } else {
            for _ in 0..1 + (r >> 8) % 8 {
                let x = rng.next();
                out.push(if x & 1 != 0 {
                    vocab[((x >> 8) % 24) as usize]
                } else {
                    (x >> 16) as u8
                });
            }
        }
    }
    out.truncate(n);
    if !prefixes.is_empty() {
        let mut off = 4096;
        let mut k = 0;
        while off + 1024 < n {
            let s = &prefixes[k % prefixes.len()];
            let cstr = format!("\0{s}/share/blob-{k:05}.dat\0");
            out[off..off + cstr.len()].copy_from_slice(cstr.as_bytes());
            off += 192 * 1024 + rng.below(128 * 1024) as usize;
            k += 1;
        }
    }
    out
}

/// Run `cmd`; fail with its stderr if it does not succeed.
/// An output directory argument made absolute (the generators run compilers in other
/// directories, where a relative path would name something else).
pub fn absolute_dir(s: &str) -> std::result::Result<std::path::PathBuf, String> {
    std::path::absolute(s).map_err(|e| format!("{s}: {e}"))
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}):\n{}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Add the contents of `data_file` to the ELF file `elf` as a non-loaded, read-only section
/// `.benchdata`.
pub fn add_benchdata_section(elf: &Path, data_file: &Path) -> Result<()> {
    run(Command::new("objcopy")
        .arg("--add-section")
        .arg(format!(".benchdata={}", data_file.display()))
        .args(["--set-section-flags", ".benchdata=noload,readonly"])
        .arg(elf))
}

/// Write `data` to `path`, creating its parent directories; returns the bytes written.
pub fn write(path: &Path, data: impl AsRef<[u8]>) -> Result<u64> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| parent.display().to_string())?;
    }
    std::fs::write(path, data.as_ref()).with_context(|| path.display().to_string())?;
    Ok(data.as_ref().len() as u64)
}

/// Set the permission bits of `path`.
#[allow(dead_code)] // used by bench_mirror only; each example compiles its own copy
pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| path.display().to_string())
}

/// Size of the (multi-member) gzip file `blob` once inflated: the tarball's length.
pub fn inflated_len(blob: &Path) -> Result<u64> {
    let f = std::fs::File::open(blob)?;
    let mut d = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(f));
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0;
    loop {
        match d.read(&mut buf)? {
            0 => return Ok(n),
            k => n += k as u64,
        }
    }
}

//! The mount helper: `mount -t fuse.spackfs SRC MOUNTPOINT -o OPTS` runs `/sbin/mount.fuse3`,
//! which runs `spackfs SRC MOUNTPOINT -o OPTS`. This module recognises that call shape,
//! turns the options into the arguments of `spackfs mount` (so that both are parsed and
//! checked by the same definitions), and says where the daemon's logs go once it has left
//! the terminal.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::CommandFactory;

/// Options accepted and ignored: mount(8), fstab and systemd conventions, `ro` (a spackfs
/// mount is always read-only), `default_permissions` (always on), and `dev`/`suid`, which
/// mount.fuse3 adds: spackfs forces `nodev,nosuid` on every mount.
const IGNORED: &[&str] = &[
    "ro",
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "exec",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "async",
    "sync",
    "dirsync",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "lazytime",
    "nolazytime",
    "diratime",
    "nodiratime",
    "silent",
    "loud",
    "default_permissions",
];

/// A helper call: `spackfs SRC MOUNTPOINT -o OPTS`.
pub(crate) struct HelperCall {
    pub source: OsString,
    pub mountpoint: OsString,
    pub options: String,
}

/// Is this the helper's call shape? `argv[1]` is no subcommand (nor a flag) and
/// `argv[3]` is `-o`, as mount.fuse3 calls it.
pub(crate) fn detect(argv: &[OsString]) -> Option<HelperCall> {
    let [_, source, mountpoint, o, options] = argv else {
        return None;
    };
    if o != "-o" || source.as_encoded_bytes().starts_with(b"-") {
        return None;
    }
    let cmd = super::Cli::command();
    let is_verb = cmd
        .get_subcommands()
        .any(|s| OsStr::new(s.get_name()) == source || s.get_all_aliases().any(|a| a == source))
        || source == "help";
    if is_verb {
        return None;
    }
    Some(HelperCall {
        source: source.clone(),
        mountpoint: mountpoint.clone(),
        options: options.to_str()?.to_string(),
    })
}

/// Where a daemonised mount logs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LogSink {
    Stderr,
    File(PathBuf),
    Journald,
}

/// A helper call as `spackfs mount` arguments.
pub(crate) struct Translated {
    /// `spackfs mount ...`, ready for clap.
    pub argv: Vec<OsString>,
    /// Where the daemon logs.
    pub log: LogSink,
    /// `log_level=`: the filter of `SPACKFS_LOG`.
    pub log_level: Option<String>,
}

/// The journal's socket: logs go there when it exists and no `log=` is given.
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

impl HelperCall {
    /// Map the `-o` options onto `spackfs mount` flags: every flag of `mount` is an option
    /// with `_` for `-` (`cache_dir=/x`, `key=F` repeatable, `unsigned`, `allow_other`…);
    /// `config=FILE` (repeatable) names the mirrors instead of SRC (which is then only a
    /// label, e.g. `spackfs`); `log=FILE`, `log_level=FILTER` set the daemon's logging.
    pub fn translate(&self) -> Result<Translated> {
        let cmd = super::Cli::command();
        let mount = cmd.find_subcommand("mount").expect("the mount verb");
        let mut flags: Vec<OsString> = Vec::new();
        let mut configs: Vec<OsString> = Vec::new();
        let mut log_file = None;
        let mut log_level = None;
        let mut cache_dir = None;
        for opt in self.options.split(',').filter(|o| !o.is_empty()) {
            let (name, value) = match opt.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (opt, None),
            };
            let need_value = |what: &str| -> Result<&str> {
                value
                    .filter(|v| !v.is_empty())
                    .with_context(|| format!("mount option {name} needs a value ({name}={what})"))
            };
            match name {
                "rw" => bail!(
                    "mount option rw: spackfs mounts are read-only; mount with -o ro (mount(8) \
                     passes rw when no ro is given)"
                ),
                "noexec" => bail!(
                    "mount option noexec: a spackfs mount serves programs and libraries; \
                     remove noexec"
                ),
                n if IGNORED.contains(&n) && value.is_none() => continue,
                n if n.starts_with("x-") || n == "comment" => continue,
                "config" => {
                    configs.push(need_value("mirrors.yaml")?.into());
                    continue;
                }
                "log" => {
                    log_file = Some(absolute(need_value("FILE")?)?);
                    continue;
                }
                "log_level" => {
                    log_level = Some(need_value("info")?.to_string());
                    continue;
                }
                _ => {}
            }
            let long = name.replace('_', "-");
            let arg = mount
                .get_arguments()
                .find(|a| a.get_long() == Some(long.as_str()) && long != "help")
                .with_context(|| format!("unknown mount option {name:?}"))?;
            if arg.get_action().takes_values() {
                let v = need_value("VALUE")?;
                if long == "cache-dir" {
                    cache_dir = Some(absolute(v)?);
                }
                flags.push(format!("--{long}={v}").into());
            } else {
                if value.is_some() {
                    bail!("mount option {name} takes no value");
                }
                flags.push(format!("--{long}").into());
            }
        }
        let mut argv: Vec<OsString> = vec!["spackfs".into(), "mount".into()];
        argv.extend(flags);
        argv.push("--".into());
        if configs.is_empty() {
            argv.push(self.source.clone());
        } else {
            argv.extend(configs);
        }
        argv.push(self.mountpoint.clone());
        let log = match log_file {
            Some(f) => LogSink::File(f),
            None if Path::new(JOURNAL_SOCKET).exists() => LogSink::Journald,
            None => LogSink::File(
                cache_dir
                    .unwrap_or_else(super::mount::default_cache_dir)
                    .join("spackfs.log"),
            ),
        };
        Ok(Translated {
            argv,
            log,
            log_level,
        })
    }
}

fn absolute(p: &str) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("path {p:?}"))
}

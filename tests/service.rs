//! Running spackfs as a service: the systemd units pass `systemd-analyze verify`; a
//! `spackfs mount` started as the unit starts it tells its own NOTIFY_SOCKET READY=1 only
//! once the mount answers, pings the watchdog and says STOPPING=1 on SIGTERM; `mount -t
//! fuse.spackfs` (through mount.fuse3) daemonises once the mount answers, forces
//! `nodev,nosuid`, refuses bad options with the reason, and `umount` ends the daemon; an
//! ordinary user mounts through fusermount3 with the cache in their home, and the refusals
//! an unprivileged mount can meet say what to do.
//!
//! Every mount point is temporary and every guard cleans up (unmount, kill, restore the mode
//! of /dev/fuse) even when an assertion fails; every wait is bounded.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::mount::{is_mounted, lazy_unmount, Daemon, MountDirs, PROXY_VARS};
use common::{
    expected_greet_output, fixtures, path_str, run_program, short_tempdir, strip_ansi, walk, Run,
    V3_UNSIGNED,
};

/// The greeting's `bin/greet` under `root`.
fn greet(root: &Path) -> PathBuf {
    V3_UNSIGNED.greet_prefix(root).join("bin/greet")
}

/// Skip visibly (or fail under CI=true) when `what` is missing.
fn skip(what: &str) -> bool {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} (CI=true)");
    }
    eprintln!("SKIP: {what}");
    true
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// The mount options of `path` in /proc/self/mountinfo (per-mount and super-block ones),
/// and its file system type.
fn mount_options(path: &Path) -> Option<(Vec<String>, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        if fields.get(4) != Some(&path_str(path)) {
            return None;
        }
        let sep = fields.iter().position(|f| *f == "-")?;
        let mut opts: Vec<String> = fields[5].split(',').map(String::from).collect();
        opts.extend(fields.get(sep + 3)?.split(',').map(String::from));
        Some((opts, fields.get(sep + 1)?.to_string()))
    })
}

// ------------------------------------------------------------ the notify socket

/// A NOTIFY_SOCKET of the test's own: a bound datagram socket in a temporary directory.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
    /// Every datagram received so far.
    got: Vec<String>,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn new() -> Self {
        let dir = short_tempdir();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        NotifySocket {
            sock,
            path,
            got: Vec::new(),
            _dir: dir,
        }
    }

    /// Let any user send to it (for a daemon run as another user).
    fn open_to_all(&self) {
        let dir = self.path.parent().expect("socket dir");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o666))
            .expect("chmod");
    }

    fn path(&self) -> &str {
        path_str(&self.path)
    }

    /// Wait up to `timeout` for a datagram with the line `line`; `None` if none came.
    fn wait_for(&mut self, line: &str, timeout: Duration) -> Option<String> {
        let start = Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        while start.elapsed() < timeout {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.got.push(msg.clone());
                if msg.lines().any(|l| l == line) {
                    return Some(msg);
                }
            }
        }
        None
    }

    /// How many datagrams with the line `line` arrive within `window`.
    fn count(&mut self, line: &str, window: Duration) -> usize {
        let start = Instant::now();
        let mut n = 0;
        while start.elapsed() < window {
            if self
                .wait_for(line, window.saturating_sub(start.elapsed()))
                .is_some()
            {
                n += 1;
            }
        }
        n
    }
}

// ------------------------------------------------------------ (a) systemd units

/// The repository's systemd/ directory.
fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd")
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let analyze = Path::new("/usr/bin/systemd-analyze");
    if !analyze.exists() && skip("systemd-analyze not found at /usr/bin/systemd-analyze") {
        return;
    }
    let tmp = short_tempdir();
    let template = std::fs::read_to_string(units_dir().join("spackfs@.service"))
        .expect("systemd/spackfs@.service");
    // What each unit must say, and must not: a sandboxing option giving the service a mount
    // namespace of its own would hide the mount from everyone else.
    for needed in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=",
        "EnvironmentFile=-/etc/spackfs/%i.env",
        "/etc/spackfs/%i.yaml %f",
    ] {
        assert!(template.contains(needed), "spackfs@.service lacks {needed}");
    }
    let directives: Vec<&str> = template
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    for key in directives {
        let namespaced = key.starts_with("Protect")
            || key.starts_with("Private")
            || key.ends_with("Paths")
            || key == "RootDirectory"
            || key == "MountAPIVFS"
            || key == "TemporaryFileSystem"
            || key.starts_with("Bind");
        assert!(
            !namespaced,
            "spackfs@.service sets {key}=, a mount namespace"
        );
    }
    // The template as an instance, with ExecStart= at the binary built for this test.
    let instance = tmp.path().join("spackfs@user\\x2denvironment.service");
    std::fs::write(
        &instance,
        template.replace("/usr/bin/spackfs", env!("CARGO_BIN_EXE_spackfs")),
    )
    .expect("write the instance");
    let mut files = vec![instance];
    for name in [
        "user\\x2denvironment.mount",
        "user\\x2denvironment.automount",
    ] {
        let to = tmp.path().join(name);
        std::fs::copy(units_dir().join(name), &to)
            .unwrap_or_else(|e| panic!("systemd/{name}: {e}"));
        files.push(to);
    }
    let mount_unit = std::fs::read_to_string(&files[1]).expect("mount unit");
    for needed in [
        "Type=fuse.spackfs",
        "What=",
        "Where=/user-environment",
        "Options=ro,",
    ] {
        assert!(mount_unit.contains(needed), "the mount unit lacks {needed}");
    }
    let fstab = std::fs::read_to_string(units_dir().join("fstab.example")).expect("fstab");
    assert!(
        fstab
            .lines()
            .any(|l| !l.starts_with('#') && l.split_whitespace().nth(2) == Some("fuse.spackfs")),
        "fstab.example has no fuse.spackfs line:\n{fstab}"
    );
    let mut args = vec!["verify".to_string(), "--man=no".into()];
    args.extend(files.iter().map(|f| path_str(f).to_string()));
    let run = run_program(analyze, &args);
    run.assert_ok();
    // verify exits 0 on unknown keys and bad values too: it only warns.
    assert!(
        run.stderr.trim().is_empty(),
        "systemd-analyze verify warns:\n{run}"
    );
}

// ------------------------------------------------------------ (b) sd_notify

/// `spackfs mount` of the unsigned fixture as the unit starts it, with `notify` as its
/// NOTIFY_SOCKET and `env` besides.
fn spawn_notified(
    fx: &common::Fixtures,
    dirs: &MountDirs,
    notify: &NotifySocket,
    env: &[(&str, &str)],
) -> Daemon {
    let mirror = fx.mirror(V3_UNSIGNED.name);
    let mut all = vec![("NOTIFY_SOCKET", notify.path())];
    all.extend_from_slice(env);
    Daemon::spawn_with(
        &[path_str(&mirror)],
        &dirs.mnt,
        &dirs.cache,
        &["--unsigned"],
        &all,
    )
}

#[test]
fn notify_ready_only_once_the_mount_answers_then_watchdog_and_stopping() {
    let Some(fx) = fixtures() else { return };
    let dirs = MountDirs::new();
    let mut notify = NotifySocket::new();
    let d = spawn_notified(&fx, &dirs, &notify, &[("WATCHDOG_USEC", "400000")]);
    let ready = notify.wait_for("READY=1", Duration::from_secs(30));
    // At the moment READY=1 arrives the mount must already answer.
    let mounted = is_mounted(&dirs.mnt);
    let listing = std::fs::read_dir(&dirs.mnt).map(|rd| {
        rd.flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
    });
    let ready = ready.unwrap_or_else(|| panic!("no READY=1 (got {:?})\n{d}", notify.got));
    assert!(mounted, "READY=1 before the mount is in mountinfo\n{d}");
    let listing = listing.unwrap_or_else(|e| panic!("READY=1 but listing the mount: {e}\n{d}"));
    assert!(
        listing.iter().any(|n| n == ".spack-db"),
        "READY=1 but the mount lists {listing:?}\n{d}"
    );
    let status = format!(
        "STATUS=serving 3 packages from 1 mirror at {}",
        path_str(&dirs.mnt)
    );
    assert!(
        ready.lines().any(|l| l == status),
        "READY=1 without {status:?}: {ready:?}"
    );
    // WATCHDOG_USEC=0.4 s: a ping every 0.2 s.
    let pings = notify.count("WATCHDOG=1", Duration::from_millis(1500));
    assert!(
        pings >= 3,
        "{pings} WATCHDOG=1 in 1.5 s (every 0.2 s expected)\n{d}"
    );
    // The mount still serves the fixture.
    let run = run_program(greet(&dirs.mnt), [] as [&str; 0]);
    run.assert_ok();
    d.signal(libc::SIGTERM);
    let stopping = notify.wait_for("STOPPING=1", Duration::from_secs(10));
    assert!(
        stopping.is_some(),
        "no STOPPING=1 after SIGTERM (got {:?})\n{d}",
        notify.got
    );
    let status = d.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit after SIGTERM: {status:?}\n{d}"
    );
    assert!(!is_mounted(&dirs.mnt), "still mounted after SIGTERM\n{d}");
}

#[test]
fn no_watchdog_pings_for_another_pid() {
    let Some(fx) = fixtures() else { return };
    let dirs = MountDirs::new();
    let mut notify = NotifySocket::new();
    // systemd's watchdog is for its main pid only: here, another process.
    let d = spawn_notified(
        &fx,
        &dirs,
        &notify,
        &[("WATCHDOG_USEC", "200000"), ("WATCHDOG_PID", "1")],
    );
    assert!(
        notify
            .wait_for("READY=1", Duration::from_secs(30))
            .is_some(),
        "no READY=1\n{d}"
    );
    let pings = notify.count("WATCHDOG=1", Duration::from_millis(800));
    assert_eq!(pings, 0, "WATCHDOG=1 sent for another pid's watchdog\n{d}");
}

// ------------------------------------------------------------ (c) the mount helper

/// Serialises the tests that put spackfs where mount(8) finds it.
static HELPER: Mutex<()> = Mutex::new(());

/// mount(8) runs helpers without PATH, and mount.fuse3 runs `spackfs` through `/bin/sh -c`,
/// which then searches its default PATH: `/usr/local/bin/spackfs` is made a link to the
/// binary under test for as long as this guard lives (unless something else is there:
/// then mount.fuse3's `-t fuse` form `PROGRAM#SOURCE` names the binary instead).
struct HelperBinary {
    link: Option<PathBuf>,
    _lock: MutexGuard<'static, ()>,
}

const LINK: &str = "/usr/local/bin/spackfs";

impl HelperBinary {
    fn install() -> Self {
        let lock = HELPER.lock().unwrap_or_else(|e| e.into_inner());
        let bin = Path::new(env!("CARGO_BIN_EXE_spackfs"));
        let link = Path::new(LINK);
        let ours = std::fs::read_link(link).is_ok_and(|t| t == bin);
        let free = std::fs::symlink_metadata(link).is_err();
        if free {
            std::fs::create_dir_all("/usr/local/bin").expect("/usr/local/bin");
            std::os::unix::fs::symlink(bin, link).expect("link /usr/local/bin/spackfs");
        }
        HelperBinary {
            link: (free || ours).then(|| link.to_path_buf()),
            _lock: lock,
        }
    }

    /// `mount -t fuse.spackfs SRC MP -o OPTS` (or the `-t fuse BIN#SRC` form).
    fn mount(&self, src: &str, mp: &Path, opts: &str) -> Run {
        let mut args: Vec<String> = Vec::new();
        if self.link.is_some() {
            args.extend(["-t".into(), "fuse.spackfs".into(), src.into()]);
        } else {
            let form = format!("{}#{src}", env!("CARGO_BIN_EXE_spackfs"));
            args.extend(["-t".into(), "fuse".into(), form]);
        }
        args.push(path_str(mp).into());
        if !opts.is_empty() {
            args.extend(["-o".into(), opts.into()]);
        }
        let mut cmd = Command::new("mount");
        cmd.args(&args);
        run_cmd(cmd, Duration::from_secs(90))
    }
}

impl Drop for HelperBinary {
    fn drop(&mut self) {
        if let Some(link) = &self.link {
            let _ = std::fs::remove_file(link);
        }
    }
}

/// Run `cmd` (its output captured) with a bound on its run time: killed past `limit`.
fn run_cmd(mut cmd: Command, limit: Duration) -> Run {
    let out_dir = short_tempdir();
    let (out, err) = (out_dir.path().join("out"), out_dir.path().join("err"));
    cmd.env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("out"))
        .stderr(std::fs::File::create(&err).expect("err"));
    let cmdline = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmdline}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        cmdline,
        code: status.and_then(|s| s.code()),
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: strip_ansi(&std::fs::read_to_string(&err).unwrap_or_default()),
    }
}

/// Processes whose command line names `needle`.
fn processes_naming(needle: &str) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

/// The daemon a helper call left running: stopped (SIGTERM, then SIGKILL) and its mount
/// detached on drop unless it has exited.
struct HelperDaemon {
    pid: Option<i32>,
    mnt: PathBuf,
}

impl HelperDaemon {
    /// Has process `pid` exited? Reaps it when it is our child (we are a subreaper).
    fn exited(pid: i32) -> bool {
        let mut status = 0;
        // SAFETY: waitpid with a valid status pointer; it fails harmlessly for a pid that
        // is not our child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return true;
        }
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            // A zombie whose parent does not reap it has exited too.
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        }
    }

    fn wait_exit(pid: i32, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if Self::exited(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for HelperDaemon {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            if !Self::exited(pid) {
                // SAFETY: kill(2) of the daemon this test started.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                if !Self::wait_exit(pid, Duration::from_secs(5)) {
                    // SAFETY: as above.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    Self::wait_exit(pid, Duration::from_secs(5));
                }
            }
        }
        for _ in 0..4 {
            if !is_mounted(&self.mnt) {
                break;
            }
            lazy_unmount(&self.mnt);
        }
    }
}

/// Orphans (the daemonised helper) become our children, so that their exit is seen.
fn become_subreaper() {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes an integer and touches no memory.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "PR_SET_CHILD_SUBREAPER");
}

/// The daemon's pid, from the log line the helper's child writes first.
fn daemon_pid(log: &str) -> Option<i32> {
    log.lines().find_map(|l| {
        let rest = l.split("mount helper: daemon pid ").nth(1)?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

#[test]
fn mount_helper_daemonises_serves_and_umount_ends_it() {
    let Some(fx) = fixtures() else { return };
    if !is_root() && skip("mount -t fuse.spackfs needs root") {
        return;
    }
    if !Path::new("/sbin/mount.fuse3").exists() && skip("/sbin/mount.fuse3 missing (fuse3)") {
        return;
    }
    become_subreaper();
    let helper = HelperBinary::install();
    let dirs = MountDirs::new();
    let mut guard = HelperDaemon {
        pid: None,
        mnt: dirs.mnt.clone(),
    };
    let log = dirs.path().join("cache/spackfs.log");
    let mut opts = format!("ro,cache_dir={},unsigned", path_str(&dirs.cache));
    if Path::new("/run/systemd/journal/socket").exists() {
        // With a journal the daemon logs there: this test reads a file.
        opts.push_str(&format!(",log={}", path_str(&log)));
    }
    let mirror = fx.mirror(V3_UNSIGNED.name);
    let started = Instant::now();
    let run = helper.mount(path_str(&mirror), &dirs.mnt, &opts);
    let took = started.elapsed();
    let daemon_log = || std::fs::read_to_string(&log).unwrap_or_default();
    guard.pid = daemon_pid(&daemon_log());
    assert_eq!(
        run.code,
        Some(0),
        "{run}\n--- daemon log ---\n{}",
        daemon_log()
    );
    let pid = guard
        .pid
        .unwrap_or_else(|| panic!("no daemon pid in {}:\n{}", log.display(), daemon_log()));
    assert!(took < Duration::from_secs(60), "mount took {took:?}");
    // mount returned: the mount answers, and its daemon runs in the background.
    assert!(
        !HelperDaemon::exited(pid),
        "the daemon {pid} is gone\n{}",
        daemon_log()
    );
    let (options, fstype) = mount_options(&dirs.mnt).expect("in mountinfo");
    for o in ["ro", "nodev", "nosuid"] {
        assert!(
            options.iter().any(|x| x == o),
            "{o} missing from {options:?} ({fstype})"
        );
    }
    assert!(fstype.starts_with("fuse"), "type {fstype}");
    let findmnt = run_program("findmnt", ["-n", "-o", "OPTIONS", path_str(&dirs.mnt)]);
    findmnt.assert_ok();
    for o in ["nodev", "nosuid"] {
        assert!(
            findmnt.stdout.split(',').any(|x| x.trim() == o),
            "{findmnt}"
        );
    }
    let run = run_program(greet(&dirs.mnt), [] as [&str; 0]);
    run.assert_ok();
    assert_eq!(
        run.stdout,
        expected_greet_output(
            &V3_UNSIGNED.greet_prefix(&dirs.mnt),
            &V3_UNSIGNED.libgreet_prefix(&dirs.mnt)
        ),
        "{run}"
    );
    // umount from outside: the daemon notices, logs it, and exits.
    run_program("umount", [path_str(&dirs.mnt)]).assert_ok();
    assert!(
        HelperDaemon::wait_exit(pid, Duration::from_secs(10)),
        "daemon {pid} still running 10 s after umount\n{}",
        daemon_log()
    );
    let text = daemon_log();
    assert!(
        text.contains(&format!("{} was unmounted", path_str(&dirs.mnt))),
        "the daemon's log does not say it was unmounted:\n{text}"
    );
    assert!(
        !text.contains(" ERROR "),
        "errors in the daemon's log:\n{text}"
    );
    assert!(!is_mounted(&dirs.mnt));
}

#[test]
fn mount_helper_refuses_bad_options_and_missing_mirrors_with_the_reason() {
    let Some(fx) = fixtures() else { return };
    if !is_root() && skip("mount -t fuse.spackfs needs root") {
        return;
    }
    if !Path::new("/sbin/mount.fuse3").exists() && skip("/sbin/mount.fuse3 missing (fuse3)") {
        return;
    }
    let helper = HelperBinary::install();
    let dirs = MountDirs::new();
    let _guard = HelperDaemon {
        pid: None,
        mnt: dirs.mnt.clone(),
    };
    let mirror = fx.mirror(V3_UNSIGNED.name);
    let cache = format!("cache_dir={}", path_str(&dirs.cache));
    let missing = dirs.path().join("no-such-mirror");
    let cases: [(&str, String, &[&str]); 5] = [
        (
            path_str(&mirror),
            format!("ro,{cache},unsigned,bogus_option=1"),
            &["unknown mount option", "bogus_option"],
        ),
        // No `ro`: mount(8) passes `rw`.
        (
            path_str(&mirror),
            format!("{cache},unsigned"),
            &["rw", "read-only"],
        ),
        (
            path_str(&mirror),
            format!("ro,{cache},unsigned,threads=many"),
            &["threads", "many"],
        ),
        (
            path_str(&mirror),
            format!("ro,{cache},unsigned=yes"),
            &["unsigned", "takes no value"],
        ),
        (
            path_str(&missing),
            format!(
                "ro,{cache},unsigned,log={}",
                path_str(&dirs.path().join("log"))
            ),
            &[path_str(&missing)],
        ),
    ];
    for (src, opts, needles) in cases {
        let run = helper.mount(src, &dirs.mnt, &opts);
        run.assert_failed();
        run.assert_stderr_line_has(needles);
        assert!(!is_mounted(&dirs.mnt), "mounted after a failure:\n{run}");
        assert!(
            processes_naming(path_str(&dirs.mnt)).is_empty(),
            "a process for {} is left after a failure:\n{run}",
            dirs.mnt.display()
        );
    }
}

// ------------------------------------------------------------ (d) ordinary users

/// The ordinary user of these tests.
const USER: &str = "spackfs-test";

/// Serialises the tests that change the mode of /dev/fuse.
static DEV_FUSE: Mutex<()> = Mutex::new(());

/// Sets the mode of /dev/fuse for as long as it lives; the old mode comes back on drop.
struct DevFuseMode {
    old: u32,
    _lock: MutexGuard<'static, ()>,
}

impl DevFuseMode {
    fn set(mode: u32) -> Self {
        let lock = DEV_FUSE.lock().unwrap_or_else(|e| e.into_inner());
        let old = std::fs::metadata("/dev/fuse").expect("/dev/fuse").mode() & 0o7777;
        std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(mode))
            .expect("chmod /dev/fuse");
        DevFuseMode { old, _lock: lock }
    }
}

impl Drop for DevFuseMode {
    fn drop(&mut self) {
        let _ = std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(self.old));
    }
}

/// The test user's uid, created if missing; `None` (skipped) when not root.
fn test_user() -> Option<u32> {
    if !is_root() {
        skip("creating an ordinary user needs root");
        return None;
    }
    let uid = || {
        let r = run_program("id", ["-u", USER]);
        (r.code == Some(0)).then(|| r.stdout.trim().parse::<u32>().expect("uid"))
    };
    if let Some(u) = uid() {
        return Some(u);
    }
    run_program(
        "useradd",
        [
            "--system",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            USER,
        ],
    )
    .assert_ok();
    uid()
}

/// A world-readable temporary directory with the binary under test (the target directory
/// under /root is not readable by other users) and a home for the test user.
struct UserWorld {
    tmp: tempfile::TempDir,
    bin: PathBuf,
    home: PathBuf,
    mnt: PathBuf,
}

impl UserWorld {
    fn new(uid: u32) -> Self {
        let tmp = short_tempdir();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let bin = tmp.path().join("spackfs");
        // Copied by another process: a write descriptor of this process, inherited by a
        // child another test forks meanwhile, would make the exec fail with ETXTBSY.
        run_program("cp", [env!("CARGO_BIN_EXE_spackfs"), path_str(&bin)]).assert_ok();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let home = tmp.path().join("home");
        let mnt = home.join("mnt");
        std::fs::create_dir_all(&mnt).expect("home");
        for d in [&home, &mnt] {
            std::os::unix::fs::chown(d, Some(uid), Some(uid)).expect("chown");
        }
        UserWorld {
            tmp,
            bin,
            home,
            mnt,
        }
    }

    /// `setpriv` running `program args` as the test user with HOME in its home.
    fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid", USER, "--regid", USER, "--init-groups", "--"])
            .arg(program)
            .args(args)
            .current_dir(&self.home)
            .env("HOME", &self.home)
            .env_remove("XDG_CACHE_HOME")
            .env_remove("LD_LIBRARY_PATH")
            .env("NO_COLOR", "1")
            .env("SPACKFS_LOG", "info");
        for v in PROXY_VARS {
            cmd.env_remove(v);
        }
        cmd
    }

    /// Run `program args` as the test user, bounded.
    fn run(&self, program: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = self.command(program, args);
        cmd.envs(env.iter().copied());
        run_cmd(cmd, Duration::from_secs(60))
    }

    /// Start `spackfs mount MIRROR MNT ARGS...` as the test user, logging to a file.
    fn spawn_mount(&self, mirror: &Path, args: &[&str], env: &[(&str, &str)]) -> UserDaemon {
        let log = self.tmp.path().join("daemon.log");
        let f = std::fs::File::create(&log).expect("log");
        let mut all = vec!["mount", path_str(mirror), path_str(&self.mnt)];
        all.extend_from_slice(args);
        let mut cmd = self.command(&self.bin, &all);
        cmd.envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("log"))
            .stderr(f);
        let child = cmd.spawn().expect("setpriv spackfs mount");
        UserDaemon {
            child,
            mnt: self.mnt.clone(),
            log,
        }
    }
}

/// A `spackfs mount` run as the test user: stopped and its mount detached on drop.
struct UserDaemon {
    child: Child,
    mnt: PathBuf,
    log: PathBuf,
}

impl UserDaemon {
    fn log(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(s) = self.child.try_wait().ok().flatten() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for UserDaemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: kill(2) of our own child, not yet reaped.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            if self.wait_exit(Duration::from_secs(5)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        for _ in 0..4 {
            if !is_mounted(&self.mnt) {
                break;
            }
            lazy_unmount(&self.mnt);
        }
    }
}

/// Is /dev/fuse readable and writable by users other than root?
fn dev_fuse_open_to_all() -> bool {
    std::fs::metadata("/dev/fuse").is_ok_and(|m| m.mode() & 0o006 == 0o006)
}

#[test]
fn an_ordinary_user_mounts_through_fusermount3_with_the_cache_in_their_home() {
    let Some(fx) = fixtures() else { return };
    let Some(uid) = test_user() else { return };
    if !Path::new("/usr/bin/fusermount3").exists() && skip("fusermount3 missing (fuse3)") {
        return;
    }
    // Normal distributions make /dev/fuse 0666; this VM has 0600.
    let _mode = if dev_fuse_open_to_all() {
        DevFuseMode::set(std::fs::metadata("/dev/fuse").expect("/dev/fuse").mode() & 0o7777)
    } else {
        DevFuseMode::set(0o666)
    };
    let world = UserWorld::new(uid);
    let mut notify = NotifySocket::new();
    notify.open_to_all();
    let mirror = fx.mirror(V3_UNSIGNED.name);
    let mut d = world.spawn_mount(
        &mirror,
        &["--unsigned"],
        &[("NOTIFY_SOCKET", notify.path())],
    );
    let ready = notify.wait_for("READY=1", Duration::from_secs(30));
    assert!(
        ready.is_some(),
        "no READY=1 from the user's mount:\n{}",
        d.log()
    );
    let (options, fstype) = mount_options(&world.mnt).expect("the user's mount in mountinfo");
    assert_eq!(
        fstype, "fuse.spackfs",
        "mounted by fusermount3: {options:?}"
    );
    for o in ["ro", "nodev", "nosuid"] {
        assert!(options.iter().any(|x| x == o), "{o} missing: {options:?}");
    }
    assert!(
        options.iter().any(|x| *x == format!("user_id={uid}")),
        "not the user's mount: {options:?}"
    );
    let run = world.run(&greet(&world.mnt), &[], &[]);
    run.assert_ok();
    assert_eq!(
        run.stdout,
        expected_greet_output(
            &V3_UNSIGNED.greet_prefix(&world.mnt),
            &V3_UNSIGNED.libgreet_prefix(&world.mnt)
        ),
        "{run}\n{}",
        d.log()
    );
    // The cache is the user's: ~/.cache/spackfs, owned by them.
    let cache = world.home.join(".cache/spackfs");
    let files = walk(&cache.join("prefixes"));
    assert!(
        files.iter().any(|f| f.ends_with("bin/greet")),
        "no greet under {}: {files:?}",
        cache.display()
    );
    assert_eq!(std::fs::metadata(&cache).expect("cache").uid(), uid);
    let log = d.log();
    assert!(
        log.contains("FUSE passthrough needs CAP_SYS_ADMIN"),
        "no word of the fallback to daemon reads:\n{log}"
    );
    assert!(
        !log.contains("passthrough refused"),
        "passthrough was tried:\n{log}"
    );
    let run = world.run(
        Path::new("/usr/bin/fusermount3"),
        &["-u", path_str(&world.mnt)],
        &[],
    );
    run.assert_ok();
    let status = d.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit after fusermount3 -u: {status:?}\n{}",
        d.log()
    );
    assert!(
        d.log()
            .contains(&format!("{} was unmounted", path_str(&world.mnt))),
        "{}",
        d.log()
    );
    assert!(!is_mounted(&world.mnt));
}

#[test]
fn unprivileged_refusals_say_what_to_do() {
    let Some(fx) = fixtures() else { return };
    let Some(uid) = test_user() else { return };
    let world = UserWorld::new(uid);
    let mirror = fx.mirror(V3_UNSIGNED.name);
    let mount = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec![
            "mount",
            path_str(&mirror),
            path_str(&world.mnt),
            "--unsigned",
        ];
        all.extend_from_slice(args);
        let run = world.run(&world.bin, &all, env);
        run.assert_failed();
        assert!(!is_mounted(&world.mnt), "mounted:\n{run}");
        run
    };
    {
        // /dev/fuse that users cannot open (this VM's 0600).
        let _mode = DevFuseMode::set(0o600);
        mount(&[], &[]).assert_stderr_line_has(&["/dev/fuse", "0600", "chmod 0666 /dev/fuse"]);
    }
    let _mode = DevFuseMode::set(0o666);
    mount(&[], &[("FUSERMOUNT_PATH", "/nonexistent/fusermount3")])
        .assert_stderr_line_has(&["/nonexistent/fusermount3", "fuse3"]);
    let conf = std::fs::read_to_string("/etc/fuse.conf").unwrap_or_default();
    if conf.lines().any(|l| l.trim() == "user_allow_other") {
        skip("/etc/fuse.conf has user_allow_other: allow_other is not refused here");
    } else if Path::new("/usr/bin/fusermount3").exists() || skip("fusermount3 missing (fuse3)") {
        mount(&["--allow-other"], &[]).assert_stderr_line_has(&[
            "allow_other",
            "user_allow_other",
            "/etc/fuse.conf",
        ]);
    }
}

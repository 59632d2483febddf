//! The mount's lifecycle as told to whoever started it: systemd through sd_notify when
//! `NOTIFY_SOCKET` is set (`READY=1` once the mount answers, `STATUS=`, `WATCHDOG=1`,
//! `STOPPING=1`), and the waiting parent of a daemonised mount helper through its pipe
//! (the CLI's daemon module implements [`ParentReport`]). Without either, every call here
//! does nothing.

use std::sync::Mutex;
use std::time::Duration;

use sd_notify::NotifyState;

/// The parent process waiting for a daemonised mount: told once, ready or failed.
pub trait ParentReport: Send {
    /// The mount answers; the parent may exit 0.
    fn ready(self: Box<Self>);
    /// The mount failed; the parent prints `why` and exits non-zero.
    fn failed(self: Box<Self>, why: &str);
}

/// Where the mount's lifecycle is reported.
pub struct Lifecycle {
    systemd: bool,
    parent: Mutex<Option<Box<dyn ParentReport>>>,
}

impl Lifecycle {
    /// systemd when `NOTIFY_SOCKET` is set; `parent` when this is a daemonised helper.
    pub fn new(parent: Option<Box<dyn ParentReport>>) -> Self {
        Lifecycle {
            systemd: std::env::var_os("NOTIFY_SOCKET").is_some(),
            parent: Mutex::new(parent),
        }
    }

    /// Is this a daemon whose stderr leads nowhere once it is ready?
    pub fn is_daemon(&self) -> bool {
        self.parent.lock().unwrap().is_some()
    }

    fn notify(&self, states: &[NotifyState]) {
        if self.systemd {
            if let Err(e) = sd_notify::notify(states) {
                tracing::warn!("sd_notify (NOTIFY_SOCKET): {e}");
            }
        }
    }

    /// The mount answers: `READY=1` with `status`; the helper's parent may exit 0.
    pub fn ready(&self, status: &str) {
        self.notify(&[NotifyState::Ready, NotifyState::Status(status)]);
        if let Some(report) = self.parent.lock().unwrap().take() {
            report.ready();
        }
    }

    /// The mount failed: the helper's parent prints `why` and exits non-zero.
    pub fn failed(&self, why: &str) {
        self.notify(&[NotifyState::Status(why)]);
        if let Some(report) = self.parent.lock().unwrap().take() {
            report.failed(why);
        }
    }

    /// `STOPPING=1`: the mount is being unmounted.
    pub fn stopping(&self, why: &str) {
        self.notify(&[NotifyState::Stopping, NotifyState::Status(why)]);
    }

    /// How often `WATCHDOG=1` is due: half the `WATCHDOG_USEC` systemd set for this pid.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        if !self.systemd {
            return None;
        }
        sd_notify::watchdog_enabled()
            .filter(|d| !d.is_zero())
            .map(|d| d / 2)
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&self) {
        self.notify(&[NotifyState::Watchdog]);
    }
}

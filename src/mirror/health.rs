//! The health of one mirror: a mirror that fails as an endpoint (cannot connect, times out,
//! answers 5xx) is skipped for a back-off period that doubles with each failure in a row,
//! up to a cap, then tried again; one success makes it healthy.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long failing mirrors are skipped.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(5),
            max: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Endpoint failures in a row.
    failures: u32,
    /// Skipped until then.
    until: Option<Instant>,
    last_error: Option<String>,
}

/// What is known about a mirror's health.
#[derive(Debug, Clone)]
pub struct HealthReport {
    pub healthy: bool,
    pub failures: u32,
    /// Time left before the mirror is tried again (when skipped).
    pub retry_in: Option<Duration>,
    pub last_error: Option<String>,
}

/// The health of one mirror.
#[derive(Debug, Default)]
pub struct Health {
    backoff: Backoff,
    state: Mutex<State>,
}

impl Health {
    pub fn new(backoff: Backoff) -> Self {
        Health {
            backoff,
            state: Mutex::default(),
        }
    }

    /// Not in a back-off period.
    pub fn is_healthy(&self) -> bool {
        let s = self.state.lock().unwrap();
        s.until.is_none_or(|u| Instant::now() >= u)
    }

    /// When the back-off ends (for ordering mirrors that are all skipped).
    pub fn retry_at(&self) -> Option<Instant> {
        self.state.lock().unwrap().until
    }

    /// An endpoint failure: start (or lengthen) the back-off. Returns its length. Failures
    /// during a back-off (of requests that were already under way) do not lengthen it.
    pub fn failed(&self, error: &str) -> Duration {
        let mut s = self.state.lock().unwrap();
        let now = Instant::now();
        if let Some(left) = s.until.and_then(|u| u.checked_duration_since(now)) {
            if !left.is_zero() {
                return left;
            }
        }
        let shift = s.failures.min(16);
        let delay = self
            .backoff
            .initial
            .saturating_mul(1u32 << shift)
            .min(self.backoff.max);
        s.failures = s.failures.saturating_add(1);
        s.until = Some(now + delay);
        s.last_error = Some(error.to_string());
        delay
    }

    /// A success: the mirror is healthy again. Returns whether it was failing before.
    pub fn succeeded(&self) -> bool {
        let mut s = self.state.lock().unwrap();
        let was = s.failures > 0;
        s.failures = 0;
        s.until = None;
        was
    }

    pub fn report(&self) -> HealthReport {
        let s = self.state.lock().unwrap();
        let now = Instant::now();
        HealthReport {
            healthy: s.until.is_none_or(|u| now >= u),
            failures: s.failures,
            retry_in: s.until.and_then(|u| u.checked_duration_since(now)),
            last_error: s.last_error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_a_success_resets_it() {
        let h = Health::new(Backoff {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(10),
        });
        assert!(h.is_healthy());
        assert_eq!(h.failed("x"), Duration::from_secs(2));
        assert!(!h.is_healthy());
        // A failure during the back-off does not lengthen it.
        assert!(h.failed("x") <= Duration::from_secs(2));
        assert_eq!(h.report().failures, 1);
        // Once the back-off is over, each failure doubles it, up to the cap.
        for expected in [4, 8, 10, 10] {
            h.state.lock().unwrap().until = Some(Instant::now());
            assert_eq!(h.failed("x"), Duration::from_secs(expected));
        }
        assert_eq!(h.report().failures, 5);
        assert!(h.succeeded());
        assert!(h.is_healthy() && h.report().failures == 0);
        assert_eq!(h.failed("x"), Duration::from_secs(2));
    }

    #[test]
    fn a_zero_backoff_never_skips() {
        let h = Health::new(Backoff {
            initial: Duration::ZERO,
            max: Duration::ZERO,
        });
        h.failed("x");
        assert!(h.is_healthy());
    }
}

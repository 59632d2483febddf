//! Progress of a command over a set of packages (`install`, `prefetch`): a bar with the
//! packages done and the ones in work when stderr is a terminal, one plain line per
//! finished package otherwise (logs and job scripts).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// The progress of `total` packages.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    total: usize,
    done: std::sync::atomic::AtomicUsize,
    started: Instant,
}

impl Progress {
    /// `verb` says what is done (`installing`, `prefetching`).
    pub fn new(verb: &str, total: usize) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template(&format!(
                    "{verb} {{bar:30.cyan/blue}} {{pos}}/{{len}} packages  {{elapsed}}  {{wide_msg}}"
                ))
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            bar,
            total,
            done: Default::default(),
            started: Instant::now(),
        }
    }

    /// `what` is in work now.
    pub fn working(&self, what: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(what.to_string());
        }
    }

    fn line(&self, text: String) {
        let n = self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        match &self.bar {
            Some(bar) => {
                bar.println(text);
                bar.inc(1);
            }
            None => eprintln!("[{n}/{}] {text}", self.total),
        }
    }

    /// `what` is done; `detail` says how (e.g. its prefix, or "already ready").
    pub fn done(&self, what: &str, detail: &str) {
        self.line(format!("{what}: {detail}"));
    }

    /// `what` failed, because of `why`.
    pub fn failed(&self, what: &str, why: &str) {
        self.line(format!("{what}: FAILED: {why}"));
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Remove the bar (the lines stay).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

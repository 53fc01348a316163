//! Progress of a long operator command: the [`Progress`] trait, and a bar on stderr
//! (only when stderr is a terminal) with events/s and ETA.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Told about progress (events handled so far, out of about how many).
pub trait Progress: Send + Sync {
    /// The total is known.
    fn start(&self, total: u64);
    /// `n` more events were handled.
    fn advance(&self, n: u64);
    /// What is happening now.
    fn message(&self, text: &str);
}

/// No progress reporting.
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: u64) {}
    fn advance(&self, _: u64) {}
    fn message(&self, _: &str) {}
}

/// An indicatif bar; hidden when stderr is not a terminal.
pub struct Bar(ProgressBar);

impl Bar {
    /// A bar labelled `what`, counting events.
    pub fn new(what: &str) -> Self {
        Self::counting(what, "events")
    }

    /// A bar labelled `what`, counting `unit`.
    pub fn counting(what: &str, unit: &str) -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if !std::io::stderr().is_terminal() {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{what} {{bar:40}} {{human_pos}}/{{human_len}} {unit}  {{per_sec}}  ETA {{eta}}  {{msg}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Self(bar)
    }

    /// Ends the bar.
    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.0.set_length(total);
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
    fn message(&self, text: &str) {
        self.0.set_message(text.to_owned());
    }
}

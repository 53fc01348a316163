//! Logging: `tracing` to stderr, as text or JSON, filtered by `RUST_LOG` or the settings.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber (once; later calls are no-ops). Commands other than
/// `serve` log only warnings unless RUST_LOG says otherwise, so their output stays clean.
pub fn init(settings: &LogSettings, serving: bool) {
    let default = if serving { settings.filter.as_str() } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr.with_max_level(tracing::Level::TRACE));
    let _ = match settings.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

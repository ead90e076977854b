//! Log set-up shared by both binaries: `--log-format text|json`, colour
//! only for a terminal, `RUST_LOG` as the filter.

use tracing_subscriber::fmt::MakeWriter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human lines (with colour when the output is a terminal).
    #[default]
    Text,
    /// One JSON object per line (for Loki, Elasticsearch, journald exports).
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?}: use \"text\" or \"json\""
            )),
        }
    }
}

/// The filter when `RUST_LOG` is unset: our own lines at info, quinn's
/// warnings only.
pub const DEFAULT_FILTER: &str = "info,quinn=warn";

/// Installs the global subscriber. `ansi`: colour (only for a terminal).
pub fn init<W>(format: LogFormat, writer: W, ansi: bool)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| DEFAULT_FILTER.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // `try_init`: a second call (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.with_ansi(ansi).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// [`init`] to stderr, coloured only when stderr is a terminal (never for
/// journald or a file).
pub fn init_stderr(format: LogFormat) {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    init(format, std::io::stderr, ansi);
}

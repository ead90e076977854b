//! `tunnel-client`: expose a local port through a tunnel-server. Parses
//! the settings (`tunnel_client::settings`), sets up logging, runs
//! `tunnel_client::app::run`, and exits with the code of what stopped it
//! (`ClientError::exit_code`).

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tunnel_client::observe::Monitor;
use tunnel_client::settings::{self, Cli, Job};
use tunnel_client::ClientError;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let job = match settings::load(cli, std::io::stdout().is_terminal()) {
        Ok(job) => job,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    let launch = match job {
        Job::Run(config, ui) => {
            let monitor = Arc::new(Monitor::new(
                ui.screen,
                ui.inspect.is_some(),
                ui.metrics.is_some(),
            ));
            if ui.screen {
                // The screen owns the terminal: log lines are shown inside it.
                tunnel_lib::logging::init(
                    ui.log_format,
                    tunnel_client::tui::ScreenLog(monitor.clone()),
                    false,
                );
            } else {
                tunnel_lib::logging::init_stderr(ui.log_format);
            }
            Launch::Run(config, ui, monitor)
        }
        Job::Login { path, text } => Launch::Login(path, text),
    };
    let threads = match &launch {
        Launch::Run(config, ..) => config.tuning.worker_threads(),
        Launch::Login(..) => 0,
    };
    // One runtime and one future for either job.
    tunnel_lib::runtime::run_main(threads, async move {
        let result = match launch {
            Launch::Run(config, ui, monitor) => tunnel_client::app::run(*config, ui, monitor).await,
            Launch::Login(path, text) => login(&path, &text).await,
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(e.exit_code())
            }
        }
    })
}

/// A job with what it needs to run.
enum Launch {
    Run(Box<tunnel_client::Config>, settings::Ui, Arc<Monitor>),
    Login(std::path::PathBuf, String),
}

/// `login`: writes the config file (mode 0600, atomically).
async fn login(path: &std::path::Path, text: &str) -> Result<(), ClientError> {
    tunnel_lib::paths::write_atomic(path, text.as_bytes(), 0o600)
        .await
        .map_err(|e| ClientError::Config(format!("cannot write {}: {e}", path.display())))?;
    eprintln!(
        "saved the server and token in {} (mode 0600)",
        path.display()
    );
    Ok(())
}

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (config, ui) = match settings::load(cli, std::io::stdout().is_terminal()) {
        Ok(Job::Run(config, ui)) => (config, ui),
        Ok(Job::Login { path, text }) => return login(path, text),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
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
    let threads = config.tuning.worker_threads();
    tunnel_lib::runtime::run_main(threads, async move {
        match tunnel_client::app::run(*config, ui, monitor).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(e.exit_code())
            }
        }
    })
}

/// `login`: writes the config file (mode 0600, atomically).
fn login(path: std::path::PathBuf, text: String) -> ExitCode {
    tunnel_lib::runtime::run_main(0, async move {
        match tunnel_lib::paths::write_atomic(&path, text.as_bytes(), 0o600).await {
            Ok(()) => {
                eprintln!(
                    "saved the server and token in {} (mode 0600)",
                    path.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot write {}: {e}", path.display());
                ExitCode::from(78)
            }
        }
    })
}

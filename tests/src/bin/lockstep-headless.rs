//! `lockstep-headless`: the built Lockstep.clap in a headless CLAP host, paced in real time.
//! `cargo xtask run -- --help` lists the flags.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use lockstep_host::cli::{self, CliError};
use lockstep_host::runner;

fn main() -> ExitCode {
    let config = match cli::parse(std::env::args().skip(1)) {
        Ok(config) => config,
        Err(CliError::Help) => {
            print!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("lockstep-headless: {err}");
            return ExitCode::from(2);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        if let Err(err) = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst)) {
            eprintln!("lockstep-headless: cannot catch Ctrl+C ({err}); use --for");
        }
    }
    let mut stdout = std::io::stdout();
    match runner::run(&config, &stop, &mut stdout) {
        Ok(summary) if summary.worker_threads_after == 0 => ExitCode::SUCCESS,
        Ok(summary) => {
            eprintln!(
                "lockstep-headless: {} worker thread(s) still alive after shutdown",
                summary.worker_threads_after
            );
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("lockstep-headless: {err:#}");
            ExitCode::FAILURE
        }
    }
}

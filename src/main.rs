//! The `wshub` binary: flags in, server out.

use std::process::ExitCode;

use wshub::{Command, Config, usage};

fn main() -> ExitCode {
    let command = Config::from_args(std::env::args().skip(1), |name| std::env::var(name).ok());
    let config = match command {
        Ok(Command::Run(config)) => config,
        Ok(Command::Help) => {
            print!("{}", usage());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("wshub {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("wshub: {message}");
            return ExitCode::from(2);
        }
    };
    // Under systemd, journald timestamps every line itself.
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    if let Err(e) = wshub::init_logger(config.log_level, config.log_format, journal) {
        eprintln!("wshub: cannot start logging: {e}");
        return ExitCode::FAILURE;
    }
    let listen = config.listen;
    let server = match wshub::Server::bind(*config) {
        Ok(server) => server,
        // A setting that does not load: the error names it.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            eprintln!("wshub: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("wshub: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

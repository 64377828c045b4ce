//! The `rollgate` binary: parses the arguments and prints the error; everything else is
//! `rollgate::cli`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = rollgate::cli::Cli::parse();
    rollgate::cli::raise_open_files_limit();
    match rollgate::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

//! The `clipd` command line: parse, run one command, print at most one error line, exit with a
//! documented status (see `clipd --help`).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(args.verbose);
    match cli::try_main(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("clipd: {}", cli::one_line(&e));
            cli::exit_code(&e)
        }
    }
}

//! The `spackfs` command line: parses arguments, sets up logging, runs one verb.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}

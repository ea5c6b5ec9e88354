//! Entry point: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    blog_agent::cli::run(blog_agent::cli::Cli::parse())
}

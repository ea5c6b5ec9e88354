//! `blog-agent generate-assets DIR` (hidden): the man page and shell completions the packages
//! ship, generated from the same clap definitions as the binary, so they never drift.

use std::path::PathBuf;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::{exit, Cli, Failure};

#[derive(Debug, Args)]
pub struct AssetsArgs {
    /// Output directory.
    pub dir: PathBuf,
}

pub fn run(args: &AssetsArgs) -> Result<(), Failure> {
    let fail =
        |e: std::io::Error| Failure { code: exit::FAILED, message: format!("writing {}: {e}", args.dir.display()) };
    std::fs::create_dir_all(&args.dir).map_err(fail)?;
    let mut cmd = Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page).map_err(fail)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("blog-agent-{}", sub.get_name());
        let mut sub_page = Vec::new();
        clap_mangen::Man::new(sub.clone().name(name.clone())).render(&mut sub_page).map_err(fail)?;
        std::fs::write(args.dir.join(format!("{name}.1")), sub_page).map_err(fail)?;
    }
    std::fs::write(args.dir.join("blog-agent.1"), page).map_err(fail)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "blog-agent", &args.dir).map_err(fail)?;
    }
    Ok(())
}

//! `blog-agent pause` and `blog-agent resume`: freeze and unfreeze automatic updates.

use clap::Args;

use super::{exit, Cli, Failure};
use crate::runtime::operator::operator;
use crate::state::{now_unix, Pause};

#[derive(Debug, Args)]
pub struct PauseArgs {
    /// Why, for whoever looks at `blog-agent status` next.
    #[arg(long)]
    pub reason: Option<String>,
}

/// What `pause` and `resume` act on, for the refusal of `--env`.
const THIS_HOST: &str = "this host's state only (whatever environment it serves)";

pub fn pause(cli: &Cli, args: &PauseArgs) -> Result<(), Failure> {
    super::refuse_env_flag(cli, "pause", THIS_HOST)?;
    let settings = super::load_settings(cli)?;
    let pause =
        Pause { by: operator(), reason: args.reason.clone(), at: now_unix(), pinned_sha: None, pinned_digest: None };
    pause.save(&settings.agent.state_dir).map_err(|e| Failure { code: exit::FAILED, message: e.to_string() })?;
    eprintln!(
        "blog-agent: automatic updates paused by {}; the running version is kept (and repaired). `blog-agent resume` to follow S3 again",
        pause.by
    );
    Ok(())
}

pub fn resume(cli: &Cli) -> Result<(), Failure> {
    super::refuse_env_flag(cli, "resume", THIS_HOST)?;
    let settings = super::load_settings(cli)?;
    let was_paused =
        Pause::clear(&settings.agent.state_dir).map_err(|e| Failure { code: exit::FAILED, message: e.to_string() })?;
    if was_paused {
        eprintln!("blog-agent: automatic updates resumed; the service follows S3 from its next pass (or run `blog-agent sync`)");
    } else {
        eprintln!("blog-agent: automatic updates were not paused");
    }
    Ok(())
}

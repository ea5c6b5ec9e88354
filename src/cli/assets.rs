//! `blog-agent generate-assets DIR` (hidden): the man pages and shell completions the packages
//! ship, generated from the same clap definitions as the binary, so they never drift.
//!
//! clap_mangen renders NAME, SYNOPSIS, DESCRIPTION and OPTIONS; the sections a man page reader
//! expects beyond those (EXAMPLES, EXIT STATUS, ENVIRONMENT, FILES, SEE ALSO) are written here.
//! Only pages the packages ship are named: clap's own `help` subcommand gets none.

use std::path::PathBuf;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::{exit, Cli, Failure, ENV_REQUIRED};

#[derive(Debug, Args)]
pub struct AssetsArgs {
    /// Output directory.
    pub dir: PathBuf,
}

/// The man pages `generate-assets` writes: `blog-agent` and one per visible subcommand.
pub fn man_pages() -> Result<Vec<(String, Vec<u8>)>, std::io::Error> {
    let mut cmd = Cli::command();
    // Built, the subcommands carry the global options and their bin name (`blog-agent sync`,
    // which the synopses show).
    cmd.build();
    let cmd = cmd.mut_subcommand("help", |help| help.hide(true));
    let subs: Vec<clap::Command> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned().collect();
    let page_names: Vec<String> = std::iter::once("blog-agent".to_owned())
        .chain(subs.iter().map(|s| format!("blog-agent-{}", s.get_name())))
        .collect();
    let mut pages = vec![("blog-agent".to_owned(), page(&cmd, None, &page_names)?)];
    for sub in subs {
        let name = format!("blog-agent-{}", sub.get_name());
        let mut sub = sub.display_name(name.clone());
        if ENV_REQUIRED.contains(&sub.get_name()) {
            sub = sub.mut_arg("environment", |a| a.required(true));
        }
        pages.push((name, page(&sub, Some(&cmd), &page_names)?));
    }
    Ok(pages)
}

pub fn run(args: &AssetsArgs) -> Result<(), Failure> {
    let fail =
        |e: std::io::Error| Failure { code: exit::FAILED, message: format!("writing {}: {e}", args.dir.display()) };
    std::fs::create_dir_all(&args.dir).map_err(fail)?;
    for (name, text) in man_pages().map_err(fail)? {
        std::fs::write(args.dir.join(format!("{name}.1")), text).map_err(fail)?;
    }
    let mut cmd = Cli::command();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "blog-agent", &args.dir).map_err(fail)?;
    }
    Ok(())
}

/// One page: clap_mangen's sections, then ours.
fn page(cmd: &clap::Command, parent: Option<&clap::Command>, pages: &[String]) -> Result<Vec<u8>, std::io::Error> {
    let man = clap_mangen::Man::new(cmd.clone()).source(format!("blog-agent {}", env!("CARGO_PKG_VERSION")));
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut out)?;
    }
    if cmd.has_subcommands() {
        man.render_subcommands_section(&mut out)?;
    }
    let own = display_name(cmd);
    let mut roff = String::new();
    if let Some(examples) = cmd.get_after_help() {
        section(&mut roff, "EXAMPLES");
        // One example a line, as typed: no filling.
        roff.push_str(".PP\n.nf\n");
        for line in examples.to_string().lines().skip_while(|l| l.trim_end().ends_with(':')) {
            roff.push_str(&text(line.trim()));
        }
        roff.push_str(".fi\n");
    }
    section(&mut roff, "EXIT STATUS");
    for (code, meaning) in exit_statuses(cmd.get_name(), parent.is_none()) {
        roff.push_str(&format!(".TP\n{}\n{}", code, text(meaning)));
    }
    section(&mut roff, "ENVIRONMENT");
    for (name, meaning) in ENVIRONMENT {
        roff.push_str(&format!(".TP\n.B {name}\n{}", text(meaning)));
    }
    section(&mut roff, "FILES");
    for (path, meaning) in FILES {
        roff.push_str(&format!(".TP\n.I {path}\n{}", text(meaning)));
    }
    section(&mut roff, "SEE ALSO");
    let mut see: Vec<String> = pages.iter().filter(|p| **p != own).map(|p| format!("{}(1)", escape(p))).collect();
    see.extend(["systemctl(1)", "journalctl(1)", "docker(1)"].map(String::from));
    roff.push_str(&format!(".PP\n{}\n.PP\n", see.join(",\n")));
    roff.push_str(&text(
        "The documentation in /usr/share/doc/blog-agent/: configuration.md, operations.md, systemd.md, \
         traffic.md, and config.example.toml.",
    ));
    out.extend_from_slice(roff.as_bytes());
    if parent.is_none() {
        man.render_version_section(&mut out)?;
    }
    Ok(out)
}

fn display_name(cmd: &clap::Command) -> String {
    cmd.get_display_name().unwrap_or_else(|| cmd.get_name()).to_owned()
}

fn section(roff: &mut String, title: &str) {
    roff.push_str(&format!(".SH \"{title}\"\n"));
}

/// A line of running text: roff's escapes, and no line starting with a control character.
fn text(line: &str) -> String {
    let escaped = escape(line);
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}\n")
    } else {
        format!("{escaped}\n")
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\e").replace('-', "\\-")
}

/// What each exit code means for `command` (the codes of [`exit`]).
fn exit_statuses(command: &str, top: bool) -> Vec<(u8, &'static str)> {
    let ok = match command {
        _ if top => "Success (each command's page says what success means for it).",
        "status" => "The host is converged: it runs what it is meant to run.",
        "check" => "No check failed (WARN and skip lines do not count).",
        "run" => "Stopped by SIGTERM or SIGINT.",
        "sync" => "The host runs the release S3 names (or, with --sha, that one).",
        _ => "Done.",
    };
    let failed = match command {
        "status" => "Not converged, or what the host should run cannot be told; the table says why.",
        "check" => "At least one line is FAIL.",
        "sync" => "The pass failed or the release S3 names was refused; whatever served before still serves.",
        _ => "Failed; the cause is on standard error, on one line. Retrying may help.",
    };
    vec![
        (exit::OK, ok),
        (exit::FAILED, failed),
        (exit::USAGE, "Bad command line (an unknown option, a malformed SHA, a refused --env)."),
        (exit::CONFIG, "Configuration error (EX_CONFIG): the message names the file and the key. systemd does not restart the service on it."),
    ]
}

const ENVIRONMENT: [(&str, &str); 7] = [
    ("BLOG_AGENT_CONFIG", "Configuration file when --config is not given (default /etc/blog-agent/config.toml)."),
    ("AWS_REGION", "AWS region; on EC2 it comes from instance metadata."),
    (
        "AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL_ECR",
        "Other endpoints for S3 and ECR (a custom S3 endpoint switches to path-style addressing).",
    ),
    ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "Instance metadata (IMDS) endpoint."),
    ("DOCKER_HOST", "Docker Engine socket (unix://), default /var/run/docker.sock."),
    ("RUST_LOG", "Log filter, e.g. blog_agent=debug; HTTP client internals stay capped at info."),
    (
        "BLOG_AGENT_SIGNING_KEY",
        "publish, rollback and promote: the minisign secret key that signs releases when [release] public_key is set.",
    ),
];

const FILES: [(&str, &str); 5] = [
    ("/etc/blog-agent/config.toml", "Configuration (see /usr/share/doc/blog-agent/configuration.md)."),
    ("/var/lib/blog-agent/", "State directory ([agent] state_dir): lock, last-known-good, pause and last-pass files."),
    ("/etc/default/blog-agent, /etc/sysconfig/blog-agent", "Environment variables for the service (optional)."),
    ("/usr/lib/systemd/system/blog-agent.service", "The systemd unit (see /usr/share/doc/blog-agent/systemd.md)."),
    ("/usr/share/doc/blog-agent/config.example.toml", "A commented example configuration."),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn pages() -> Vec<(String, String)> {
        man_pages().unwrap().into_iter().map(|(n, t)| (n, String::from_utf8(t).unwrap())).collect()
    }

    #[test]
    fn every_page_has_the_sections_a_reader_expects() {
        for (name, page) in pages() {
            for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "EXIT STATUS", "ENVIRONMENT", "FILES", "SEE ALSO"] {
                assert!(
                    page.contains(&format!(".SH {section}\n")) || page.contains(&format!(".SH \"{section}\"\n")),
                    "{name} lacks {section}"
                );
            }
            if name != "blog-agent" {
                assert!(page.contains(".SH \"EXAMPLES\""), "{name} lacks EXAMPLES");
            }
        }
    }

    #[test]
    fn pages_name_only_pages_that_are_shipped() {
        let pages = pages();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        assert!(!names.contains(&"blog-agent-help") && !names.contains(&"blog-agent-generate-assets"));
        for (name, page) in &pages {
            let unescaped = page.replace("\\-", "-");
            for (i, _) in unescaped.match_indices("(1)") {
                let start =
                    unescaped[..i].rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).map_or(0, |s| s + 1);
                let referenced = &unescaped[start..i];
                if referenced.starts_with("blog-agent") {
                    assert!(names.contains(&referenced), "{name} names {referenced}(1), which is not generated");
                }
            }
        }
    }

    #[test]
    fn synopses_name_the_command_as_typed() {
        for (name, page) in pages() {
            let synopsis = page.split(".SH SYNOPSIS").nth(1).unwrap().split(".SH").next().unwrap();
            if let Some(sub) = name.strip_prefix("blog-agent-") {
                assert!(synopsis.contains(&format!("blog\\-agent {sub}")), "{name}: {synopsis}");
                if ENV_REQUIRED.contains(&sub) {
                    assert!(synopsis.contains("\\fB\\-\\-env\\fR"), "{name}: --env is required: {synopsis}");
                    assert!(!synopsis.contains("[\\fB\\-\\-env\\fR"), "{name}: --env shown as optional: {synopsis}");
                }
            }
        }
    }
}

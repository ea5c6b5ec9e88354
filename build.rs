//! Records the git commit for `blog-agent --version`, so a binary on a host can be traced back
//! to its source. Falls back to "unknown" outside a git checkout (a source tarball).

use std::process::Command;

fn main() {
    let commit = std::env::var("BLOG_AGENT_GIT_COMMIT").ok().filter(|c| !c.is_empty()).or_else(|| {
        Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    });
    println!("cargo:rustc-env=BLOG_AGENT_GIT_COMMIT={}", commit.unwrap_or_else(|| "unknown".into()));
    println!("cargo:rerun-if-env-changed=BLOG_AGENT_GIT_COMMIT");
    for path in [".git/HEAD", ".git/index"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}

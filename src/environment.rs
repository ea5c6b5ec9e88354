//! Which environment this host serves: `--env`, else `[environment] name`, else the instance
//! tag. The answer must be one of `[environment] allowed`, so a mistyped tag changes nothing.

use std::fmt;

use crate::config::Settings;
use crate::outside::imds::{ImdsError, TagSource};
use crate::sha::safe_quote;

/// Where the environment name came from, shown by `status` and in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvSource {
    Flag,
    Config,
    Tag,
}

impl fmt::Display for EnvSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EnvSource::Flag => "flag",
            EnvSource::Config => "config",
            EnvSource::Tag => "tag",
        })
    }
}

/// A resolved, allowed environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    pub name: String,
    pub source: EnvSource,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvironmentError {
    #[error(transparent)]
    Imds(#[from] ImdsError),
    #[error("environment {value} (from {from}) is not allowed: expected one of {allowed}; fix the {fix}")]
    NotAllowed { value: String, from: EnvSource, allowed: String, fix: &'static str },
}

impl EnvironmentError {
    /// A bad `--env` is a usage error; everything else is about the host.
    pub fn is_usage(&self) -> bool {
        matches!(self, EnvironmentError::NotAllowed { from: EnvSource::Flag, .. })
    }
}

/// Resolves the environment. Reads IMDS only when neither the flag nor the config names it.
pub async fn resolve(
    flag: Option<&str>,
    settings: &Settings,
    tags: &impl TagSource,
) -> Result<Environment, EnvironmentError> {
    let (name, source) = if let Some(name) = flag {
        (name.to_owned(), EnvSource::Flag)
    } else if let Some(name) = &settings.environment.name {
        (name.clone(), EnvSource::Config)
    } else {
        (tags.instance_tag(&settings.environment.tag).await?, EnvSource::Tag)
    };
    if !settings.environment.allowed.contains(&name) {
        return Err(EnvironmentError::NotAllowed {
            value: safe_quote(&name),
            from: source,
            allowed: settings.environment.allowed.join(", "),
            fix: match source {
                EnvSource::Flag => "--env value",
                EnvSource::Config => "[environment] name",
                EnvSource::Tag => "instance tag (or [environment] allowed)",
            },
        });
    }
    Ok(Environment { name, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    struct FixedTag(Option<&'static str>);

    impl TagSource for FixedTag {
        async fn instance_tag(&self, tag: &str) -> Result<String, ImdsError> {
            self.0.map(str::to_owned).ok_or(ImdsError::TagMissing { tag: tag.to_owned() })
        }
    }

    fn settings(name: Option<&str>) -> Settings {
        let mut text = String::from("[release]\nbucket = \"b\"\n[image]\nrepository = \"r.example/blog\"\n");
        if let Some(n) = name {
            text.push_str(&format!("[environment]\nname = \"{n}\"\n"));
        }
        Settings::parse(&text, Path::new("c.toml")).unwrap()
    }

    /// (flag, config name, instance tag, expected name and source, or error text)
    type Case = (
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
        Result<(&'static str, EnvSource), &'static str>,
    );

    #[tokio::test]
    async fn precedence_flag_then_config_then_tag() {
        let cases: &[Case] = &[
            (Some("production"), Some("staging"), Some("staging"), Ok(("production", EnvSource::Flag))),
            (None, Some("staging"), Some("production"), Ok(("staging", EnvSource::Config))),
            (None, None, Some("production"), Ok(("production", EnvSource::Tag))),
            (None, None, None, Err("not found in instance metadata")),
            (None, None, Some("prod"), Err("environment \"prod\" (from tag) is not allowed")),
            (Some("qa"), None, Some("staging"), Err("fix the --env value")),
        ];
        for (flag, config, tag, want) in cases {
            let got = resolve(*flag, &settings(*config), &FixedTag(*tag)).await;
            match (got, want) {
                (Ok(env), Ok((name, source))) => {
                    assert_eq!((env.name.as_str(), env.source), (*name, *source))
                }
                (Err(e), Err(msg)) => assert!(e.to_string().contains(msg), "{e}"),
                (got, want) => panic!("{flag:?} {config:?} {tag:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}

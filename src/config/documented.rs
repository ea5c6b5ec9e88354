//! Every key the configuration file accepts is documented, with its default, in
//! docs/configuration.md and packaging/config.example.toml.
//!
//! The keys come from the code: the field names serde derives for [`RawConfig`] and its section
//! structs (the names `deny_unknown_fields` accepts), so a new key fails this test until both
//! documents have it. The defaults come from parsing a minimal file, so a changed default fails
//! it too.

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::{self, Deserialize, Deserializer, Visitor};

use super::*;

const REFERENCE: &str = include_str!("../../docs/configuration.md");
const EXAMPLE: &str = include_str!("../../packaging/config.example.toml");

/// The field names serde's derive passes to `deserialize_struct`: exactly the keys accepted.
fn fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Names(&'static [&'static str]);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("field names read")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Stop {
            Stop
        }
    }
    struct Reader<'a>(&'a mut Option<Names>);
    impl<'de> Deserializer<'de> for Reader<'_> {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            *self.0 = Some(Names(fields));
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let mut names = None;
    let _ = T::deserialize(Reader(&mut names));
    names.expect("a struct").0
}

/// Every `(section, key)` of the file, from the code.
fn keys() -> Vec<(&'static str, &'static str)> {
    let mut keys = Vec::new();
    for &section in fields::<RawConfig>() {
        let in_section = match section {
            "environment" => fields::<RawEnvironment>(),
            "release" => fields::<RawRelease>(),
            "image" => fields::<RawImage>(),
            "container" => fields::<RawContainer>(),
            "health" => fields::<RawHealth>(),
            "agent" => fields::<RawAgent>(),
            "reconcile" => fields::<RawReconcile>(),
            "traffic" => fields::<RawTraffic>(),
            "rollout" => fields::<RawRollout>(),
            "metrics" => fields::<RawMetrics>(),
            other => panic!("section [{other}]: add its struct here"),
        };
        for &key in in_section {
            // An array of tables (`[[health.check]]`): its own keys, each documented as
            // `[[health.check]] key`.
            match (section, key) {
                ("health", "check") => keys.extend(fields::<RawHealthCheck>().iter().map(|k| ("health.check", *k))),
                _ => keys.push((section, key)),
            }
        }
    }
    keys
}

/// What the documents must say about a key's default.
#[derive(Debug)]
enum Expected {
    /// The file must set it.
    Required,
    /// Each table of an array of tables (none by default) must set it.
    RequiredInTable,
    /// Unset means off (or derived elsewhere).
    Unset,
    /// As written in TOML, e.g. `"30s"`.
    Value(String),
    /// A table with one key per environment: `env = "value"` each.
    Table(BTreeMap<String, String>),
}

fn quoted(s: impl std::fmt::Display) -> String {
    format!("\"{s}\"")
}

fn duration(d: Duration) -> String {
    quoted(humantime::format_duration(d))
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    format!("[{}]", items.iter().map(quoted).collect::<Vec<_>>().join(", "))
}

/// The default of each key, read from the settings a minimal file gets.
fn default_of(section: &str, key: &str, s: &Settings) -> Expected {
    use Expected::*;
    let empty = |m: &BTreeMap<String, String>| {
        assert!(m.is_empty(), "[{section}] {key}: a non-empty default");
        Value("{}".into())
    };
    match (section, key) {
        ("environment", "name") | ("release", "kms_key") | ("release", "public_key") => Unset,
        ("rollout", "halt_prefix") | ("rollout", "lifecycle_hook") | ("metrics", "textfile") => Unset,
        ("release", "bucket") | ("image", "repository") => Required,
        ("environment", "tag") => Value(quoted(&s.environment.tag)),
        ("environment", "allowed") => Value(list(&s.environment.allowed)),
        ("release", "keys") => Table(s.release.keys.clone()),
        ("image", "pull_timeout") => Value(duration(s.image.pull_timeout)),
        ("container", "name") => Value(quoted(&s.container.name)),
        ("container", "ports") => Value(list(&s.container.ports)),
        ("container", "env") => empty(&s.container.variables),
        ("container", "labels") => empty(&s.container.labels),
        ("container", "stop_timeout") => Value(duration(s.container.stop_timeout)),
        ("container", "log_driver") => Value(quoted(s.container.bounds.log.driver)),
        ("container", "log_max_size") => Value(quoted(format_size(s.container.bounds.log.max_size))),
        ("container", "log_max_files") => Value(s.container.bounds.log.max_files.to_string()),
        ("container", "no_new_privileges") => Value(s.container.bounds.no_new_privileges.to_string()),
        ("container", "cap_drop") => Value(list(&s.container.bounds.cap_drop)),
        ("container", "cap_add") => Value(list(&s.container.bounds.cap_add)),
        ("container", "pids_limit") => Value(s.container.bounds.pids_limit.unwrap_or(0).to_string()),
        ("container", "memory") | ("container", "cpus") => Unset,
        ("container", "read_only") => Value(s.container.bounds.read_only.to_string()),
        ("container", "tmpfs") => Value(list(&s.container.bounds.tmpfs)),
        ("health", "url") => Value(quoted(&s.health.url)),
        ("health", "timeout") => Value(duration(s.health.timeout)),
        ("health", "contains") => Unset,
        ("health", "max_5xx_share") => Value(quoted(format!("{}%", (s.health.max_5xx.max_share * 100.0).round()))),
        ("health", "max_5xx_min_requests") => Value(s.health.max_5xx.min_requests.to_string()),
        // No check by default; an optional key of one is unset until its table sets it.
        ("health.check", "path") => RequiredInTable,
        ("health.check", "status") | ("health.check", "contains") => Unset,
        ("health", "bake") => Value(duration(s.health.bake)),
        ("agent", "state_dir") => Value(quoted(s.agent.state_dir.display())),
        ("agent", "lock_timeout") => Value(duration(s.agent.lock_timeout)),
        ("reconcile", "interval") => Value(duration(s.reconcile.interval)),
        ("reconcile", "jitter") => Value(duration(s.reconcile.jitter)),
        ("reconcile", "keep_images") => Value(s.reconcile.keep_images.to_string()),
        ("reconcile", "min_free_disk") => Value(quoted(format_size(s.reconcile.min_free_disk))),
        ("traffic", "mode") => Value(quoted(s.traffic.mode)),
        ("traffic", "chains") => Value(quoted(&s.traffic.chains)),
        ("rollout", "spread") => Value(duration(s.rollout.spread)),
        ("rollout", "halt_after") => Value(s.rollout.halt_after.to_string()),
        _ => panic!("[{section}] {key}: say here what its default is (and document it)"),
    }
}

fn squeeze(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

/// `| `[section] key` | default | meaning |` rows of the reference: key -> default cell.
fn reference_rows() -> BTreeMap<String, String> {
    REFERENCE
        .lines()
        .filter(|l| l.starts_with("| `["))
        .filter_map(|l| {
            let mut cells = l.split('|').skip(1);
            let key = cells.next()?.trim().trim_matches('`').to_owned();
            Some((key, cells.next()?.trim().to_owned()))
        })
        .collect()
}

/// `key = value` lines of the example, commented out or not: (section, key) -> (value, set).
fn example_lines() -> BTreeMap<(String, String), (String, bool)> {
    let mut section = String::new();
    let mut found = BTreeMap::new();
    for line in EXAMPLE.lines() {
        let line = line.trim();
        let (set, body) = match line.strip_prefix('#') {
            Some(rest) => (false, rest.trim_start()),
            None => (true, line),
        };
        // A table header, or an array of tables (`[[health.check]]`), commented out or not.
        let header = body.strip_prefix('[').and_then(|l| l.strip_suffix(']'));
        if let Some(name) = header.map(|h| h.trim_start_matches('[').trim_end_matches(']')) {
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
                section = name.to_owned();
                continue;
            }
        }
        let Some((key, value)) = body.split_once(" = ") else { continue };
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        found.entry((section.clone(), key.to_owned())).or_insert((value.trim().to_owned(), set));
    }
    found
}

#[test]
fn every_key_is_documented_with_its_default() {
    const MINIMAL: &str =
        "[release]\nbucket = \"b\"\n[image]\nrepository = \"1.dkr.ecr.us-east-1.amazonaws.com/blog\"\n";
    let settings = Settings::parse(MINIMAL, Path::new("minimal.toml")).unwrap();
    let rows = reference_rows();
    let example = example_lines();
    let mut problems = Vec::new();
    for (section, key) in keys() {
        let default = default_of(section, key, &settings);
        let (row, in_example) = match &default {
            Expected::Table(_) => (format!("[{section}.{key}] <env>"), None),
            _ if section.contains('.') => {
                (format!("[[{section}]] {key}"), example.get(&(section.to_owned(), key.to_owned())))
            }
            _ => (format!("[{section}] {key}"), example.get(&(section.to_owned(), key.to_owned()))),
        };
        let Some(cell) = rows.get(&row) else {
            problems.push(format!("docs/configuration.md has no row for `{row}`"));
            continue;
        };
        match &default {
            Expected::Required => {
                if !cell.contains("required") {
                    problems.push(format!("docs/configuration.md: `{row}` is required, the row says {cell:?}"));
                }
                if !matches!(in_example, Some((_, true))) {
                    problems.push(format!("config.example.toml does not set `{row}`, which is required"));
                }
            }
            Expected::RequiredInTable => {
                if !cell.contains("required") {
                    problems.push(format!("docs/configuration.md: `{row}` is required, the row says {cell:?}"));
                }
                if in_example.is_none() {
                    problems.push(format!("config.example.toml lacks `{row}` (commented out, as there is no table)"));
                }
            }
            Expected::Unset => {
                if !cell.starts_with("unset") {
                    problems.push(format!("docs/configuration.md: `{row}` is unset by default, the row says {cell:?}"));
                }
                if in_example.is_none() {
                    problems.push(format!("config.example.toml lacks `{row}` (commented out, as it is unset)"));
                }
            }
            Expected::Value(value) => {
                if !squeeze(cell).contains(&squeeze(&format!("`{value}`"))) {
                    problems.push(format!("docs/configuration.md: `{row}` defaults to {value}, the row says {cell:?}"));
                }
                match in_example {
                    Some((written, _)) if squeeze(written) == squeeze(value) => {}
                    Some((written, _)) => {
                        problems.push(format!("config.example.toml: `{row}` = {written}, its default is {value}"))
                    }
                    None => problems.push(format!("config.example.toml lacks `{row}` (default {value})")),
                }
            }
            Expected::Table(entries) => {
                for (env, value) in entries {
                    let entry = format!("{env} = {}", quoted(value));
                    if !cell.contains(&format!("`{entry}`")) {
                        problems
                            .push(format!("docs/configuration.md: `{row}` defaults to {entry}, the row says {cell:?}"));
                    }
                    let written = example.get(&(format!("{section}.{key}"), env.clone()));
                    if written.map(|(v, _)| squeeze(v)) != Some(squeeze(&quoted(value))) {
                        problems.push(format!("config.example.toml: [{section}.{key}] lacks {entry}"));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "the configuration documents disagree with the code:\n{}", problems.join("\n"));
}

#[test]
fn the_key_list_comes_from_the_code() {
    // A guard on the reader itself: it sees nested sections and their keys.
    let keys = keys();
    assert!(keys.contains(&("rollout", "halt_after")) && keys.contains(&("container", "stop_timeout")), "{keys:?}");
    assert!(keys.len() >= 25, "{} keys", keys.len());
}

#[test]
fn stop_timeout_zero_is_accepted_and_documented_so() {
    // Docker's stop with t=0 is an immediate SIGKILL, which the code accepts on purpose (a server
    // that ignores SIGTERM): the documents must not forbid it, nor the refusal of "500ms".
    const MINIMAL: &str =
        "[release]\nbucket = \"b\"\n[image]\nrepository = \"1.dkr.ecr.us-east-1.amazonaws.com/blog\"\n";
    let zero = Settings::parse(&format!("{MINIMAL}[container]\nstop_timeout = \"0s\"\n"), Path::new("c.toml")).unwrap();
    assert_eq!(zero.container.stop_timeout, Duration::ZERO);
    let refused = Settings::parse(&format!("{MINIMAL}[container]\nstop_timeout = \"500ms\"\n"), Path::new("c.toml"))
        .unwrap_err()
        .to_string();
    let row = REFERENCE.lines().find(|l| l.starts_with("| `[container] stop_timeout`")).unwrap_or_default();
    let comment: String = EXAMPLE.lines().take_while(|l| !l.starts_with("stop_timeout")).collect::<Vec<_>>().join("\n");
    let comment = comment.rsplit("\n\n").next().unwrap_or_default().to_owned();
    for (what, text) in
        [("the refusal", refused.as_str()), ("configuration.md", row), ("the example", comment.as_str())]
    {
        assert!(
            !text.contains("at least 1s") && !text.contains("at least `\"1s\"`") && !text.contains("at least \"1s\""),
            "{what} forbids \"0s\": {text}"
        );
        assert!(text.contains("\"0s\""), "{what} does not say what \"0s\" does: {text}");
    }
}

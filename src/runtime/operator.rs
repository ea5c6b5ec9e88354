//! Who runs a command, as the records it leaves name them: `pause`, `sync --sha`, `halt` and
//! `publish` (when CI names no publisher) all record the same person.

/// Who runs this command, for the records it writes (a pause, a halt, a publish): a name and
/// the real uid, e.g.
/// `alice (uid 1000)`, or `alice via sudo (uid 1000)` when sudo made us root.
pub fn operator() -> String {
    let uid = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| real_uid(&s));
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    describe_operator(uid, |name| std::env::var(name).ok(), |uid| user_name(&passwd, uid))
}

/// The real uid from `/proc/self/status` (`Uid: real effective saved fs`).
fn real_uid(status: &str) -> Option<u32> {
    status.lines().find_map(|line| line.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
}

/// The name of `uid` in `/etc/passwd` text (`name:x:uid:...`).
fn user_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)?.parse() == Ok(uid)).then(|| name.to_owned())
    })
}

fn describe_operator(
    uid: Option<u32>,
    env: impl Fn(&str) -> Option<String>,
    name_of: impl Fn(u32) -> Option<String>,
) -> String {
    let var = |name: &str| env(name).filter(|v| !v.is_empty());
    // Under sudo the real uid is root's; the person is SUDO_USER (uid SUDO_UID).
    if uid == Some(0) {
        if let Some(user) = var("SUDO_USER") {
            return match var("SUDO_UID") {
                Some(sudo_uid) => format!("{user} via sudo (uid {sudo_uid})"),
                None => format!("{user} via sudo"),
            };
        }
    }
    // The account database knows the uid's name; the environment is the fallback (e.g. a
    // directory user /etc/passwd does not list).
    let name = uid.and_then(&name_of).or_else(|| var("USER")).or_else(|| var("LOGNAME"));
    match (name, uid) {
        (Some(name), Some(uid)) => format!("{name} (uid {uid})"),
        (Some(name), None) => name,
        (None, Some(uid)) => format!("uid {uid}"),
        (None, None) => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tblog-agent\nPid:\t4242\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n";

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn pause_records_the_real_uid_not_the_process_id() {
        assert_eq!(real_uid(STATUS), Some(1000), "the real uid, not the effective one (0)");
        assert_eq!(user_name(PASSWD, 1000).as_deref(), Some("alice"));
        assert_eq!(user_name(PASSWD, 7), None);
        let names = |uid| user_name(PASSWD, uid);
        type Vars<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Option<u32>, Vars, &str)] = &[
            (Some(1000), &[("USER", "mallory")], "alice (uid 1000)"),
            (Some(0), &[("SUDO_USER", "alice"), ("SUDO_UID", "1000"), ("USER", "root")], "alice via sudo (uid 1000)"),
            (Some(0), &[("USER", "root")], "root (uid 0)"),
            (Some(2000), &[("USER", "bob")], "bob (uid 2000)"),
            (Some(2000), &[("LOGNAME", "bob")], "bob (uid 2000)"),
            (Some(2000), &[("USER", "")], "uid 2000"),
            (None, &[("USER", "bob")], "bob"),
            (None, &[], "unknown"),
        ];
        for (uid, vars, want) in cases {
            assert_eq!(describe_operator(*uid, env(vars), names), *want, "{uid:?} {vars:?}");
        }
        // This process: the uid in the record is ours, whatever our pid is.
        let ours = real_uid(&std::fs::read_to_string("/proc/self/status").unwrap()).unwrap();
        let by = operator();
        assert!(by.contains(&format!("uid {ours}")) || by.contains("via sudo"), "{by}");
    }
}

//! Promotion on evidence, end to end on the local stack (moto for S3 and ECR): hosts' bake
//! records and halt votes in the release bucket decide what `promote` lets through, and
//! `releases` counts them. The records are written through the library's own API
//! (`HaltMarkers::record_bake`, as a host writes them after its bake) and, for one, as a bare
//! object in the documented layout.

mod common;

use blog_agent::fleet::bake::{BakeOutcome, BakeRecord};
use blog_agent::fleet::halt::Vote;
use blog_agent::fleet::verdict::Blame;
use blog_agent::outside::halts::{HaltError, HaltMarkers};
use common::release::*;
use common::*;

const A: &str = "AROAEXAMPLE:i-0aaa";
const B: &str = "AROAEXAMPLE:i-0bbb";
const C: &str = "AROAEXAMPLE:i-0ccc";
const PREFIX: &str = "staging/halted/";

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

fn record(sha: &str, voter: &str, outcome: BakeOutcome) -> BakeRecord {
    BakeRecord {
        sha: sha.into(),
        environment: "staging".into(),
        voter: voter.into(),
        instance_id: voter.rsplit(':').next().unwrap().into(),
        outcome,
        at: 1_750_000_000,
    }
}

fn bake(markers: &HaltMarkers, sha: &str, voter: &str) {
    assert!(block_on(markers.record_bake(PREFIX, &record(sha, voter, BakeOutcome::Baked))).unwrap());
}

fn promote(host: &Host, sha: &str, extra: &[&str]) -> Run {
    let mut args = vec!["promote", sha, "--from", "staging", "--to", "production"];
    args.extend_from_slice(extra);
    host.agent(&args)
}

fn production(host: &Host) -> Option<String> {
    release_object(host, "production").map(|(body, _)| body.trim().to_owned())
}

#[test]
fn promote_refuses_a_release_hosts_reverted_or_voted_against_and_honours_baked_by() {
    let host = Host::new("promote-evidence");
    versioning_on(&host);
    let markers = HaltMarkers::with_aws(&host.aws(), host.bucket.clone());

    // --baked-by 2: refused with one host's bake, accepted with two.
    let (v1, _) = build_and_push(&host, "good");
    assert_eq!(publish(&host, "staging", &v1).code, 0);
    bake(&markers, &v1, A);
    assert!(
        !block_on(markers.record_bake(PREFIX, &record(&v1, A, BakeOutcome::Baked))).unwrap(),
        "one record per host and outcome: the first is kept"
    );
    let one = promote(&host, &v1, &["--baked-by", "2"]);
    assert_eq!(one.code, 1, "{}", one.output());
    assert!(
        one.stderr
            .contains(&format!("{v1} finished a bake on 1 host(s) of staging (i-0aaa), and --baked-by asks for 2")),
        "{}",
        one.stderr
    );
    assert!(one.stderr.contains("nothing was written"), "{}", one.stderr);
    assert_eq!(production(&host), None);
    bake(&markers, &v1, B);
    let two = promote(&host, &v1, &["--baked-by", "2"]);
    assert_eq!(two.code, 0, "{}", two.output());
    assert_eq!(production(&host).as_deref(), Some(v1.as_str()));

    // One host baked v2, another reverted it: refused, naming the SHA, the host and --force.
    let (v2, _) = build_and_push(&host, "good");
    assert_eq!(publish(&host, "staging", &v2).code, 0);
    bake(&markers, &v2, A);
    let reverted = BakeOutcome::Reverted { reason: "/posts/ answered 500 three times".into(), blame: Blame::Release };
    assert!(block_on(markers.record_bake(PREFIX, &record(&v2, B, reverted))).unwrap());
    let refused = promote(&host, &v2, &[]);
    assert_eq!(refused.code, 1, "{}", refused.output());
    for says in [
        format!("{v2} was reverted or voted against by 1 host(s) of staging"),
        "i-0bbb reverted (release): /posts/ answered 500 three times".to_owned(),
        "promote it with --force".to_owned(),
    ] {
        assert!(refused.stderr.contains(&says), "{says}: {}", refused.stderr);
    }
    assert_eq!(production(&host).as_deref(), Some(v1.as_str()), "nothing was written");
    // --force overrides the revert, not an explicit --baked-by.
    let forced_short = promote(&host, &v2, &["--force", "--baked-by", "2"]);
    assert_eq!(forced_short.code, 1, "{}", forced_short.output());
    assert!(forced_short.stderr.contains("finished a bake on 1 host(s)"), "{}", forced_short.stderr);
    let forced = promote(&host, &v2, &["--force"]);
    assert_eq!(forced.code, 0, "{}", forced.output());
    assert_eq!(production(&host).as_deref(), Some(v2.as_str()));

    // v3: one host's halt vote (under halt_after = 2: not halted) refuses it; so does a revert
    // written by hand in the documented layout, whatever its body.
    let (v3, _) = build_and_push(&host, "good");
    assert_eq!(publish(&host, "staging", &v3).code, 0);
    let vote = Vote {
        sha: v3.clone(),
        environment: "staging".into(),
        voter: C.into(),
        instance_id: "i-0ccc".into(),
        verdict: "never-answered".into(),
        evidence: "HTTP 500".into(),
        at: 1_750_000_000,
        rolled_back_to: None,
        key_voter: None,
    };
    assert!(block_on(markers.vote(PREFIX, &vote)).unwrap());
    host.put_object(&format!("{PREFIX}bake/{v3}/reverted/{A}"), b"reverted by hand".to_vec());
    let voted = promote(&host, &v3, &[]);
    assert_eq!(voted.code, 1, "{}", voted.output());
    assert!(voted.stderr.contains("by 2 host(s) of staging"), "{}", voted.stderr);
    assert!(voted.stderr.contains("i-0ccc voted (never-answered): HTTP 500"), "{}", voted.stderr);
    assert!(voted.stderr.contains("is not a blog-agent bake record"), "{}", voted.stderr);
    assert!(!voted.stderr.contains("is halted"), "one vote does not halt: {}", voted.stderr);

    // A record whose writer's identity is not a key segment is refused, and nothing written.
    let err = block_on(markers.record_bake(PREFIX, &record(&v3, "a/b", BakeOutcome::Baked))).unwrap_err();
    assert!(matches!(err, HaltError::UnsafeRecord { .. }), "{err}");

    // releases counts, per release, the hosts that baked, reverted and voted.
    let run = host.agent(&["--env", "staging", "releases", "--json"]);
    assert_eq!(run.code, 0, "{}", run.output());
    let history: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let counts: Vec<(String, u64, u64, u64)> = history["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}"));
            (r["sha"].as_str().unwrap().to_owned(), n("baked"), n("reverted"), n("votes"))
        })
        .collect();
    assert_eq!(counts, [(v3.clone(), 0, 1, 1), (v2.clone(), 1, 1, 0), (v1.clone(), 2, 0, 0)], "{history}");
    let text = host.agent(&["--env", "staging", "releases"]);
    assert_eq!(text.code, 0, "{}", text.output());
    let line = text.stdout.lines().find(|l| l.contains(&v1)).unwrap();
    assert!(line.contains("baked 2, reverted 0, votes 0"), "{}", text.stdout);
}

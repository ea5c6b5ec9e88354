//! Instance-profile identities on moto: one role, created in moto's IAM, assumed with a session
//! name per host as EC2 does for an instance profile, so each host's caller identity is
//! `<role id>:<session>` (`AROA...:i-0abc...`). The role must exist: moto makes up a new role
//! id on every `GetCallerIdentity` of a session whose role it does not know.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use super::{repo_root, Host};

/// The role every test host's session belongs to.
pub const ROLE: &str = "blog-agent-test-host";
const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/blog-agent-test-host";

/// Credentials of one session, and who STS says they are.
#[derive(Debug, Clone)]
pub struct Assumed {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// `aws:userid`: `<role id>:<session>`.
    pub user_id: String,
    pub arn: String,
}

fn venv_python() -> PathBuf {
    std::env::var_os("BLOG_AGENT_STACK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".stack"))
        .join("venv/bin/python")
}

/// Creates [`ROLE`] in the IAM of the moto at `endpoint` unless it is there (once per process
/// and endpoint). Through boto3 in the stack's virtualenv: the agent's dependencies have no
/// IAM client.
fn ensure_role(endpoint: &str) {
    static DONE: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let mut done = DONE.lock().unwrap();
    if !done.get_or_insert_with(HashSet::new).insert(endpoint.to_owned()) {
        return;
    }
    const SCRIPT: &str = r#"
import json, sys, boto3
iam = boto3.client("iam", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id="testing", aws_secret_access_key="testing")
trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
         "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
try:
    iam.create_role(RoleName=sys.argv[2], AssumeRolePolicyDocument=json.dumps(trust))
except iam.exceptions.EntityAlreadyExistsException:
    pass
"#;
    let python = venv_python();
    let out = Command::new(&python)
        .args(["-c", SCRIPT, endpoint, ROLE])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/install-deps.sh)", python.display()));
    assert!(out.status.success(), "creating role {ROLE} in moto: {}", String::from_utf8_lossy(&out.stderr));
}

/// Assumes [`ROLE`] on the moto at `endpoint` with `session` as the session name.
pub fn assume_instance_role(endpoint: &str, session: &str) -> Assumed {
    ensure_role(endpoint);
    let sts = |creds: aws_credential_types::Credentials| {
        let config = aws_sdk_sts::config::Builder::new()
            .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
            .region(aws_sdk_sts::config::Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .credentials_provider(creds)
            .build();
        aws_sdk_sts::Client::from_conf(config)
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let base = aws_credential_types::Credentials::new("testing", "testing", None, None, "test");
        let out = sts(base).assume_role().role_arn(ROLE_ARN).role_session_name(session).send().await.unwrap();
        let c = out.credentials().expect("AssumeRole gives credentials");
        let session_creds = aws_credential_types::Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_owned()),
            None,
            "assumed",
        );
        let me = sts(session_creds).get_caller_identity().send().await.unwrap();
        Assumed {
            access_key_id: c.access_key_id().to_owned(),
            secret_access_key: c.secret_access_key().to_owned(),
            session_token: c.session_token().to_owned(),
            user_id: me.user_id().unwrap().to_owned(),
            arn: me.arn().unwrap().to_owned(),
        }
    })
}

impl Host {
    /// Runs this host's agent with the credentials of [`ROLE`]'s session `session` (an instance
    /// profile's `role:i-...`), from its S3 endpoint's moto. Returns them.
    pub fn assume_instance_role(&mut self, session: &str) -> Assumed {
        let assumed = assume_instance_role(&self.s3_endpoint, session);
        self.extra_env.retain(|(k, _)| {
            !k.starts_with("AWS_ACCESS_KEY_ID") && !k.starts_with("AWS_SECRET") && k != "AWS_SESSION_TOKEN"
        });
        self.extra_env.extend([
            ("AWS_ACCESS_KEY_ID".to_owned(), assumed.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY".to_owned(), assumed.secret_access_key.clone()),
            ("AWS_SESSION_TOKEN".to_owned(), assumed.session_token.clone()),
        ]);
        assumed
    }
}

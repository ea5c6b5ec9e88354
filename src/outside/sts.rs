//! AWS STS: who this process is to AWS (`GetCallerIdentity`), so a halt vote is written under
//! the key its writer's credentials name ([`crate::fleet::halt::vote_key`]) and an IAM policy
//! can pin each host to its own key with `${aws:userid}`.
//!
//! For an instance profile the answer's `UserId` is `<role id>:<instance id>`
//! (`AROAEXAMPLEID:i-0abc...`), the same string IAM substitutes for `${aws:userid}`.
//!
//! The identity is asked once per process, on the first vote, and kept: credentials of one
//! instance profile keep their identity across refreshes. A failed call is not kept, so the
//! next vote asks again.
//!
//! IAM: none (`sts:GetCallerIdentity` is allowed to every principal). Reads: the STS API,
//! through the SDK (endpoint from the standard `AWS_ENDPOINT_URL_STS` / `AWS_ENDPOINT_URL`
//! variables), with the timeouts and retries of [`crate::outside::aws`]. Decides: nothing.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sts::error::ProvideErrorMetadata;
use tokio::sync::OnceCell;

use crate::outside::aws::{describe_call, Aws, RegionUnknown, Regional};

/// Bound on one call: the SDK's own 30 s operation timeout (with its retries), plus slack.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(35);

/// Who the credentials in use belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerIdentity {
    /// `aws:userid`: `<role id>:<session name>` for a role (an instance profile's session name
    /// is the instance id), the user id for an IAM user.
    pub user_id: String,
    /// `arn:aws:sts::<account>:assumed-role/<role>/<session>` for a role.
    pub arn: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StsError {
    /// STS refused the credentials themselves (expired, unknown, badly signed).
    #[error("sts:GetCallerIdentity refused this host's AWS credentials ({code}): {detail}")]
    Refused { code: String, detail: String },
    #[error("cannot call sts:GetCallerIdentity: {detail}")]
    Unavailable { detail: String },
    #[error("cannot call sts:GetCallerIdentity: {source}")]
    RegionUnknown { source: RegionUnknown },
    #[error("sts:GetCallerIdentity timed out: no answer within {after:?}")]
    TimedOut { after: Duration },
    #[error("sts:GetCallerIdentity answered without a UserId (ARN {arn:?})")]
    NoUserId { arn: String },
}

/// Who this process is to AWS; a trait so the loop's vote is unit-tested with a fake.
pub trait CallerSource {
    /// The caller identity of the credentials in use.
    fn caller_identity(&self) -> impl Future<Output = Result<CallerIdentity, StsError>> + Send;
}

/// STS in the host's region, with the answer kept once known.
pub struct Sts {
    client: Regional<aws_sdk_sts::Client>,
    known: OnceCell<CallerIdentity>,
}

fn build(sdk: &aws_config::SdkConfig, region: aws_config::Region) -> aws_sdk_sts::Client {
    let config =
        aws_sdk_sts::config::Builder::from(sdk).region(region).interceptor(crate::outside::aws::ClockWatch).build();
    aws_sdk_sts::Client::from_conf(config)
}

impl Sts {
    pub fn with_aws(aws: &Arc<Aws>) -> Sts {
        Sts { client: Regional::new(aws.clone(), "STS", build), known: OnceCell::new() }
    }

    async fn ask(&self) -> Result<CallerIdentity, StsError> {
        let client = self.client.get().await.map_err(|source| StsError::RegionUnknown { source })?;
        let out = tokio::time::timeout(CALL_TIMEOUT, self.client.send(|| client.get_caller_identity().send()))
            .await
            .map_err(|_| StsError::TimedOut { after: CALL_TIMEOUT })?
            .map_err(|err| {
                let code = err.code().unwrap_or_default().to_owned();
                let detail = describe_call(&err);
                match code.as_str() {
                    "InvalidClientTokenId"
                    | "ExpiredToken"
                    | "SignatureDoesNotMatch"
                    | "AccessDenied"
                    | "UnrecognizedClientException" => StsError::Refused { code, detail },
                    _ => StsError::Unavailable { detail },
                }
            })?;
        let arn = out.arn().unwrap_or_default().to_owned();
        let user_id =
            out.user_id().filter(|id| !id.is_empty()).ok_or_else(|| StsError::NoUserId { arn: arn.clone() })?;
        let identity = CallerIdentity { user_id: user_id.to_owned(), arn };
        tracing::info!(
            user_id = %identity.user_id, arn = %identity.arn,
            "AWS caller identity {} ({}): this host's halt votes are written under it", identity.user_id, identity.arn
        );
        Ok(identity)
    }
}

impl CallerSource for Sts {
    async fn caller_identity(&self) -> Result<CallerIdentity, StsError> {
        self.known.get_or_try_init(|| self.ask()).await.cloned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const ANSWER: &str = r#"<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <GetCallerIdentityResult>
    <Arn>arn:aws:sts::123456789012:assumed-role/blog-agent-host/i-0abc</Arn>
    <UserId>AROAEXAMPLEID:i-0abc</UserId>
    <Account>123456789012</Account>
  </GetCallerIdentityResult>
  <ResponseMetadata><RequestId>1</RequestId></ResponseMetadata>
</GetCallerIdentityResponse>"#;

    const EXPIRED: &str = r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>ExpiredToken</Code><Message>The security token included in the request is expired</Message></Error>
  <RequestId>2</RequestId>
</ErrorResponse>"#;

    /// An STS stand-in whose first `failures` answers are 403 ExpiredToken; counts calls.
    async fn sts(failures: usize) -> (Sts, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let n = calls.clone();
        let endpoint = crate::outside::loopback::serve(move |_| {
            let (status, body) = match n.fetch_add(1, Ordering::SeqCst) < failures {
                true => ("403 Forbidden", EXPIRED),
                false => ("200 OK", ANSWER),
            };
            format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        })
        .await;
        let sdk = crate::outside::loopback::sdk_config(endpoint);
        (Sts::with_aws(&Aws::from_sdk(&sdk)), calls)
    }

    #[tokio::test]
    async fn the_identity_is_asked_once_and_kept() {
        let (sts, calls) = sts(0).await;
        let want = CallerIdentity {
            user_id: "AROAEXAMPLEID:i-0abc".into(),
            arn: "arn:aws:sts::123456789012:assumed-role/blog-agent-host/i-0abc".into(),
        };
        assert_eq!(sts.caller_identity().await.unwrap(), want);
        assert_eq!(sts.caller_identity().await.unwrap(), want);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_call_is_not_kept() {
        let (sts, calls) = sts(1).await;
        let err = sts.caller_identity().await.unwrap_err();
        assert!(matches!(&err, StsError::Refused { code, .. } if code == "ExpiredToken"), "{err:?}");
        assert!(err.to_string().starts_with("sts:GetCallerIdentity refused"), "{err}");
        assert_eq!(sts.caller_identity().await.unwrap().user_id, "AROAEXAMPLEID:i-0abc");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}

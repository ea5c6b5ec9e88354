//! One module per external system, each with its own error type naming what it touched:
//! AWS SDK setup and region (`aws`), instance metadata (`imds`), the one S3 client (`s3`)
//! through which the release object (`release`) and the halt markers and votes (`halts`) are
//! read and written, ECR credentials (`registry`), the caller's AWS identity (`sts`), the Docker
//! Engine (`docker`, with `pull_progress` for a terminal), the disk a pull lands on (`disk`) and
//! the registry's manifests that size it (`manifest`), the HTTP health checks (`health`), a
//! container's access log read through Docker (`access_log`), netfilter (`netfilter`) and the
//! Auto Scaling group's lifecycle hooks (`autoscaling`).
//! Unit tests share one loopback HTTP stand-in (`loopback`).

pub mod access_log;
pub mod autoscaling;
pub mod aws;
pub mod disk;
pub mod docker;
pub mod halts;
pub mod health;
pub mod imds;
#[cfg(test)]
pub(crate) mod loopback;
pub mod manifest;
pub mod netfilter;
pub mod pull_progress;
pub mod registry;
pub mod release;
pub mod s3;
pub mod sts;

/// Renders an error and its sources on one line, each message once (`a: b: c`), never a
/// `Debug` dump (the SDK's `DisplayErrorContext` appends one). For errors that are not an AWS
/// call's; those go through [`describe_call`].
pub fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut next = Some(err);
    while let Some(err) = next {
        let text = match err.downcast_ref::<aws_smithy_types::error::ErrorMetadata>() {
            Some(meta) => metadata_text(meta),
            None => err.to_string(),
        };
        let text = text.replace('\n', " ");
        if !text.is_empty() && !line.contains(text.as_str()) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        next = err.source();
    }
    line
}

/// An AWS call's error on one line: for the service's answer, its code and message, the HTTP
/// status and the request id (`SlowDown: Please reduce your request rate. (HTTP 503, request
/// id 4442587FB7D0A2F9)`); a call held back by a push-back ([`aws::HeldBack`]) says so; any
/// other failure (timeout, network) is its chain ([`describe`]).
pub fn describe_call<E>(err: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> String
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
{
    use aws_sdk_s3::error::SdkError;
    use std::error::Error;
    match err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let status = service.raw().status().as_u16();
            let request = e.meta().extra("aws_request_id").map(|id| format!(", request id {id}")).unwrap_or_default();
            match e.code() {
                Some(code) => {
                    let message = e.message().map(|m| format!(": {}", m.replace('\n', " "))).unwrap_or_default();
                    format!("{code}{message} (HTTP {status}{request})")
                }
                None => format!("HTTP {status} with no error code{request}: {}", describe(e)),
            }
        }
        SdkError::ConstructionFailure(_) => match err.source().and_then(|s| s.downcast_ref::<aws::HeldBack>()) {
            Some(held) => held.to_string(),
            None => describe(err),
        },
        SdkError::ResponseError(response) => {
            format!("HTTP {} that could not be read: {}", response.raw().status().as_u16(), describe(err))
        }
        _ => describe(err),
    }
}

/// `code: message` of an error's metadata (its `Display` is a `Debug`-like struct).
fn metadata_text(meta: &aws_smithy_types::error::ErrorMetadata) -> String {
    match (meta.code(), meta.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_owned(),
        (None, Some(message)) => message.to_owned(),
        (None, None) => "an error with no code or message".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::config::http::HttpResponse;
    use aws_sdk_s3::error::SdkError;
    use aws_sdk_s3::operation::get_object::GetObjectError;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    use super::*;

    fn service_error(status: u16, meta: ErrorMetadata) -> SdkError<GetObjectError, HttpResponse> {
        let raw = HttpResponse::new(status.try_into().unwrap(), SdkBody::from("<Error>...</Error>"));
        SdkError::service_error(GetObjectError::generic(meta), raw)
    }

    /// One readable line per error: never the SDK's `Debug` dump (issue 24).
    #[test]
    fn aws_errors_are_one_readable_line() {
        let slow_down = ErrorMetadata::builder()
            .code("SlowDown")
            .message("Please reduce your request rate.")
            .custom("aws_request_id", "4442587FB7D0A2F9")
            .build();
        let throttled = ErrorMetadata::builder().code("ThrottlingException").message("Rate exceeded").build();
        let held = aws::HeldBack { service: "ECR", cause: "ThrottlingException".into(), in_a_row: 3, wait_secs: 7.25 };
        let table: Vec<(SdkError<GetObjectError, HttpResponse>, &str)> = vec![
            (
                service_error(503, slow_down),
                "SlowDown: Please reduce your request rate. (HTTP 503, request id 4442587FB7D0A2F9)",
            ),
            (service_error(400, throttled), "ThrottlingException: Rate exceeded (HTTP 400)"),
            (
                service_error(502, ErrorMetadata::builder().build()),
                "HTTP 502 with no error code: unhandled error: an error with no code or message",
            ),
            (
                SdkError::construction_failure(held),
                "not sent: ECR answered ThrottlingException 3 time(s) in a row; this host's next ECR call waits 7.2 s more",
            ),
            (
                SdkError::timeout_error(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer")),
                "request has timed out: no answer",
            ),
        ];
        for (err, expected) in table {
            let line = describe_call(&err);
            assert_eq!(line, expected);
            for dump in ["ServiceError(", "Response {", "Unhandled(", "ErrorMetadata {", "Error {"] {
                assert!(!line.contains(dump), "{line}");
            }
        }
    }
}

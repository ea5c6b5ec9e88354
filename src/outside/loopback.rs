//! Unit tests' stand-in for a remote service: an HTTP server on loopback that reads each
//! request's head, asks `answer` for the whole response, writes it and closes the connection.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Starts the server; returns its `http://127.0.0.1:PORT` endpoint. `answer` gets the request
/// head (request line and headers) as text.
pub async fn serve(answer: impl Fn(&str) -> String + Send + Sync + 'static) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let answer = std::sync::Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(len) => head.extend_from_slice(&chunk[..len]),
                    }
                }
                let response = answer(&String::from_utf8_lossy(&head));
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    endpoint
}

/// An AWS setup whose every call goes to `endpoint` (as [`serve`] gives it), in `us-east-1`
/// with fixed test credentials: nothing asks instance metadata or the credential chain.
pub fn sdk_config(endpoint: String) -> aws_config::SdkConfig {
    use aws_credential_types::provider::SharedCredentialsProvider;
    use aws_credential_types::Credentials;
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "testing", "testing", None, None, "test",
        )))
        .build()
}

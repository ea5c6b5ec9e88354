//! The request side of HTTP/1.1 for the stand-ins and proxies (instance metadata, Auto Scaling,
//! the counting S3/ECR proxy, recorders): enough to read one request at a time from a
//! keep-alive connection.

use std::collections::HashMap;
use std::fmt;
use std::io::BufRead;

#[derive(Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Lower-cased names.
    pub headers: HashMap<String, String>,
    /// The request line and headers as they came, for a proxy to forward unchanged.
    pub head: Vec<u8>,
    pub body: Vec<u8>,
}

impl Request {
    /// The value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// What an assertion message needs: the call, not its bytes.
impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

/// Reads the next request; `None` when the client closed the connection or sent a broken one.
pub fn read_request(reader: &mut impl BufRead) -> Option<Request> {
    let mut head = Vec::new();
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).ok()? == 0 {
        return None;
    }
    head.extend_from_slice(request_line.as_bytes());
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        head.extend_from_slice(line.as_bytes());
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let length = headers.get("content-length").and_then(|l| l.parse::<usize>().ok()).unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    Some(Request { method, path, headers, head, body })
}

//! AWS's bad days: throttling and 5xx from S3 and ECR, injected by a proxy in front of moto
//! (tests/common/services.rs `CountingProxy`). The site keeps serving, the calls a host makes
//! stay few (counted at the proxy), the agent converges once the throttle ends, and every
//! error it logs is one readable line.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::services::{http_date, CountingProxy, PrivateMoto};

/// The proxy's own behaviour: a `Date` offset is applied to forwarded answers (the clock
/// tests rely on it), and an HTTP date is formatted as RFC 9110 says.
#[test]
fn the_proxy_skews_the_date_header() {
    assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
    assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    assert_eq!(http_date(1_798_761_600), "Fri, 01 Jan 2027 00:00:00 GMT");
    let moto = PrivateMoto::start();
    let proxy = CountingProxy::start(moto.port).date_behind(Duration::from_secs(20 * 60));
    let mut conn = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    // Two requests on one kept-alive connection: each answer is whole and skewed.
    for _ in 0..2 {
        conn.write_all(b"GET /moto-api/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let head = read_answer(&mut conn);
        let date = head.lines().find_map(|l| l.strip_prefix("Date: ")).unwrap_or_else(|| panic!("{head}"));
        let expected = [http_date(now - 1200), http_date(now - 1199), http_date(now - 1201)];
        assert!(expected.contains(&date.to_owned()), "{date} not 20 minutes behind: {head}");
    }
    assert_eq!(proxy.requests().len(), 2);
}

/// Reads one answer (head and a Content-Length body) from `conn`; returns the head.
fn read_answer(conn: &mut TcpStream) -> String {
    let mut bytes = Vec::new();
    let mut byte = [0u8];
    while !bytes.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte).unwrap();
        bytes.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&bytes).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    conn.read_exact(&mut body).unwrap();
    head
}

//! A plain HTTP/1.1 GET over a TCP socket: enough to read convoy-server's
//! own endpoints on loopback without an HTTP client crate.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A response: status code and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Content-Type header, if any.
    pub content_type: Option<String>,
    /// Body text.
    pub body: String,
}

/// GETs `path` (starting with `/`) from `addr` (`host:port`).
pub fn get(addr: &str, path: &str) -> anyhow::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no header end in {text:?}"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("no status in {head:?}"))?
        .parse()?;
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok(Response {
        status,
        content_type: header("content-type"),
        body,
    })
}

/// The body of a chunked transfer.
fn dechunk(mut rest: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest
            .split_once("\r\n")
            .ok_or_else(|| anyhow::anyhow!("truncated chunk"))?;
        let n = usize::from_str_radix(size.trim(), 16)?;
        if n == 0 {
            return Ok(out);
        }
        out.push_str(
            after
                .get(..n)
                .ok_or_else(|| anyhow::anyhow!("short chunk"))?,
        );
        rest = after
            .get(n + 2..)
            .ok_or_else(|| anyhow::anyhow!("truncated chunk"))?;
    }
}

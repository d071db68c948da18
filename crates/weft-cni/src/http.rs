//! Just enough HTTP/1.1 to POST one request over a unix socket and read the answer, with std
//! alone: the plugin is exec'd per call and must start fast, so it carries no HTTP stack. HTTP
//! (rather than a private framing) lets an operator ask the agent by hand:
//! `curl --unix-socket /run/weft/cni.sock -d @request.json http://weft/v1/cni`.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// An answer: its status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Sends `body` to `path` on the server at `socket` and reads its whole answer, waiting at most
/// `timeout` for any one read or write.
pub fn post(socket: &Path, path: &str, body: &[u8], timeout: Duration) -> io::Result<Response> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: weft\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    parse_response(&answer)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("the agent's answer is not HTTP: {what}"))
}

/// Reads a whole HTTP/1.1 response: status line, headers, and a body by Content-Length, in
/// chunks, or up to the end of the stream.
pub fn parse_response(bytes: &[u8]) -> io::Result<Response> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| invalid("no end of headers"))?;
    let head = std::str::from_utf8(&bytes[..end]).map_err(|_| invalid("headers are not text"))?;
    let rest = &bytes[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|s| s.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| invalid("no status line"))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| invalid("a bad Content-Length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n).ok_or_else(|| invalid("the body is cut short"))?.to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body })
}

fn dechunk(mut bytes: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = bytes.windows(2).position(|w| w == b"\r\n").ok_or_else(|| invalid("a chunk without its size"))?;
        let size_text = std::str::from_utf8(&bytes[..eol]).map_err(|_| invalid("a chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| invalid("a chunk size"))?;
        bytes = &bytes[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(bytes.get(..size).ok_or_else(|| invalid("a chunk cut short"))?);
        bytes = bytes.get(size + 2..).ok_or_else(|| invalid("a chunk cut short"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_read_by_its_length_in_chunks_or_to_the_end() {
        let sized = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}trailing").unwrap();
        assert_eq!(sized, Response { status: 200, body: b"{}".to_vec() });
        let chunked =
            parse_response(b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n")
                .unwrap();
        assert_eq!(chunked, Response { status: 503, body: b"abcde".to_vec() });
        let open = parse_response(b"HTTP/1.0 404 Not Found\r\n\r\nnothing").unwrap();
        assert_eq!(open, Response { status: 404, body: b"nothing".to_vec() });
    }

    #[test]
    fn what_is_not_http_is_an_error() {
        for bad in
            [&b"SSH-2.0\r\n\r\n"[..], b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort"]
        {
            assert_eq!(parse_response(bad).unwrap_err().kind(), io::ErrorKind::InvalidData, "{bad:?}");
        }
    }
}

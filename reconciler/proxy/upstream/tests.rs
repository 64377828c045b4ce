//! The backend client's parsing rules, one test per rule; over real sockets in
//! `proxy::tests::framing`.

use super::*;

fn head(text: &str) -> Result<Option<Head>, UpstreamError> {
    head_of(text, false)
}

fn head_of(text: &str, no_body: bool) -> Result<Option<Head>, UpstreamError> {
    let mut buf = BytesMut::from(text.as_bytes());
    take_head(&mut buf, no_body)
}

fn framing(text: &str) -> (Framing, bool) {
    let h = head(text).expect("a valid head").expect("a complete head");
    (h.framing, h.keep_alive)
}

#[test]
fn a_response_with_both_content_length_and_transfer_encoding_is_refused() {
    for text in [
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\ncontent-length: 0\r\n\r\n",
    ] {
        assert!(
            matches!(head(text), Err(UpstreamError::LengthAndEncoding)),
            "{text:?}"
        );
    }
    // Each alone is fine.
    assert_eq!(
        framing("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
        (Framing::Length(5), true)
    );
    assert_eq!(
        framing("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
        (Framing::Chunked(Chunk::Size), true)
    );
}

#[test]
fn a_response_head_over_the_size_or_header_count_limit_is_refused() {
    // Incomplete and already over the limit: refused without waiting for more.
    let long = format!("HTTP/1.1 200 OK\r\nx-big: {}", "a".repeat(MAX_HEAD));
    assert!(matches!(head(&long), Err(UpstreamError::HeadTooLarge)));
    // Complete but over the limit.
    let complete = format!("{long}\r\ncontent-length: 0\r\n\r\n");
    assert!(matches!(head(&complete), Err(UpstreamError::HeadTooLarge)));
    // Too many header lines.
    let many: String = (0..=MAX_HEADERS)
        .map(|i| format!("x-h{i}: 1\r\n"))
        .collect();
    let text = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
    assert!(matches!(head(&text), Err(UpstreamError::HeadTooLarge)));
    // Just within both limits: accepted.
    let within: String = (0..MAX_HEADERS - 1)
        .map(|i| format!("x-h{i}: 1\r\n"))
        .collect();
    let big = format!(
        "HTTP/1.1 200 OK\r\n{within}x-big: {}\r\n\r\n",
        "a".repeat(MAX_HEAD - 2_000)
    );
    let h = head(&big).expect("valid").expect("complete");
    assert_eq!(h.headers.len(), MAX_HEADERS);
    // Incomplete within the limit: wait for more.
    assert!(matches!(head("HTTP/1.1 200 OK\r\nx-a: 1\r\n"), Ok(None)));
}

#[test]
fn heads_with_more_headers_than_the_small_table_keep_every_header_in_order() {
    // Around the small table's size, with the framing header last (past it) and an
    // interim answer first that itself has more headers than the small table.
    for count in [
        FEW_HEADERS - 1,
        FEW_HEADERS,
        FEW_HEADERS + 1,
        3 * FEW_HEADERS,
    ] {
        let lines: String = (0..count).map(|i| format!("x-h{i}: v{i}\r\n")).collect();
        let text = format!(
            "HTTP/1.1 103 Early Hints\r\n{lines}\r\nHTTP/1.1 200 OK\r\n{lines}content-length: 7\r\n\r\nrest"
        );
        let mut buf = BytesMut::from(text.as_bytes());
        let h = take_head(&mut buf, false)
            .expect("valid")
            .expect("complete");
        assert_eq!(h.status, StatusCode::OK, "{count} headers");
        assert_eq!(h.framing, Framing::Length(7), "{count} headers");
        let got: Vec<(String, String)> = h
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().expect("ascii").to_owned()))
            .collect();
        let mut want: Vec<(String, String)> = (0..count)
            .map(|i| (format!("x-h{i}"), format!("v{i}")))
            .collect();
        want.push(("content-length".into(), "7".into()));
        assert_eq!(got, want, "{count} headers");
        // What follows the head stays for the body.
        assert_eq!(&buf[..], b"rest", "{count} headers");
    }
}

#[test]
fn content_length_must_be_one_decimal_number() {
    for bad in [
        "+5",
        "-1",
        "0x5",
        "5 5",
        "5,5",
        "",
        "99999999999999999999",
        "5a",
    ] {
        let text = format!("HTTP/1.1 200 OK\r\ncontent-length: {bad}\r\n\r\n");
        assert!(
            matches!(head(&text), Err(UpstreamError::BadLength)),
            "{bad:?}"
        );
    }
    // Two that differ: which one would the next hop believe?
    let two = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n";
    assert!(matches!(head(two), Err(UpstreamError::BadLength)));
    // The same one twice is harmless.
    let same = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n";
    assert_eq!(framing(same).0, Framing::Length(5));
}

#[test]
fn malformed_heads_and_upgrades_are_refused() {
    for text in [
        // Obsolete line folding.
        "HTTP/1.1 200 OK\r\nx-a: 1\r\n folded\r\ncontent-length: 0\r\n\r\n",
        // Whitespace before the colon.
        "HTTP/1.1 200 OK\r\ncontent-length : 0\r\n\r\n",
        // Not a status line.
        "HTTP/1.1 OK 200\r\n\r\n",
        "HTTX/1.1 200 OK\r\n\r\n",
        // A bare LF inside a header name.
        "HTTP/1.1 200 OK\r\nx\na: 1\r\n\r\n",
    ] {
        assert!(
            matches!(head(text), Err(UpstreamError::BadHead(_))),
            "{text:?}"
        );
    }
    let switch = "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n";
    assert!(matches!(head(switch), Err(UpstreamError::BadHead(_))));
}

#[test]
fn framing_follows_the_status_the_method_and_the_headers() {
    // An interim answer is skipped; the final one follows in the same buffer.
    let mut buf = BytesMut::from(
        &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"[..],
    );
    let h = take_head(&mut buf, false)
        .expect("valid")
        .expect("complete");
    assert_eq!(
        (h.status, h.framing),
        (StatusCode::CREATED, Framing::Length(2))
    );
    assert_eq!(&buf[..], b"ok", "the body stays in the buffer");
    // No body: 204, 304, any answer to HEAD (whatever its Content-Length), length 0.
    assert_eq!(framing("HTTP/1.1 204 No Content\r\n\r\n").0, Framing::Done);
    assert_eq!(
        framing("HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n").0,
        Framing::Done
    );
    let to_head = head_of("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true)
        .expect("valid")
        .expect("complete");
    assert_eq!((to_head.framing, to_head.keep_alive), (Framing::Done, true));
    assert_eq!(
        to_head.headers["content-length"], "9",
        "kept for the client"
    );
    assert_eq!(
        framing("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
        (Framing::Done, true)
    );
    // Chunked only when it is the last coding; otherwise until the connection closes.
    assert_eq!(
        framing("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n").0,
        Framing::Chunked(Chunk::Size)
    );
    assert_eq!(
        framing("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n"),
        (Framing::UntilClose, false)
    );
    assert_eq!(
        framing("HTTP/1.1 200 OK\r\n\r\n"),
        (Framing::UntilClose, false)
    );
    // Connection reuse: not after `close`, not with HTTP/1.0.
    assert_eq!(
        framing("HTTP/1.1 200 OK\r\nconnection: keep-alive, Close\r\ncontent-length: 1\r\n\r\n"),
        (Framing::Length(1), false)
    );
    assert_eq!(
        framing("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n"),
        (Framing::Length(1), false)
    );
}

#[test]
fn chunk_size_lines_are_strict() {
    for bad in ["", "g", "5x", ";ext", " 5", "10000000000000000", "5\t\tx"] {
        assert!(parse_chunk_size(bad.as_bytes()).is_err(), "{bad:?}");
    }
    assert_eq!(parse_chunk_size(b"a").ok(), Some(10));
    assert_eq!(parse_chunk_size(b"A ;name=value").ok(), Some(10));
    assert_eq!(
        parse_chunk_size(b"fffffffffffffff").ok(),
        Some(0xfff_ffff_ffff_ffff)
    );
    assert_eq!(
        parse_length(b"18446744073709551615").ok(),
        None,
        "20 digits"
    );
    assert_eq!(
        parse_length(b"1844674407370955161").ok(),
        Some(1_844_674_407_370_955_161)
    );
}

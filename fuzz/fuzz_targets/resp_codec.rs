//! Feeds arbitrary bytes, in arbitrary chunks, to the request parser and the reply scanner.
//! Invariants: no panic; every parsed request re-encodes to exactly the bytes it came from
//! (or, for inline commands, to a valid RESP request); the scanner agrees with Frame::parse.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use moonraft_proxy::resp::{Frame, ReplyScanner, Request, RequestParser};

fuzz_target!(|data: &[u8]| {
    let split = data.first().copied().unwrap_or(1).max(1) as usize;
    let mut parser = RequestParser::new(1 << 16, 1 << 20);
    let mut buf = BytesMut::new();
    'outer: for chunk in data.chunks(split) {
        buf.extend_from_slice(chunk);
        loop {
            match parser.next(&mut buf) {
                Ok(Some(req)) => {
                    assert!(!req.args.is_empty());
                    let again = Request::from_args(req.args.clone());
                    if req.raw.first() == Some(&b'*') {
                        assert_eq!(again.raw, req.raw);
                    }
                }
                Ok(None) => break,
                Err(_) => break 'outer,
            }
        }
    }
    let mut scanner = ReplyScanner::new(1 << 16);
    let mut seen = Vec::new();
    let mut end = None;
    for chunk in data.chunks(split) {
        seen.extend_from_slice(chunk);
        match scanner.scan(&seen) {
            Ok(Some(n)) => {
                end = Some(n);
                break;
            }
            Ok(None) => {}
            Err(_) => return,
        }
    }
    if let Some(n) = end {
        let (frame, len) = Frame::parse(&seen).expect("scanner accepted it").expect("complete");
        assert_eq!(len, n);
        for proto in [2u8, 3] {
            let bytes = frame.to_bytes(proto);
            assert!(Frame::parse(&bytes).expect("re-encoded frame parses").is_some());
        }
    }
});

//! RESP2/RESP3 codec.
//!
//! Written by hand rather than taken from a crate because it is the proxy's hot path: every
//! request and every reply passes through it. It never copies payloads: a request is split off
//! the read buffer as one `Bytes` (forwarded to Redis unchanged) and its arguments are cheap
//! slices of it; a backend reply is only *scanned* for its end and relayed as raw bytes. Both
//! parsers are resumable, so a large request or reply that arrives in many reads is scanned
//! once, not once per read, and both enforce size and nesting limits before buffering data.

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;

/// Redis's `proto-max-bulk-len` default.
pub const DEFAULT_MAX_BULK_LEN: usize = 512 * 1024 * 1024;
/// Redis's `PROTO_INLINE_MAX_SIZE`: longest inline command or header line.
pub const MAX_INLINE_LEN: usize = 64 * 1024;
/// Redis rejects multibulk lengths above `INT_MAX`.
pub const MAX_MULTIBULK_LEN: i64 = i32::MAX as i64;
/// Deepest nesting accepted in a reply (Redis itself never nests more than a handful).
pub const MAX_REPLY_DEPTH: usize = 512;

/// A protocol violation. The message is what Redis itself would answer after `-ERR `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct ProtocolError(pub String);

impl ProtocolError {
    fn new(msg: impl Into<String>) -> Self {
        ProtocolError(msg.into())
    }
}

/// One client request: the raw RESP bytes (forwarded to a backend as they are) and the
/// arguments as slices of those bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub raw: Bytes,
    pub args: Vec<Bytes>,
}

impl Request {
    /// Builds a request from arguments, encoding it as a RESP array of bulk strings.
    pub fn from_args(args: Vec<Bytes>) -> Request {
        let mut buf = BytesMut::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
        write_array_header(&mut buf, args.len());
        for a in &args {
            write_bulk(&mut buf, a);
        }
        Request { raw: buf.freeze(), args }
    }

    pub fn from_strs(args: &[&str]) -> Request {
        Request::from_args(args.iter().map(|a| Bytes::copy_from_slice(a.as_bytes())).collect())
    }

    /// The command name (first argument); requests are never empty.
    pub fn name(&self) -> &[u8] {
        self.args.first().map(|b| &b[..]).unwrap_or(b"")
    }
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + 1 < buf.len() {
        match buf[i + 1..].iter().position(|&b| b == b'\n') {
            Some(off) => {
                let nl = i + 1 + off;
                if buf[nl - 1] == b'\r' {
                    return Some(nl - 1);
                }
                i = nl;
            }
            None => return None,
        }
    }
    None
}

/// Parses a signed decimal integer the way Redis does (no spaces, no '+', no leading zeros
/// checks needed for lengths).
pub fn parse_int(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    // Like Redis's string2ll: no leading zeros ("01") and no "-0".
    if digits[0] == b'0' && (digits.len() > 1 || neg) {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((d - b'0') as i64)?;
    }
    Some(if neg { -v } else { v })
}

pub fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.iter().all(|d| d.is_ascii_digit()) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

#[derive(Debug)]
struct PartialArray {
    remaining: usize,
    args: Vec<(usize, usize)>,
    pos: usize,
}

/// Incremental parser for client requests (RESP arrays of bulk strings, or inline commands).
#[derive(Debug)]
pub struct RequestParser {
    max_bulk_len: usize,
    max_buffer: usize,
    partial: Option<PartialArray>,
}

impl RequestParser {
    /// `max_bulk_len` bounds one argument; `max_buffer` bounds one whole request.
    pub fn new(max_bulk_len: usize, max_buffer: usize) -> Self {
        RequestParser { max_bulk_len, max_buffer, partial: None }
    }

    /// Returns the next complete request, `Ok(None)` if more bytes are needed. Empty requests
    /// (`*0`, `*-1`, blank inline lines) are skipped like Redis does.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        loop {
            if self.partial.is_none() {
                if buf.is_empty() {
                    return Ok(None);
                }
                if buf[0] != b'*' {
                    match self.parse_inline(buf)? {
                        Some(Some(req)) => return Ok(Some(req)),
                        Some(None) => continue,
                        None => return Ok(None),
                    }
                }
                let Some(end) = find_crlf(buf, 0) else {
                    if buf.len() > MAX_INLINE_LEN {
                        return Err(ProtocolError::new("too big mbulk count string"));
                    }
                    return Ok(None);
                };
                // Every element takes at least 6 bytes (`$0\r\n\r\n`), so a count that could not
                // fit in the query buffer limit is rejected up front.
                let max_elements = (self.max_buffer / 6) as i64;
                let n = parse_int(&buf[1..end])
                    .filter(|n| *n <= MAX_MULTIBULK_LEN && *n <= max_elements)
                    .ok_or_else(|| ProtocolError::new("invalid multibulk length"))?;
                if n <= 0 {
                    let _ = buf.split_to(end + 2);
                    continue;
                }
                self.partial = Some(PartialArray {
                    remaining: n as usize,
                    args: Vec::with_capacity((n as usize).min(64)),
                    pos: end + 2,
                });
            }
            return self.continue_array(buf);
        }
    }

    fn continue_array(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        let Some(p) = self.partial.as_mut() else {
            return Ok(None);
        };
        while p.remaining > 0 {
            if buf.len() <= p.pos {
                return Ok(None);
            }
            if buf[p.pos] != b'$' {
                let got = buf[p.pos] as char;
                self.partial = None;
                return Err(ProtocolError::new(format!("expected '$', got '{got}'")));
            }
            let Some(end) = find_crlf(buf, p.pos) else {
                if buf.len() - p.pos > MAX_INLINE_LEN {
                    self.partial = None;
                    return Err(ProtocolError::new("too big bulk count string"));
                }
                return Ok(None);
            };
            let len = match parse_int(&buf[p.pos + 1..end]) {
                Some(l) if l >= 0 && (l as u64) <= self.max_bulk_len as u64 => l as usize,
                _ => {
                    self.partial = None;
                    return Err(ProtocolError::new("invalid bulk length"));
                }
            };
            let data = end + 2;
            let total = data + len + 2;
            if total > self.max_buffer {
                self.partial = None;
                return Err(ProtocolError::new("request exceeds the query buffer limit"));
            }
            if buf.len() < total {
                // Make room once for the whole argument instead of growing step by step.
                buf.reserve(total - buf.len());
                return Ok(None);
            }
            if &buf[data + len..total] != b"\r\n" {
                self.partial = None;
                return Err(ProtocolError::new("expected CRLF after bulk string"));
            }
            p.args.push((data, len));
            p.pos = total;
            p.remaining -= 1;
        }
        let p = self.partial.take().expect("checked above");
        let raw = buf.split_to(p.pos).freeze();
        let args = p.args.iter().map(|&(s, l)| raw.slice(s..s + l)).collect();
        Ok(Some(Request { raw, args }))
    }

    /// `Some(Some(req))`: a command; `Some(None)`: a blank line was skipped; `None`: need more.
    fn parse_inline(&mut self, buf: &mut BytesMut) -> Result<Option<Option<Request>>, ProtocolError> {
        let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
            if buf.len() > MAX_INLINE_LEN {
                return Err(ProtocolError::new("too big inline request"));
            }
            return Ok(None);
        };
        if nl > MAX_INLINE_LEN {
            return Err(ProtocolError::new("too big inline request"));
        }
        let line = buf.split_to(nl + 1);
        let mut text = &line[..nl];
        if text.last() == Some(&b'\r') {
            text = &text[..text.len() - 1];
        }
        let args = split_inline_args(text).ok_or_else(|| ProtocolError::new("unbalanced quotes in request"))?;
        if args.is_empty() {
            return Ok(Some(None));
        }
        Ok(Some(Some(Request::from_args(args.into_iter().map(Bytes::from).collect()))))
    }
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|v| v as u8)
}

/// Splits an inline command line like Redis's `sdssplitargs`: whitespace separated, with
/// "double quoted" (C escapes) and 'single quoted' arguments. `None` on unbalanced quotes.
pub fn split_inline_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut i = 0;
    let n = line.len();
    loop {
        while i < n && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= n {
            return Some(out);
        }
        let mut cur = Vec::new();
        let mut in_dq = false;
        let mut in_sq = false;
        loop {
            if in_dq {
                if i >= n {
                    return None;
                }
                if line[i] == b'\\' && i + 3 < n && line[i + 1] == b'x' {
                    if let (Some(h), Some(l)) = (hex_val(line[i + 2]), hex_val(line[i + 3])) {
                        cur.push(h * 16 + l);
                        i += 4;
                        continue;
                    }
                }
                if line[i] == b'\\' && i + 1 < n {
                    let c = match line[i + 1] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => other,
                    };
                    cur.push(c);
                    i += 2;
                } else if line[i] == b'"' {
                    if i + 1 < n && !line[i + 1].is_ascii_whitespace() {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(line[i]);
                    i += 1;
                }
            } else if in_sq {
                if i >= n {
                    return None;
                }
                if line[i] == b'\\' && i + 1 < n && line[i + 1] == b'\'' {
                    cur.push(b'\'');
                    i += 2;
                } else if line[i] == b'\'' {
                    if i + 1 < n && !line[i + 1].is_ascii_whitespace() {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(line[i]);
                    i += 1;
                }
            } else {
                if i >= n || line[i].is_ascii_whitespace() {
                    break;
                }
                match line[i] {
                    b'"' => in_dq = true,
                    b'\'' => in_sq = true,
                    c => cur.push(c),
                }
                i += 1;
            }
        }
        out.push(cur);
    }
}

/// Resumable scanner that finds where one complete reply (RESP2 or RESP3) ends, without
/// materialising it. Replies are relayed to clients as raw bytes.
#[derive(Debug)]
pub struct ReplyScanner {
    max_bulk_len: usize,
    pos: usize,
    /// Elements still missing in each open aggregate.
    stack: Vec<usize>,
}

impl ReplyScanner {
    pub fn new(max_bulk_len: usize) -> Self {
        ReplyScanner { max_bulk_len, pos: 0, stack: Vec::new() }
    }

    /// Returns the length of the complete reply at the start of `buf`, or `None` if more bytes
    /// are needed. Call again with the same (grown) buffer; after `Some` the scanner is reset.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        loop {
            if buf.len() <= self.pos {
                return Ok(None);
            }
            if !b"+-:_,#($!=*~>%|".contains(&buf[self.pos]) {
                return Err(ProtocolError::new(format!("unexpected reply type byte 0x{:02x}", buf[self.pos])));
            }
            let Some(end) = find_crlf(buf, self.pos + 1) else {
                if buf.len() - self.pos > MAX_INLINE_LEN.max(self.max_bulk_len.min(1 << 20)) {
                    return Err(ProtocolError::new("reply line too long"));
                }
                return Ok(None);
            };
            let kind = buf[self.pos];
            let line = &buf[self.pos + 1..end];
            let mut next = end + 2;
            // Number of child elements this element opens (0 = complete scalar).
            let mut children = 0usize;
            match kind {
                b':' => {
                    parse_int(line).ok_or_else(|| ProtocolError::new("invalid integer reply"))?;
                }
                b'+' | b'-' | b'_' | b',' | b'#' | b'(' => {}
                b'$' | b'!' | b'=' => {
                    let len = parse_int(line).ok_or_else(|| ProtocolError::new("invalid bulk length"))?;
                    if len >= 0 {
                        if len as u64 > self.max_bulk_len as u64 {
                            return Err(ProtocolError::new("invalid bulk length"));
                        }
                        let total = next + len as usize + 2;
                        if buf.len() < total {
                            return Ok(None);
                        }
                        if &buf[total - 2..total] != b"\r\n" {
                            return Err(ProtocolError::new("expected CRLF after bulk string"));
                        }
                        next = total;
                    } else if len != -1 {
                        return Err(ProtocolError::new("invalid bulk length"));
                    }
                }
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    let n = parse_int(line)
                        .filter(|n| *n >= -1 && *n <= MAX_MULTIBULK_LEN)
                        .ok_or_else(|| ProtocolError::new("invalid multibulk length"))?;
                    if kind == b'|' {
                        // An attribute map (even an empty one) is followed by the value it
                        // annotates.
                        if n < 0 {
                            return Err(ProtocolError::new("invalid attribute length"));
                        }
                        children = n as usize * 2 + 1;
                    } else if n > 0 {
                        children = if kind == b'%' { n as usize * 2 } else { n as usize };
                    }
                }
                other => {
                    return Err(ProtocolError::new(format!("unexpected reply type byte 0x{other:02x}")));
                }
            }
            self.pos = next;
            if children > 0 {
                if self.stack.len() >= MAX_REPLY_DEPTH {
                    return Err(ProtocolError::new("reply nested too deeply"));
                }
                self.stack.push(children);
                continue;
            }
            // A complete element: close every aggregate it completes.
            loop {
                match self.stack.last_mut() {
                    None => {
                        let len = self.pos;
                        self.pos = 0;
                        return Ok(Some(len));
                    }
                    Some(top) => {
                        *top -= 1;
                        if *top > 0 {
                            break;
                        }
                        self.stack.pop();
                    }
                }
            }
        }
    }
}

/// A decoded RESP value, for the few places that need to look inside a reply (control plane,
/// COMMAND filtering, replies the proxy builds itself).
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Bytes),
    Null,
    NullArray,
    Array(Vec<Frame>),
    Map(Vec<(Frame, Frame)>),
    Set(Vec<Frame>),
    Push(Vec<Frame>),
    Double(String),
    Boolean(bool),
    BigNumber(String),
    Verbatim(String, Bytes),
}

impl Frame {
    pub fn bulk(s: impl Into<Bytes>) -> Frame {
        Frame::Bulk(s.into())
    }

    pub fn bulk_str(s: &str) -> Frame {
        Frame::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// Decodes one complete reply. `Ok(None)` if `buf` does not hold a complete one.
    pub fn parse(buf: &[u8]) -> Result<Option<(Frame, usize)>, ProtocolError> {
        let mut scanner = ReplyScanner::new(usize::MAX >> 1);
        let Some(len) = scanner.scan(buf)? else {
            return Ok(None);
        };
        let mut pos = 0;
        let frame = Self::decode(buf, &mut pos, 0)?;
        debug_assert_eq!(pos, len);
        Ok(Some((frame, len)))
    }

    // Only called on bytes the scanner has validated as one complete reply.
    fn decode(buf: &[u8], pos: &mut usize, depth: usize) -> Result<Frame, ProtocolError> {
        let bad = || ProtocolError::new("malformed reply");
        if depth > MAX_REPLY_DEPTH {
            return Err(bad());
        }
        let end = find_crlf(buf, *pos + 1).ok_or_else(bad)?;
        let kind = buf[*pos];
        let line = &buf[*pos + 1..end];
        let text = || String::from_utf8_lossy(line).into_owned();
        *pos = end + 2;
        let count = |n: i64| -> usize { n.max(0) as usize };
        Ok(match kind {
            b'+' => Frame::Simple(text()),
            b'-' => Frame::Error(text()),
            b':' => Frame::Integer(parse_int(line).ok_or_else(bad)?),
            b'_' => Frame::Null,
            b',' => Frame::Double(text()),
            b'(' => Frame::BigNumber(text()),
            b'#' => Frame::Boolean(line == b"t"),
            b'$' | b'!' | b'=' => {
                let len = parse_int(line).ok_or_else(bad)?;
                if len < 0 {
                    return Ok(Frame::Null);
                }
                let data = Bytes::copy_from_slice(&buf[*pos..*pos + len as usize]);
                *pos += len as usize + 2;
                match kind {
                    b'!' => Frame::Error(String::from_utf8_lossy(&data).into_owned()),
                    // `=<len>\r\n<3-letter format>:<text>`; anything else is kept as plain bytes
                    // (a lossy format would change the frame's length when written again).
                    b'=' if data.len() >= 4 && data[..3].iter().all(u8::is_ascii_alphanumeric) && data[3] == b':' => {
                        Frame::Verbatim(String::from_utf8_lossy(&data[..3]).into_owned(), data.slice(4..))
                    }
                    _ => Frame::Bulk(data),
                }
            }
            b'*' | b'~' | b'>' => {
                let n = parse_int(line).ok_or_else(bad)?;
                if n < 0 {
                    return Ok(Frame::NullArray);
                }
                let mut items = Vec::with_capacity(count(n).min(1024));
                for _ in 0..n {
                    items.push(Self::decode(buf, pos, depth + 1)?);
                }
                match kind {
                    b'~' => Frame::Set(items),
                    b'>' => Frame::Push(items),
                    _ => Frame::Array(items),
                }
            }
            b'%' => {
                let n = parse_int(line).ok_or_else(bad)?;
                let mut items = Vec::with_capacity(count(n).min(1024));
                for _ in 0..n {
                    let k = Self::decode(buf, pos, depth + 1)?;
                    let v = Self::decode(buf, pos, depth + 1)?;
                    items.push((k, v));
                }
                Frame::Map(items)
            }
            b'|' => {
                // Attributes are dropped: skip the map, return the annotated value.
                let n = parse_int(line).ok_or_else(bad)?;
                for _ in 0..n * 2 {
                    Self::decode(buf, pos, depth + 1)?;
                }
                Self::decode(buf, pos, depth + 1)?
            }
            _ => return Err(bad()),
        })
    }

    /// Encodes for a client speaking protocol `proto` (2 or 3). RESP3-only types are mapped to
    /// their RESP2 equivalents for RESP2 clients, as Redis does.
    pub fn encode(&self, proto: u8, buf: &mut BytesMut) {
        let resp3 = proto >= 3;
        match self {
            Frame::Simple(s) => write_simple(buf, s),
            Frame::Error(s) => write_error(buf, s),
            Frame::Integer(i) => write_integer(buf, *i),
            Frame::Bulk(b) => write_bulk(buf, b),
            Frame::Null => write_null(buf, proto),
            Frame::NullArray => {
                if resp3 {
                    buf.put_slice(b"_\r\n")
                } else {
                    buf.put_slice(b"*-1\r\n")
                }
            }
            Frame::Array(items) | Frame::Set(items) | Frame::Push(items) => {
                let prefix = match (self, resp3) {
                    (Frame::Set(_), true) => b'~',
                    (Frame::Push(_), true) => b'>',
                    _ => b'*',
                };
                write_header(buf, prefix, items.len() as i64);
                for f in items {
                    f.encode(proto, buf);
                }
            }
            Frame::Map(pairs) => {
                write_map_header(buf, proto, pairs.len());
                for (k, v) in pairs {
                    k.encode(proto, buf);
                    v.encode(proto, buf);
                }
            }
            Frame::Double(d) => {
                if resp3 {
                    write_header_str(buf, b',', d);
                } else {
                    write_bulk(buf, d.as_bytes());
                }
            }
            Frame::Boolean(b) => {
                if resp3 {
                    buf.put_slice(if *b { b"#t\r\n" } else { b"#f\r\n" });
                } else {
                    write_integer(buf, *b as i64);
                }
            }
            Frame::BigNumber(n) => {
                if resp3 {
                    write_header_str(buf, b'(', n);
                } else {
                    write_bulk(buf, n.as_bytes());
                }
            }
            Frame::Verbatim(fmt, data) => {
                if resp3 {
                    write_header(buf, b'=', (fmt.len() + 1 + data.len()) as i64);
                    buf.put_slice(fmt.as_bytes());
                    buf.put_u8(b':');
                    buf.put_slice(data);
                    buf.put_slice(b"\r\n");
                } else {
                    write_bulk(buf, data);
                }
            }
        }
    }

    pub fn to_bytes(&self, proto: u8) -> Bytes {
        let mut buf = BytesMut::new();
        self.encode(proto, &mut buf);
        buf.freeze()
    }

    /// The payload of a bulk or simple string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Frame::Bulk(b) => Some(b),
            Frame::Simple(s) => Some(s.as_bytes()),
            Frame::Verbatim(_, b) => Some(b),
            _ => None,
        }
    }
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Frame::Simple(s) | Frame::Error(s) | Frame::Double(s) | Frame::BigNumber(s) => f.write_str(s),
            Frame::Integer(i) => write!(f, "{i}"),
            Frame::Bulk(b) | Frame::Verbatim(_, b) => f.write_str(&String::from_utf8_lossy(b)),
            Frame::Null | Frame::NullArray => f.write_str("(nil)"),
            Frame::Boolean(b) => write!(f, "{b}"),
            Frame::Array(items) | Frame::Set(items) | Frame::Push(items) => {
                f.write_str("[")?;
                for (i, x) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{x}")?;
                }
                f.write_str("]")
            }
            Frame::Map(pairs) => {
                f.write_str("{")?;
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k}: {v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

fn write_header(buf: &mut BytesMut, prefix: u8, n: i64) {
    let mut tmp = itoa_buf(n);
    buf.reserve(tmp.len() + 3);
    buf.put_u8(prefix);
    buf.put_slice(tmp.as_bytes_mut());
    buf.put_slice(b"\r\n");
}

fn write_header_str(buf: &mut BytesMut, prefix: u8, s: &str) {
    buf.put_u8(prefix);
    buf.put_slice(s.as_bytes());
    buf.put_slice(b"\r\n");
}

struct ItoaBuf {
    bytes: [u8; 24],
    start: usize,
}

impl ItoaBuf {
    fn len(&self) -> usize {
        24 - self.start
    }
    fn as_bytes_mut(&mut self) -> &[u8] {
        &self.bytes[self.start..]
    }
}

fn itoa_buf(n: i64) -> ItoaBuf {
    let mut bytes = [0u8; 24];
    let mut i = 24;
    let neg = n < 0;
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        bytes[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if neg {
        i -= 1;
        bytes[i] = b'-';
    }
    ItoaBuf { bytes, start: i }
}

pub fn write_simple(buf: &mut BytesMut, s: &str) {
    write_header_str(buf, b'+', s);
}

/// Writes an error line; CR/LF inside the message are replaced so the reply stays well formed.
pub fn write_error(buf: &mut BytesMut, s: &str) {
    buf.put_u8(b'-');
    for &b in s.as_bytes() {
        buf.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
    }
    buf.put_slice(b"\r\n");
}

pub fn write_integer(buf: &mut BytesMut, n: i64) {
    write_header(buf, b':', n);
}

pub fn write_bulk(buf: &mut BytesMut, data: &[u8]) {
    write_header(buf, b'$', data.len() as i64);
    buf.reserve(data.len() + 2);
    buf.put_slice(data);
    buf.put_slice(b"\r\n");
}

pub fn write_array_header(buf: &mut BytesMut, n: usize) {
    write_header(buf, b'*', n as i64);
}

pub fn write_map_header(buf: &mut BytesMut, proto: u8, pairs: usize) {
    if proto >= 3 {
        write_header(buf, b'%', pairs as i64);
    } else {
        write_header(buf, b'*', (pairs * 2) as i64);
    }
}

pub fn write_null(buf: &mut BytesMut, proto: u8) {
    if proto >= 3 {
        buf.put_slice(b"_\r\n");
    } else {
        buf.put_slice(b"$-1\r\n");
    }
}

pub fn simple(s: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(s.len() + 3);
    write_simple(&mut b, s);
    b.freeze()
}

pub fn error(s: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(s.len() + 3);
    write_error(&mut b, s);
    b.freeze()
}

pub fn integer(n: i64) -> Bytes {
    let mut b = BytesMut::with_capacity(24);
    write_integer(&mut b, n);
    b.freeze()
}

pub fn bulk(data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(data.len() + 16);
    write_bulk(&mut b, data);
    b.freeze()
}

pub const OK: &[u8] = b"+OK\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut p = RequestParser::new(DEFAULT_MAX_BULK_LEN, 1 << 30);
        let mut buf = BytesMut::from(input);
        let mut out = vec![];
        while let Some(r) = p.next(&mut buf)? {
            out.push(r.args.iter().map(|a| a.to_vec()).collect());
        }
        Ok(out)
    }

    /// Found by `scripts/fuzz.sh`: a verbatim string whose "format" is not three ASCII letters
    /// and a colon used to be re-written with a wrong length.
    #[test]
    fn verbatim_strings_write_back_as_they_parse() {
        for input in [&b"=7\r\n7\xff\xff\xff\xff\x176\r\n"[..], b"=9\r\ntxt:hello\r\n", b"=2\r\nab\r\n"] {
            let (frame, len) = Frame::parse(input).unwrap().unwrap();
            assert_eq!(len, input.len());
            for proto in [2u8, 3] {
                let bytes = frame.to_bytes(proto);
                let (again, n) = Frame::parse(&bytes).unwrap().unwrap();
                assert_eq!(n, bytes.len());
                // RESP2 has no verbatim strings: the text goes as a bulk string.
                if proto == 3 {
                    assert_eq!(again, frame, "{}", String::from_utf8_lossy(&bytes));
                }
            }
        }
        assert_eq!(
            Frame::parse(b"=9\r\ntxt:hello\r\n").unwrap().unwrap().0,
            Frame::Verbatim("txt".into(), Bytes::from_static(b"hello"))
        );
    }

    #[test]
    fn parses_arrays_and_keeps_raw_bytes() {
        let input = b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*1\r\n$4\r\nPING\r\n";
        let mut p = RequestParser::new(100, 1000);
        let mut buf = BytesMut::from(&input[..]);
        let r = p.next(&mut buf).unwrap().unwrap();
        assert_eq!(&r.raw[..], b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n");
        assert_eq!(r.args, vec![Bytes::from_static(b"GET"), Bytes::from_static(b"a")]);
        let r = p.next(&mut buf).unwrap().unwrap();
        assert_eq!(r.name(), b"PING");
        assert!(p.next(&mut buf).unwrap().is_none());
    }

    #[test]
    fn resumes_across_partial_reads() {
        let input = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$10\r\n0123456789\r\n";
        for split in 1..input.len() {
            let mut p = RequestParser::new(100, 1000);
            let mut buf = BytesMut::from(&input[..split]);
            assert!(p.next(&mut buf).unwrap().is_none(), "split {split}");
            buf.extend_from_slice(&input[split..]);
            let r = p.next(&mut buf).unwrap().unwrap();
            assert_eq!(r.args.len(), 3);
            assert_eq!(&r.args[2][..], b"0123456789");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn inline_commands_and_quotes() {
        assert_eq!(parse_all(b"PING\r\n").unwrap(), vec![vec![b"PING".to_vec()]]);
        assert_eq!(
            parse_all(b"set k \"a b\\x41\\n\" 'c\\'d'\n").unwrap(),
            vec![vec![b"set".to_vec(), b"k".to_vec(), b"a bA\n".to_vec(), b"c'd".to_vec()]]
        );
        assert_eq!(parse_all(b"\r\n\r\nPING\n").unwrap().len(), 1);
        assert!(parse_all(b"set k \"abc\n").is_err());
        let r = parse_all(b"GET a\r\n").unwrap();
        assert_eq!(r[0], vec![b"GET".to_vec(), b"a".to_vec()]);
    }

    #[test]
    fn inline_request_is_reencoded_as_resp() {
        let mut p = RequestParser::new(100, 1000);
        let mut buf = BytesMut::from(&b"get a\r\n"[..]);
        let r = p.next(&mut buf).unwrap().unwrap();
        assert_eq!(&r.raw[..], b"*2\r\n$3\r\nget\r\n$1\r\na\r\n");
    }

    #[test]
    fn rejects_bad_input() {
        assert!(parse_all(b"*2\r\n$3\r\nGET\r\n:1\r\n").is_err());
        assert!(parse_all(b"*x\r\n").is_err());
        assert!(parse_all(b"*1\r\n$-5\r\n").is_err());
        assert!(parse_all(b"*1\r\n$3\r\nabcXY").is_err());
        assert!(parse_all(b"*99999999999999\r\n").is_err());
        let mut p = RequestParser::new(10, 1000);
        let mut buf = BytesMut::from(&b"*1\r\n$11\r\n"[..]);
        assert!(p.next(&mut buf).is_err());
        let long = vec![b'a'; MAX_INLINE_LEN + 10];
        assert!(parse_all(&long).is_err());
        // empty arrays are skipped like Redis does
        assert_eq!(parse_all(b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n").unwrap().len(), 1);
    }

    #[test]
    fn integers_parse_like_redis() {
        assert_eq!(parse_int(b"0"), Some(0));
        assert_eq!(parse_int(b"-12"), Some(-12));
        assert_eq!(parse_int(b"01"), None);
        assert_eq!(parse_int(b"-0"), None);
        assert_eq!(parse_int(b"+1"), None);
        assert_eq!(parse_int(b""), None);
        assert_eq!(parse_int(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_int(b"9223372036854775808"), None);
        // found by cargo fuzz: "*01" was accepted, then forwarded in a form Redis rejects
        assert!(parse_all(b"*01\r\n$1\r\n+\r\n").is_err());
    }

    #[test]
    fn array_header_bounded_by_buffer_limit() {
        let mut p = RequestParser::new(100, 600);
        let mut buf = BytesMut::from(&b"*101\r\n"[..]);
        assert!(p.next(&mut buf).is_err());
        let mut buf = BytesMut::from(&b"*100\r\n"[..]);
        assert!(RequestParser::new(100, 600).next(&mut buf).unwrap().is_none());
    }

    proptest::proptest! {
        #[test]
        fn any_split_parses_the_same(
            cmds in proptest::collection::vec(
                proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..40), 1..6),
                1..6,
            ),
            split in 0usize..2000,
        ) {
            let mut wire = Vec::new();
            for c in &cmds {
                let req = Request::from_args(c.iter().map(|a| Bytes::copy_from_slice(a)).collect());
                wire.extend_from_slice(&req.raw);
            }
            let split = split % (wire.len() + 1);
            let mut p = RequestParser::new(1 << 20, 1 << 24);
            let mut buf = BytesMut::from(&wire[..split]);
            let mut got = Vec::new();
            while let Some(r) = p.next(&mut buf).unwrap() {
                got.push(r.args.iter().map(|a| a.to_vec()).collect::<Vec<_>>());
            }
            buf.extend_from_slice(&wire[split..]);
            while let Some(r) = p.next(&mut buf).unwrap() {
                got.push(r.args.iter().map(|a| a.to_vec()).collect::<Vec<_>>());
            }
            proptest::prop_assert_eq!(got, cmds);
            proptest::prop_assert!(buf.is_empty());
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let mut p = RequestParser::new(1 << 10, 1 << 16);
            let mut buf = BytesMut::from(&data[..]);
            for _ in 0..400 {
                match p.next(&mut buf) {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
            let _ = ReplyScanner::new(1 << 10).scan(&data);
            let _ = Frame::parse(&data);
        }

        #[test]
        fn frames_roundtrip(items in proptest::collection::vec((proptest::num::i64::ANY, ".{0,10}"), 0..8)) {
            let f = Frame::Array(
                items.iter().map(|(i, s)| Frame::Array(vec![Frame::Integer(*i), Frame::bulk_str(s), Frame::Null])).collect(),
            );
            for proto in [2u8, 3] {
                let bytes = f.to_bytes(proto);
                let (back, n) = Frame::parse(&bytes).unwrap().unwrap();
                proptest::prop_assert_eq!(n, bytes.len());
                proptest::prop_assert_eq!(&back, &f);
            }
        }
    }

    #[test]
    fn scanner_finds_reply_boundaries() {
        let cases: &[&[u8]] = &[
            b"+OK\r\n",
            b"-ERR x\r\n",
            b":12\r\n",
            b"$-1\r\n",
            b"$3\r\nabc\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"*2\r\n$1\r\na\r\n*2\r\n:1\r\n:2\r\n",
            b"%1\r\n+k\r\n*1\r\n_\r\n",
            b"|1\r\n+a\r\n+b\r\n:3\r\n",
            b"~2\r\n,1.5\r\n#t\r\n",
            b"=7\r\ntxt:abc\r\n",
            b">2\r\n+message\r\n(123\r\n",
        ];
        for c in cases {
            let mut both = c.to_vec();
            both.extend_from_slice(b"+NEXT\r\n");
            let mut s = ReplyScanner::new(1 << 20);
            assert_eq!(s.scan(&both).unwrap(), Some(c.len()), "{}", String::from_utf8_lossy(c));
            for split in 0..c.len() {
                let mut s = ReplyScanner::new(1 << 20);
                assert_eq!(s.scan(&c[..split]).unwrap(), None);
                assert_eq!(s.scan(c).unwrap(), Some(c.len()));
            }
            let (_, len) = Frame::parse(c).unwrap().unwrap();
            assert_eq!(len, c.len());
        }
        assert!(ReplyScanner::new(10).scan(b"?x\r\n").is_err());
        // regression (found by cargo fuzz): a line break where the type byte should be
        assert!(ReplyScanner::new(10).scan(b"\r\n\x0e").is_err());
        assert!(Frame::parse(b"\r\n").is_err());
        assert!(ReplyScanner::new(10).scan(b":~-****\r\r\n\n").is_err());
        // an empty attribute still annotates the next value (cargo fuzz)
        assert_eq!(ReplyScanner::new(10).scan(b"|0\r\n:1\r\n").unwrap(), Some(8));
        assert_eq!(Frame::parse(b"|0\r\n:1\r\n").unwrap(), Some((Frame::Integer(1), 8)));
        assert!(ReplyScanner::new(10).scan(b"$3\r\nabcde").is_err());
    }

    #[test]
    fn frames_roundtrip_and_downgrade() {
        let f = Frame::Map(vec![(Frame::bulk_str("a"), Frame::Integer(1))]);
        assert_eq!(&f.to_bytes(3)[..], b"%1\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(&f.to_bytes(2)[..], b"*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(&Frame::Null.to_bytes(2)[..], b"$-1\r\n");
        assert_eq!(&Frame::Null.to_bytes(3)[..], b"_\r\n");
        let (back, _) = Frame::parse(&f.to_bytes(3)).unwrap().unwrap();
        assert_eq!(back, f);
        assert_eq!(&error("a\r\nb")[..], b"-a  b\r\n");
        assert_eq!(&integer(-42)[..], b":-42\r\n");
    }
}

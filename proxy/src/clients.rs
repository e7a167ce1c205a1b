//! The proxy's client connections, as `CLIENT LIST`/`INFO`/`KILL` see them: what a Redis node
//! knows about its own clients, for the connections of this proxy.
//!
//! Each session registers a `ClientInfo` and keeps its fields current; the hot path only
//! stores a few relaxed atomics once per read batch (`touch`), never takes a lock per command.

use bytes::Bytes;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One client connection.
pub struct ClientInfo {
    pub id: u64,
    pub addr: String,
    pub laddr: String,
    pub fd: i64,
    created: Instant,
    /// Milliseconds since `created` of the last command read.
    last_active_ms: AtomicU64,
    pub proto: AtomicU8,
    pub readonly: AtomicBool,
    pub no_evict: AtomicBool,
    pub no_touch: AtomicBool,
    pub blocked: AtomicBool,
    /// Commands queued in `MULTI`, -1 outside one.
    pub multi: AtomicI64,
    pub channels: AtomicUsize,
    pub patterns: AtomicUsize,
    pub shard_channels: AtomicUsize,
    pub admin: AtomicBool,
    /// Name, last command, `lib-name`, `lib-ver` (changed rarely: one lock is fine).
    pub text: Mutex<ClientText>,
    /// Wakes the session: to close (`CLIENT KILL`, see `killed`) or to look at the handover
    /// phase again (`handover.rs`).
    pub kill: tokio::sync::Notify,
    /// Set by `CLIENT KILL`: the session closes the connection when woken.
    pub killed: AtomicBool,
    /// Requests read whose replies are not written yet (a draining proxy closes only
    /// connections that are owed nothing, `handover.rs`).
    pub owed: AtomicUsize,
}

impl std::fmt::Debug for ClientInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientInfo").field("id", &self.id).field("addr", &self.addr).finish_non_exhaustive()
    }
}

#[derive(Default, Clone)]
pub struct ClientText {
    pub name: Option<Bytes>,
    pub last_command: String,
    pub lib_name: String,
    pub lib_ver: String,
}

impl ClientInfo {
    pub fn new(id: u64, addr: String, laddr: String, fd: i64) -> ClientInfo {
        ClientInfo {
            id,
            addr,
            laddr,
            fd,
            created: Instant::now(),
            last_active_ms: AtomicU64::new(0),
            proto: AtomicU8::new(2),
            readonly: AtomicBool::new(false),
            no_evict: AtomicBool::new(false),
            no_touch: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
            multi: AtomicI64::new(-1),
            channels: AtomicUsize::new(0),
            patterns: AtomicUsize::new(0),
            shard_channels: AtomicUsize::new(0),
            admin: AtomicBool::new(false),
            text: Mutex::new(ClientText::default()),
            kill: tokio::sync::Notify::new(),
            killed: AtomicBool::new(false),
            owed: AtomicUsize::new(0),
        }
    }

    /// `CLIENT KILL`: the session closes the connection.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Relaxed);
        self.kill.notify_one();
    }

    /// Marks the client active now.
    pub fn touch(&self) {
        self.last_active_ms.store(self.created.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn set_name(&self, name: Option<Bytes>) {
        self.text.lock().unwrap_or_else(|e| e.into_inner()).name = name;
    }

    pub fn name(&self) -> Option<Bytes> {
        self.text.lock().unwrap_or_else(|e| e.into_inner()).name.clone()
    }

    pub fn set_last_command(&self, cmd: &LastCommand) {
        let mut shown = String::from_utf8_lossy(&cmd.name[..cmd.name.len().min(64)]).to_ascii_lowercase();
        if let Some(sub) = &cmd.sub {
            shown.push('|');
            shown.push_str(&String::from_utf8_lossy(&sub[..sub.len().min(64)]).to_ascii_lowercase());
        }
        // Spaces would break the line's `key=value` format.
        let shown = shown.replace(|c: char| c.is_whitespace() || c.is_control(), "_");
        self.text.lock().unwrap_or_else(|e| e.into_inner()).last_command = shown;
    }

    pub fn age_secs(&self) -> u64 {
        self.created.elapsed().as_secs()
    }

    pub fn idle_secs(&self) -> u64 {
        let now = self.created.elapsed().as_millis() as u64;
        now.saturating_sub(self.last_active_ms.load(Ordering::Relaxed)) / 1000
    }

    pub fn text(&self) -> ClientText {
        self.text.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The user it authenticated as (`AUTH admin …`, or the default one).
    pub fn user(&self) -> &'static str {
        if self.admin.load(Ordering::Relaxed) {
            "admin"
        } else {
            "default"
        }
    }

    /// Whether it is of `CLIENT LIST/KILL TYPE <kind>` (lower case); a proxy has no
    /// `master`/`replica` clients.
    pub fn is_type(&self, kind: &[u8]) -> bool {
        match kind {
            b"pubsub" => self.is_pubsub(),
            b"normal" => !self.is_pubsub(),
            _ => false,
        }
    }

    pub fn is_pubsub(&self) -> bool {
        self.channels.load(Ordering::Relaxed)
            + self.patterns.load(Ordering::Relaxed)
            + self.shard_channels.load(Ordering::Relaxed)
            > 0
    }

    /// One `CLIENT LIST` line (Redis's field names; only fields with real values).
    pub fn line(&self) -> String {
        let t = self.text();
        let mut flags = String::new();
        if self.is_pubsub() {
            flags.push('P');
        }
        if self.multi.load(Ordering::Relaxed) >= 0 {
            flags.push('x');
        }
        if self.blocked.load(Ordering::Relaxed) {
            flags.push('b');
        }
        if self.readonly.load(Ordering::Relaxed) {
            flags.push('r');
        }
        if self.no_evict.load(Ordering::Relaxed) {
            flags.push('e');
        }
        if self.no_touch.load(Ordering::Relaxed) {
            flags.push('T');
        }
        if flags.is_empty() {
            flags.push('N');
        }
        let name = t.name.as_ref().map(|n| String::from_utf8_lossy(n).into_owned()).unwrap_or_default();
        let mut out = String::with_capacity(256);
        let _ = write!(
            out,
            "id={} addr={} laddr={} fd={} name={} age={} idle={} flags={} db=0 sub={} psub={} ssub={} multi={} cmd={} user={} redir=-1 resp={} lib-name={} lib-ver={}",
            self.id,
            self.addr,
            self.laddr,
            self.fd,
            name,
            self.age_secs(),
            self.idle_secs(),
            flags,
            self.channels.load(Ordering::Relaxed),
            self.patterns.load(Ordering::Relaxed),
            self.shard_channels.load(Ordering::Relaxed),
            self.multi.load(Ordering::Relaxed),
            if t.last_command.is_empty() { "NULL" } else { &t.last_command },
            self.user(),
            self.proto.load(Ordering::Relaxed),
            t.lib_name,
            t.lib_ver,
        );
        out
    }
}

/// A command's name, and its subcommand for the commands that have them, as `CLIENT LIST`'s
/// `cmd=` shows it (`get`, `client|list`). Holds the request's own buffers (no copy).
#[derive(Default)]
pub struct LastCommand {
    name: Bytes,
    sub: Option<Bytes>,
}

/// Commands whose first argument is a subcommand.
const CONTAINERS: [&[u8]; 12] = [
    b"client",
    b"cluster",
    b"config",
    b"command",
    b"script",
    b"function",
    b"slowlog",
    b"memory",
    b"pubsub",
    b"object",
    b"xinfo",
    b"umctl",
];

impl LastCommand {
    pub fn of(args: &[Bytes]) -> LastCommand {
        // Copies (short ones): a slice would keep the client's whole read buffer alive.
        let copy = |b: &Bytes| Bytes::copy_from_slice(&b[..b.len().min(64)]);
        let name = args.first().map(copy).unwrap_or_default();
        let sub = if CONTAINERS.iter().any(|c| name.eq_ignore_ascii_case(c)) { args.get(1).map(copy) } else { None };
        LastCommand { name, sub }
    }

    /// Whether `args` is this command (and subcommand), ignoring case.
    pub fn is(&self, args: &[Bytes]) -> bool {
        let name = args.first().map(|n| &n[..]).unwrap_or_default();
        name.eq_ignore_ascii_case(&self.name)
            && match &self.sub {
                Some(sub) => args.get(1).is_some_and(|a| a.eq_ignore_ascii_case(sub)),
                None => !CONTAINERS.iter().any(|c| name.eq_ignore_ascii_case(c)),
            }
    }
}

/// Every client connection of the proxy, by id.
#[derive(Default)]
pub struct Clients {
    map: Mutex<HashMap<u64, Arc<ClientInfo>>>,
}

impl Clients {
    pub fn register(&self, info: Arc<ClientInfo>) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).insert(info.id, info);
    }

    pub fn remove(&self, id: u64) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }

    /// All clients, by id.
    pub fn all(&self) -> Vec<Arc<ClientInfo>> {
        let mut v: Vec<_> = self.map.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        v.sort_by_key(|c| c.id);
        v
    }

    pub fn get(&self, id: u64) -> Option<Arc<ClientInfo>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned()
    }
}

/// Which clients a `CLIENT KILL` names.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KillFilter {
    pub id: Option<u64>,
    pub addr: Option<String>,
    pub laddr: Option<String>,
    pub user: Option<String>,
    /// `normal`, `pubsub` (`master`/`replica` name no client of a proxy).
    pub kind: Option<String>,
    pub max_age: Option<u64>,
    pub skip_me: bool,
}

impl KillFilter {
    /// Parses `CLIENT KILL <filter> <value> …` (after `KILL`); `Err` is the reply text.
    pub fn parse(args: &[Bytes]) -> Result<KillFilter, String> {
        let mut f = KillFilter { skip_me: true, ..Default::default() };
        if args.is_empty() || !args.len().is_multiple_of(2) {
            return Err("ERR syntax error".into());
        }
        for pair in args.chunks(2) {
            let value = String::from_utf8_lossy(&pair[1]).into_owned();
            match pair[0].to_ascii_lowercase().as_slice() {
                b"id" => f.id = Some(value.parse().map_err(|_| "ERR client-id should be greater than 0".to_string())?),
                b"addr" => f.addr = Some(value),
                b"laddr" => f.laddr = Some(value),
                b"user" => f.user = Some(value),
                b"type" => match value.to_ascii_lowercase().as_str() {
                    t @ ("normal" | "pubsub" | "master" | "replica" | "slave") => f.kind = Some(t.to_owned()),
                    _ => return Err(format!("ERR Unknown client type '{value}'")),
                },
                b"maxage" => f.max_age = Some(value.parse().map_err(|_| "ERR syntax error".to_string())?),
                b"skipme" => match value.to_ascii_lowercase().as_str() {
                    "yes" => f.skip_me = true,
                    "no" => f.skip_me = false,
                    _ => return Err("ERR syntax error".into()),
                },
                _ => return Err("ERR syntax error".into()),
            }
        }
        Ok(f)
    }

    pub fn matches(&self, c: &ClientInfo, me: u64) -> bool {
        if self.skip_me && c.id == me {
            return false;
        }
        self.id.is_none_or(|id| id == c.id)
            && self.addr.as_ref().is_none_or(|a| *a == c.addr)
            && self.laddr.as_ref().is_none_or(|a| *a == c.laddr)
            && self.user.as_ref().is_none_or(|u| u == c.user())
            && self.max_age.is_none_or(|age| c.age_secs() >= age)
            && self.kind.as_deref().is_none_or(|k| c.is_type(k.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<Bytes> {
        s.split_whitespace().map(|t| Bytes::copy_from_slice(t.as_bytes())).collect()
    }

    #[test]
    fn kill_filters_parse_and_match() {
        let c = ClientInfo::new(7, "1.2.3.4:5".into(), "127.0.0.1:6000".into(), 9);
        let f = KillFilter::parse(&args("ID 7")).unwrap();
        assert!(f.matches(&c, 1));
        assert!(!f.matches(&c, 7), "SKIPME yes is the default");
        assert!(KillFilter::parse(&args("ID 7 SKIPME no")).unwrap().matches(&c, 7));
        assert!(KillFilter::parse(&args("addr 1.2.3.4:5 type normal")).unwrap().matches(&c, 1));
        assert!(!KillFilter::parse(&args("type pubsub")).unwrap().matches(&c, 1));
        c.channels.store(1, Ordering::Relaxed);
        assert!(KillFilter::parse(&args("type pubsub user default")).unwrap().matches(&c, 1));
        assert!(!KillFilter::parse(&args("user admin")).unwrap().matches(&c, 1));
        assert!(KillFilter::parse(&args("ID")).is_err());
        assert!(KillFilter::parse(&args("ID x")).is_err());
        assert!(KillFilter::parse(&args("TYPE bogus")).is_err());
        assert!(KillFilter::parse(&args("COLOR red")).is_err());
    }

    #[test]
    fn a_list_line_says_what_the_client_is_doing() {
        let c = ClientInfo::new(3, "a:1".into(), "b:2".into(), 11);
        c.text.lock().unwrap().name = Some(Bytes::from_static(b"worker"));
        c.multi.store(2, Ordering::Relaxed);
        c.proto.store(3, Ordering::Relaxed);
        let line = c.line();
        for field in [
            "id=3 ",
            "addr=a:1 ",
            "laddr=b:2 ",
            "fd=11 ",
            "name=worker ",
            "flags=x ",
            "multi=2 ",
            "resp=3 ",
            "cmd=NULL ",
        ] {
            assert!(line.contains(field), "{field} in {line}");
        }
    }
}

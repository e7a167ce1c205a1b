//! The command table: which data commands the proxy forwards, their arity and where their keys
//! are. Commands that are neither here nor handled by the proxy itself are rejected, because
//! routing them by a guessed key would return partial or wrong results (`docs/compatibility.md#unroutable-commands`);
//! multi-key commands must have all keys in one slot.

use crate::resp::parse_int;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySpec {
    /// Keys from `first` to `last` (negative: counted from the end, -1 = last argument) every
    /// `step` arguments.
    Range { first: usize, last: isize, step: usize },
    /// `numkeys` at index `numkeys_at`, keys follow it; `dest` = an extra key at index 1.
    Numkeys { numkeys_at: usize, dest: bool },
    /// XREAD / XREADGROUP: keys are the first half of what follows `STREAMS`.
    Streams,
    /// SORT / GEORADIUS…: key at index 1 plus the argument after any STORE/STOREDIST.
    KeyAndStore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocking {
    No,
    Always,
    /// Blocking only when a `BLOCK` option is present (XREAD, XREADGROUP).
    WithBlockOption,
}

#[derive(Debug)]
pub struct CommandSpec {
    pub name: &'static str,
    pub arity: i32,
    pub keys: KeySpec,
    pub blocking: Blocking,
}

impl CommandSpec {
    pub fn check_arity(&self, argc: usize) -> bool {
        if self.arity >= 0 {
            argc == self.arity as usize
        } else {
            argc >= (-self.arity) as usize
        }
    }

    pub fn is_blocking(&self, args: &[Bytes]) -> bool {
        match self.blocking {
            Blocking::No => false,
            Blocking::Always => true,
            Blocking::WithBlockOption => args
                .iter()
                .skip(1)
                .take_while(|a| !a.eq_ignore_ascii_case(b"streams"))
                .any(|a| a.eq_ignore_ascii_case(b"block")),
        }
    }

    /// Indices of the key arguments. Errors are the text of a `-ERR` reply.
    pub fn key_indices(&self, args: &[Bytes]) -> Result<Vec<usize>, String> {
        let n = args.len();
        match self.keys {
            KeySpec::Range { first, last, step } => {
                let last = if last < 0 { n as isize + last } else { last };
                let mut out = Vec::new();
                let mut i = first as isize;
                while i <= last && (i as usize) < n {
                    out.push(i as usize);
                    i += step as isize;
                }
                Ok(out)
            }
            KeySpec::Numkeys { numkeys_at, dest } => {
                let raw = args.get(numkeys_at).ok_or_else(|| self.arity_error())?;
                let numkeys = parse_int(raw)
                    .filter(|v| *v >= 0)
                    .ok_or_else(|| "ERR numkeys should be greater than or equal to 0".to_string())?
                    as usize;
                if numkeys > n.saturating_sub(numkeys_at + 1) {
                    return Err("ERR Number of keys can't be greater than number of args".into());
                }
                let mut out = Vec::with_capacity(numkeys + 1);
                if dest {
                    out.push(1);
                }
                out.extend(numkeys_at + 1..numkeys_at + 1 + numkeys);
                Ok(out)
            }
            KeySpec::Streams => {
                let pos = args
                    .iter()
                    .position(|a| a.eq_ignore_ascii_case(b"streams"))
                    .ok_or_else(|| "ERR syntax error".to_string())?;
                let rest = n - pos - 1;
                if rest == 0 || !rest.is_multiple_of(2) {
                    return Err(
                        "ERR Unbalanced 'xread' list of streams: for each stream key an ID or '$' must be specified."
                            .into(),
                    );
                }
                Ok((pos + 1..pos + 1 + rest / 2).collect())
            }
            KeySpec::KeyAndStore => {
                let mut out = vec![1];
                let mut i = 2;
                while i + 1 < n {
                    if args[i].eq_ignore_ascii_case(b"store") || args[i].eq_ignore_ascii_case(b"storedist") {
                        out.push(i + 1);
                        i += 1;
                    }
                    i += 1;
                }
                Ok(out)
            }
        }
    }

    pub fn arity_error(&self) -> String {
        format!("ERR wrong number of arguments for '{}' command", self.name)
    }
}

const fn key1() -> KeySpec {
    KeySpec::Range { first: 1, last: 1, step: 1 }
}
const fn all_keys() -> KeySpec {
    KeySpec::Range { first: 1, last: -1, step: 1 }
}
const fn two_keys() -> KeySpec {
    KeySpec::Range { first: 1, last: 2, step: 1 }
}
const fn blocking_keys() -> KeySpec {
    KeySpec::Range { first: 1, last: -2, step: 1 }
}
const fn numkeys(at: usize) -> KeySpec {
    KeySpec::Numkeys { numkeys_at: at, dest: false }
}
const fn dest_numkeys() -> KeySpec {
    KeySpec::Numkeys { numkeys_at: 2, dest: true }
}

macro_rules! commands {
    ($( $name:literal $arity:literal $keys:expr $(, $blocking:ident)? ;)*) => {
        &[ $( CommandSpec { name: $name, arity: $arity, keys: $keys, blocking: commands!(@b $($blocking)?) }, )* ]
    };
    (@b) => { Blocking::No };
    (@b $b:ident) => { Blocking::$b };
}

/// Data commands forwarded to Redis (arity and key positions as Redis 7 reports them).
pub static DATA_COMMANDS: &[CommandSpec] = commands! {
    // strings and bits
    "append" 3 key1(); "decr" 2 key1(); "decrby" 3 key1(); "get" 2 key1(); "getdel" 2 key1();
    "getex" -2 key1(); "getrange" 4 key1(); "getset" 3 key1(); "incr" 2 key1(); "incrby" 3 key1();
    "incrbyfloat" 3 key1(); "mget" -2 all_keys(); "mset" -3 KeySpec::Range { first: 1, last: -1, step: 2 };
    "msetnx" -3 KeySpec::Range { first: 1, last: -1, step: 2 }; "psetex" 4 key1(); "set" -3 key1();
    "setex" 4 key1(); "setnx" 3 key1(); "setrange" 4 key1(); "strlen" 2 key1(); "substr" 4 key1();
    "lcs" -3 two_keys(); "bitcount" -2 key1(); "bitfield" -2 key1(); "bitfield_ro" -2 key1();
    "bitop" -4 KeySpec::Range { first: 2, last: -1, step: 1 }; "bitpos" -3 key1(); "getbit" 3 key1();
    "setbit" 4 key1();
    // keys
    "copy" -3 two_keys(); "del" -2 all_keys(); "dump" 2 key1(); "exists" -2 all_keys();
    "expire" -3 key1(); "expireat" -3 key1(); "expiretime" 2 key1(); "persist" 2 key1();
    "pexpire" -3 key1(); "pexpireat" -3 key1(); "pexpiretime" 2 key1(); "pttl" 2 key1();
    "rename" 3 two_keys(); "renamenx" 3 two_keys(); "restore" -4 key1(); "sort" -2 KeySpec::KeyAndStore;
    "sort_ro" -2 key1(); "touch" -2 all_keys(); "ttl" 2 key1(); "type" 2 key1(); "unlink" -2 all_keys();
    "object" -3 KeySpec::Range { first: 2, last: 2, step: 1 };
    // hashes
    "hdel" -3 key1(); "hexists" 3 key1(); "hget" 3 key1(); "hgetall" 2 key1(); "hincrby" 4 key1();
    "hincrbyfloat" 4 key1(); "hkeys" 2 key1(); "hlen" 2 key1(); "hmget" -3 key1(); "hmset" -4 key1();
    "hrandfield" -2 key1(); "hscan" -3 key1(); "hset" -4 key1(); "hsetnx" 4 key1(); "hstrlen" 3 key1();
    "hvals" 2 key1();
    // lists
    "blmove" 6 two_keys(), Always; "blmpop" -5 numkeys(2), Always; "blpop" -3 blocking_keys(), Always;
    "brpop" -3 blocking_keys(), Always; "brpoplpush" 4 two_keys(), Always; "lindex" 3 key1();
    "linsert" 5 key1(); "llen" 2 key1(); "lmove" 5 two_keys(); "lmpop" -4 numkeys(1); "lpop" -2 key1();
    "lpos" -3 key1(); "lpush" -3 key1(); "lpushx" -3 key1(); "lrange" 4 key1(); "lrem" 4 key1();
    "lset" 4 key1(); "ltrim" 4 key1(); "rpop" -2 key1(); "rpoplpush" 3 two_keys(); "rpush" -3 key1();
    "rpushx" -3 key1();
    // sets
    "sadd" -3 key1(); "scard" 2 key1(); "sdiff" -2 all_keys(); "sdiffstore" -3 all_keys();
    "sinter" -2 all_keys(); "sintercard" -3 numkeys(1); "sinterstore" -3 all_keys(); "sismember" 3 key1();
    "smembers" 2 key1(); "smismember" -3 key1(); "smove" 4 two_keys(); "spop" -2 key1();
    "srandmember" -2 key1(); "srem" -3 key1(); "sscan" -3 key1(); "sunion" -2 all_keys();
    "sunionstore" -3 all_keys();
    // sorted sets
    "bzmpop" -5 numkeys(2), Always; "bzpopmax" -3 blocking_keys(), Always; "bzpopmin" -3 blocking_keys(), Always;
    "zadd" -4 key1(); "zcard" 2 key1(); "zcount" 4 key1(); "zdiff" -3 numkeys(1); "zdiffstore" -4 dest_numkeys();
    "zincrby" 4 key1(); "zinter" -3 numkeys(1); "zintercard" -3 numkeys(1); "zinterstore" -4 dest_numkeys();
    "zlexcount" 4 key1(); "zmpop" -4 numkeys(1); "zmscore" -3 key1(); "zpopmax" -2 key1(); "zpopmin" -2 key1();
    "zrandmember" -2 key1(); "zrange" -4 key1(); "zrangebylex" -4 key1(); "zrangebyscore" -4 key1();
    "zrangestore" -5 two_keys(); "zrank" -3 key1(); "zrem" -3 key1(); "zremrangebylex" 4 key1();
    "zremrangebyrank" 4 key1(); "zremrangebyscore" 4 key1(); "zrevrange" -4 key1(); "zrevrangebylex" -4 key1();
    "zrevrangebyscore" -4 key1(); "zrevrank" -3 key1(); "zscan" -3 key1(); "zscore" 3 key1();
    "zunion" -3 numkeys(1); "zunionstore" -4 dest_numkeys();
    // hyperloglog
    "pfadd" -2 key1(); "pfcount" -2 all_keys(); "pfmerge" -2 all_keys();
    // geo
    "geoadd" -5 key1(); "geodist" -4 key1(); "geohash" -2 key1(); "geopos" -2 key1();
    "georadius" -6 KeySpec::KeyAndStore; "georadius_ro" -6 key1(); "georadiusbymember" -5 KeySpec::KeyAndStore;
    "georadiusbymember_ro" -5 key1(); "geosearch" -7 key1(); "geosearchstore" -8 two_keys();
    // streams
    "xack" -4 key1(); "xadd" -5 key1(); "xautoclaim" -6 key1(); "xclaim" -6 key1(); "xdel" -3 key1();
    "xgroup" -3 KeySpec::Range { first: 2, last: 2, step: 1 }; "xinfo" -3 KeySpec::Range { first: 2, last: 2, step: 1 };
    "xlen" 2 key1(); "xpending" -3 key1(); "xrange" -4 key1(); "xread" -4 KeySpec::Streams, WithBlockOption;
    "xreadgroup" -7 KeySpec::Streams, WithBlockOption; "xrevrange" -4 key1(); "xsetid" -3 key1(); "xtrim" -4 key1();
    // scripting: keys are declared, so the slot is known
    "eval" -3 numkeys(2); "evalsha" -3 numkeys(2); "eval_ro" -3 numkeys(2); "evalsha_ro" -3 numkeys(2);
    "fcall" -3 numkeys(2); "fcall_ro" -3 numkeys(2);
    // sharded pub/sub: the channel is routed like a key
    "spublish" 3 key1();
};

/// Commands the proxy answers itself (listed by `COMMAND` along with the data commands).
pub const LOCAL_COMMANDS: &[&str] = &[
    "ping",
    "echo",
    "quit",
    "auth",
    "hello",
    "select",
    "asking",
    "readonly",
    "readwrite",
    "cluster",
    "config",
    "command",
    "info",
    "client",
    "umctl",
    "multi",
    "exec",
    "discard",
    "watch",
    "unwatch",
    "dbsize",
    "keys",
    "scan",
    "randomkey",
    "flushdb",
    "flushall",
    "script",
    "function",
    "time",
    "lastsave",
    "memory",
    "subscribe",
    "psubscribe",
    "ssubscribe",
    "unsubscribe",
    "punsubscribe",
    "sunsubscribe",
    "publish",
    "pubsub",
    "reset",
    "wait",
    "slowlog",
];

fn table() -> &'static HashMap<&'static [u8], &'static CommandSpec> {
    static TABLE: OnceLock<HashMap<&'static [u8], &'static CommandSpec>> = OnceLock::new();
    TABLE.get_or_init(|| DATA_COMMANDS.iter().map(|c| (c.name.as_bytes(), c)).collect())
}

/// Looks a data command up by name, case-insensitively, without allocating.
pub fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    let mut lower = [0u8; 32];
    if name.len() > lower.len() {
        return None;
    }
    for (d, s) in lower.iter_mut().zip(name) {
        *d = s.to_ascii_lowercase();
    }
    table().get(&lower[..name.len()]).copied()
}

/// Single-key commands that only read their key: during a migration the destination may run
/// them where the key is (the source proxy reads it there, `UMREAD`) instead of moving the key
/// first. Kept to commands whose key is the first argument and that never write (not SORT,
/// GETEX, PFCOUNT, which may write).
const READ_ONLY_SINGLE_KEY: &[&str] = &[
    "get",
    "getrange",
    "strlen",
    "substr",
    "bitcount",
    "bitpos",
    "getbit",
    "dump",
    "expiretime",
    "pexpiretime",
    "pttl",
    "ttl",
    "type",
    "hexists",
    "hget",
    "hgetall",
    "hkeys",
    "hlen",
    "hmget",
    "hstrlen",
    "hvals",
    "lindex",
    "llen",
    "lpos",
    "lrange",
    "scard",
    "sismember",
    "smembers",
    "smismember",
    "zcard",
    "zcount",
    "zlexcount",
    "zmscore",
    "zrange",
    "zrangebylex",
    "zrangebyscore",
    "zrank",
    "zrevrange",
    "zrevrangebylex",
    "zrevrangebyscore",
    "zrevrank",
    "zscore",
    "xlen",
    "xrange",
    "xrevrange",
];

/// Besides `READ_ONLY_SINGLE_KEY`, commands that only read (Redis flags them `readonly`) and
/// that a replica serves to a client that sent `READONLY`.
const OTHER_READ_ONLY: &[&str] = &[
    "mget",
    "exists",
    "sdiff",
    "sinter",
    "sintercard",
    "sunion",
    "zdiff",
    "zinter",
    "zintercard",
    "zunion",
    "lcs",
    "sort_ro",
    "bitfield_ro",
    "hrandfield",
    "srandmember",
    "zrandmember",
    "hscan",
    "sscan",
    "zscan",
    "geodist",
    "geohash",
    "geopos",
    "georadius_ro",
    "georadiusbymember_ro",
    "geosearch",
    "eval_ro",
    "evalsha_ro",
    "fcall_ro",
];

impl CommandSpec {
    /// See `READ_ONLY_SINGLE_KEY`.
    pub fn is_read_only_single_key(&self) -> bool {
        READ_ONLY_SINGLE_KEY.contains(&self.name)
    }

    /// Reads a replica may serve (replica reads after `READONLY`).
    pub fn is_read_only(&self) -> bool {
        self.is_read_only_single_key() || OTHER_READ_ONLY.contains(&self.name)
    }
}

pub fn is_supported_name(lower_name: &str) -> bool {
    table().contains_key(lower_name.as_bytes()) || LOCAL_COMMANDS.contains(&lower_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_commands_are_non_blocking_data_commands() {
        for name in OTHER_READ_ONLY.iter().chain(READ_ONLY_SINGLE_KEY) {
            let spec = lookup(name.as_bytes()).unwrap_or_else(|| panic!("{name} is not a data command"));
            assert_eq!(spec.blocking, Blocking::No, "{name}");
            assert!(spec.is_read_only());
        }
        for writer in ["set", "del", "incr", "eval", "sort", "pfcount", "xread"] {
            assert!(!lookup(writer.as_bytes()).unwrap().is_read_only(), "{writer}");
        }
    }

    #[test]
    fn read_only_single_key_commands_are_data_commands_with_the_key_first() {
        for name in READ_ONLY_SINGLE_KEY {
            let spec = lookup(name.as_bytes()).unwrap_or_else(|| panic!("{name} is not a data command"));
            assert!(matches!(spec.keys, KeySpec::Range { first: 1, last: 1, step: 1 }), "{name}: {:?}", spec.keys);
            assert!(matches!(spec.blocking, Blocking::No), "{name} blocks");
        }
        assert!(lookup(b"GET").is_some_and(CommandSpec::is_read_only_single_key));
        for writer in ["set", "getex", "getdel", "sort", "pfcount", "hset", "del"] {
            assert!(lookup(writer.as_bytes()).is_some_and(|s| !s.is_read_only_single_key()), "{writer}");
        }
    }

    fn args(s: &str) -> Vec<Bytes> {
        s.split(' ').map(|a| Bytes::copy_from_slice(a.as_bytes())).collect()
    }

    #[test]
    fn lookup_is_case_insensitive() {
        assert_eq!(lookup(b"GeT").unwrap().name, "get");
        assert!(lookup(b"keys").is_none());
        assert!(lookup(b"flushall").is_none());
        assert!(lookup(&[b'a'; 100]).is_none());
        assert_eq!(DATA_COMMANDS.len(), table().len(), "duplicate names in the table");
    }

    #[test]
    fn key_positions() {
        let get = |a: &str| {
            let a = args(a);
            lookup(&a[0]).unwrap().key_indices(&a)
        };
        assert_eq!(get("GET a").unwrap(), vec![1]);
        assert_eq!(get("MSET a 1 b 2").unwrap(), vec![1, 3]);
        assert_eq!(get("BLPOP a b 0").unwrap(), vec![1, 2]);
        assert_eq!(get("EVAL s 2 a b x").unwrap(), vec![3, 4]);
        assert_eq!(get("EVAL s 0").unwrap(), Vec::<usize>::new());
        assert!(get("EVAL s 3 a").is_err());
        assert!(get("EVAL s x a").is_err());
        assert_eq!(get("ZUNIONSTORE d 2 a b WEIGHTS 1 2").unwrap(), vec![1, 3, 4]);
        assert_eq!(get("XREAD COUNT 2 STREAMS a b 0 0").unwrap(), vec![4, 5]);
        assert!(get("XREAD STREAMS a b 0").is_err());
        assert_eq!(get("SORT a BY x STORE d").unwrap(), vec![1, 5]);
        assert_eq!(get("BITOP AND d a b").unwrap(), vec![2, 3, 4]);
        assert_eq!(get("BLMPOP 0 2 a b LEFT").unwrap(), vec![3, 4]);
    }

    #[test]
    fn arity_and_blocking() {
        let get = lookup(b"get").unwrap();
        assert!(get.check_arity(2) && !get.check_arity(3));
        let set = lookup(b"set").unwrap();
        assert!(set.check_arity(5) && !set.check_arity(2));
        let xread = lookup(b"xread").unwrap();
        assert!(xread.is_blocking(&args("XREAD BLOCK 0 STREAMS a 0")));
        assert!(!xread.is_blocking(&args("XREAD STREAMS block 0")));
        assert!(lookup(b"blpop").unwrap().is_blocking(&args("BLPOP a 0")));
    }
}

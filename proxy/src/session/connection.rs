//! Connection state commands: `AUTH`, `HELLO`, `RESET`, and who may run what.

use super::{err, ok, pubsub, LastWrite, Pending, Session};
use crate::resp::{self, Frame};
use bytes::Bytes;

const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Data,
    Admin,
}

/// What `AUTH <user> <password>` grants: `default` with `password`, `admin` with
/// `admin_password` (which also grants data commands). Both users are always compared, so
/// the time taken does not say which one was tried.
fn check_user(cfg: &crate::config::ProxyConfig, user: &[u8], password: &[u8]) -> Option<Access> {
    use crate::config::password_matches;
    let admin_ok = cfg.admin_password.as_deref().is_some_and(|p| password_matches(p, password));
    let data_ok = cfg.password.as_deref().is_some_and(|p| password_matches(p, password));
    if user.eq_ignore_ascii_case(b"admin") && admin_ok {
        Some(Access::Admin)
    } else if user.eq_ignore_ascii_case(b"default") && (data_ok || cfg.password.is_none()) {
        // Like Redis: `default` without a configured password accepts any password.
        Some(Access::Data)
    } else {
        None
    }
}

impl Session {
    /// `AUTH <password>`, `AUTH default <password>` (data commands) or `AUTH admin
    /// <admin_password>` (everything). One error for every wrong combination, so a caller
    /// cannot tell whether the user or the password was wrong.
    pub(super) fn auth(&mut self, args: &[Bytes]) -> Pending {
        let cfg = &self.state.config;
        let (user, password): (&[u8], &Bytes) = match args.len() {
            2 if cfg.password.is_none() => {
                return err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")
            }
            2 => (b"default", &args[1]),
            3 => (&args[1], &args[2]),
            1 => return err("ERR wrong number of arguments for 'auth' command"),
            _ => return err("ERR syntax error"),
        };
        match check_user(cfg, user, password) {
            Some(Access::Admin) => {
                self.admin = true;
                self.authenticated = true;
                ok()
            }
            Some(Access::Data) => {
                self.authenticated = true;
                ok()
            }
            None => err(WRONGPASS),
        }
    }

    /// `RESET`: the connection as it was when it opened (no transaction, watch or
    /// subscription, RESP2, no name, the default user).
    pub(super) fn reset(&mut self) -> Pending {
        self.multi = None;
        self.watching = None;
        self.dedicated.clear();
        self.subs = pubsub::Subscriptions::default();
        self.proto = 2;
        self.info.set_name(None);
        self.last_write = LastWrite::None;
        self.asking = false;
        self.readonly = false;
        self.authenticated = self.state.config.password.is_none();
        self.admin = self.state.config.admin_password.is_none();
        Pending::Ready(resp::simple("RESET"))
    }

    pub(super) fn hello(&mut self, args: &[Bytes]) -> Pending {
        let mut proto = self.proto;
        let mut i = 1;
        if let Some(v) = args.get(1) {
            match resp::parse_int(v) {
                Some(2) => proto = 2,
                Some(3) => proto = 3,
                Some(_) => return err("NOPROTO unsupported protocol version"),
                None => return err("ERR Protocol version is not an integer or out of range"),
            }
            i = 2;
        }
        let mut authenticated = self.authenticated;
        let mut admin = self.admin;
        let mut name = None;
        while i < args.len() {
            if args[i].eq_ignore_ascii_case(b"auth") && i + 2 < args.len() {
                let (user, pass) = (&args[i + 1], &args[i + 2]);
                match check_user(&self.state.config, user, pass) {
                    Some(Access::Admin) => {
                        authenticated = true;
                        admin = true;
                    }
                    Some(Access::Data) => authenticated = true,
                    None => return err(WRONGPASS),
                }
                i += 3;
            } else if args[i].eq_ignore_ascii_case(b"setname") && i + 1 < args.len() {
                name = Some(args[i + 1].clone());
                i += 2;
            } else {
                return err(&format!("ERR Syntax error in HELLO option '{}'", String::from_utf8_lossy(&args[i])));
            }
        }
        if !authenticated {
            return err("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
        }
        self.authenticated = true;
        self.admin = admin;
        self.proto = proto;
        if name.is_some() {
            self.info.set_name(name);
        }
        let reply = Frame::Map(vec![
            (Frame::bulk_str("server"), Frame::bulk_str("redis")),
            (Frame::bulk_str("version"), Frame::bulk_str(&crate::state::redis_version(&self.state))),
            (Frame::bulk_str("proto"), Frame::Integer(proto as i64)),
            (Frame::bulk_str("id"), Frame::Integer(self.id as i64)),
            (Frame::bulk_str("mode"), Frame::bulk_str("cluster")),
            (Frame::bulk_str("role"), Frame::bulk_str("master")),
            (Frame::bulk_str("modules"), Frame::Array(vec![])),
        ]);
        Pending::Ready(reply.to_bytes(proto))
    }
}

//! `--redis URL`: `redis://[user:pass@]host:port[/db]`, or `rediss://` for
//! TLS.

use std::fmt;

/// Where Redis is and how to log in.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub host: String,
    pub port: u16,
    /// `AUTH user pass` (Redis 6 ACL users); without it, `AUTH pass`.
    pub username: Option<String>,
    pub password: Option<String>,
    /// `SELECT db` (pub/sub ignores the database, but a proxy may not).
    pub db: u32,
    /// `rediss://`: TLS, the server's certificate checked against `host`.
    pub tls: bool,
}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<RedisUrl, String> {
        let (tls, rest) = match url.split_once("://") {
            Some(("redis", rest)) => (false, rest),
            Some(("rediss", rest)) => (true, rest),
            _ => return Err("expected redis://[user:pass@]host:port[/db] or rediss://...".into()),
        };
        let (authority, db) = match rest.split_once('/') {
            Some((authority, "")) => (authority, 0),
            Some((authority, db)) => (authority, db.parse().map_err(|_| format!("bad database number '{db}'"))?),
            None => (rest, 0),
        };
        if authority.contains(['?', '#']) || rest.contains(['?', '#']) {
            return Err("query parameters are not supported".into());
        }
        let (username, password, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => {
                let Some((user, pass)) = userinfo.split_once(':') else {
                    return Err("expected user:password@ or :password@ before the host".into());
                };
                let user = if user.is_empty() { None } else { Some(percent_decode(user)?) };
                (user, Some(percent_decode(pass)?), hostport)
            }
            None => (None, None, authority),
        };
        let parsed = crate::authority::parse(hostport).map_err(|why| format!("{why} in '{hostport}'"))?;
        let port = parsed.port.unwrap_or(6379);
        Ok(RedisUrl { host: parsed.host.to_string(), port, username, password, db, tls })
    }
}

/// The URL without its password, for logs.
impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.tls { "rediss://" } else { "redis://" })?;
        match (&self.username, &self.password) {
            (Some(user), _) => write!(f, "{user}:***@")?,
            (None, Some(_)) => f.write_str(":***@")?,
            _ => {}
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}/{}", self.host, self.port, self.db)
        } else {
            write!(f, "{}:{}/{}", self.host, self.port, self.db)
        }
    }
}

/// Never prints the password.
impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or("bad %-escape in the credentials")?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "credentials are not UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_the_contract_names() {
        let url = RedisUrl::parse("redis://127.0.0.1:6380").unwrap();
        assert_eq!((url.host.as_str(), url.port, url.db, url.password), ("127.0.0.1", 6380, 0, None));
        let url = RedisUrl::parse("redis://app:p%40ss:w@redis.local:6379/3").unwrap();
        assert_eq!(url.username.as_deref(), Some("app"));
        assert_eq!(url.password.as_deref(), Some("p@ss:w"));
        assert_eq!((url.host.as_str(), url.db), ("redis.local", 3));
        assert_eq!(url.to_string(), "redis://app:***@redis.local:6379/3", "no password in logs");
        let url = RedisUrl::parse("redis://:secret@[::1]/").unwrap();
        assert_eq!(
            (url.username.as_deref(), url.password.as_deref(), url.host.as_str(), url.port),
            (None, Some("secret"), "::1", 6379)
        );
        assert_eq!(format!("{url:?}"), "redis://:***@[::1]:6379/0");
        let url = RedisUrl::parse("rediss://redis.example:6380").unwrap();
        assert!(url.tls && !RedisUrl::parse("redis://h").unwrap().tls);
        assert_eq!(url.to_string(), "rediss://redis.example:6380/0");
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        for (bad, why) in [
            ("localhost:6379", "expected redis://"),
            ("redis://", "host is missing"),
            ("redis://h:port", "bad port"),
            ("redis://h/x", "bad database"),
            ("redis://user@h", "user:password"),
            ("redis://h:1?timeout=3", "query"),
            ("redis://:%zz@h", "%-escape"),
        ] {
            let err = RedisUrl::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}

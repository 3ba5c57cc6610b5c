//! Who a client is and what it may do: signed tokens (JWT) and the topic
//! grants they carry. Verification needs the `jwt` feature (it brings the
//! crypto); the grant rules here do not.

#[cfg(feature = "jwt")]
mod base64;
#[cfg(feature = "jwt")]
mod json;
#[cfg(feature = "jwt")]
mod jwt;

#[cfg(feature = "jwt")]
pub use jwt::Verifier;

#[cfg(all(feature = "jwt", any(test, feature = "testing")))]
pub use json::parse as parse_json;

/// Why a token was refused (for the log line; the client sees only 401).
pub type Refusal = &'static str;

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Claims {
    /// When the connection must end (the token's `exp` plus the leeway), in
    /// seconds since the epoch.
    pub expires: Option<u64>,
    /// The token's subject, for log lines.
    pub sub: Option<String>,
    pub subscribe: Grant,
    pub publish: Grant,
}

/// Patterns per grant, at most.
#[cfg_attr(not(feature = "jwt"), allow(dead_code))]
pub const MAX_PATTERNS: usize = 64;

/// A list of topic patterns: an exact name, a prefix ending in `*`, or `*`.
/// An empty grant (the claim absent) covers nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grant(Vec<Pattern>);

#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(feature = "jwt"), allow(dead_code))]
enum Pattern {
    Exact(Box<str>),
    Prefix(Box<str>),
}

impl Grant {
    /// Builds a grant from its patterns, refusing malformed ones (a `*`
    /// anywhere but at the end, an empty name, too many patterns). Tokens
    /// are the only source: without the `jwt` feature grants stay empty.
    #[cfg_attr(not(feature = "jwt"), allow(dead_code))]
    pub fn new<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Result<Grant, Refusal> {
        let mut out = Vec::new();
        for text in patterns {
            if out.len() == MAX_PATTERNS {
                return Err("a grant holds at most 64 topic patterns");
            }
            out.push(match text.strip_suffix('*') {
                Some(prefix) if !prefix.contains('*') => Pattern::Prefix(prefix.into()),
                None if !text.is_empty() && !text.contains('*') => Pattern::Exact(text.into()),
                _ => return Err("a topic pattern is a name, a prefix ending in '*', or '*'"),
            });
        }
        Ok(Grant(out))
    }

    /// Does the grant hold `*` (every topic)?
    pub fn covers_all(&self) -> bool {
        self.0.iter().any(|p| matches!(p, Pattern::Prefix(prefix) if prefix.is_empty()))
    }

    pub fn covers(&self, topic: &str) -> bool {
        self.0.iter().any(|p| match p {
            Pattern::Exact(name) => **name == *topic,
            Pattern::Prefix(prefix) => topic.starts_with(&**prefix),
        })
    }
}

/// Without the `jwt` feature there is no verifier: configuring a key is a
/// startup error, and admission never holds one.
#[cfg(not(feature = "jwt"))]
#[derive(Debug)]
pub enum Verifier {}

#[cfg(not(feature = "jwt"))]
impl Verifier {
    pub fn from_config(config: &crate::config::Config) -> Result<Option<Verifier>, String> {
        if config.jwt_secret_file.is_some() || !config.jwt_public_key_files.is_empty() {
            return Err("this wshub was built without the `jwt` feature; --jwt-* flags need it".into());
        }
        Ok(None)
    }

    pub fn verify(&self, _token: &str, _unix_now: u64) -> Result<Claims, Refusal> {
        match *self {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_cover_exact_names_prefixes_and_everything() {
        let grant = Grant::new(["news", "sensors.*"]).unwrap();
        assert!(grant.covers("news") && !grant.covers("news2") && !grant.covers("new"));
        assert!(grant.covers("sensors.t1") && grant.covers("sensors.") && !grant.covers("sensors"));
        assert!(Grant::new(["*"]).unwrap().covers("anything"));
        assert!(Grant::new(["a", "*"]).unwrap().covers_all() && !grant.covers_all());
        assert!(!Grant::default().covers("a"), "an absent claim grants nothing");
        for bad in ["", "a*b", "**", "*a"] {
            assert!(Grant::new([bad]).is_err(), "{bad}");
        }
        assert!(Grant::new(std::iter::repeat_n("a", MAX_PATTERNS + 1)).is_err());
    }

    #[cfg(not(feature = "jwt"))]
    #[test]
    fn without_the_feature_key_flags_stop_startup() {
        let config = crate::config::Config { jwt_secret_file: Some("k".into()), ..Default::default() };
        assert!(Verifier::from_config(&config).unwrap_err().contains("without the `jwt` feature"));
        assert!(Verifier::from_config(&crate::config::Config::default()).unwrap().is_none());
    }
}

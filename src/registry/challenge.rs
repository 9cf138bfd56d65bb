//! `WWW-Authenticate` challenges (RFC 9110 §11.6.1) and the token
//! endpoint's reply (the distribution token spec).

use std::time::Duration;

/// An authentication scheme a registry asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// Get a token from `realm` (docker token auth).
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
    /// Send the credentials with every request.
    Basic { realm: Option<String> },
}

/// Every Bearer or Basic challenge in one header value, in order; other
/// schemes and malformed parts are skipped.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out = Vec::new();
    let mut p = Parser { s: header.as_bytes(), i: 0 };
    loop {
        p.skip(|b| b == b',' || b == b' ' || b == b'\t');
        let Some(scheme) = p.token() else { break };
        let mut params: Vec<(String, String)> = Vec::new();
        loop {
            p.skip(|b| b == b' ' || b == b'\t');
            let save = p.i;
            // A `name=value` pair, or the start of the next challenge.
            let Some(name) = p.token() else { break };
            p.skip(|b| b == b' ' || b == b'\t');
            if !p.eat(b'=') {
                p.i = save;
                break;
            }
            p.skip(|b| b == b' ' || b == b'\t');
            let value = if p.peek() == Some(b'"') { p.quoted() } else { p.token() };
            let Some(value) = value else { break };
            params.push((name.to_ascii_lowercase(), value));
            p.skip(|b| b == b' ' || b == b'\t');
            if !p.eat(b',') {
                break;
            }
        }
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if scheme.eq_ignore_ascii_case("bearer") {
            if let Some(realm) = get("realm").filter(|r| !r.is_empty()) {
                out.push(Challenge::Bearer { realm, service: get("service"), scope: get("scope") });
            }
        } else if scheme.eq_ignore_ascii_case("basic") {
            out.push(Challenge::Basic { realm: get("realm") });
        }
        if p.i >= p.s.len() {
            break;
        }
    }
    out
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        if hit {
            self.i += 1;
        }
        hit
    }
    fn skip(&mut self, f: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
    }
    /// An RFC 9110 `token` (plus `/` for token68-ish values).
    fn token(&mut self) -> Option<String> {
        let start = self.i;
        self.skip(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:".contains(&b));
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }
    fn quoted(&mut self) -> Option<String> {
        if !self.eat(b'"') {
            return None;
        }
        let mut v = Vec::new();
        while let Some(b) = self.peek() {
            self.i += 1;
            match b {
                b'"' => return Some(String::from_utf8_lossy(&v).into_owned()),
                b'\\' => {
                    v.push(self.peek()?);
                    self.i += 1;
                }
                _ => v.push(b),
            }
        }
        None // unterminated
    }
}

/// The token endpoint's JSON reply.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct TokenReply {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl TokenReply {
    /// The token (`token`, or OAuth2's `access_token`) and how long it lasts
    /// (the spec's default is 60 s).
    pub(crate) fn into_token(self) -> Option<(String, Duration)> {
        let t = self.token.filter(|t| !t.is_empty()).or(self.access_token.filter(|t| !t.is_empty()))?;
        Some((t, Duration::from_secs(self.expires_in.unwrap_or(60).max(10))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(realm: &str, service: Option<&str>, scope: Option<&str>) -> Challenge {
        Challenge::Bearer { realm: realm.into(), service: service.map(Into::into), scope: scope.map(Into::into) }
    }

    #[test]
    fn docker_hub_style() {
        let h = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#;
        assert_eq!(
            parse_challenges(h),
            vec![bearer("https://auth.docker.io/token", Some("registry.docker.io"), Some("repository:library/busybox:pull"))]
        );
    }

    #[test]
    fn variants() {
        assert_eq!(parse_challenges(r#"Basic realm="Registry Realm""#), vec![Challenge::Basic { realm: Some("Registry Realm".into()) }]);
        assert_eq!(parse_challenges("basic"), vec![Challenge::Basic { realm: None }]);
        // Unquoted values, odd spacing and case, escapes, extra params.
        assert_eq!(
            parse_challenges(r#"BEARER  Realm = https://h/t , service="a\"b", error="invalid_token""#),
            vec![bearer("https://h/t", Some("a\"b"), None)]
        );
        // Two challenges in one header.
        assert_eq!(
            parse_challenges(r#"Negotiate abc, Basic realm="x", Bearer realm="https://h/t",scope="s""#),
            vec![Challenge::Basic { realm: Some("x".into()) }, bearer("https://h/t", None, Some("s"))]
        );
    }

    #[test]
    fn hostile_headers() {
        for h in ["", ",,,", "Bearer", r#"Bearer realm="unterminated"#, r#"Bearer realm="""#, "Bearer =x", "\u{0}\u{1}", "Digest realm=x"] {
            assert!(parse_challenges(h).iter().all(|c| !matches!(c, Challenge::Bearer { realm, .. } if realm.is_empty())), "{h:?}");
            assert!(!parse_challenges(h).iter().any(|c| matches!(c, Challenge::Bearer { .. })), "{h:?}");
        }
        let long = format!("Bearer realm=\"{}\"", "a".repeat(100_000));
        assert_eq!(parse_challenges(&long).len(), 1);
    }

    #[test]
    fn token_replies() {
        let r: TokenReply = serde_json::from_str(r#"{"token":"t","expires_in":300}"#).unwrap();
        assert_eq!(r.into_token(), Some(("t".into(), Duration::from_secs(300))));
        let r: TokenReply = serde_json::from_str(r#"{"access_token":"a"}"#).unwrap();
        assert_eq!(r.into_token(), Some(("a".into(), Duration::from_secs(60))));
        let r: TokenReply = serde_json::from_str(r#"{"token":""}"#).unwrap();
        assert_eq!(r.into_token(), None);
    }
}

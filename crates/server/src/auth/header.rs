//! Parsers for the credential headers' values. They take any client text and never panic (a
//! property test here and the fuzz target `fuzz/fuzz_targets/auth_header.rs`, which includes
//! this file as it is, check that). Pure: no HTTP types, so the fuzz target builds without the
//! server.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

#[derive(Debug, PartialEq, Eq)]
pub struct BasicCredentials {
    pub user_name: String,
    pub password: String,
}

/// Why a header was refused; shown to the client as a 400 (login) or 401 (guard).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("the Authorization header is missing")]
    Missing,
    #[error("the Authorization header must use the `{0}` scheme")]
    Scheme(&'static str),
    #[error("the Authorization header is not valid base64")]
    Base64,
    #[error("the Authorization header must encode `userName:password` in UTF-8")]
    Format,
}

/// Splits `<scheme> <rest>` with a case-insensitive scheme and one or more spaces.
fn strip_scheme<'a>(value: &'a str, scheme: &'static str) -> Result<&'a str, HeaderError> {
    let value = value.trim();
    let (s, rest) = value.split_once(' ').ok_or(HeaderError::Scheme(scheme))?;
    if !s.eq_ignore_ascii_case(scheme) {
        return Err(HeaderError::Scheme(scheme));
    }
    Ok(rest.trim_start())
}

/// `Token <base64(userName:password)>`. The password may itself contain `:`.
pub fn parse_token(value: &str) -> Result<BasicCredentials, HeaderError> {
    let encoded = strip_scheme(value, "Token")?;
    let bytes = STANDARD
        .decode(encoded.trim())
        .map_err(|_| HeaderError::Base64)?;
    let text = String::from_utf8(bytes).map_err(|_| HeaderError::Format)?;
    let (user, password) = text.split_once(':').ok_or(HeaderError::Format)?;
    if user.is_empty() {
        return Err(HeaderError::Format);
    }
    Ok(BasicCredentials {
        user_name: user.to_string(),
        password: password.to_string(),
    })
}

/// `Bearer <jwt>`.
pub fn parse_bearer(value: &str) -> Result<&str, HeaderError> {
    let token = strip_scheme(value, "Bearer")?.trim();
    if token.is_empty() || token.len() > 8192 {
        return Err(HeaderError::Format);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn token(s: &str) -> String {
        format!("Token {}", STANDARD.encode(s))
    }

    #[test]
    fn token_header_cases() {
        assert_eq!(
            parse_token(&token("steve:pa:ss")).unwrap(),
            BasicCredentials {
                user_name: "steve".into(),
                password: "pa:ss".into()
            }
        );
        assert_eq!(
            parse_token(&format!("token  {}", STANDARD.encode("a:b")))
                .unwrap()
                .user_name,
            "a"
        );
        assert_eq!(parse_token("Basic abc"), Err(HeaderError::Scheme("Token")));
        assert_eq!(parse_token("Token"), Err(HeaderError::Scheme("Token")));
        assert_eq!(parse_token("Token !!!"), Err(HeaderError::Base64));
        assert_eq!(parse_token(&token("nocolon")), Err(HeaderError::Format));
        assert_eq!(parse_token(&token(":pw")), Err(HeaderError::Format));
        assert_eq!(
            parse_token(&format!("Token {}", STANDARD.encode([0xff, b':', b'x']))),
            Err(HeaderError::Format)
        );
    }

    #[test]
    fn bearer_header_cases() {
        assert_eq!(parse_bearer("Bearer abc.def.ghi"), Ok("abc.def.ghi"));
        assert_eq!(parse_bearer("bearer  x"), Ok("x"));
        assert!(parse_bearer("Bearer ").is_err());
        assert!(parse_bearer("Token x").is_err());
        assert!(parse_bearer("").is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in ".*") {
            let _ = parse_token(&s);
            let _ = parse_bearer(&s);
        }

        #[test]
        fn token_round_trips(user in "[^:\\x00]{1,40}", pw in ".{0,40}") {
            let parsed = parse_token(&token(&format!("{user}:{pw}"))).unwrap();
            prop_assert_eq!(parsed.user_name, user);
            prop_assert_eq!(parsed.password, pw);
        }
    }
}

//! Bytes -> the credential header parsers, `Token <base64(user:password)>` and `Bearer <jwt>`.
//! The server's own file is included as it is (it is pure). Any panic is a bug; so is an
//! accepted `Token` whose user is empty or holds a `:`, or that does not round-trip, and an
//! accepted bearer token that is empty, padded or over 8 KiB.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;

#[path = "../../crates/server/src/auth/header.rs"]
mod header;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for value in [
        text.to_string(),
        format!("Token {text}"),
        format!("Bearer {text}"),
    ] {
        if let Ok(c) = header::parse_token(&value) {
            assert!(
                !c.user_name.is_empty() && !c.user_name.contains(':'),
                "{value:?}"
            );
            let again = format!(
                "Token {}",
                STANDARD.encode(format!("{}:{}", c.user_name, c.password))
            );
            assert_eq!(header::parse_token(&again), Ok(c), "{value:?}");
        }
        if let Ok(t) = header::parse_bearer(&value) {
            assert!(!t.is_empty() && t.len() <= 8192, "{value:?}");
            assert_eq!(t, t.trim(), "{value:?}");
        }
    }
    // A Token header built from arbitrary bytes split at their first `:`.
    if let Some(pos) = data.iter().position(|&b| b == b':') {
        let value = format!("Token {}", STANDARD.encode(data));
        let parsed = header::parse_token(&value);
        match (std::str::from_utf8(data), pos) {
            (Ok(s), p) if p > 0 => {
                let c = parsed.expect("valid UTF-8 with a user before the colon is accepted");
                assert_eq!(format!("{}:{}", c.user_name, c.password), s);
            }
            _ => assert!(parsed.is_err(), "{value:?}"),
        }
    }
});

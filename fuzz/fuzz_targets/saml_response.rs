//! Bytes -> the SAML response check (`crates/server/src/sso/saml_xml.rs`, included by path: it
//! does no I/O and uses nothing of the server crate), with the test IdP's certificate as the
//! only key. Any panic is a bug; so is an accepted response that says anything but what the
//! xmlsec1-signed seed (`seeds/saml_response/signed.xml`) says: mutations of the seed may only
//! be refused or, when they touched nothing signed, change nothing about who signs in.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../crates/server/src/sso/saml_xml.rs"]
mod saml_xml;

const CERT: &str = include_str!("../../crates/server/tests/fixtures/sso/saml-idp.crt");

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let der = saml_xml::certificate_der(CERT.as_bytes()).expect("fixture certificate");
    let keys = vec![saml_xml::key_from_certificate(&der).expect("fixture key")];
    let policies = saml_xml::policies().expect("policies");
    let expected = saml_xml::Expected {
        acs_url: "https://sp.example/acs",
        sp_entity_id: "https://sp.example",
        idp_entity_id: Some("https://idp.example"),
        now: 1_796_054_400,
        skew_secs: 30,
        name_attribute: None,
        email_attribute: Some("email"),
        display_name_attribute: Some("name"),
    };
    if let Ok(v) = saml_xml::check_response(&text, &keys, &policies, &expected) {
        assert_eq!(v.user_name, "alice@example.com", "{text}");
        assert_eq!(v.assertion_id, "_assertion-fixture", "{text}");
        assert_eq!(v.in_response_to, "_request-fixture", "{text}");
        assert_eq!(v.display_name.as_deref(), Some("Alice Example"), "{text}");
        assert_eq!(
            v.email_address.as_deref(),
            Some("alice@example.com"),
            "{text}"
        );
    }
    // The same bytes as the form field: base64 decoding never panics either.
    let _ = saml_xml::decode_response(&text);
});

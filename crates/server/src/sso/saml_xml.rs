//! SAML 2.0 without I/O: the AuthnRequest and SP metadata we write, the IdP metadata we read,
//! and the check of a `<samlp:Response>`, which is the security boundary.
//!
//! This file uses nothing of the server crate (the fuzz target includes it by path). The
//! signature is verified by `xml-sec` (pure Rust XMLDSig, exclusive C14N) with the configured
//! certificate's key only: a `KeyInfo` in the document is never used. The SAML itself is read
//! with `roxmltree`, which refuses DTDs (so no entities), and every fact is taken from the one
//! element the verified signature covers, found by its position, never by a fresh search:
//!
//! - the document is a `Response` holding exactly one `Assertion`, directly; IDs are unique
//!   (in every spelling `xml-sec` resolves), and no `EncryptedAssertion` is accepted;
//! - a `Signature` counts only as the direct child of the Response or of that Assertion, with a
//!   single `Reference` whose URI is `#` + its parent's ID; `xml-sec` must then report that
//!   exact element (resolved by the same ID, which is unique) as authenticated;
//! - text that carries a fact (NameID, attribute values, Audience, Issuer) must be one text
//!   node: a comment inside it (comments are outside what a signature covers) is refused, so a
//!   truncated value is never read.

use std::collections::{HashMap, HashSet};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use roxmltree::{Document, Node, ParsingOptions};
use xml_sec::policy::{CompiledPolicies, PolicyCompileContext, PolicyCompiler, PolicyProfile};
use xml_sec::provider::RustCryptoProvider;
use xml_sec::xmldsig::{SignatureAlgorithm, VerificationKey, VerificationRequest};
use xml_sec::{XmlSecurity, api::Operation};

pub const PROTOCOL: &str = "urn:oasis:names:tc:SAML:2.0:protocol";
pub const ASSERTION: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
pub const METADATA: &str = "urn:oasis:names:tc:SAML:2.0:metadata";
pub const DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";
const SUCCESS: &str = "urn:oasis:names:tc:SAML:2.0:status:Success";
const BEARER: &str = "urn:oasis:names:tc:SAML:2.0:cm:bearer";
pub const POST_BINDING: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST";
pub const REDIRECT_BINDING: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect";

/// A decoded `SAMLResponse` larger than this is refused before it is parsed.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// More XML nodes than this are refused (a response has a few dozen).
const MAX_NODES: u32 = 20_000;
/// An ID longer than this is refused (the replay table keys on it).
const MAX_ID_LEN: usize = 256;

/// Why a response was refused: malformed input (a 400) or a failed check (a 403).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Malformed(String),
    Denied(String),
}

fn denied<T>(why: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal::Denied(why.into()))
}

/// What a response must match besides its signature.
pub struct Expected<'a> {
    pub acs_url: &'a str,
    pub sp_entity_id: &'a str,
    /// The IdP's entity ID when its metadata gave one: the assertion's `Issuer` must be it.
    pub idp_entity_id: Option<&'a str>,
    /// Unix seconds.
    pub now: i64,
    pub skew_secs: i64,
    pub name_attribute: Option<&'a str>,
    pub email_attribute: Option<&'a str>,
    pub display_name_attribute: Option<&'a str>,
}

/// What a response that passed every check says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub assertion_id: String,
    /// The AuthnRequest's ID the (signed) assertion answers.
    pub in_response_to: String,
    /// Unix seconds after which the assertion can no longer be accepted (skew included).
    pub usable_until: i64,
    pub user_name: String,
    pub display_name: Option<String>,
    pub email_address: Option<String>,
}

/// The `xml-sec` policy every verification runs under (the library's modern profile: no SHA-1,
/// no external resources, the signed target must be named by the caller).
pub fn policies() -> Result<CompiledPolicies, String> {
    PolicyCompiler::new(PolicyProfile::Modern, &RustCryptoProvider, None)
        .and_then(|c| {
            c.compile(&PolicyCompileContext {
                external_resources: false,
                target_evidence: true,
            })
        })
        .map_err(|e| format!("XML signature policy: {e}"))
}

/// The verification key of an X.509 certificate (DER): its SubjectPublicKeyInfo, for
/// RSA-SHA256 signatures.
pub fn key_from_certificate(der: &[u8]) -> Result<VerificationKey, String> {
    let spki = spki_of_certificate(der).ok_or("not an X.509 certificate (DER)")?;
    Ok(VerificationKey {
        algorithm: SignatureAlgorithm::RsaSha256,
        public_key_bytes: spki.to_vec(),
        certificate_der: Some(der.to_vec()),
        name: None,
    })
}

/// A certificate file's DER: PEM (`-----BEGIN CERTIFICATE-----`), bare base64 (as metadata
/// holds it) or DER.
pub fn certificate_der(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        if text.contains("-----BEGIN") {
            let p = pem::parse(text).map_err(|e| format!("not a PEM certificate: {e}"))?;
            if p.tag() != "CERTIFICATE" {
                return Err(format!("a PEM `{}`, not a CERTIFICATE", p.tag()));
            }
            return Ok(p.into_contents());
        }
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        if let Ok(der) = STANDARD.decode(compact) {
            return Ok(der);
        }
    }
    Ok(bytes.to_vec())
}

/// One DER element: (tag, the whole element, its contents, what follows it).
type DerElement<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// The DER element at the start of `input`.
fn der_element(input: &[u8]) -> Option<DerElement<'_>> {
    let tag = *input.first()?;
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for b in input.get(2..2 + n)? {
            len = (len << 8) | usize::from(*b);
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    let whole = input.get(..end)?;
    Some((tag, whole, whole.get(header..)?, input.get(end..)?))
}

/// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
/// signature, issuer, validity, subject, subjectPublicKeyInfo, ... }, ... }
fn spki_of_certificate(der: &[u8]) -> Option<&[u8]> {
    let (0x30, _, cert, _) = der_element(der)? else {
        return None;
    };
    let (0x30, _, tbs, _) = der_element(cert)? else {
        return None;
    };
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = der_element(rest)?.3;
    }
    for _ in 0..5 {
        rest = der_element(rest)?.3;
    }
    match der_element(rest)? {
        (0x30, whole, _, _) => Some(whole),
        _ => None,
    }
}

/// What an IdP's metadata says: its entity ID, its redirect-binding sign-in URL and its
/// signing certificates (DER).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdpMetadata {
    pub entity_id: String,
    pub sso_url: String,
    pub certificates: Vec<Vec<u8>>,
}

/// Reads an IdP's metadata XML (an `EntityDescriptor`, or the first one with an
/// `IDPSSODescriptor` in an `EntitiesDescriptor`).
pub fn parse_idp_metadata(xml: &str) -> Result<IdpMetadata, String> {
    let doc = parse(xml).map_err(|r| match r {
        Refusal::Malformed(m) | Refusal::Denied(m) => m,
    })?;
    let entity = doc
        .descendants()
        .find(|n| {
            is(n, METADATA, "EntityDescriptor")
                && n.children().any(|c| is(&c, METADATA, "IDPSSODescriptor"))
        })
        .ok_or("no EntityDescriptor with an IDPSSODescriptor")?;
    let entity_id = entity
        .attribute("entityID")
        .ok_or("the EntityDescriptor has no entityID")?
        .to_string();
    let idp = children(entity, METADATA, "IDPSSODescriptor")
        .next()
        .ok_or("no IDPSSODescriptor")?;
    let sso_url = children(idp, METADATA, "SingleSignOnService")
        .find(|s| s.attribute("Binding") == Some(REDIRECT_BINDING))
        .and_then(|s| s.attribute("Location"))
        .ok_or("no SingleSignOnService with the HTTP-Redirect binding")?
        .to_string();
    let mut certificates = Vec::new();
    for kd in children(idp, METADATA, "KeyDescriptor") {
        if kd.attribute("use").is_some_and(|u| u != "signing") {
            continue;
        }
        for cert in kd.descendants().filter(|n| is(n, DSIG, "X509Certificate")) {
            let b64: String = cert
                .text()
                .unwrap_or("")
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            let der = STANDARD
                .decode(b64)
                .map_err(|_| "an X509Certificate is not base64")?;
            certificates.push(der);
        }
    }
    if certificates.is_empty() {
        return Err(
            "no signing certificate (KeyDescriptor use=\"signing\" X509Certificate)".into(),
        );
    }
    Ok(IdpMetadata {
        entity_id,
        sso_url,
        certificates,
    })
}

/// `&`, `<`, `>` and `"` escaped for an attribute value or text.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The AuthnRequest sent (unsigned) by the redirect binding.
pub fn authn_request(
    id: &str,
    issue_instant: &str,
    destination: &str,
    acs_url: &str,
    sp_entity_id: &str,
) -> String {
    format!(
        r#"<samlp:AuthnRequest xmlns:samlp="{PROTOCOL}" xmlns:saml="{ASSERTION}" ID="{}" Version="2.0" IssueInstant="{}" Destination="{}" AssertionConsumerServiceURL="{}" ProtocolBinding="{POST_BINDING}"><saml:Issuer>{}</saml:Issuer><samlp:NameIDPolicy AllowCreate="true"/></samlp:AuthnRequest>"#,
        escape(id),
        escape(issue_instant),
        escape(destination),
        escape(acs_url),
        escape(sp_entity_id)
    )
}

/// The redirect binding's query: the request raw-deflated, base64, URL-encoded; and RelayState.
pub fn redirect_query(request_xml: &str, relay_state: &str) -> Result<String, String> {
    use std::io::Write as _;
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(request_xml.as_bytes())
        .map_err(|e| format!("deflate: {e}"))?;
    let deflated = enc.finish().map_err(|e| format!("deflate: {e}"))?;
    Ok(url::form_urlencoded::Serializer::new(String::new())
        .append_pair("SAMLRequest", &STANDARD.encode(deflated))
        .append_pair("RelayState", relay_state)
        .finish())
}

/// This server's SP metadata for one provider.
pub fn sp_metadata(sp_entity_id: &str, acs_url: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<md:EntityDescriptor xmlns:md="{METADATA}" entityID="{}"><md:SPSSODescriptor AuthnRequestsSigned="false" WantAssertionsSigned="true" protocolSupportEnumeration="{PROTOCOL}"><md:NameIDFormat>urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified</md:NameIDFormat><md:AssertionConsumerService Binding="{POST_BINDING}" Location="{}" index="0" isDefault="true"/></md:SPSSODescriptor></md:EntityDescriptor>
"#,
        escape(sp_entity_id),
        escape(acs_url)
    )
}

/// The form field `SAMLResponse`: base64 (line breaks allowed) of UTF-8 XML.
pub fn decode_response(b64: &str) -> Result<String, Refusal> {
    let compact: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if compact.len() > MAX_RESPONSE_BYTES / 3 * 4 + 4 {
        return Err(Refusal::Malformed("SAMLResponse is too large".into()));
    }
    let bytes = STANDARD
        .decode(compact)
        .map_err(|_| Refusal::Malformed("SAMLResponse is not base64".into()))?;
    String::from_utf8(bytes).map_err(|_| Refusal::Malformed("SAMLResponse is not UTF-8 XML".into()))
}

fn parse(xml: &str) -> Result<Document<'_>, Refusal> {
    if xml.len() > MAX_RESPONSE_BYTES {
        return Err(Refusal::Malformed("the XML is too large".into()));
    }
    let opts = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
        ..ParsingOptions::default()
    };
    Document::parse_with_options(xml, opts).map_err(|e| match e {
        roxmltree::Error::DtdDetected => {
            Refusal::Denied("the XML has a DOCTYPE (DTDs and entities are refused)".into())
        }
        e => Refusal::Malformed(format!("not well-formed XML: {e}")),
    })
}

fn is(n: &Node, ns: &str, name: &str) -> bool {
    n.is_element() && n.tag_name().name() == name && n.tag_name().namespace() == Some(ns)
}

fn children<'a, 'i>(
    n: Node<'a, 'i>,
    ns: &'static str,
    name: &'static str,
) -> impl Iterator<Item = Node<'a, 'i>> {
    n.children().filter(move |c| is(c, ns, name))
}

/// The only child element `ns:name` of `n` (none: `Ok(None)`; several: refused).
fn only_child<'a, 'i>(
    n: Node<'a, 'i>,
    ns: &'static str,
    name: &'static str,
) -> Result<Option<Node<'a, 'i>>, Refusal> {
    let mut it = children(n, ns, name);
    match (it.next(), it.next()) {
        (None, _) => Ok(None),
        (Some(c), None) => Ok(Some(c)),
        _ => denied(format!(
            "the {} has more than one {name}",
            n.tag_name().name()
        )),
    }
}

/// An element's text when it is exactly one text node (no comment, element or processing
/// instruction inside): what a signature covers is then what is read.
fn strict_text(n: Node) -> Result<String, Refusal> {
    let mut it = n.children();
    match (it.next(), it.next()) {
        (Some(t), None) if t.is_text() => Ok(t.text().unwrap_or("").trim().to_string()),
        (None, _) => Ok(String::new()),
        _ => denied(format!(
            "the {} holds a comment or markup, not just text (refused: a signature does not cover comments)",
            n.tag_name().name()
        )),
    }
}

fn time(n: Node, attr: &str) -> Result<Option<i64>, Refusal> {
    match n.attribute(attr) {
        None => Ok(None),
        Some(v) => chrono::DateTime::parse_from_rfc3339(v)
            .map(|t| Some(t.timestamp()))
            .or_else(|_| denied(format!("{attr} {v:?} is not a date-time"))),
    }
}

/// Every ID-like attribute value of the document (the spellings `xml-sec` resolves: `ID`,
/// `Id`, `id`, `xml:id`) must be unique, so that an ID names one element for both parsers.
fn check_unique_ids(doc: &Document) -> Result<(), Refusal> {
    let mut seen = HashSet::new();
    for n in doc.descendants().filter(Node::is_element) {
        for a in n.attributes() {
            let id_like = match a.namespace() {
                None => matches!(a.name(), "ID" | "Id" | "id"),
                Some(ns) => ns == "http://www.w3.org/XML/1998/namespace" && a.name() == "id",
            };
            if id_like && !seen.insert(a.value()) {
                return denied(format!("the ID {:?} appears more than once", a.value()));
            }
        }
    }
    Ok(())
}

/// The Signature directly inside `el`, checked to reference exactly `el`.
fn enveloped_signature<'a, 'i>(el: Node<'a, 'i>) -> Result<Option<Node<'a, 'i>>, Refusal> {
    let Some(sig) = only_child(el, DSIG, "Signature")? else {
        return Ok(None);
    };
    let what = el.tag_name().name();
    let id = el.attribute("ID").unwrap_or("");
    let refs: Vec<Node> = children(sig, DSIG, "SignedInfo")
        .flat_map(|si| children(si, DSIG, "Reference"))
        .collect();
    match refs.as_slice() {
        [r] if !id.is_empty() && r.attribute("URI") == Some(&format!("#{id}")) => Ok(Some(sig)),
        _ => denied(format!(
            "the {what}'s signature does not reference the {what} itself (one Reference to #ID)"
        )),
    }
}

/// Verifies that every signature of `xml` is good under one of `keys` and covers each of
/// `targets` (IDs).
fn verify_signature(
    xml: &str,
    keys: &[VerificationKey],
    policies: &CompiledPolicies,
    targets: &[&str],
) -> Result<(), Refusal> {
    let provider = RustCryptoProvider;
    let security = XmlSecurity::new(policies, &provider)
        .map_err(|e| Refusal::Denied(format!("the signature could not be checked: {e}")))?;
    let document = security
        .parse_document(xml, Operation::Verify)
        .map_err(|e| Refusal::Denied(format!("the signature could not be checked: {e}")))?;
    let mut nodes = Vec::new();
    for id in targets {
        let node = document
            .with_view(|view| view.node_for_id(id, &[]))
            .ok_or_else(|| Refusal::Denied(format!("the signed element {id:?} is ambiguous")))?;
        nodes.push(node);
    }
    for key in keys {
        let verifier = security
            .verifier()
            .map_err(|e| Refusal::Denied(format!("the signature could not be checked: {e}")))?;
        let request = VerificationRequest {
            expected_targets: &nodes,
            ..Default::default()
        };
        if let Ok(evidence) = verifier.key(key).verify(&document, &request)
            && evidence.accepted(&document).unwrap_or(false)
        {
            return Ok(());
        }
    }
    denied("the signature does not verify with the configured certificate")
}

/// Checks a decoded `SAMLResponse` (see the module's doc); the checks in the order they run,
/// each refusal naming its check.
pub fn check_response(
    xml: &str,
    keys: &[VerificationKey],
    policies: &CompiledPolicies,
    exp: &Expected,
) -> Result<Verified, Refusal> {
    // 1. Well-formed XML, no DOCTYPE, bounded size.
    let doc = parse(xml)?;
    // 2. The shape: a Response with exactly one Assertion directly inside; unique IDs.
    let response = doc.root_element();
    if !is(&response, PROTOCOL, "Response") {
        return denied("the document is not a SAML 2.0 Response");
    }
    if doc
        .descendants()
        .any(|n| is(&n, ASSERTION, "EncryptedAssertion"))
    {
        return denied("encrypted assertions are not supported");
    }
    let all: Vec<Node> = doc
        .descendants()
        .filter(|n| is(n, ASSERTION, "Assertion"))
        .collect();
    let assertion = match all.as_slice() {
        [a] if a.parent() == Some(response) => *a,
        [_] => return denied("the assertion is not directly inside the Response"),
        [] => return denied("the response has no assertion"),
        _ => return denied("the response holds more than one assertion"),
    };
    check_unique_ids(&doc)?;
    // 3. The signature: on the Response or on the Assertion, by the configured key only.
    let response_sig = enveloped_signature(response)?;
    let assertion_sig = enveloped_signature(assertion)?;
    let assertion_id = assertion.attribute("ID").unwrap_or("").to_string();
    if assertion_id.is_empty() || assertion_id.len() > MAX_ID_LEN {
        return denied("the assertion has no usable ID");
    }
    let mut targets = Vec::new();
    if response_sig.is_some() {
        targets.push(response.attribute("ID").unwrap_or(""));
    }
    if assertion_sig.is_some() {
        targets.push(assertion_id.as_str());
    }
    if targets.is_empty() {
        return denied("neither the Response nor the Assertion is signed");
    }
    verify_signature(xml, keys, policies, &targets)?;
    // From here on every fact comes from `assertion` (signed itself or inside the signed
    // Response) or, for the Response's own attributes, is a further condition to refuse on.
    // 4. Status.
    let status = only_child(response, PROTOCOL, "Status")?
        .and_then(|s| children(s, PROTOCOL, "StatusCode").next())
        .and_then(|c| c.attribute("Value"));
    if status != Some(SUCCESS) {
        return denied(format!(
            "the identity provider answered status {:?}",
            status.unwrap_or("(none)")
        ));
    }
    // 5. Destination.
    if let Some(d) = response.attribute("Destination")
        && d != exp.acs_url
    {
        return denied(format!("the Destination {d:?} is not this ACS URL"));
    }
    if response_sig.is_some() && response.attribute("Destination").is_none() {
        return denied("the signed Response has no Destination");
    }
    // 6. Issuer.
    if let Some(want) = exp.idp_entity_id {
        let issuer = match only_child(assertion, ASSERTION, "Issuer")? {
            Some(i) => strict_text(i)?,
            None => String::new(),
        };
        if issuer != want {
            return denied(format!(
                "the assertion's Issuer {issuer:?} is not the identity provider's entity ID"
            ));
        }
    }
    // 7. Conditions: Audience, NotBefore, NotOnOrAfter.
    let conditions = only_child(assertion, ASSERTION, "Conditions")?
        .ok_or(Refusal::Denied("the assertion has no Conditions".into()))?;
    let restrictions: Vec<Node> = children(conditions, ASSERTION, "AudienceRestriction").collect();
    if restrictions.is_empty() {
        return denied("the assertion has no Audience");
    }
    for r in restrictions {
        let mut ok = false;
        for a in children(r, ASSERTION, "Audience") {
            if strict_text(a)? == exp.sp_entity_id {
                ok = true;
            }
        }
        if !ok {
            return denied("the assertion's Audience is not this SP entity ID");
        }
    }
    if let Some(nb) = time(conditions, "NotBefore")?
        && exp.now + exp.skew_secs < nb
    {
        return denied("the assertion is not yet valid (NotBefore)");
    }
    let cond_until = time(conditions, "NotOnOrAfter")?;
    if let Some(na) = cond_until
        && exp.now - exp.skew_secs >= na
    {
        return denied("the assertion has expired (Conditions NotOnOrAfter)");
    }
    // 8. The subject's bearer confirmation: Recipient, NotOnOrAfter, InResponseTo.
    let subject = only_child(assertion, ASSERTION, "Subject")?
        .ok_or(Refusal::Denied("the assertion has no Subject".into()))?;
    let bearer: Vec<Node> = children(subject, ASSERTION, "SubjectConfirmation")
        .filter(|c| c.attribute("Method") == Some(BEARER))
        .collect();
    let [confirmation] = bearer.as_slice() else {
        return denied("the subject has no single bearer SubjectConfirmation");
    };
    let data = only_child(*confirmation, ASSERTION, "SubjectConfirmationData")?.ok_or(
        Refusal::Denied("the SubjectConfirmation has no data".into()),
    )?;
    match data.attribute("Recipient") {
        Some(r) if r == exp.acs_url => {}
        Some(r) => return denied(format!("the Recipient {r:?} is not this ACS URL")),
        None => return denied("the SubjectConfirmationData has no Recipient"),
    }
    if let Some(nb) = time(data, "NotBefore")?
        && exp.now + exp.skew_secs < nb
    {
        return denied("the assertion is not yet valid (SubjectConfirmationData NotBefore)");
    }
    let data_until = time(data, "NotOnOrAfter")?.ok_or(Refusal::Denied(
        "the SubjectConfirmationData has no NotOnOrAfter".into(),
    ))?;
    if exp.now - exp.skew_secs >= data_until {
        return denied("the assertion has expired (SubjectConfirmationData NotOnOrAfter)");
    }
    let in_response_to = data
        .attribute("InResponseTo")
        .filter(|s| !s.is_empty())
        .ok_or(Refusal::Denied(
            "the assertion answers no request (no InResponseTo; IdP-initiated sign-in is not accepted)".into(),
        ))?
        .to_string();
    if let Some(r) = response.attribute("InResponseTo")
        && r != in_response_to
    {
        return denied("the Response's InResponseTo differs from the assertion's");
    }
    // 9. Who: the name attribute or the NameID; display name and email.
    let mut attrs: HashMap<&str, Node> = HashMap::new();
    for statement in children(assertion, ASSERTION, "AttributeStatement") {
        for a in children(statement, ASSERTION, "Attribute") {
            if let Some(name) = a.attribute("Name")
                && attrs.insert(name, a).is_some()
            {
                return denied(format!("the attribute {name:?} appears more than once"));
            }
        }
    }
    let attribute = |name: Option<&str>| -> Result<Option<String>, Refusal> {
        let Some(a) = name.and_then(|n| attrs.get(n)) else {
            return Ok(None);
        };
        match children(*a, ASSERTION, "AttributeValue").next() {
            Some(v) => Ok(Some(strict_text(v)?).filter(|s| !s.is_empty())),
            None => Ok(None),
        }
    };
    let user_name = match exp.name_attribute {
        Some(n) => attribute(Some(n))?
            .ok_or_else(|| Refusal::Denied(format!("the assertion has no attribute {n:?}")))?,
        None => {
            let id = only_child(subject, ASSERTION, "NameID")?
                .ok_or(Refusal::Denied("the subject has no NameID".into()))?;
            strict_text(id)?
        }
    };
    if user_name.is_empty() {
        return denied("the assertion names no user");
    }
    Ok(Verified {
        assertion_id,
        in_response_to,
        usable_until: cond_until.map_or(data_until, |c| c.max(data_until)) + exp.skew_secs,
        user_name,
        display_name: attribute(exp.display_name_attribute)?,
        email_address: attribute(exp.email_attribute)?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn expected(now: i64) -> Expected<'static> {
        Expected {
            acs_url: "https://sp.example/acs",
            sp_entity_id: "https://sp.example",
            idp_entity_id: None,
            now,
            skew_secs: 30,
            name_attribute: None,
            email_attribute: None,
            display_name_attribute: None,
        }
    }

    #[test]
    fn oversized_or_undecodable_responses_are_malformed() {
        let big = STANDARD.encode(format!("<a>{}</a>", "x".repeat(MAX_RESPONSE_BYTES)));
        assert_eq!(
            decode_response(&big),
            Err(Refusal::Malformed("SAMLResponse is too large".into()))
        );
        let just = STANDARD.encode("x".repeat(MAX_RESPONSE_BYTES));
        assert_eq!(decode_response(&just).unwrap().len(), MAX_RESPONSE_BYTES);
        assert_eq!(
            decode_response("not base64!"),
            Err(Refusal::Malformed("SAMLResponse is not base64".into()))
        );
        // Line breaks, as some IdPs send, are fine.
        assert_eq!(decode_response("PGEv\r\nPg==").unwrap(), "<a/>");
        let xml = format!("<a>{}</a>", "x".repeat(MAX_RESPONSE_BYTES));
        let keys: [VerificationKey; 0] = [];
        let p = policies().unwrap();
        assert!(matches!(
            check_response(&xml, &keys, &p, &expected(0)),
            Err(Refusal::Malformed(m)) if m.contains("too large")
        ));
    }

    #[test]
    fn no_dtd_and_nothing_but_a_response() {
        let p = policies().unwrap();
        let got = check_response("<!DOCTYPE a><a/>", &[], &p, &expected(0));
        assert!(matches!(got, Err(Refusal::Denied(m)) if m.contains("DOCTYPE")));
        let got = check_response("<a/>", &[], &p, &expected(0));
        assert_eq!(got, denied("the document is not a SAML 2.0 Response"));
    }

    #[test]
    fn the_subject_public_key_info_of_a_certificate() {
        let pem = include_str!("../../tests/fixtures/sso/saml-idp.crt");
        let der = certificate_der(pem.as_bytes()).unwrap();
        let key = key_from_certificate(&der).unwrap();
        // SEQUENCE { AlgorithmIdentifier rsaEncryption, BIT STRING }
        assert_eq!(key.public_key_bytes[0], 0x30);
        assert!(
            key.public_key_bytes
                .windows(9)
                .any(|w| w == [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01])
        );
        assert!(key_from_certificate(&der[..der.len() / 2]).is_err());
        assert!(key_from_certificate(b"").is_err());
    }

    #[test]
    fn the_authn_request_escapes_what_it_carries() {
        let xml = authn_request(
            "_1",
            "2026-01-01T00:00:00Z",
            "https://idp/\"x",
            "https://sp/acs?a=1&b=<2>",
            "sp",
        );
        let doc = Document::parse(&xml).unwrap();
        let root = doc.root_element();
        assert_eq!(root.attribute("Destination"), Some("https://idp/\"x"));
        assert_eq!(
            root.attribute("AssertionConsumerServiceURL"),
            Some("https://sp/acs?a=1&b=<2>")
        );
    }

    const SIGNED: &str = include_str!("../../tests/fixtures/sso/saml-response-signed.xml");

    fn fixture_keys() -> Vec<VerificationKey> {
        let pem = include_str!("../../tests/fixtures/sso/saml-idp.crt");
        vec![key_from_certificate(&certificate_der(pem.as_bytes()).unwrap()).unwrap()]
    }

    fn fixture_expected() -> Expected<'static> {
        Expected {
            acs_url: "https://sp.example/acs",
            sp_entity_id: "https://sp.example",
            idp_entity_id: Some("https://idp.example"),
            // 2026-11-30T16:00:00Z: inside the fixture's validity.
            now: 1_796_054_400,
            skew_secs: 30,
            name_attribute: None,
            email_attribute: Some("email"),
            display_name_attribute: Some("name"),
        }
    }

    #[test]
    fn the_xmlsec1_signed_fixture_passes_and_says_who() {
        let p = policies().unwrap();
        let v = check_response(SIGNED, &fixture_keys(), &p, &fixture_expected()).unwrap();
        assert_eq!(v.user_name, "alice@example.com");
        assert_eq!(v.assertion_id, "_assertion-fixture");
        assert_eq!(v.in_response_to, "_request-fixture");
        assert_eq!(v.display_name.as_deref(), Some("Alice Example"));
        // Another IdP entity ID, or no key at all: refused.
        let other = Expected {
            idp_entity_id: Some("https://another-idp.example"),
            ..fixture_expected()
        };
        assert!(
            matches!(check_response(SIGNED, &fixture_keys(), &p, &other), Err(Refusal::Denied(m)) if m.contains("Issuer"))
        );
        assert!(check_response(SIGNED, &[], &p, &fixture_expected()).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// Arbitrary bytes are never accepted, and never panic.
        #[test]
        fn arbitrary_bytes_are_never_accepted(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let p = policies().unwrap();
            let text = String::from_utf8_lossy(&bytes);
            proptest::prop_assert!(check_response(&text, &fixture_keys(), &p, &fixture_expected()).is_err());
        }

        /// A signed response with bytes replaced, inserted or removed (or markup spliced in) is
        /// refused, or, when the edit fell outside what is signed, says exactly what the
        /// original says: no edit changes who signs in.
        #[test]
        fn mutated_signed_responses_never_change_who(
            edits in proptest::collection::vec((0usize..4, 0usize..4000, 0u8..=255, 0usize..6), 1..4)
        ) {
            const SPLICES: [&str; 6] = [
                "<!---->",
                "<saml:Assertion ID=\"_x\"/>",
                "admin",
                "<!DOCTYPE a>",
                "<samlp:Extensions>",
                "</saml:Assertion>",
            ];
            let p = policies().unwrap();
            let original = check_response(SIGNED, &fixture_keys(), &p, &fixture_expected()).unwrap();
            let mut bytes = SIGNED.as_bytes().to_vec();
            for (kind, at, byte, splice) in edits {
                let at = at % (bytes.len() + 1);
                match kind {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    2 if at < bytes.len() => { bytes.remove(at); }
                    _ => { bytes.splice(at..at, SPLICES[splice].bytes()); }
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(v) = check_response(&text, &fixture_keys(), &p, &fixture_expected()) {
                proptest::prop_assert_eq!(v, original.clone());
            }
        }
    }
}

//! SAML 2.0 (spec section 9) against an identity provider that runs inside the test on
//! loopback: its sign-in endpoint takes our redirect-binding AuthnRequest (deflated, base64)
//! and answers with the POST-binding form, its responses signed by `xmlsec1` (libxmlsec1, an
//! implementation independent of the server's `xml-sec`) with the RSA key `fixtures/sso/rsa1.pem`
//! (certificate `saml-idp.crt`). The negative cases are the point: each must be a 403 naming
//! its check, and no session.

use std::io::Read as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::{
    APP_URL, assert_refused, browser, cloudio_extension, exchange, location, make_alice, query_of,
};
use crate::helpers::*;
use crate::on_both;

const SP_ENTITY_ID: &str = "http://127.0.0.1:9/v1/sso/saml/test/metadata";
const ACS_URL: &str = "http://127.0.0.1:9/v1/sso/saml/test/acs";
const IDP_ENTITY_ID: &str = "http://idp.test.example/saml";
const DSIG_TEMPLATE_START: &str = r##"<ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:SignedInfo><ds:CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/><ds:SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"/><ds:Reference URI="#"##;
const DSIG_TEMPLATE_END: &str = r##""><ds:Transforms><ds:Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/><ds:Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/></ds:Transforms><ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/><ds:DigestValue/></ds:Reference></ds:SignedInfo><ds:SignatureValue/><ds:KeyInfo><ds:X509Data/></ds:KeyInfo></ds:Signature>"##;

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sso")
        .join(name)
}

fn signature_template(id: &str) -> String {
    format!("{DSIG_TEMPLATE_START}{id}{DSIG_TEMPLATE_END}")
}

/// What the IdP signs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Sign {
    Assertion,
    Response,
    Nothing,
    /// The assertion, with another key (`rsa2.pem`, certificate `saml-other.crt`).
    AssertionWithOtherKey,
}

type Edit = Arc<dyn Fn(String) -> String + Send + Sync>;

/// How the IdP answers its next sign-ins.
#[derive(Clone)]
struct Mode {
    sign: Sign,
    name_id: String,
    assertion_id: Option<String>,
    in_response_to: Option<String>,
    audience: String,
    recipient: String,
    destination: String,
    not_before: i64,
    not_on_or_after: i64,
    /// Applied to the XML after signing (tampering, wrapping).
    after: Option<Edit>,
}

impl Default for Mode {
    fn default() -> Self {
        Mode {
            sign: Sign::Assertion,
            name_id: "alice@example.com".into(),
            assertion_id: None,
            in_response_to: None,
            audience: SP_ENTITY_ID.into(),
            recipient: ACS_URL.into(),
            destination: ACS_URL.into(),
            not_before: -60,
            not_on_or_after: 300,
            after: None,
        }
    }
}

struct IdpState {
    mode: Mode,
    /// The AuthnRequests received (decoded XML).
    requests: Vec<String>,
    serial: u64,
}

type Shared = Arc<Mutex<IdpState>>;

/// The loopback SAML identity provider.
struct Idp {
    base: String,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
    dir: tempfile::TempDir,
}

impl Idp {
    async fn start() -> Idp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(IdpState {
            mode: Mode::default(),
            requests: Vec::new(),
            serial: 0,
        }));
        let app = Router::new()
            .route("/sso", get(sso))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Idp {
            base,
            state,
            task,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn set(&self, f: impl FnOnce(&mut Mode)) {
        let mut m = Mode::default();
        f(&mut m);
        self.state.lock().unwrap().mode = m;
    }

    /// The IdP's metadata, as a file (the way Okta, Azure AD and Auth0 hand it out).
    fn metadata_file(&self) -> PathBuf {
        let pem = std::fs::read_to_string(fixture_path("saml-idp.crt")).unwrap();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let xml = format!(
            r#"<?xml version="1.0"?>
<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" xmlns:ds="http://www.w3.org/2000/09/xmldsig#" entityID="{IDP_ENTITY_ID}">
  <md:IDPSSODescriptor WantAuthnRequestsSigned="false" protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">
    <md:KeyDescriptor use="encryption"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>AAAA</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>
    <md:KeyDescriptor use="signing"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>
{b64}
    </ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>
    <md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST" Location="{base}/sso-post"/>
    <md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" Location="{base}/sso"/>
  </md:IDPSSODescriptor>
</md:EntityDescriptor>
"#,
            base = self.base
        );
        let path = self.dir.path().join("idp-metadata.xml");
        std::fs::write(&path, xml).unwrap();
        path
    }

    fn stop(&self) {
        self.task.abort();
    }
}

/// The IdP's sign-in endpoint: the AuthnRequest decoded, a response made, signed and handed
/// back as the POST-binding form (what a browser would auto-submit).
async fn sso(
    State(s): State<Shared>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let deflated = STANDARD.decode(&q["SAMLRequest"]).unwrap();
    let mut request = String::new();
    flate2::read::DeflateDecoder::new(&deflated[..])
        .read_to_string(&mut request)
        .unwrap();
    let doc = roxmltree::Document::parse(&request).unwrap();
    let root = doc.root_element();
    let request_id = root.attribute("ID").unwrap().to_string();
    let acs = root
        .attribute("AssertionConsumerServiceURL")
        .unwrap()
        .to_string();
    let (mode, serial) = {
        let mut st = s.lock().unwrap();
        st.requests.push(request.clone());
        st.serial += 1;
        (st.mode.clone(), st.serial)
    };
    let xml = signed_response(&mode, &request_id, serial).await;
    let b64 = STANDARD.encode(xml);
    Html(format!(
        r#"<html><body onload="document.forms[0].submit()"><form method="post" action="{acs}"><input type="hidden" name="SAMLResponse" value="{b64}"/><input type="hidden" name="RelayState" value="{}"/></form></body></html>"#,
        q.get("RelayState").map_or("", String::as_str)
    ))
    .into_response()
}

fn instant(offset: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(offset))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The response `mode` describes, answering `request_id`, signed by `xmlsec1`.
async fn signed_response(mode: &Mode, request_id: &str, serial: u64) -> String {
    let aid = mode
        .assertion_id
        .clone()
        .unwrap_or_else(|| format!("_assertion-{}-{serial}", uuid::Uuid::new_v4().simple()));
    let rid = format!("_response-{}", uuid::Uuid::new_v4().simple());
    let irt = mode
        .in_response_to
        .clone()
        .unwrap_or_else(|| request_id.to_string());
    let (a_sig, r_sig) = match mode.sign {
        Sign::Assertion | Sign::AssertionWithOtherKey => (signature_template(&aid), String::new()),
        Sign::Response => (String::new(), signature_template(&rid)),
        Sign::Nothing => (String::new(), String::new()),
    };
    let xml = format!(
        r#"<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="{rid}" Version="2.0" IssueInstant="{now}" Destination="{dest}" InResponseTo="{irt}"><saml:Issuer>{IDP_ENTITY_ID}</saml:Issuer>{r_sig}<samlp:Status><samlp:StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:Success"/></samlp:Status><saml:Assertion ID="{aid}" Version="2.0" IssueInstant="{now}"><saml:Issuer>{IDP_ENTITY_ID}</saml:Issuer>{a_sig}<saml:Subject><saml:NameID Format="urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress">{name}</saml:NameID><saml:SubjectConfirmation Method="urn:oasis:names:tc:SAML:2.0:cm:bearer"><saml:SubjectConfirmationData InResponseTo="{irt}" Recipient="{recipient}" NotOnOrAfter="{until}"/></saml:SubjectConfirmation></saml:Subject><saml:Conditions NotBefore="{since}" NotOnOrAfter="{until}"><saml:AudienceRestriction><saml:Audience>{audience}</saml:Audience></saml:AudienceRestriction></saml:Conditions><saml:AuthnStatement AuthnInstant="{now}"><saml:AuthnContext><saml:AuthnContextClassRef>urn:oasis:names:tc:SAML:2.0:ac:classes:Password</saml:AuthnContextClassRef></saml:AuthnContext></saml:AuthnStatement><saml:AttributeStatement><saml:Attribute Name="email"><saml:AttributeValue>{name}</saml:AttributeValue></saml:Attribute><saml:Attribute Name="name"><saml:AttributeValue>Alice Example</saml:AttributeValue></saml:Attribute></saml:AttributeStatement></saml:Assertion></samlp:Response>"#,
        now = instant(0),
        dest = mode.destination,
        name = mode.name_id,
        recipient = mode.recipient,
        audience = mode.audience,
        since = instant(mode.not_before),
        until = instant(mode.not_on_or_after),
    );
    let signed = match mode.sign {
        Sign::Nothing => xml,
        Sign::AssertionWithOtherKey => xmlsec1_sign(&xml, "rsa2.pem", "saml-other.crt").await,
        _ => xmlsec1_sign(&xml, "rsa1.pem", "saml-idp.crt").await,
    };
    match &mode.after {
        Some(edit) => edit(signed),
        None => signed,
    }
}

/// Signs every signature template of `xml` with `xmlsec1 --sign`.
async fn xmlsec1_sign(xml: &str, key: &str, cert: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("template.xml");
    let output = dir.path().join("signed.xml");
    std::fs::write(&input, xml).unwrap();
    let keys = format!(
        "{},{}",
        fixture_path(key).display(),
        fixture_path(cert).display()
    );
    let out = tokio::process::Command::new("xmlsec1")
        .arg("--sign")
        .arg("--privkey-pem")
        .arg(&keys)
        .args([
            "--id-attr:ID",
            "urn:oasis:names:tc:SAML:2.0:assertion:Assertion",
        ])
        .args([
            "--id-attr:ID",
            "urn:oasis:names:tc:SAML:2.0:protocol:Response",
        ])
        .arg("--output")
        .arg(&output)
        .arg(&input)
        .output()
        .await
        .expect("xmlsec1 (Debian package xmlsec1; scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "xmlsec1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let signed = std::fs::read_to_string(&output).unwrap();
    // Without the XML declaration, so that edits may put something before the root.
    signed
        .strip_prefix("<?xml version=\"1.0\"?>\n")
        .unwrap_or(&signed)
        .to_string()
}

/// The server, configured with the IdP as `test` (from its metadata, or by URL + certificate).
async fn spawn(kind: Kind, idp: &Idp, by_metadata: bool, app_dirs: Vec<PathBuf>) -> TestApp {
    let db = TestDb::new(kind).await;
    let mut config = db.config();
    config.app_dirs = app_dirs;
    config.sso = server::config::SsoConfig::default();
    let source = if by_metadata {
        format!("idp_metadata_file = {:?}", idp.metadata_file())
    } else {
        format!(
            "idp_sso_url = \"{}/sso\"\nidp_certificate_file = {:?}",
            idp.base,
            fixture_path("saml-idp.crt")
        )
    };
    let toml = format!(
        r#"
[[sso.saml]]
provider = "test"
{source}
sp_entity_id = "{SP_ENTITY_ID}"
acs_url = "{ACS_URL}"
email_attribute = "email"
display_name_attribute = "name"
app_url = "{APP_URL}"
"#
    );
    let parsed = server::Config::from_toml(&toml).unwrap();
    assert_eq!(parsed.validate(), Ok(()));
    config.sso.saml = parsed.sso.saml;
    TestApp::spawn_on(db, config).await
}

/// The POST-binding form the IdP answered with: (SAMLResponse, RelayState).
struct Form {
    response: String,
    relay_state: String,
}

fn form_value(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).unwrap() + marker.len();
    let len = html[start..].find('"').unwrap();
    html[start..start + len].to_string()
}

/// `/login`, checked, then the IdP's sign-in endpoint: the form it hands the browser.
async fn at_idp(app: &TestApp, idp: &Idp) -> Form {
    let b = browser();
    let r = b
        .get(app.url("/v1/sso/saml/test/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302, "{:?}", r.text().await);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let to_idp = location(&r);
    assert!(
        to_idp.starts_with(&format!("{}/sso?", idp.base)),
        "{to_idp}"
    );
    let q = query_of(&to_idp);
    assert!(q["RelayState"].len() >= 32, "{q:?}");
    let html = b.get(&to_idp).send().await.unwrap().text().await.unwrap();
    assert!(html.contains(&format!("action=\"{ACS_URL}\"")), "{html}");
    Form {
        response: form_value(&html, "SAMLResponse"),
        relay_state: form_value(&html, "RelayState"),
    }
}

/// Posts a form to the ACS: `(status, Location or body)`.
async fn post_acs(app: &TestApp, fields: &[(&str, &str)]) -> (u16, Value) {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    post_acs_raw(app, body).await
}

async fn post_acs_raw(app: &TestApp, body: String) -> (u16, Value) {
    let r = browser()
        .post(app.url("/v1/sso/saml/test/acs"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    if status == 302 {
        return (status, json!(location(&r)));
    }
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

async fn submit(app: &TestApp, f: &Form) -> (u16, Value) {
    post_acs(
        app,
        &[
            ("SAMLResponse", &f.response),
            ("RelayState", &f.relay_state),
        ],
    )
    .await
}

/// A whole sign-in: the hand-off URL or the refusal.
async fn sign_in(app: &TestApp, idp: &Idp) -> (u16, Value) {
    let f = at_idp(app, idp).await;
    submit(app, &f).await
}

/// Signs in and exchanges the code: the `/v1/auth` body.
async fn sign_in_and_exchange(app: &TestApp, idp: &Idp) -> Value {
    let (status, to) = sign_in(app, idp).await;
    assert_eq!(status, 302, "{to}");
    let to = to.as_str().unwrap();
    assert!(to.starts_with(APP_URL), "{to}");
    let (status, body) = exchange(app, &query_of(to)["sso_code"]).await;
    assert_eq!(status, 200, "{body}");
    body
}

on_both!(saml_sign_in_hands_off_a_session, |kind| async move {
    let idp = Idp::start().await;
    let app = spawn(kind, &idp, true, vec![]).await;
    make_alice(&app).await;

    // The AuthnRequest the IdP received: ours, for this ACS, from this SP, 10 minutes valid.
    let f = at_idp(&app, &idp).await;
    let request = idp.state.lock().unwrap().requests[0].clone();
    let doc = roxmltree::Document::parse(&request).unwrap();
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "AuthnRequest");
    assert_eq!(root.attribute("AssertionConsumerServiceURL"), Some(ACS_URL));
    assert_eq!(
        root.attribute("ProtocolBinding"),
        Some("urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST")
    );
    assert_eq!(
        root.attribute("Destination"),
        Some(format!("{}/sso", idp.base).as_str())
    );
    let id = root.attribute("ID").unwrap();
    assert!(id.starts_with('_') && id.len() > 30, "{id}");
    let issuer = root.children().find(|n| n.has_tag_name("Issuer")).unwrap();
    assert_eq!(issuer.text(), Some(SP_ENTITY_ID));

    // Assertion signed: a code, exchanged for a session that works on /v1/api.
    let (status, to) = submit(&app, &f).await;
    assert_eq!(status, 302, "{to}");
    let (status, body) = exchange(&app, &query_of(to.as_str().unwrap())["sso_code"]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["userName"], "alice@example.com");
    let (status, session) = app
        .session(
            body["jwt"].as_str().unwrap(),
            body["csrf"].as_str().unwrap(),
        )
        .await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["roles"], json!({"cloudio": ["developer"]}));

    // Response signed (the assertion inside it is covered).
    idp.set(|m| m.sign = Sign::Response);
    let body = sign_in_and_exchange(&app, &idp).await;
    assert_eq!(body["userName"], "alice@example.com");

    // The SP metadata.
    let r = browser()
        .get(app.url("/v1/sso/saml/test/metadata"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/samlmetadata+xml");
    let xml = r.text().await.unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    assert_eq!(doc.root_element().attribute("entityID"), Some(SP_ENTITY_ID));
    let acs = doc
        .descendants()
        .find(|n| n.has_tag_name("AssertionConsumerService"))
        .unwrap();
    assert_eq!(acs.attribute("Location"), Some(ACS_URL));
    assert_eq!(
        acs.attribute("Binding"),
        Some("urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST")
    );
    // Unknown providers are 404s.
    let r = browser()
        .get(app.url("/v1/sso/saml/nope/metadata"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = browser()
        .get(app.url("/v1/sso/saml/nope/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = browser()
        .post(app.url("/v1/sso/saml/nope/acs"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("SAMLResponse=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    app.stop().await;
    idp.stop();
});

on_both!(saml_by_url_and_certificate, |kind| async move {
    let idp = Idp::start().await;
    let app = spawn(kind, &idp, false, vec![]).await;
    make_alice(&app).await;
    let body = sign_in_and_exchange(&app, &idp).await;
    assert_eq!(body["userName"], "alice@example.com");
    app.stop().await;
    idp.stop();
});

fn edit(f: impl Fn(String) -> String + Send + Sync + 'static) -> Option<Edit> {
    Some(Arc::new(f))
}

/// The signed assertion element of a signed response (`<saml:Assertion ...</saml:Assertion>`).
fn assertion_of(xml: &str) -> String {
    let start = xml.find("<saml:Assertion ").unwrap();
    let end = xml.find("</saml:Assertion>").unwrap() + "</saml:Assertion>".len();
    xml[start..end].to_string()
}

const EVIL_ASSERTION: &str = r#"<saml:Assertion ID="_evil" Version="2.0" IssueInstant="2026-01-01T00:00:00Z"><saml:Issuer>http://idp.test.example/saml</saml:Issuer><saml:Subject><saml:NameID>admin</saml:NameID></saml:Subject></saml:Assertion>"#;

on_both!(every_bad_saml_response_is_refused, |kind| async move {
    let idp = Idp::start().await;
    let app = spawn(kind, &idp, true, vec![]).await;
    make_alice(&app).await;
    // `admin` exists (the built-in administrator): the wrapped assertions name it.
    type Change = Box<dyn Fn(&mut Mode)>;
    let cases: Vec<(&str, Change, &str)> = vec![
        (
            "unsigned",
            Box::new(|m| m.sign = Sign::Nothing),
            "neither the Response nor the Assertion is signed",
        ),
        (
            "signed by another key",
            Box::new(|m| m.sign = Sign::AssertionWithOtherKey),
            "does not verify with the configured certificate",
        ),
        (
            "tampered after signing",
            Box::new(|m| {
                m.after = edit(|x| {
                    x.replacen(
                        ">alice@example.com</saml:NameID>",
                        ">admin</saml:NameID>",
                        1,
                    )
                })
            }),
            "does not verify",
        ),
        (
            "tampered attribute after signing",
            Box::new(|m| m.after = edit(|x| x.replacen("Alice Example", "Admin", 1))),
            "does not verify",
        ),
        (
            "XSW: a second, unsigned assertion after the signed one",
            Box::new(|m| {
                m.after = edit(|x| {
                    x.replacen(
                        "</saml:Assertion>",
                        &format!("</saml:Assertion>{EVIL_ASSERTION}"),
                        1,
                    )
                })
            }),
            "more than one assertion",
        ),
        (
            "XSW: a second, unsigned assertion before the signed one",
            Box::new(|m| {
                m.after = edit(|x| {
                    let a = x.find("<saml:Assertion ").unwrap();
                    format!("{}{EVIL_ASSERTION}{}", &x[..a], &x[a..])
                })
            }),
            "more than one assertion",
        ),
        (
            "XSW: the signed assertion moved into Extensions, an evil one in its place",
            Box::new(|m| {
                m.after = edit(|x| {
                    let signed = assertion_of(&x);
                    let evil = signed.replace(">alice@example.com<", ">admin<").replacen(
                        "ID=\"_assertion",
                        "ID=\"_evil_assertion",
                        1,
                    );
                    let evil = {
                        let s = evil.find("<ds:Signature").unwrap();
                        let e = evil.find("</ds:Signature>").unwrap() + "</ds:Signature>".len();
                        format!("{}{}", &evil[..s], &evil[e..])
                    };
                    x.replacen(
                        &signed,
                        &format!("<samlp:Extensions>{signed}</samlp:Extensions>{evil}"),
                        1,
                    )
                })
            }),
            "more than one assertion",
        ),
        (
            "XSW: the signed response moved into the Signature's Object, an evil one around it",
            Box::new(|m| {
                m.sign = Sign::Response;
                m.after = edit(|x| {
                    let sig_start = x.find("<ds:Signature").unwrap();
                    let sig_end = x.find("</ds:Signature>").unwrap();
                    let sig_open = &x[sig_start..sig_end];
                    format!(
                        r#"<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="_evil_response" Version="2.0" IssueInstant="2026-01-01T00:00:00Z">{sig_open}<ds:Object>{x}</ds:Object></ds:Signature><samlp:Status><samlp:StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:Success"/></samlp:Status></samlp:Response>"#
                    )
                })
            }),
            "the assertion is not directly inside the Response",
        ),
        (
            "XSW: an evil assertion with the signed one's ID",
            Box::new(|m| {
                m.after = edit(|x| {
                    let signed = assertion_of(&x);
                    let id_start = signed.find("ID=\"").unwrap() + 4;
                    let id_len = signed[id_start..].find('"').unwrap();
                    let id = &signed[id_start..id_start + id_len];
                    x.replacen(
                        "<samlp:Status>",
                        &format!(r#"<samlp:Extensions><x:Evil xmlns:x="urn:evil" ID="{id}"/></samlp:Extensions><samlp:Status>"#),
                        1,
                    )
                })
            }),
            "appears more than once",
        ),
        (
            "a comment inside the NameID (signed as alice@example.com.evil)",
            Box::new(|m| {
                m.name_id = "alice@example.com.evil".into();
                m.after = edit(|x| {
                    x.replacen(
                        ">alice@example.com.evil</saml:NameID>",
                        ">alice@example.com<!---->.evil</saml:NameID>",
                        1,
                    )
                })
            }),
            "comment",
        ),
        (
            "expired",
            Box::new(|m| {
                m.not_before = -3600;
                m.not_on_or_after = -600
            }),
            "expired",
        ),
        (
            "not yet valid",
            Box::new(|m| m.not_before = 600),
            "not yet valid",
        ),
        (
            "wrong Audience",
            Box::new(|m| m.audience = "http://another-sp.example".into()),
            "Audience",
        ),
        (
            "wrong Recipient",
            Box::new(|m| m.recipient = "http://127.0.0.1:9/elsewhere".into()),
            "Recipient",
        ),
        (
            "wrong Destination",
            Box::new(|m| m.destination = "http://127.0.0.1:9/elsewhere".into()),
            "Destination",
        ),
        (
            "InResponseTo unknown",
            Box::new(|m| m.in_response_to = Some("_not-ours".into())),
            "InResponseTo",
        ),
        (
            "a DOCTYPE with an entity",
            Box::new(|m| {
                m.after = edit(|x| {
                    format!(
                        "<!DOCTYPE r [<!ENTITY who \"alice@example.com\">]>{}",
                        x.replacen(
                            ">alice@example.com</saml:NameID>",
                            ">&who;</saml:NameID>",
                            1
                        )
                    )
                })
            }),
            "DOCTYPE",
        ),
    ];
    for (what, change, check) in cases {
        idp.set(change);
        let got = sign_in(&app, &idp).await;
        assert_eq!(got.0, 403, "{what}: {}", got.1);
        assert_refused(&app, got.clone(), check).await;
        let ended = app
            .state
            .store
            .delete_user_sessions("cloudio", "admin")
            .await
            .unwrap();
        assert_eq!(ended, 0, "{what}: a session for admin");
        assert!(
            app.state
                .store
                .find_user("cloudio", "alice@example.com.evil")
                .await
                .unwrap()
                .is_none(),
            "{what}"
        );
    }
    // After all that, a good response still signs in.
    idp.set(|_| {});
    sign_in_and_exchange(&app, &idp).await;
    app.stop().await;
    idp.stop();
});

on_both!(saml_replays_are_refused, |kind| async move {
    let idp = Idp::start().await;
    let app = spawn(kind, &idp, true, vec![]).await;
    make_alice(&app).await;
    // The same response twice: the assertion ID is accepted once.
    let f = at_idp(&app, &idp).await;
    assert_eq!(submit(&app, &f).await.0, 302);
    assert_refused(&app, submit(&app, &f).await, "was used before (replay)").await;

    // Another assertion (new ID) answering an AuthnRequest already answered.
    let f = at_idp(&app, &idp).await;
    let request = idp.state.lock().unwrap().requests.last().unwrap().clone();
    let doc = roxmltree::Document::parse(&request).unwrap();
    let request_id = doc.root_element().attribute("ID").unwrap().to_string();
    assert_eq!(submit(&app, &f).await.0, 302);
    let again = signed_response(
        &Mode {
            in_response_to: Some(request_id),
            ..Mode::default()
        },
        "unused",
        999,
    )
    .await;
    let got = post_acs(
        &app,
        &[
            ("SAMLResponse", &STANDARD.encode(again)),
            ("RelayState", &f.relay_state),
        ],
    )
    .await;
    assert_refused(&app, got, "InResponseTo is not a request of ours").await;

    // The RelayState must come back as sent.
    let f = at_idp(&app, &idp).await;
    let got = post_acs(
        &app,
        &[("SAMLResponse", &f.response), ("RelayState", "forged")],
    )
    .await;
    assert_refused(&app, got, "RelayState").await;
    app.stop().await;
    idp.stop();
});

on_both!(malformed_saml_posts_are_clear_4xx, |kind| async move {
    let idp = Idp::start().await;
    let app = spawn(kind, &idp, true, vec![]).await;
    make_alice(&app).await;
    let bad = |message: &str| {
        json!({"code": 400, "status": "ERROR", "title": "Invalid Request",
               "message": format!("Invalid SAML response: {message}")})
    };
    assert_eq!(
        post_acs(&app, &[("RelayState", "x")]).await,
        (400, bad("the form has no SAMLResponse"))
    );
    assert_eq!(
        post_acs(&app, &[("SAMLResponse", "%%%not base64!!")]).await,
        (400, bad("SAMLResponse is not base64"))
    );
    let (status, body) = post_acs(
        &app,
        &[("SAMLResponse", &STANDARD.encode("this is not <xml"))],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("not well-formed XML"),
        "{body}"
    );
    assert_eq!(
        post_acs(
            &app,
            &[("SAMLResponse", &STANDARD.encode([0xff, 0xfe, 0x00]))]
        )
        .await,
        (400, bad("SAMLResponse is not UTF-8 XML"))
    );
    let (status, body) = post_acs(&app, &[("SAMLResponse", &STANDARD.encode("<a/>"))]).await;
    assert_eq!(status, 403, "{body}");
    // A huge form: refused before it is read (the server's body limit, 64 KiB in these tests;
    // the ACS's own is 512 KiB, and 256 KiB of decoded XML: unit tests in saml_xml.rs).
    let huge = STANDARD.encode(format!("<a>{}</a>", "x".repeat(300 * 1024)));
    let (status, body) = post_acs(&app, &[("SAMLResponse", &huge)]).await;
    assert_eq!(
        (status, &body["title"]),
        (413, &json!("Payload Too Large")),
        "{body}"
    );
    // A billion laughs: refused for its DOCTYPE before anything is expanded.
    let laughs = STANDARD.encode(
        r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;"><!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]><samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol">&lol3;</samlp:Response>"#,
    );
    assert_refused(
        &app,
        post_acs(&app, &[("SAMLResponse", &laughs)]).await,
        "DOCTYPE",
    )
    .await;
    app.stop().await;
    idp.stop();
});

on_both!(saml_create_user_makes_or_refuses, |kind| async move {
    // Without the function: an unknown user is refused.
    let idp = Idp::start().await;
    let app = spawn(kind, &idp, true, vec![]).await;
    assert_refused(&app, sign_in(&app, &idp).await, "no create-user function").await;
    assert!(
        app.state
            .store
            .find_user("cloudio", "alice@example.com")
            .await
            .unwrap()
            .is_none()
    );
    app.stop().await;

    // With it: refused by the function (its message), then made with its roles.
    let ext = cloudio_extension();
    let app = spawn(kind, &idp, true, vec![ext.path().to_path_buf()]).await;
    assert_refused(
        &app,
        sign_in(&app, &idp).await,
        "Email alice@example.com is not allowed to sign-in!",
    )
    .await;
    idp.set(|m| m.name_id = "newbie@example-domain.com".into());
    let body = sign_in_and_exchange(&app, &idp).await;
    assert_eq!(body["userName"], "newbie@example-domain.com");
    assert_eq!(body["displayName"], "Alice Example");
    assert_eq!(body["emailAddress"], "newbie@example-domain.com");
    let roles = app
        .state
        .store
        .user_roles("cloudio", "newbie@example-domain.com")
        .await
        .unwrap();
    assert_eq!(roles.len(), 2, "{roles:?}");
    // A second sign-in changes no role.
    app.state
        .store
        .revoke_role(
            "cloudio",
            "newbie@example-domain.com",
            "cloudio",
            "developer",
        )
        .await
        .unwrap();
    sign_in_and_exchange(&app, &idp).await;
    let roles = app
        .state
        .store
        .user_roles("cloudio", "newbie@example-domain.com")
        .await
        .unwrap();
    assert_eq!(
        roles,
        vec![("cloudio".to_string(), "patch_administrator".to_string())]
    );
    app.stop().await;
    idp.stop();
});

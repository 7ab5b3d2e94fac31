//! Single sign-on (spec section 9) against an OpenID Connect provider that runs inside the test
//! on loopback and speaks the real protocol: discovery, an authorization endpoint, a token
//! endpoint checking the client's secret, the code (once) and the PKCE verifier, and a JWKS;
//! ID tokens really signed with RSA (RS256) and P-256 (ES256) keys from `fixtures/sso`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::*;
use crate::on_both;

mod saml;

const CLIENT_ID: &str = "cloudio-test-client";
const CLIENT_SECRET: &str = "test-client-secret-1";
const APP_URL: &str = "http://127.0.0.1:9/app/";

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sso")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn jwk(name: &str) -> Value {
    let all: Value = serde_json::from_slice(&fixture("jwks.json")).unwrap();
    all[name].clone()
}

/// How the provider signs its next ID tokens.
#[derive(Clone, Debug)]
enum Signing {
    Rs256(&'static str),
    Es256,
    None,
    /// HS256 with the RSA public key's PEM as the HMAC secret (the classic confusion attack).
    Hs256WithPublicKey,
}

#[derive(Clone, Debug)]
struct Mode {
    signing: Signing,
    kid: Option<String>,
    iss: Option<String>,
    aud: Value,
    nonce: Option<String>,
    exp_offset: i64,
    iat_offset: i64,
    email: String,
    email_verified: bool,
}

impl Default for Mode {
    fn default() -> Self {
        Mode {
            signing: Signing::Rs256("rsa1"),
            kid: None,
            iss: None,
            aud: json!(CLIENT_ID),
            nonce: None,
            exp_offset: 300,
            iat_offset: 0,
            email: "alice@example.com".into(),
            email_verified: true,
        }
    }
}

struct Code {
    nonce: String,
    challenge: String,
    used: bool,
}

struct IdpState {
    base: String,
    mode: Mode,
    codes: HashMap<String, Code>,
    keys: Vec<Value>,
    jwks_fetches: usize,
}

type Shared = Arc<Mutex<IdpState>>;

/// The loopback OpenID Connect provider.
struct Idp {
    base: String,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Idp {
    async fn start() -> Idp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(IdpState {
            base: base.clone(),
            mode: Mode::default(),
            codes: HashMap::new(),
            keys: vec![jwk("rsa1"), jwk("ec1")],
            jwks_fetches: 0,
        }));
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/jwks", get(jwks))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Idp { base, state, task }
    }

    fn set(&self, f: impl FnOnce(&mut Mode)) {
        let mut s = self.state.lock().unwrap();
        let mut m = Mode::default();
        f(&mut m);
        s.mode = m;
    }

    fn stop(&self) {
        self.task.abort();
    }
}

async fn discovery(State(s): State<Shared>) -> Response {
    let base = s.lock().unwrap().base.clone();
    axum::Json(json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "jwks_uri": format!("{base}/jwks"),
        "response_types_supported": ["code"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
    }))
    .into_response()
}

async fn authorize(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(q["scope"].split(' ').any(|s| s == "openid"));
    let code = format!("code-{}", uuid::Uuid::new_v4().simple());
    s.lock().unwrap().codes.insert(
        code.clone(),
        Code {
            nonce: q["nonce"].clone(),
            challenge: q["code_challenge"].clone(),
            used: false,
        },
    );
    let to = format!(
        "{}?code={code}&state={}",
        q["redirect_uri"],
        url_escape(&q["state"])
    );
    (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
}

fn url_escape(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn token_error(error: &str) -> Response {
    (StatusCode::BAD_REQUEST, axum::Json(json!({"error": error}))).into_response()
}

async fn token(State(s): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let basic = format!(
        "Basic {}",
        STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
    );
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(&basic)
    {
        return token_error("invalid_client");
    }
    assert_eq!(form["grant_type"], "authorization_code");
    let mut st = s.lock().unwrap();
    let Some(code) = st.codes.get_mut(&form["code"]) else {
        return token_error("invalid_grant");
    };
    if code.used {
        return token_error("invalid_grant");
    }
    code.used = true;
    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
    if URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != code.challenge {
        return token_error("invalid_grant");
    }
    let nonce = code.nonce.clone();
    let id_token = mint(&st.base, &st.mode, &nonce);
    axum::Json(json!({"access_token": "at", "token_type": "Bearer", "id_token": id_token}))
        .into_response()
}

async fn jwks(State(s): State<Shared>) -> Response {
    let mut st = s.lock().unwrap();
    st.jwks_fetches += 1;
    axum::Json(json!({"keys": st.keys})).into_response()
}

/// An ID token as `mode` says.
fn mint(base: &str, mode: &Mode, nonce: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = json!({
        "iss": mode.iss.clone().unwrap_or_else(|| base.to_string()),
        "sub": "idp-user-1",
        "aud": mode.aud,
        "exp": now + mode.exp_offset,
        "iat": now + mode.iat_offset,
        "nonce": mode.nonce.clone().unwrap_or_else(|| nonce.to_string()),
        "email": mode.email,
        "email_verified": mode.email_verified,
        "name": "Alice Example",
    });
    let with_kid = |alg, default: &str| {
        let mut h = Header::new(alg);
        h.kid = Some(mode.kid.clone().unwrap_or_else(|| default.to_string()));
        h
    };
    match &mode.signing {
        Signing::Rs256(key) => {
            let pem = fixture(&format!("{key}.pem"));
            jsonwebtoken::encode(
                &with_kid(Algorithm::RS256, key),
                &claims,
                &EncodingKey::from_rsa_pem(&pem).unwrap(),
            )
            .unwrap()
        }
        Signing::Es256 => jsonwebtoken::encode(
            &with_kid(Algorithm::ES256, "ec1"),
            &claims,
            &EncodingKey::from_ec_pem(&fixture("ec1.pem")).unwrap(),
        )
        .unwrap(),
        Signing::Hs256WithPublicKey => jsonwebtoken::encode(
            &with_kid(Algorithm::HS256, "rsa1"),
            &claims,
            &EncodingKey::from_secret(&fixture("rsa1.pub.pem")),
        )
        .unwrap(),
        Signing::None => {
            let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"rsa1"}"#);
            let c = URL_SAFE_NO_PAD.encode(claims.to_string());
            format!("{h}.{c}.")
        }
    }
}

/// A server configured with the provider as `test`.
async fn spawn(kind: Kind, idp: &Idp, app_dirs: Vec<PathBuf>) -> TestApp {
    let db = TestDb::new(kind).await;
    let mut config = db.config();
    config.app_dirs = app_dirs;
    config.sso = server::config::SsoConfig::default();
    config.sso.oidc.push(oidc_config(&idp.base));
    TestApp::spawn_on(db, config).await
}

fn oidc_config(issuer: &str) -> server::config::OidcConfig {
    let toml = format!(
        r#"
[[sso.oidc]]
provider = "test"
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
redirect_uri = "http://127.0.0.1:9/v1/sso/oidc/test/callback"
app_url = "{APP_URL}"
"#
    );
    server::Config::from_toml(&toml).unwrap().sso.oidc.remove(0)
}

/// The user both protocols sign in as, with the `cloudio` app's `developer` role.
async fn make_alice(app: &TestApp) {
    app.create_user("alice@example.com", "alice-password").await;
    app.state
        .store
        .grant_role(
            "cloudio",
            "alice@example.com",
            "cloudio",
            "developer",
            "test",
        )
        .await
        .unwrap();
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn location(r: &reqwest::Response) -> String {
    r.headers()[header::LOCATION].to_str().unwrap().to_string()
}

fn query_of(url: &str) -> HashMap<String, String> {
    let q = url.split_once('?').map_or("", |(_, q)| q);
    url::form_urlencoded::parse(q.as_bytes())
        .into_owned()
        .collect()
}

/// `/login`, then the provider's authorization endpoint: the callback's `(code, state)`.
async fn authorize_at_idp(app: &TestApp) -> (String, String) {
    let b = browser();
    let r = b
        .get(app.url("/v1/sso/oidc/test/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302, "{:?}", r.text().await);
    let to_idp = location(&r);
    let q = query_of(&to_idp);
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43);
    assert!(q["state"].len() >= 43 && q["nonce"].len() >= 43);
    let r = b.get(&to_idp).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let back = query_of(&location(&r));
    (back["code"].clone(), back["state"].clone())
}

/// The callback with this code and state: `(status, Location or body)`.
async fn callback(app: &TestApp, code: &str, state: &str) -> (u16, Value) {
    let r = browser()
        .get(app.url(&format!(
            "/v1/sso/oidc/test/callback?code={}&state={}",
            url_escape(code),
            url_escape(state)
        )))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    if status == 302 {
        return (status, json!(location(&r)));
    }
    (status, r.json().await.unwrap())
}

/// A GET without following redirects: `(status, JSON body)`.
async fn get_json(app: &TestApp, path: &str) -> (u16, Value) {
    let r = browser().get(app.url(path)).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// A whole sign-in: the hand-off URL, or the refusal.
async fn sign_in(app: &TestApp) -> (u16, Value) {
    let (code, state) = authorize_at_idp(app).await;
    callback(app, &code, &state).await
}

async fn exchange(app: &TestApp, code: &str) -> (u16, Value) {
    let r = app
        .client
        .post(app.url("/v1/sso/exchange"))
        .json(&json!({"code": code}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Signs in and exchanges the code: the `/v1/auth` body.
async fn sign_in_and_exchange(app: &TestApp) -> Value {
    let (status, to) = sign_in(app).await;
    assert_eq!(status, 302, "{to}");
    let to = to.as_str().unwrap();
    assert!(to.starts_with(APP_URL), "{to}");
    let code = query_of(to)["sso_code"].clone();
    let (status, body) = exchange(app, &code).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn login_denied() -> Value {
    json!({"code": 403, "status": "ERROR", "title": "Access Denied",
           "message": "Access Denied - Invalid username and/or password!"})
}

/// A change of the provider's behaviour, for one case of a table.
type ModeChange = Box<dyn Fn(&mut Mode)>;

/// A refusal of the flow: 403 "Access Denied" naming `check`, and no session for anybody.
async fn assert_refused(app: &TestApp, (status, body): (u16, Value), check: &str) {
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["title"], "Access Denied", "{body}");
    let msg = body["message"].as_str().unwrap();
    assert!(msg.contains(check), "expected {check:?} in {msg:?}");
    let ended = app
        .state
        .store
        .delete_user_sessions("cloudio", "alice@example.com")
        .await
        .unwrap();
    assert_eq!(ended, 0, "a refused sign-in made a session");
}

on_both!(oidc_sign_in_hands_off_a_session, |kind| async move {
    let idp = Idp::start().await;
    let app = spawn(kind, &idp, vec![]).await;
    make_alice(&app).await;

    // RS256.
    let body = sign_in_and_exchange(&app).await;
    assert_eq!(body["userName"], "alice@example.com");
    assert_eq!(body["orgUid"], "cloudio");
    assert_eq!(body["status"], "OK");
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "orgUid",
            "sessionId",
            "userName",
            "displayName",
            "emailAddress",
            "csrf",
            "jwt",
            "status"
        ]
    );
    let (status, session) = app
        .session(
            body["jwt"].as_str().unwrap(),
            body["csrf"].as_str().unwrap(),
        )
        .await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["roles"], json!({"cloudio": ["developer"]}));

    // ES256.
    idp.set(|m| m.signing = Signing::Es256);
    let body = sign_in_and_exchange(&app).await;
    assert_eq!(body["userName"], "alice@example.com");
    app.stop().await;
    idp.stop();
});

on_both!(the_hand_off_code_is_single_use, |kind| async move {
    let idp = Idp::start().await;
    let app = spawn(kind, &idp, vec![]).await;
    app.create_user("alice@example.com", "alice-password").await;
    let (status, to) = sign_in(&app).await;
    assert_eq!(status, 302, "{to}");
    let code = query_of(to.as_str().unwrap())["sso_code"].clone();
    assert_eq!(exchange(&app, &code).await.0, 200);
    assert_eq!(exchange(&app, &code).await, (403, login_denied()));
    assert_eq!(exchange(&app, "made-up").await, (403, login_denied()));
    // Expired (60 s): one stored a minute ago.
    let past = chrono::Utc::now().timestamp_micros() - 1;
    app.state
        .store
        .put_sso_code(
            &server::auth::apikey::hash("old-code"),
            "cloudio",
            "alice@example.com",
            past,
        )
        .await
        .unwrap();
    assert_eq!(exchange(&app, "old-code").await, (403, login_denied()));
    // A malformed body is a 400.
    let r = app
        .client
        .post(app.url("/v1/sso/exchange"))
        .json(&json!({"code": "x", "extra": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    app.stop().await;
    idp.stop();
});

on_both!(every_bad_id_token_is_refused, |kind| async move {
    let idp = Idp::start().await;
    let app = spawn(kind, &idp, vec![]).await;
    app.create_user("alice@example.com", "alice-password").await;
    let cases: Vec<(&str, ModeChange, &str)> = vec![
        (
            "wrong issuer",
            Box::new(|m| m.iss = Some("http://127.0.0.1:1".into())),
            "issuer",
        ),
        (
            "wrong audience",
            Box::new(|m| m.aud = json!("another-client")),
            "audience",
        ),
        (
            "wrong nonce",
            Box::new(|m| m.nonce = Some("forged".into())),
            "nonce",
        ),
        (
            "expired",
            Box::new(|m| {
                m.exp_offset = -120;
                m.iat_offset = -3720;
            }),
            "expired",
        ),
        (
            "issued in the future",
            Box::new(|m| m.iat_offset = 600),
            "future",
        ),
        (
            "alg none",
            Box::new(|m| m.signing = Signing::None),
            "algorithm `none`",
        ),
        (
            "HS256 signed with the public key",
            Box::new(|m| m.signing = Signing::Hs256WithPublicKey),
            "algorithm `HS256`",
        ),
        (
            "unknown kid",
            Box::new(|m| m.signing = Signing::Rs256("rsa2")),
            "unknown kid",
        ),
        (
            "a known kid on another key's signature",
            Box::new(|m| {
                m.signing = Signing::Rs256("rsa2");
                m.kid = Some("rsa1".into());
            }),
            "signature",
        ),
        (
            "an RSA kid on an ES256 token",
            Box::new(|m| {
                m.signing = Signing::Es256;
                m.kid = Some("rsa1".into());
            }),
            "unknown kid",
        ),
        (
            "unverified email",
            Box::new(|m| m.email_verified = false),
            "verified",
        ),
    ];
    for (_case, set, check) in cases {
        idp.set(|m| set(m));
        let got = sign_in(&app).await;
        assert_refused(&app, got, check).await;
    }
    // After all that, a good token still works.
    idp.set(|_| {});
    sign_in_and_exchange(&app).await;
    app.stop().await;
    idp.stop();
});

on_both!(
    state_code_and_pkce_are_bound_and_single_use,
    |kind| async move {
        let idp = Idp::start().await;
        let app = spawn(kind, &idp, vec![]).await;
        app.create_user("alice@example.com", "alice-password").await;

        // State mismatch: made up, or missing.
        let (code, _) = authorize_at_idp(&app).await;
        assert_refused(&app, callback(&app, &code, "forged-state").await, "state").await;
        let got = get_json(&app, &format!("/v1/sso/oidc/test/callback?code={code}")).await;
        assert_refused(&app, got, "state").await;

        // A state is used once: the same callback again is refused.
        let (code, state) = authorize_at_idp(&app).await;
        assert_eq!(callback(&app, &code, &state).await.0, 302);
        assert_refused(&app, callback(&app, &code, &state).await, "state").await;

        // Code replay: a used code under a fresh state is refused by the provider.
        let (_, fresh_state) = authorize_at_idp(&app).await;
        assert_refused(
            &app,
            callback(&app, &code, &fresh_state).await,
            "refused the code",
        )
        .await;

        // PKCE: a code bound to one sign-in's challenge, redeemed with another's verifier.
        let (code_a, _state_a) = authorize_at_idp(&app).await;
        let (_code_b, state_b) = authorize_at_idp(&app).await;
        assert_refused(&app, callback(&app, &code_a, &state_b).await, "PKCE").await;

        // The provider's own refusal is passed on as a refusal.
        let got = get_json(
            &app,
            "/v1/sso/oidc/test/callback?error=access_denied&state=x",
        )
        .await;
        assert_refused(&app, got, "access_denied").await;
        // An unknown provider is a 404.
        assert_eq!(get_json(&app, "/v1/sso/oidc/nope/login").await.0, 404);
        app.stop().await;
        idp.stop();
    }
);

on_both!(rotated_keys_are_fetched_again, |kind| async move {
    let idp = Idp::start().await;
    let app = spawn(kind, &idp, vec![]).await;
    app.create_user("alice@example.com", "alice-password").await;
    sign_in_and_exchange(&app).await;
    assert_eq!(idp.state.lock().unwrap().jwks_fetches, 1);
    // The provider rotates to a new key: a kid the server has not seen makes it fetch again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    idp.state.lock().unwrap().keys.push(jwk("rsa2"));
    idp.set(|m| m.signing = Signing::Rs256("rsa2"));
    sign_in_and_exchange(&app).await;
    assert_eq!(idp.state.lock().unwrap().jwks_fetches, 2);
    app.stop().await;
    idp.stop();
});

on_both!(
    a_provider_that_is_down_is_a_clear_error,
    |kind| async move {
        let idp = Idp::start().await;
        let app = spawn(kind, &idp, vec![]).await;
        app.create_user("alice@example.com", "alice-password").await;
        // Down at the token endpoint, after the login redirect.
        let (code, state) = authorize_at_idp(&app).await;
        idp.stop();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, body) = callback(&app, &code, &state).await;
        assert_envelope(status, &body, 502);
        assert!(
            body["message"].as_str().unwrap().contains("unavailable"),
            "{body}"
        );
        // Down before the login: no redirect, the same clear error.
        let app2 = spawn(kind, &idp, vec![]).await;
        let (status, body) = get_json(&app2, "/v1/sso/oidc/test/login").await;
        assert_envelope(status, &body, 502);
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("`test` is unavailable"),
            "{body}"
        );
        assert_eq!(
            app.state
                .store
                .delete_user_sessions("cloudio", "alice@example.com")
                .await
                .unwrap(),
            0
        );
        app.stop().await;
        app2.stop().await;
    }
);

/// The product's own sample `createUser` (TypeScript annotations, `IoUsers` and
/// `IoUserRolesEdit` inserts), with its "hardcode it" roles taken out of the comment.
const CREATE_USER_TS: &str = r#"import { IoUserRolesEdit, NewRow } from "@cloudio-saas/datasource-types";

async function createUser({ userName, displayName, emailAddress }) {

    // validate if the userName/emailAddress is allowed to sign-in
    if (!emailAddress.endsWith('@example-domain.com')) {
        throw new UserError(`Email ${emailAddress} is not allowed to sign-in!`);
    }

    let appRoles: Record<string, string[]> = {};

    /*
        // get all the roles by app, that are to be assigned to this userName

        // fetch from a REST API
        const resp = await db.fetch('https://get-user-roles');
        appRoles = resp.json();
    */

    // or hardcode it
    appRoles = {
        cloudio: ['developer', 'patch_administrator'],
    };

    const startDate = new Date();
    startDate.setHours(0, 0, 0, 0);

    // create a user account with the given userName & emailAddress
    await db.insertOne('IoUsers', { userName, displayName, emailAddress, startDate });

    let userRoles: NewRow<IoUserRolesEdit>[] = [];
    let seqNo = 0;
    const apps = Object.keys(appRoles);
    for (let i = 0; i < apps.length; i++) {
        const appUid = apps[i];
        const roleCodes = appRoles[appUid];
        roleCodes.forEach((roleUid) => {
            seqNo++;
            userRoles.push({ _rs: 'I', appUid, roleUid, userName } as NewRow<IoUserRolesEdit>);
        });
    }
    if (userRoles.length > 0) {
        await db.insertMany('IoUserRolesEdit', userRoles);
    }
}

export { createUser };
"#;

fn cloudio_extension() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("app.json"),
        r#"{"appUid": "cloudio", "name": "CloudIO Platform", "description": "SSO user creation"}"#,
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("functions")).unwrap();
    std::fs::write(dir.path().join("functions/create-user.ts"), CREATE_USER_TS).unwrap();
    dir
}

on_both!(
    unknown_users_are_refused_without_create_user,
    |kind| async move {
        let idp = Idp::start().await;
        let app = spawn(kind, &idp, vec![]).await;
        let got = sign_in(&app).await;
        assert_refused(&app, got, "no create-user function").await;
        assert!(
            app.state
                .store
                .find_user("cloudio", "alice@example.com")
                .await
                .unwrap()
                .is_none()
        );
        app.stop().await;
        idp.stop();
    }
);

on_both!(
    create_user_makes_refuses_and_never_changes_roles,
    |kind| async move {
        let idp = Idp::start().await;
        let ext = cloudio_extension();
        let app = spawn(kind, &idp, vec![ext.path().to_path_buf()]).await;

        // Refused by the function: its UserError message is the 403's.
        let got = sign_in(&app).await;
        assert_refused(
            &app,
            got,
            "Email alice@example.com is not allowed to sign-in!",
        )
        .await;
        assert!(
            app.state
                .store
                .find_user("cloudio", "alice@example.com")
                .await
                .unwrap()
                .is_none()
        );

        // Made by the function, with its roles; the built-in datasources are all still there.
        idp.set(|m| m.email = "newbie@example-domain.com".into());
        let body = sign_in_and_exchange(&app).await;
        assert_eq!(body["userName"], "newbie@example-domain.com");
        assert_eq!(body["displayName"], "Alice Example");
        assert_eq!(body["emailAddress"], "newbie@example-domain.com");
        let user = app
            .state
            .store
            .find_user("cloudio", "newbie@example-domain.com")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(user.start_date, Some(chrono::Utc::now().date_naive()));
        assert!(user.password_hash.is_none());
        let roles = app
            .state
            .store
            .user_roles("cloudio", "newbie@example-domain.com")
            .await
            .unwrap();
        let expected = vec![
            ("cloudio".to_string(), "developer".to_string()),
            ("cloudio".to_string(), "patch_administrator".to_string()),
        ];
        assert_eq!(roles, expected);

        // An administrator changes the roles; signing in again changes nothing.
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
        let body = sign_in_and_exchange(&app).await;
        let (_, session) = app
            .session(
                body["jwt"].as_str().unwrap(),
                body["csrf"].as_str().unwrap(),
            )
            .await;
        assert_eq!(
            session["roles"],
            json!({"cloudio": ["patch_administrator"]})
        );
        let admin = app.admin().await;
        let (status, body) = app
            .api(&admin, &json!({"u": {"ds": "IoUsers", "query": {}}}))
            .await;
        assert_eq!(status, 200, "{body}");
        app.stop().await;
        idp.stop();
    }
);

on_both!(a_disabled_user_cannot_sign_in, |kind| async move {
    let idp = Idp::start().await;
    let app = spawn(kind, &idp, vec![]).await;
    app.create_user("alice@example.com", "alice-password").await;
    app.state
        .set_user_enabled("cloudio", "alice@example.com", false, "test")
        .await
        .unwrap();
    let got = sign_in(&app).await;
    assert_refused(&app, got, "disabled").await;
    app.stop().await;
    idp.stop();
});

on_both!(
    create_user_arrives_by_patch_and_survives_a_restart,
    |kind| async move {
        let idp = Idp::start().await;
        let db = TestDb::new(kind).await;
        let mut config = db.config();
        config.sso.oidc.push(oidc_config(&idp.base));
        let app = TestApp::spawn_on(db, config.clone()).await;
        let admin = app.admin().await;
        // As the product's documentation says: the sample function is uploaded by a patch.
        let files: std::collections::BTreeMap<String, String> = [
            (
                "app.json".to_string(),
                r#"{"appUid": "cloudio", "name": "CloudIO Platform"}"#.to_string(),
            ),
            (
                "functions/create-user.ts".to_string(),
                CREATE_USER_TS.to_string(),
            ),
        ]
        .into_iter()
        .collect();
        let zip = server::patch::write_zip("cloudio", &files).unwrap();
        let (status, body) = app.send_patch(&admin, "cloudio", false, zip).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["applies"], true, "{body}");
        assert_eq!(
            body["changes"]["datasources"]["removed"],
            json!([]),
            "{body}"
        );

        // A patch may not replace a built-in datasource.
        let mut bad = files.clone();
        bad.insert(
            "datasources/IoUsers.json".into(),
            r#"{"name": "IoUsers", "table": "io_users", "primaryKey": ["userId"],
            "keyGeneration": "uuid", "attributes": [{"code": "userId", "type": "String"}]}"#
                .into(),
        );
        let zip = server::patch::write_zip("cloudio", &bad).unwrap();
        let (status, body) = app.send_patch(&admin, "cloudio", false, zip).await;
        assert_eq!(status, 400, "{body}");
        assert!(body.to_string().contains("cannot be replaced"), "{body}");

        // Another node on the same database (a restart) still has the built-ins and the function.
        let second = TestApp::spawn_with(config).await;
        let (status, body) = second
            .api(
                &second.admin().await,
                &json!({"u": {"ds": "IoUsers", "query": {}}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        idp.set(|m| m.email = "patched@example-domain.com".into());
        let body = sign_in_and_exchange(&second).await;
        assert_eq!(body["userName"], "patched@example-domain.com");
        second.stop().await;
        app.stop().await;
        idp.stop();
    }
);

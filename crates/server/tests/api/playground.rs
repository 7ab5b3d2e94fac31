//! The playground's server side: `GET /` and `/playground`, `GET /v1/catalog`, the SQL echo
//! (`?debug=sql`) for developers only, `/v1/openapi.json` against the route table, the per-app
//! documents, and `/metrics` read by a Prometheus text parser. (The page itself is driven in
//! Chromium by the cli tests.)

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::helpers::*;
use crate::on_both;

fn hooks_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hooks")
}

/// A server with the demo and the `hooks` fixture app; `admin` is `clerk` in `hooks`, `vic` a
/// `viewer` (query on Items, one function) and no developer.
async fn spawn(kind: Kind) -> (TestApp, Login, Login) {
    let db = TestDb::new(kind).await;
    let mut config = db.config();
    config.demo = true;
    config.app_dirs = vec![hooks_dir()];
    let app = TestApp::spawn_on(db, config).await;
    let store = &app.state.store;
    store
        .grant_role("cloudio", "admin", "hooks", "clerk", "test")
        .await
        .unwrap();
    app.create_user("vic", "vic-password-1").await;
    store
        .grant_role("cloudio", "vic", "hooks", "viewer", "test")
        .await
        .unwrap();
    let admin = app.admin().await;
    let vic = app.login("vic", "vic-password-1").await;
    (app, admin, vic)
}

async fn get(
    app: &TestApp,
    login: Option<&Login>,
    path: &str,
) -> (u16, reqwest::header::HeaderMap, String) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut req = client.get(app.url(path));
    if let Some(l) = login {
        req = req
            .header("Authorization", format!("Bearer {}", l.jwt))
            .header("X-CSRF-Token", &l.csrf);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

async fn post(app: &TestApp, login: &Login, path: &str, body: &Value) -> (u16, Value) {
    let r = app
        .client
        .post(app.url(path))
        .header("Authorization", format!("Bearer {}", login.jwt))
        .header("X-CSRF-Token", &login.csrf)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn the_root_redirects_to_a_self_contained_playground() {
    let app = TestApp::spawn(Kind::Sqlite).await;
    let (status, headers, _) = get(&app, None, "/").await;
    assert_eq!(status, 303);
    assert_eq!(headers["location"], "/playground");

    let (status, headers, page) = get(&app, None, "/playground").await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    // Nothing is loaded from anywhere else: no absolute URL in the page, and the policy allows
    // requests to this server only and the page's own script only.
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "the page names another host"
    );
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("connect-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    assert_eq!(
        page.matches("<script").count(),
        1,
        "one inline script, which the hash covers"
    );
    for needle in ["/v1/auth", "/v1/catalog", "/v1/api", "/v1/fn/", "debug=sql"] {
        assert!(page.contains(needle), "the page uses {needle}");
    }
    app.stop().await;
}

on_both!(
    the_catalog_lists_what_the_caller_may_use,
    |kind| async move {
        let (app, admin, vic) = spawn(kind).await;
        let (status, _, body) = get(&app, Some(&admin), "/v1/catalog").await;
        assert_eq!(status, 200, "{body}");
        let cat: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(cat["developer"], true);
        let emp = cat["datasources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == "Employees")
            .expect("Employees");
        assert_eq!(emp["appUid"], "demo");
        assert_eq!(
            emp["actions"],
            json!(["query", "insert", "update", "delete"])
        );
        assert_eq!(emp["lockAttribute"], "lastUpdateDate");
        assert_eq!(emp["primaryKey"], json!(["empId"]));
        let attr = |code: &str| {
            emp["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["code"] == code)
                .unwrap_or_else(|| panic!("{code}"))
                .clone()
        };
        assert_eq!(attr("name")["family"], "string");
        assert!(
            attr("name")["operators"]
                .as_array()
                .unwrap()
                .contains(&json!("like"))
        );
        assert_eq!(
            attr("salary")["operators"],
            json!([
                "eq", "ne", "null", "notNull", "gt", "gte", "lt", "lte", "in", "nin", "bn"
            ])
        );
        assert!(
            attr("joinDate")["operators"]
                .as_array()
                .unwrap()
                .contains(&json!("lastNDays"))
        );
        assert_eq!(
            attr("empId")["updatable"],
            false,
            "the key is never updated"
        );
        assert_eq!(attr("lastUpdateDate")["who"], true);
        assert_eq!(attr("badge")["updatable"], false);

        // vic: Items for query only, one granted function, no platform datasources.
        let (_, _, body) = get(&app, Some(&vic), "/v1/catalog").await;
        let cat: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(cat["developer"], false);
        let names: Vec<&str> = cat["datasources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["Items"]);
        assert_eq!(cat["datasources"][0]["actions"], json!(["query"]));
        assert_eq!(
            cat["functions"],
            json!([{"appUid": "hooks", "module": "payroll/calc", "function": "summary"}])
        );
        let (status, _, _) = get(&app, None, "/v1/catalog").await;
        assert_eq!(status, 401);
        app.stop().await;
    }
);

on_both!(the_sql_echo_is_for_developers_only, |kind| async move {
    let (app, admin, vic) = spawn(kind).await;
    let query = json!({"E": {"ds": "Employees", "query": {"filter": [{"name": {"like": "ab"}}], "limit": 2, "count": true}}});
    let (status, body) = post(&app, &admin, "/v1/api?debug=sql", &query).await;
    assert_eq!(status, 200, "{body}");
    let st = body["debug"]["statements"].as_array().unwrap();
    assert_eq!(st.len(), 2, "the select and the count: {body}");
    assert!(
        st[0]["sql"].as_str().unwrap().starts_with("SELECT "),
        "{body}"
    );
    assert_eq!(st[0]["binds"], json!(["%ab%", 2, 0]));
    assert_eq!(st[0]["rows"], json!(2));
    assert!(
        st[1]["sql"]
            .as_str()
            .unwrap()
            .starts_with("SELECT COUNT(*)"),
        "{body}"
    );
    // Without the parameter, no echo.
    let (_, body) = post(&app, &admin, "/v1/api", &query).await;
    assert!(body.get("debug").is_none(), "{body}");

    // A post: the write (on SQLite through the writer thread) and, on a stale row, the lookup
    // that tells 409 from 404.
    let (_, rows) = app
        .api(
            &admin,
            &json!({"E": {"ds": "Employees", "query": {"limit": 1}}}),
        )
        .await;
    let row = &rows["data"]["E"]["data"][0];
    let update = json!({"E": {"ds": "Employees", "data": [{"_rs": "U", "empId": row["empId"], "salary": 1,
        "lastUpdateDate": row["lastUpdateDate"]}]}});
    let (status, body) = post(&app, &admin, "/v1/api?debug=sql", &update).await;
    assert_eq!(status, 200, "{body}");
    let sql = body["debug"]["statements"][0]["sql"].as_str().unwrap();
    assert!(sql.starts_with("UPDATE demo.EMPLOYEES SET"), "{body}");
    let (status, body) = post(&app, &admin, "/v1/api?debug=sql", &update).await;
    assert_envelope(status, &body, 409);

    // Statements of scripts' `db` calls are in the echo too (a cloud function).
    let (status, body) = post(
        &app,
        &admin,
        "/v1/fn/hooks/payroll/calc/summary?debug=sql",
        &json!({"min": 0}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        !body["debug"]["statements"].as_array().unwrap().is_empty(),
        "{body}"
    );

    // A password posted to IoUsers is hashed; no bind of such a request is shown.
    let (status, body) = post(
        &app,
        &admin,
        "/v1/api?debug=sql",
        &json!({"U": {"ds": "IoUsers", "data": [{"_rs": "I", "orgUid": "cloudio", "userName": "newbie",
            "password": "newbie-password-1", "startDate": "2020-01-01"}]}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let text = body["debug"].to_string();
    assert!(
        !text.contains("argon2") && !text.contains("newbie-password"),
        "{text}"
    );
    assert!(text.contains("<redacted>"), "{text}");

    // Not a developer: 403; another value: 400.
    let (status, body) = post(
        &app,
        &vic,
        "/v1/api?debug=sql",
        &json!({"I": {"ds": "Items", "query": {}}}),
    )
    .await;
    assert_envelope(status, &body, 403);
    assert!(
        body["message"].as_str().unwrap().contains("developer"),
        "{body}"
    );
    let (status, body) = post(&app, &admin, "/v1/api?debug=everything", &query).await;
    assert_envelope(status, &body, 400);
    app.stop().await;
});

/// The `.route(` calls of `router.rs`: none may bypass the documented table.
#[test]
fn every_route_is_registered_with_its_description() {
    let source = include_str!("../../src/router.rs");
    let table = source
        .split("fn table()")
        .nth(1)
        .and_then(|rest| rest.split("\n}\n").next())
        .expect("router.rs has fn table()");
    assert!(
        !table.contains(".route("),
        "router.rs registers a route without its #[utoipa::path]: use .routes(routes!(...))"
    );
    assert!(
        !source.contains("Router::new()"),
        "a second route table in router.rs"
    );
}

on_both!(openapi_describes_every_route, |kind| async move {
    let (app, admin, vic) = spawn(kind).await;
    let (status, _, text) = get(&app, None, "/v1/openapi.json").await;
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["components"]["schemas"]["Error"]["required"],
        json!(["code", "status", "title", "message"])
    );
    let paths = doc["paths"].as_object().unwrap();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.contains_key("default"), "{method} {path}");
            let guarded = op["security"].to_string().contains("jwt");
            assert_eq!(guarded, responses.contains_key("401"), "{method} {path}");
            // Served: the router knows the path and the method.
            let concrete = path.replace("{app}", "demo").replace("{path}", "none/none");
            if path == "/v1/logout" {
                continue;
            }
            let req = client
                .request(method.to_uppercase().parse().unwrap(), app.url(&concrete))
                .header("Authorization", format!("Bearer {}", admin.jwt))
                .header("X-CSRF-Token", &admin.csrf)
                .body("");
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            assert!(
                status != 405 && !body.contains("No such endpoint"),
                "{method} {path}: {status} {body}"
            );
            let code = status.to_string();
            assert!(
                responses.contains_key(&code) || status >= 400,
                "{method} {path}: {status} is not documented"
            );
        }
    }
    assert!(operations >= 24, "{operations}");

    // The per-app document: the caller's datasources only.
    let (status, _, text) = get(&app, Some(&vic), "/v1/apps/hooks/openapi.json").await;
    assert_eq!(status, 200, "{text}");
    let app_doc: Value = serde_json::from_str(&text).unwrap();
    let schemas = app_doc["components"]["schemas"].as_object().unwrap();
    let mut names: Vec<&String> = schemas.keys().collect();
    names.sort();
    assert_eq!(names, ["ItemsFilter", "ItemsQuery", "ItemsRow"]);
    let qty = &schemas["ItemsFilter"]["oneOf"][0]["properties"]["qty"]["properties"];
    assert!(
        qty.get("gte").is_some() && qty.get("like").is_none(),
        "{qty}"
    );
    assert_eq!(
        schemas["ItemsRow"]["x-cloudio"]["actions"],
        json!(["query"])
    );
    let (status, _, _) = get(&app, Some(&vic), "/v1/apps/demo/openapi.json").await;
    assert_eq!(status, 404, "vic may use nothing of demo");
    app.stop().await;
});

fn sample(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(b) => b.last().map_or(0.0, |c| c.count),
            prometheus_parse::Value::Summary(_) => 0.0,
        })
        .sum()
}

async fn scrape(app: &TestApp) -> prometheus_parse::Scrape {
    let text = app.metrics_text().await;
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses")
}

on_both!(metrics_move_with_known_traffic, |kind| async move {
    let (app, admin, _vic) = spawn(kind).await;
    let before = scrape(&app).await;
    let api = [("method", "POST"), ("route", "/v1/api"), ("status", "200")];
    for _ in 0..3 {
        let (status, _) = app
            .api(
                &admin,
                &json!({"E": {"ds": "Employees", "query": {"limit": 1}}}),
            )
            .await;
        assert_eq!(status, 200);
    }
    let (status, _) = app.login_response("admin", "wrong").await;
    assert_eq!(status, 403);
    let (_, rows) = app
        .api(
            &admin,
            &json!({"E": {"ds": "Employees", "query": {"limit": 1}}}),
        )
        .await;
    let row = &rows["data"]["E"]["data"][0];
    let (status, body) = app
        .api(
            &admin,
            &json!({"E": {"ds": "Employees", "data": [{"_rs": "U", "empId": row["empId"], "salary": 2,
                "lastUpdateDate": row["lastUpdateDate"]}]}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let after = scrape(&app).await;

    let delta = |m: &str, l: &[(&str, &str)]| sample(&after, m, l) - sample(&before, m, l);
    assert_eq!(delta("cloudio_http_requests_total", &api), 5.0);
    assert_eq!(delta("cloudio_logins_total", &[("outcome", "denied")]), 1.0);
    assert!(sample(&after, "cloudio_logins_total", &[("outcome", "ok")]) >= 2.0);
    assert_eq!(
        delta(
            "cloudio_http_request_duration_seconds_count",
            &[("method", "POST"), ("route", "/v1/api")]
        ),
        5.0
    );
    assert!(sample(&after, "cloudio_db_pool_max_connections", &[]) >= 1.0);
    assert_eq!(sample(&after, "cloudio_sqlite_writer_queue", &[]), 0.0);
    let writer_jobs = delta("cloudio_sqlite_writer_jobs_total", &[]);
    if kind == Kind::Sqlite {
        assert_eq!(writer_jobs, 1.0, "the update went through the writer");
    } else {
        assert_eq!(writer_jobs, 0.0);
    }
    assert!(
        after.docs.contains_key("cloudio_wf_queue_depth"),
        "workflow queue depth is reported"
    );
    app.stop().await;
});

/// The requests of [`every_documented_status_is_reached`]: each records the operation (as the
/// document names it) and the status it got.
struct Reach<'a> {
    app: &'a TestApp,
    client: reqwest::Client,
    reached: std::collections::BTreeSet<(String, String, u16)>,
}

impl Reach<'_> {
    async fn send(
        &mut self,
        method: &str,
        doc_path: &str,
        path: &str,
        login: Option<&Login>,
        body: Option<Vec<u8>>,
    ) -> (u16, Vec<u8>) {
        let mut req = self
            .client
            .request(method.parse().unwrap(), self.app.url(path));
        if let Some(l) = login {
            req = req
                .header("Authorization", format!("Bearer {}", l.jwt))
                .header("X-CSRF-Token", &l.csrf);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let bytes = r.bytes().await.unwrap().to_vec();
        self.reached
            .insert((method.to_lowercase(), doc_path.to_string(), status));
        (status, bytes)
    }

    async fn json(
        &mut self,
        method: &str,
        doc_path: &str,
        path: &str,
        login: Option<&Login>,
        body: Value,
    ) -> (u16, Value) {
        let (status, bytes) = self
            .send(
                method,
                doc_path,
                path,
                login,
                Some(body.to_string().into_bytes()),
            )
            .await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn auth(&mut self, header: &str) -> u16 {
        let r = self
            .client
            .post(self.app.url("/v1/auth"))
            .header("Authorization", header)
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        self.reached
            .insert(("post".into(), "/v1/auth".into(), status));
        status
    }
}

/// The callbacks' 200 needs a task's live token: `workflows::callbacks_with_every_scope_and_json_type`
/// reaches it for all six.
const REACHED_ELSEWHERE: [&str; 6] = [
    "/v1/wf/put",
    "/v1/wf/get",
    "/v1/wf/instancePut",
    "/v1/wf/instanceGet",
    "/v1/wf/incrementAndGet",
    "/v1/wf/instanceIncrementAndGet",
];

/// What needs an identity provider: reached by the tests in `sso.rs` and `sso/saml.rs`, which
/// run one.
const SSO_ELSEWHERE: [(&str, u16); 12] = [
    ("/v1/sso/oidc/{provider}/login", 302),
    ("/v1/sso/oidc/{provider}/login", 502),
    ("/v1/sso/oidc/{provider}/callback", 302),
    ("/v1/sso/oidc/{provider}/callback", 403),
    ("/v1/sso/oidc/{provider}/callback", 502),
    ("/v1/sso/exchange", 200),
    ("/v1/sso/saml/{provider}/login", 302),
    ("/v1/sso/saml/{provider}/acs", 302),
    ("/v1/sso/saml/{provider}/acs", 400),
    ("/v1/sso/saml/{provider}/acs", 403),
    ("/v1/sso/saml/{provider}/acs", 413),
    ("/v1/sso/saml/{provider}/metadata", 200),
];

on_both!(every_documented_status_is_reached, |kind| async move {
    let (app, admin, vic) = spawn(kind).await;
    let (_, _, text) = get(&app, None, "/v1/openapi.json").await;
    let doc: Value = serde_json::from_str(&text).unwrap();
    let mut r = Reach {
        app: &app,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        reached: Default::default(),
    };
    let bad = Some(b"{not json".to_vec());

    // Public endpoints.
    for (m, p) in [
        ("GET", "/"),
        ("GET", "/playground"),
        ("GET", "/v1/openapi.json"),
        ("GET", "/metrics"),
        ("GET", "/v1/status"),
    ] {
        r.send(m, p, p, None, None).await;
    }

    // Every guarded operation without a session: 401.
    for (m, doc_path) in [
        ("POST", "/v1/logout"),
        ("GET", "/v1/session"),
        ("GET", "/v1/catalog"),
        ("POST", "/v1/api"),
        ("POST", "/v1/fn/{app}/{path}"),
        ("GET", "/v1/apps/{app}/patch"),
        ("POST", "/v1/apps/{app}/patch"),
        ("POST", "/v1/apps/{app}/patch/verify"),
        ("GET", "/v1/apps/{app}/openapi.json"),
        ("POST", "/v1/wf/start"),
        ("POST", "/v1/wf/instance"),
        ("POST", "/v1/wf/cancel"),
    ] {
        let path = doc_path
            .replace("{app}", "demo")
            .replace("{path}", "stats/salaryStats");
        let (status, _) = r.send(m, doc_path, &path, None, Some(b"{}".to_vec())).await;
        assert_eq!(status, 401, "{m} {doc_path}");
    }

    // Single sign-on without providers: unknown ones, and codes nobody was given.
    for p in ["login", "callback"] {
        let doc_path = format!("/v1/sso/oidc/{{provider}}/{p}");
        let (status, _) = r
            .send(
                "GET",
                &doc_path,
                &format!("/v1/sso/oidc/nope/{p}"),
                None,
                None,
            )
            .await;
        assert_eq!(status, 404, "{p}");
    }
    for (m, p) in [("GET", "login"), ("POST", "acs"), ("GET", "metadata")] {
        let doc_path = format!("/v1/sso/saml/{{provider}}/{p}");
        let path = format!("/v1/sso/saml/nope/{p}");
        let body = (m == "POST").then(|| b"SAMLResponse=x".to_vec());
        let (status, _) = r.send(m, &doc_path, &path, None, body).await;
        assert_eq!(status, 404, "{p}");
    }
    let x = "/v1/sso/exchange";
    assert_eq!(
        r.json("POST", x, x, None, json!({"code": "nope"})).await.0,
        403
    );
    assert_eq!(r.send("POST", x, x, None, bad.clone()).await.0, 400);

    // The session.
    let spare = app.admin().await;
    r.send("GET", "/v1/session", "/v1/session", Some(&admin), None)
        .await;
    r.send("GET", "/v1/catalog", "/v1/catalog", Some(&admin), None)
        .await;
    r.send("POST", "/v1/logout", "/v1/logout", Some(&spare), None)
        .await;

    // `/v1/api`.
    let api = "/v1/api";
    let q = json!({"E": {"ds": "Employees", "query": {"limit": 1}}});
    let (_, rows) = r.json("POST", api, api, Some(&admin), q).await;
    let row = rows["data"]["E"]["data"][0].clone();
    r.send("POST", api, api, Some(&admin), bad.clone()).await;
    r.json(
        "POST",
        api,
        api,
        Some(&admin),
        json!({"E": {"ds": "NoSuch", "query": {}}}),
    )
    .await;
    let update = |key: &Value| {
        json!({"E": {"ds": "Employees", "data": [{"_rs": "U", "empId": key, "salary": 3,
            "lastUpdateDate": row["lastUpdateDate"]}]}})
    };
    r.json("POST", api, api, Some(&admin), update(&json!(999_999)))
        .await;
    r.json("POST", api, api, Some(&admin), update(&row["empId"]))
        .await;
    r.json("POST", api, api, Some(&admin), update(&row["empId"]))
        .await;

    // Cloud functions.
    let f = "/v1/fn/{app}/{path}";
    r.json(
        "POST",
        f,
        "/v1/fn/demo/stats/salaryStats",
        Some(&admin),
        json!({}),
    )
    .await;
    r.json(
        "POST",
        f,
        "/v1/fn/hooks/payroll/calc/write",
        Some(&admin),
        json!({"name": "n", "fail": true}),
    )
    .await;
    r.json(
        "POST",
        f,
        "/v1/fn/hooks/nomodule/f",
        Some(&admin),
        json!({}),
    )
    .await;
    r.json(
        "POST",
        f,
        "/v1/fn/hooks/payroll/calc/nothing",
        Some(&admin),
        json!({}),
    )
    .await;

    // Patches: export, verify and apply the demo as it is; garbage; a non-administrator.
    let (p, v) = ("/v1/apps/{app}/patch", "/v1/apps/{app}/patch/verify");
    let (status, zip) = r
        .send("GET", p, "/v1/apps/demo/patch", Some(&admin), None)
        .await;
    assert_eq!(status, 200);
    r.send("GET", p, "/v1/apps/nosuchapp/patch", Some(&admin), None)
        .await;
    r.send("GET", p, "/v1/apps/demo/patch", Some(&vic), None)
        .await;
    for (doc_path, path) in [
        (v, "/v1/apps/demo/patch/verify"),
        (p, "/v1/apps/demo/patch"),
    ] {
        let (status, body) = r
            .send("POST", doc_path, path, Some(&admin), Some(zip.clone()))
            .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        r.send(
            "POST",
            doc_path,
            path,
            Some(&admin),
            Some(b"not a zip".to_vec()),
        )
        .await;
        r.send("POST", doc_path, path, Some(&vic), Some(zip.clone()))
            .await;
    }

    // Per-app documents.
    let o = "/v1/apps/{app}/openapi.json";
    r.send("GET", o, "/v1/apps/demo/openapi.json", Some(&admin), None)
        .await;
    r.send("GET", o, "/v1/apps/demo/openapi.json", Some(&vic), None)
        .await;

    // Workflows.
    let (s, i, c) = ("/v1/wf/start", "/v1/wf/instance", "/v1/wf/cancel");
    let (_, started) = r
        .json(
            "POST",
            s,
            s,
            Some(&admin),
            json!({"appUid": "demo", "wfUid": "hire", "input": {"name": "x", "salary": 1}}),
        )
        .await;
    r.send("POST", s, s, Some(&admin), bad.clone()).await;
    r.json(
        "POST",
        s,
        s,
        Some(&vic),
        json!({"appUid": "demo", "wfUid": "hire"}),
    )
    .await;
    let inst = json!({"wfInstUid": started["wfInstUid"]});
    let unknown = json!({"wfInstUid": uuid::Uuid::new_v4().to_string()});
    for p in [i, c] {
        r.json("POST", p, p, Some(&admin), inst.clone()).await;
        r.send("POST", p, p, Some(&admin), bad.clone()).await;
        r.json("POST", p, p, Some(&vic), inst.clone()).await;
        r.json("POST", p, p, Some(&admin), unknown.clone()).await;
    }
    // Callbacks: a body without the fields, a token that is no execution's, a value too large.
    let fields = json!({"wfUid": "hire", "wfInstUid": started["wfInstUid"], "version": "1",
        "token": "no-such-token", "nodeUid": "check", "executionId": "e", "key": "k", "value": 1});
    for p in REACHED_ELSEWHERE {
        r.json("POST", p, p, None, json!({})).await;
        r.json("POST", p, p, None, fields.clone()).await;
        if p.ends_with("ut") {
            let mut big = fields.clone();
            big["value"] = json!("x".repeat(100 * 1024));
            r.json("POST", p, p, None, big).await;
        }
    }

    // Logins: right, malformed, wrong, then past the limit (last: it locks this address out).
    r.auth(&token_header("admin", ADMIN_PASSWORD)).await;
    r.auth("Basic nonsense").await;
    let mut last = 0;
    for _ in 0..12 {
        last = r.auth(&token_header("nobody", "wrong")).await;
    }
    assert_eq!(last, 429);

    // The database gone: status is a 503.
    app.state.store.db.close().await;
    r.send("GET", "/v1/status", "/v1/status", None, None).await;

    // Every documented status was reached (the callbacks' 200 elsewhere), and every status below
    // 400 that was reached is documented.
    let mut missing = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for code in op["responses"].as_object().unwrap().keys() {
                let Ok(code) = code.parse::<u16>() else {
                    continue;
                };
                if code == 200 && REACHED_ELSEWHERE.contains(&path.as_str()) {
                    continue;
                }
                if SSO_ELSEWHERE.contains(&(path.as_str(), code)) {
                    continue;
                }
                if !r.reached.contains(&(method.clone(), path.clone(), code)) {
                    missing.push(format!("{method} {path} {code}"));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "documented but not reached: {missing:#?}"
    );
    for (method, path, code) in &r.reached {
        if *code < 400 {
            assert!(
                doc["paths"][path][method]["responses"]
                    .get(code.to_string())
                    .is_some(),
                "{method} {path} answered {code}, which is not documented"
            );
        }
    }
    app.stop().await;
});

//! `TestApp`: a real server on port 0 over a fresh database (a temporary SQLite directory, a
//! new PostgreSQL database on the server named by `CLOUDIO_TEST_DATABASE_URL`, or new MariaDB/
//! MySQL databases named for the test on the server named by `CLOUDIO_TEST_MYSQL_URL`), with
//! typed request helpers and personas.

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use server::{AppState, Config, Secret, Server};
use tokio::sync::{Notify, oneshot};

pub const ADMIN_PASSWORD: &str = "admin-password-1";
pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0001";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
    Mysql,
}

/// Runs a test body against each of the three databases.
#[macro_export]
macro_rules! on_all {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                ($body)(Kind::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                ($body)(Kind::Postgres).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                ($body)(Kind::Mysql).await
            }
        }
    };
}

/// Runs a test body on SQLite and PostgreSQL only: what MySQL does not serve yet (see
/// docs/api.md, "MySQL/MariaDB").
#[macro_export]
macro_rules! on_both {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                ($body)(Kind::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                ($body)(Kind::Postgres).await
            }
        }
    };
}

/// A fresh, empty database; dropped (PostgreSQL) or deleted (SQLite) by [`TestDb::drop_db`].
pub struct TestDb {
    pub dir: tempfile::TempDir,
    pub url: Option<String>,
    name: Option<String>,
    kind: Kind,
}

fn mysql_admin_url() -> String {
    std::env::var("CLOUDIO_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

fn pg_admin_url() -> String {
    std::env::var("CLOUDIO_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

impl TestDb {
    pub async fn new(kind: Kind) -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        match kind {
            Kind::Sqlite => TestDb {
                dir,
                url: None,
                name: None,
                kind,
            },
            Kind::Mysql => {
                // The server makes the platform's database and one per app, all named after it.
                let name = format!("cloudio_test_{}", uuid::Uuid::new_v4().simple());
                TestDb {
                    dir,
                    url: Some(format!(
                        "{}/{name}",
                        mysql_admin_url().trim_end_matches('/')
                    )),
                    name: Some(name),
                    kind,
                }
            }
            Kind::Postgres => {
                let admin = pg_admin_url();
                let name = format!("cloudio_test_{}", uuid::Uuid::new_v4().simple());
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
                    .await
                    .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is required for tests: {e}"));
                sqlx::Executor::execute(
                    &mut conn,
                    sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")),
                )
                .await
                .expect("create database");
                let base = admin
                    .rsplit_once('/')
                    .map_or(admin.as_str(), |(b, _)| b)
                    .to_string();
                TestDb {
                    dir,
                    url: Some(format!("{base}/{name}")),
                    name: Some(name),
                    kind,
                }
            }
        }
    }

    pub fn config(&self) -> Config {
        Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            data_dir: self.dir.path().to_path_buf(),
            database_url: self.url.clone().map(Into::into),
            max_connections: 8,
            jwt_secret: Some(Secret::new(JWT_SECRET)),
            body_limit_bytes: 64 * 1024,
            ..Config::default()
        }
    }

    /// Drops the database now (dropping a `TestDb` does the same, also when a test failed).
    pub async fn drop_db(self) {
        drop(self);
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.name.take() else {
            return;
        };
        let kind = self.kind;
        // Drop runs inside the test's runtime, which cannot block on itself: a thread with a
        // small runtime of its own drops the database, and this waits for it.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if kind == Kind::Mysql {
                    drop_mysql(&name).await;
                    return;
                }
                if let Ok(mut conn) =
                    <sqlx::PgConnection as sqlx::Connection>::connect(&pg_admin_url()).await
                {
                    let _ = sqlx::Executor::execute(
                        &mut conn,
                        sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")),
                    )
                    .await;
                }
            });
        })
        .join();
    }
}

/// Drops a MySQL test's databases: the platform's and each app's (`<name>_<app>`).
async fn drop_mysql(name: &str) {
    let Ok(mut conn) =
        <sqlx::MySqlConnection as sqlx::Connection>::connect(&mysql_admin_url()).await
    else {
        return;
    };
    let names: Vec<(String,)> = sqlx::query_as(
        "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ? OR SCHEMA_NAME LIKE ?",
    )
    .bind(name)
    .bind(format!("{name}\\_%"))
    .fetch_all(&mut conn)
    .await
    .unwrap_or_default();
    for (db,) in names {
        let _ = sqlx::Executor::execute(
            &mut conn,
            sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{db}`")),
        )
        .await;
    }
}

/// Routes only tests have: a handler that panics, and one that waits until released.
pub struct TestRoutes {
    pub slow_started: Arc<Notify>,
    pub slow_release: Arc<Notify>,
}

async fn panics() -> &'static str {
    panic!("deliberate test panic with secret detail")
}

fn test_routes(t: &TestRoutes) -> axum::Router<AppState> {
    let started = t.slow_started.clone();
    let release = t.slow_release.clone();
    server::router::routes()
        .route("/test/panic", get(panics))
        .route(
            "/test/slow",
            get(move || {
                let (started, release) = (started.clone(), release.clone());
                async move {
                    started.notify_one();
                    release.notified().await;
                    "done"
                }
            }),
        )
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub routes: TestRoutes,
    shutdown: Option<oneshot::Sender<()>>,
    pub handle: tokio::task::JoinHandle<std::io::Result<()>>,
    pub db: Option<TestDb>,
}

pub struct Login {
    pub body: Value,
    pub jwt: String,
    pub csrf: String,
}

pub fn token_header(user: &str, password: &str) -> String {
    format!("Token {}", STANDARD.encode(format!("{user}:{password}")))
}

impl TestApp {
    pub async fn spawn(kind: Kind) -> TestApp {
        let db = TestDb::new(kind).await;
        let config = db.config();
        Self::spawn_on(db, config).await
    }

    pub async fn spawn_on(db: TestDb, config: Config) -> TestApp {
        let mut app = Self::spawn_with(config).await;
        app.db = Some(db);
        app
    }

    /// A server over an existing database (a second node, or a changed configuration).
    pub async fn spawn_with(config: Config) -> TestApp {
        let routes = TestRoutes {
            slow_started: Arc::new(Notify::new()),
            slow_release: Arc::new(Notify::new()),
        };
        let server =
            Server::build_with_routes(config, Some(ADMIN_PASSWORD.into()), test_routes(&routes))
                .await
                .expect("server starts");
        let addr = server.local_addr().expect("addr");
        let state = server.state();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server.run_until(async move {
            let _ = rx.await;
        }));
        TestApp {
            base: format!("http://{addr}"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            state,
            routes,
            shutdown: Some(tx),
            handle,
            db: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Stops the server and drops its database.
    pub async fn stop(mut self) {
        self.begin_shutdown();
        let _ = (&mut self.handle).await;
        if let Some(db) = self.db.take() {
            db.drop_db().await;
        }
    }

    pub async fn post_auth_raw(
        &self,
        header: Option<(&str, String)>,
        body: &str,
    ) -> reqwest::Response {
        let mut req = self
            .client
            .post(self.url("/v1/auth"))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some((name, value)) = header {
            req = req.header(name, value);
        }
        req.send().await.expect("request")
    }

    pub async fn login_response(&self, user: &str, password: &str) -> (u16, Value) {
        let r = self
            .post_auth_raw(Some(("Authorization", token_header(user, password))), "{}")
            .await;
        let status = r.status().as_u16();
        (status, r.json().await.expect("json body"))
    }

    pub async fn login(&self, user: &str, password: &str) -> Login {
        let (status, body) = self.login_response(user, password).await;
        assert_eq!(status, 200, "login of {user} failed: {body}");
        Login {
            jwt: body["jwt"].as_str().expect("jwt").to_string(),
            csrf: body["csrf"].as_str().expect("csrf").to_string(),
            body,
        }
    }

    pub async fn admin(&self) -> Login {
        self.login("admin", ADMIN_PASSWORD).await
    }

    /// `GET /v1/session` with this JWT and csrf.
    pub async fn session(&self, jwt: &str, csrf: &str) -> (u16, Value) {
        let r = self
            .client
            .get(self.url(&format!("/v1/session?csrf={csrf}")))
            .header("Authorization", format!("Bearer {jwt}"))
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.expect("json body"))
    }

    /// Creates an enabled user with a password.
    pub async fn create_user(&self, user: &str, password: &str) {
        let hash = self
            .state
            .engine
            .hasher
            .hash(password.into())
            .await
            .expect("hash");
        self.state
            .store
            .create_user(&store::NewUser {
                org_uid: "cloudio",
                user_name: user,
                display_name: Some(user),
                email_address: Some(&format!("{user}@example.com")),
                password_hash: &hash,
                created_by: "test",
            })
            .await
            .expect("create user");
    }
}

/// Asserts the platform's error envelope with this status.
pub fn assert_envelope(status: u16, body: &Value, expected: u16) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["code"], json!(expected), "{body}");
    assert_eq!(body["status"], "ERROR", "{body}");
    assert!(
        body["title"].is_string() && body["message"].is_string(),
        "{body}"
    );
}

// ---- Added for the query tests (`query*.rs`) ----

impl TestApp {
    /// `POST /v1/api?csrf=<csrf>` with `Authorization: Bearer <jwt>` and this raw body.
    pub async fn api_raw(&self, login: &Login, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(&format!("/v1/api?csrf={}", login.csrf)))
            .header("Authorization", format!("Bearer {}", login.jwt))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.expect("json body"))
    }

    /// `POST /v1/api` with a JSON body.
    pub async fn api(&self, login: &Login, body: &Value) -> (u16, Value) {
        self.api_raw(login, body.to_string()).await
    }

    /// [`TestApp::api`] in a task of its own, on its own connection, for requests that must
    /// overlap others.
    pub fn api_in_background(
        &self,
        login: &Login,
        body: Value,
    ) -> tokio::task::JoinHandle<(u16, Value)> {
        let (client, url, jwt) = (
            self.client.clone(),
            self.url(&format!("/v1/api?csrf={}", login.csrf)),
            login.jwt.clone(),
        );
        tokio::spawn(async move {
            let r = client
                .post(url)
                .header("Authorization", format!("Bearer {jwt}"))
                .json(&body)
                .send()
                .await
                .expect("request");
            let status = r.status().as_u16();
            (status, r.json().await.expect("json body"))
        })
    }

    /// The text of `GET /metrics`.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("text")
    }

    /// Runs SQL (one or more statements, no parameters) directly on an app's own database,
    /// behind the server's back: the SQLite file `<data_dir>/<app>.db`, or the PostgreSQL schema
    /// `<app>` (as the default schema). For test setup only.
    pub async fn app_sql(&self, app_uid: &str, sql: &str) {
        let db = self.db.as_ref().expect("a TestApp with its own TestDb");
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        match &db.url {
            Some(url) if db.kind == Kind::Mysql => {
                let mut conn = <sqlx::MySqlConnection as sqlx::Connection>::connect(url)
                    .await
                    .expect("connect to the test database");
                let name = db.name.as_deref().expect("a MySQL test database");
                sqlx::Executor::execute(
                    &mut conn,
                    "SET time_zone = '+00:00', sql_mode = 'ANSI_QUOTES,PIPES_AS_CONCAT,\
                     NO_BACKSLASH_ESCAPES,STRICT_ALL_TABLES'",
                )
                .await
                .expect("set the session");
                sqlx::Executor::execute(
                    &mut conn,
                    sqlx::AssertSqlSafe(format!("USE {name}_{}", app_uid.replace('-', "_"))),
                )
                .await
                .expect("use the app's database");
                sqlx::raw_sql(sql)
                    .execute(&mut conn)
                    .await
                    .expect("app sql");
            }
            Some(url) => {
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
                    .await
                    .expect("connect to the test database");
                sqlx::Executor::execute(
                    &mut conn,
                    sqlx::AssertSqlSafe(format!("SET search_path TO {app_uid}")),
                )
                .await
                .expect("set search_path");
                sqlx::raw_sql(sql)
                    .execute(&mut conn)
                    .await
                    .expect("app sql");
            }
            None => {
                let opts = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(db.dir.path().join(format!("{app_uid}.db")))
                    .busy_timeout(Duration::from_secs(10));
                let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&opts)
                    .await
                    .expect("open the app's SQLite file");
                sqlx::raw_sql(sql)
                    .execute(&mut conn)
                    .await
                    .expect("app sql");
            }
        }
    }
}

//! The real `cloudio` binary as a child process over a fresh database (a temporary SQLite
//! directory, or a new PostgreSQL database on the server named by `CLOUDIO_TEST_DATABASE_URL`),
//! with helpers to run subcommands, wait for log lines, send signals and make requests.

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

pub const ADMIN_PASSWORD: &str = "admin-password-1";

/// How long a start (PostgreSQL database, migrations, first-start hashing) may take on a busy
/// two-core machine. Only an upper bound: every wait polls and returns as soon as it can.
pub const START_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
    /// MariaDB/MySQL (`CLOUDIO_TEST_MYSQL_URL`, default root on 127.0.0.1:3306).
    Mysql,
}

/// Runs a test body against each database.
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

fn pg_admin_url() -> String {
    std::env::var("CLOUDIO_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh, empty database. The data directory is always a temporary one (it holds
/// `jwt.secret` even when the database is PostgreSQL); a PostgreSQL database is dropped when
/// this is dropped, also when the test failed.
pub struct TestDb {
    pub dir: tempfile::TempDir,
    pub url: Option<String>,
    name: Option<String>,
    kind: Kind,
}

fn mysql_admin_url() -> String {
    std::env::var("CLOUDIO_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
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
                // The server makes its database (and `<name>_<app>` per app) itself.
                let name = format!("cloudio_cli_test_{}", uuid::Uuid::new_v4().simple());
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
                let name = format!("cloudio_cli_test_{}", uuid::Uuid::new_v4().simple());
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

    /// `--data-dir DIR [--database-url URL]`: the flags every database-touching subcommand takes.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "--data-dir".to_string(),
            self.dir.path().display().to_string(),
        ];
        if let Some(url) = &self.url {
            a.push("--database-url".into());
            a.push(url.clone());
        }
        a
    }

    /// `cloudio <sub...> <db flags> <rest...>`, run to completion.
    pub async fn run(&self, sub: &[&str], rest: &[&str], stdin: Option<&str>) -> Run {
        self.run_with(sub, rest, &[], stdin).await
    }

    /// As [`TestDb::run`], with environment variables.
    pub async fn run_with(
        &self,
        sub: &[&str],
        rest: &[&str],
        envs: &[(&str, &str)],
        stdin: Option<&str>,
    ) -> Run {
        let mut args: Vec<String> = sub.iter().map(|s| s.to_string()).collect();
        args.extend(self.args());
        args.extend(rest.iter().map(|s| s.to_string()));
        run(self, &args, envs, stdin).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.name.take() else {
            return;
        };
        let kind = self.kind;
        // Drop runs inside the test's runtime, which cannot block on itself: a thread of its
        // own with a small runtime does the asynchronous work.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if kind == Kind::Mysql {
                    let Ok(mut conn) =
                        <sqlx::MySqlConnection as sqlx::Connection>::connect(&mysql_admin_url())
                            .await
                    else {
                        return;
                    };
                    let names: Vec<(String,)> = sqlx::query_as(
                        "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA \
                         WHERE SCHEMA_NAME = ? OR SCHEMA_NAME LIKE ?",
                    )
                    .bind(&name)
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

/// `cloudio` with a clean environment: no inherited `CLOUDIO_*` variables, a fixed log filter
/// (the `listening on` line must not depend on the caller's `RUST_LOG`), run inside the
/// temporary directory so nothing can land in the source tree, killed if the test fails.
pub fn command(db: &TestDb, args: &[String], envs: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cloudio"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CLOUDIO_") {
            c.env_remove(k);
        }
    }
    c.env("RUST_LOG", "info,sqlx=warn")
        .envs(envs.iter().copied())
        .args(args)
        .current_dir(db.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// A finished subcommand.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert!(self.status.success(), "expected success: {self:#?}");
        self
    }

    /// Fails with a non-zero exit and a message (on stderr) containing each of `words`.
    #[track_caller]
    pub fn fails_with(&self, words: &[&str]) {
        assert!(
            !self.status.success() && self.status.code().is_some(),
            "expected a non-zero exit: {self:#?}"
        );
        for w in words {
            assert!(
                self.stderr.contains(w),
                "stderr should name `{w}`: {self:#?}"
            );
        }
    }
}

pub async fn run(db: &TestDb, args: &[String], envs: &[(&str, &str)], stdin: Option<&str>) -> Run {
    let mut c = command(db, args, envs);
    if stdin.is_some() {
        c.stdin(Stdio::piped());
    }
    let mut child = c.spawn().expect("spawn cloudio");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).await.expect("write stdin");
        // Dropping the pipe closes it: the command reads to end of input.
    }
    let out = tokio::time::timeout(START_DEADLINE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("`cloudio {}` did not finish", args.join(" ")))
        .expect("wait for cloudio");
    Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Output of a running child, line by line, with a signal for every new line and for the end.
#[derive(Default)]
struct Lines {
    stdout: Mutex<Vec<String>>,
    stderr: Mutex<Vec<String>>,
}

/// A running `cloudio serve`.
pub struct Proc {
    child: Child,
    lines: Arc<Lines>,
    /// (lines seen so far on both streams, streams closed).
    progress: watch::Receiver<(usize, usize)>,
    pub addr: Option<SocketAddr>,
}

impl Proc {
    /// Spawns `cloudio serve <db flags> <extra>`; does not wait for it to listen.
    pub fn spawn(db: &TestDb, extra: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut args = vec!["serve".to_string()];
        args.extend(db.args());
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn_args(db, &args, envs)
    }

    pub fn spawn_args(db: &TestDb, args: &[String], envs: &[(&str, &str)]) -> Proc {
        let mut child = command(db, args, envs).spawn().expect("spawn cloudio");
        let lines = Arc::new(Lines::default());
        let (tx, progress) = watch::channel((0usize, 0usize));
        let tx = Arc::new(tx);
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        for (is_out, reader) in [
            (
                true,
                Box::new(out) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
            ),
            (false, Box::new(err)),
        ] {
            let lines = lines.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(reader).lines();
                while let Ok(Some(line)) = r.next_line().await {
                    let store = if is_out { &lines.stdout } else { &lines.stderr };
                    store.lock().expect("lines").push(line);
                    tx.send_modify(|p| p.0 += 1);
                }
                tx.send_modify(|p| p.1 += 1);
            });
        }
        Proc {
            child,
            lines,
            progress,
            addr: None,
        }
    }

    /// Starts a server and waits until it listens.
    pub async fn serve(db: &TestDb, extra: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut p = Self::spawn(db, extra, envs);
        p.wait_listening().await;
        p
    }

    pub fn stdout(&self) -> Vec<String> {
        self.lines.stdout.lock().expect("lines").clone()
    }

    /// Everything the process wrote so far, for failure messages.
    pub fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout().join("\n"),
            self.lines.stderr.lock().expect("lines").join("\n")
        )
    }

    /// Waits for a stdout line containing `needle`; panics at the deadline or at end of output.
    pub async fn wait_for_line(&mut self, needle: &str, deadline: Duration) -> String {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let (_, closed) = *self.progress.borrow_and_update();
            if let Some(l) = self.stdout().into_iter().find(|l| l.contains(needle)) {
                return l;
            }
            assert!(
                closed < 2,
                "cloudio ended without printing `{needle}`:\n{}",
                self.output()
            );
            if tokio::time::timeout_at(until, self.progress.changed())
                .await
                .is_err()
            {
                panic!("no `{needle}` within {deadline:?}:\n{}", self.output());
            }
        }
    }

    /// Waits for `listening on <addr>` and remembers the address.
    pub async fn wait_listening(&mut self) -> SocketAddr {
        let line = self.wait_for_line("listening on ", START_DEADLINE).await;
        let addr: SocketAddr = line
            .split_once("listening on ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in `{line}`"));
        self.addr = Some(addr);
        addr
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr.expect("listening"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    /// Sends a signal with the system's `kill` (no `libc` in the tests).
    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("still running");
        let st = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} {pid} failed");
    }

    /// Waits for the process to exit and for its output to be read to the end.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let until = tokio::time::Instant::now() + deadline;
        let status = match tokio::time::timeout_at(until, self.child.wait()).await {
            Ok(s) => s.expect("wait"),
            Err(_) => panic!(
                "cloudio still running after {deadline:?}:\n{}",
                self.output()
            ),
        };
        // The pipes close when the process is gone; a grandchild could hold them, so bounded.
        while self.progress.borrow_and_update().1 < 2 {
            if tokio::time::timeout_at(until, self.progress.changed())
                .await
                .is_err()
            {
                break;
            }
        }
        status
    }

    /// SIGTERM, then asserts a clean exit.
    pub async fn stop(mut self) {
        self.signal("TERM");
        let st = self.wait_exit(Duration::from_secs(10)).await;
        assert!(st.success(), "exit {st}:\n{}", self.output());
    }
}

/// A client that never hangs a test.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

pub fn token_header(user: &str, password: &str) -> String {
    format!("Token {}", STANDARD.encode(format!("{user}:{password}")))
}

/// `POST /v1/auth` as the documentation shows it.
pub async fn login(base: &str, user: &str, password: &str) -> (u16, Value) {
    let r = client()
        .post(format!("{base}/v1/auth"))
        .header("Authorization", token_header(user, password))
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json body"))
}

pub struct Login {
    pub jwt: String,
    pub csrf: String,
    pub body: Value,
}

#[track_caller]
pub fn logged_in(status: u16, body: Value) -> Login {
    assert_eq!(status, 200, "login failed: {body}");
    Login {
        jwt: body["jwt"].as_str().expect("jwt").to_string(),
        csrf: body["csrf"].as_str().expect("csrf").to_string(),
        body,
    }
}

/// `GET /v1/session?csrf=..` with `Authorization: Bearer <jwt>`.
pub async fn session(base: &str, l: &Login) -> (u16, Value) {
    let r = client()
        .get(format!("{base}/v1/session?csrf={}", l.csrf))
        .header("Authorization", format!("Bearer {}", l.jwt))
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json body"))
}

/// Polls `GET /v1/session` until it is a 401, within `deadline` (the spec's revocation bound is
/// one second; the rest is slack for a loaded machine).
pub async fn assert_session_ends(base: &str, l: &Login, deadline: Duration) {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let (status, body) = session(base, l).await;
        if status == 401 {
            assert_eq!(body["code"], 401, "{body}");
            assert_eq!(body["status"], "ERROR", "{body}");
            return;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            tokio::time::Instant::now() < until,
            "session still live after {deadline:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

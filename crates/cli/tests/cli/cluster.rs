//! Many nodes on one database (spec section 10, "Many nodes"): three `cloudio serve` processes
//! started at once on one fresh PostgreSQL or MariaDB database, each with a data directory of its own
//! (so nothing is shared through files), and every observable guarantee checked with a
//! deadline: sessions valid everywhere; logout, disable and password change effective
//! everywhere within 1 s; metadata (an `--app-dir` load on a fourth node, a patch through one
//! node) served everywhere within 1 s; login limits counted across nodes; one signing key.
//!
//! One more test pauses a private Redis around a logout: requests go on from the database, and
//! the session cached in Redis before the outage is not served after it.
//!
//! Each test runs on each database in each set-up: the database alone, with Redis, and with
//! Redis configured but unreachable (the guarantees hold from the database; status says
//! `"cache": "ERROR"`). MariaDB has no `NOTIFY`: without Redis the re-check bounds carry it.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::*;

/// The spec's bound for revocations and metadata changes to reach every node.
const BOUND: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    /// The database (PostgreSQL or MariaDB) and what else.
    /// PostgreSQL only: `NOTIFY` and the re-check bounds.
    Db,
    /// PostgreSQL and Redis (127.0.0.1:6379, or `CLOUDIO_TEST_REDIS_URL`), a key prefix per test.
    Redis,
    /// Redis configured on a port where nothing answers.
    RedisDown,
}

/// Runs a test body on each database in each set-up.
macro_rules! in_each_setup {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                ($body)(Kind::Postgres, Setup::Db).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres_with_redis() {
                ($body)(Kind::Postgres, Setup::Redis).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres_redis_down() {
                ($body)(Kind::Postgres, Setup::RedisDown).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mariadb() {
                ($body)(Kind::Mysql, Setup::Db).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mariadb_with_redis() {
                ($body)(Kind::Mysql, Setup::Redis).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mariadb_redis_down() {
                ($body)(Kind::Mysql, Setup::RedisDown).await
            }
        }
    };
}

fn redis_url() -> String {
    std::env::var("CLOUDIO_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A port on loopback where nothing listens (bound, then released).
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Nodes on one fresh PostgreSQL database.
pub struct Nodes {
    pub db: TestDb,
    pub nodes: Vec<Proc>,
    env: Vec<(String, String)>,
    next_dir: usize,
}

impl Nodes {
    /// Starts `n` nodes at once (none waits for another) and waits until all listen.
    pub async fn start(kind: Kind, setup: Setup, n: usize, extra: &[&str]) -> Nodes {
        let url = match setup {
            Setup::Db => None,
            Setup::Redis => Some(redis_url()),
            Setup::RedisDown => Some(format!("redis://127.0.0.1:{}", dead_port())),
        };
        Self::start_with_redis(kind, url, n, extra).await
    }

    /// As [`Nodes::start`], with Redis at `redis` (if any).
    pub async fn start_with_redis(
        kind: Kind,
        redis: Option<String>,
        n: usize,
        extra: &[&str],
    ) -> Nodes {
        let db = TestDb::new(kind).await;
        let mut env = vec![(
            "CLOUDIO_ADMIN_PASSWORD".to_string(),
            ADMIN_PASSWORD.to_string(),
        )];
        if let Some(url) = redis {
            env.push(("CLOUDIO_REDIS_URL".into(), url));
            // Runs of the suite, and tests of one run, never see each other's keys.
            let prefix = format!("cloudio-test-{}:", uuid::Uuid::new_v4().simple());
            env.push(("CLOUDIO_REDIS_PREFIX".into(), prefix));
        }
        let mut me = Nodes {
            db,
            nodes: Vec::new(),
            env,
            next_dir: 0,
        };
        let procs: Vec<Proc> = (0..n).map(|_| me.spawn(extra)).collect();
        for mut p in procs {
            p.wait_listening().await;
            me.nodes.push(p);
        }
        me
    }

    /// Spawns one more node (a data directory of its own); does not wait for it.
    pub fn spawn(&mut self, extra: &[&str]) -> Proc {
        let dir = self.db.dir.path().join(format!("node{}", self.next_dir));
        self.next_dir += 1;
        std::fs::create_dir_all(&dir).unwrap();
        let mut args = vec![
            "serve".to_string(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--database-url".into(),
            self.db.url.clone().unwrap(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Proc::spawn_args(&self.db, &args, &env)
    }

    pub fn base(&self, i: usize) -> String {
        self.nodes[i].base()
    }

    /// `cloudio <sub...>` on the shared database, with this set-up's environment.
    pub async fn cli(&self, sub: &[&str], rest: &[&str], stdin: Option<&str>) -> Run {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.db.run_with(sub, rest, &env, stdin).await
    }

    pub async fn create_user(&self, user: &str, password: &str) {
        self.cli(
            &["user", "create"],
            &["--user", user, "--password-stdin"],
            Some(password),
        )
        .await
        .ok();
    }

    pub async fn stop(self) {
        for p in self.nodes {
            p.stop().await;
        }
    }
}

/// `POST /v1/api` on `base` with a session.
async fn api(base: &str, l: &Login, body: &Value) -> (u16, Value) {
    let r = client()
        .post(format!("{base}/v1/api?csrf={}", l.csrf))
        .header("Authorization", format!("Bearer {}", l.jwt))
        .json(body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json body"))
}

/// Polls `check` until it holds; panics if it still does not after `deadline`. Returns how long
/// it took. The first check is immediate; later ones every 10 ms.
async fn within<F, Fut>(deadline: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < deadline,
            "{what}: still not true after {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every node in `nodes` answers `GET /v1/session` with `status` within the bound.
async fn sessions_become(n: &Nodes, on: &[usize], l: &Login, status: u16, what: &str) {
    for &i in on {
        let base = n.base(i);
        let took = within(BOUND, &format!("{what} on node {i}"), || async {
            session(&base, l).await.0 == status
        })
        .await;
        eprintln!("{what} on node {i}: {took:?}");
    }
}

in_each_setup!(
    three_nodes_start_at_once_and_share_sessions_and_the_signing_key,
    |kind, setup| async move {
        let n = Nodes::start(kind, setup, 3, &[]).await;
        let cache = match setup {
            Setup::Db => "DISABLED",
            Setup::Redis => "OK",
            Setup::RedisDown => "ERROR",
        };
        for i in 0..3 {
            let r = client()
                .get(format!("{}/v1/status", n.base(i)))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let b: Value = r.json().await.unwrap();
            assert_eq!(b["status"], "OK", "{b}");
            assert_eq!(b["database"], "OK", "{b}");
            assert_eq!(b["cache"], cache, "{b}");
        }
        // No node wrote a secret of its own beside its data: the key is the database's.
        for i in 0..3 {
            let dir = n.db.dir.path().join(format!("node{i}"));
            assert!(
                !dir.join("jwt.secret").exists(),
                "node {i} made its own key"
            );
        }
        // A session made on each node works on every node, for the API as for the session.
        for made_on in 0..3 {
            let (status, body) = login(&n.base(made_on), "admin", ADMIN_PASSWORD).await;
            let admin = logged_in(status, body);
            for i in 0..3 {
                let (s, b) = session(&n.base(i), &admin).await;
                assert_eq!(s, 200, "made on {made_on}, used on {i}: {b}");
                let (s, b) = api(
                    &n.base(i),
                    &admin,
                    &json!({"u": {"ds": "IoUsers", "query": {"limit": 1}}}),
                )
                .await;
                assert_eq!(s, 200, "made on {made_on}, used on {i}: {b}");
            }
        }
        // Exactly one admin, one platform app: the first start happened once.
        let (status, body) = login(&n.base(1), "admin", ADMIN_PASSWORD).await;
        let admin = logged_in(status, body);
        let (_, b) = api(
            &n.base(2),
            &admin,
            &json!({"u": {"ds": "IoUsers", "query": {"count": true}}}),
        )
        .await;
        assert_eq!(b["data"]["u"]["totalCount"], 1, "{b}");
        n.stop().await;
    }
);

in_each_setup!(
    logout_disable_and_password_change_end_sessions_on_every_node,
    |kind, setup| async move {
        let n = Nodes::start(kind, setup, 3, &[]).await;
        for u in ["alice", "bob", "carol", "dave"] {
            n.create_user(u, &format!("{u}-pw-1")).await;
        }
        let user = |u: &str| {
            let base = n.base(0);
            let u = u.to_string();
            async move {
                let (status, body) = login(&base, &u, &format!("{u}-pw-1")).await;
                logged_in(status, body)
            }
        };
        // Each session is first used on every node, so every node has it cached.
        let warm = |l: &Login| {
            let l = Login {
                jwt: l.jwt.clone(),
                csrf: l.csrf.clone(),
                body: Value::Null,
            };
            let n = &n;
            async move {
                for i in 0..3 {
                    let (s, b) = session(&n.base(i), &l).await;
                    assert_eq!(s, 200, "{b}");
                }
            }
        };

        // Logout on node 0.
        let alice = user("alice").await;
        warm(&alice).await;
        let r = client()
            .post(format!("{}/v1/logout?csrf={}", n.base(0), alice.csrf))
            .header("Authorization", format!("Bearer {}", alice.jwt))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        sessions_become(&n, &[1, 2], &alice, 401, "logout").await;

        // Disabled through the API on node 0 (IoUsers).
        let bob = user("bob").await;
        warm(&bob).await;
        let (status, body) = login(&n.base(0), "admin", ADMIN_PASSWORD).await;
        let admin = logged_in(status, body);
        let (s, b) = api(
            &n.base(0),
            &admin,
            &json!({"u": {"ds": "IoUsers", "query": {"filter": [{"userName": {"is": "bob"}}]}}}),
        )
        .await;
        assert_eq!(s, 200, "{b}");
        let row = b["data"]["u"]["data"][0].clone();
        let (s, b) = api(
            &n.base(0),
            &admin,
            &json!({"u": {"ds": "IoUsers", "data": [{"_rs": "U", "userId": row["userId"],
                "enabledFlag": "N", "lastUpdateDate": row["lastUpdateDate"]}]}}),
        )
        .await;
        assert_eq!(s, 200, "{b}");
        sessions_become(&n, &[1, 2], &bob, 401, "disable through the API").await;

        // Password changed by the CLI (a process outside the cluster).
        let carol = user("carol").await;
        warm(&carol).await;
        n.cli(
            &["user", "passwd"],
            &["--user", "carol", "--password-stdin"],
            Some("carol-pw-2"),
        )
        .await
        .ok();
        sessions_become(&n, &[0, 1, 2], &carol, 401, "password change by the CLI").await;

        // Disabled by the CLI.
        let dave = user("dave").await;
        warm(&dave).await;
        n.cli(&["user", "disable"], &["--user", "dave"], None)
            .await
            .ok();
        sessions_become(&n, &[0, 1, 2], &dave, 401, "disable by the CLI").await;
        n.stop().await;
    }
);

fn write_app(dir: &Path, datasources: &[&str]) {
    let files = [
        (
            "app.json",
            r#"{"appUid": "shop", "name": "Shop"}"#.to_string(),
        ),
        (
            "migrations/postgres/io_20260101000000_create_items.sql",
            "CREATE TABLE ITEMS (ITEM_ID INTEGER PRIMARY KEY, TITLE TEXT, \
             CREATED_BY TEXT, CREATION_DATE TIMESTAMPTZ, LAST_UPDATED_BY TEXT, \
             LAST_UPDATE_DATE TIMESTAMPTZ);\n\
             INSERT INTO ITEMS (ITEM_ID, TITLE) VALUES (1, 'apple');\n"
                .to_string(),
        ),
        (
            "migrations/mysql/io_20260101000000_create_items.sql",
            "CREATE TABLE ITEMS (ITEM_ID INTEGER PRIMARY KEY, TITLE TEXT, \
             CREATED_BY TEXT, CREATION_DATE DATETIME(6), LAST_UPDATED_BY TEXT, \
             LAST_UPDATE_DATE DATETIME(6));\n\
             INSERT INTO ITEMS (ITEM_ID, TITLE) VALUES (1, 'apple');\n"
                .to_string(),
        ),
    ];
    for (rel, text) in files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let mut grants = serde_json::Map::new();
    for ds in datasources {
        grants.insert(ds.to_string(), json!(["query"]));
        let def = json!({"name": ds, "table": "ITEMS", "primaryKey": ["itemId"],
            "attributes": [{"code": "itemId", "type": "Integer"},
                           {"code": "title", "type": "String"}]});
        let p = dir.join(format!("datasources/{ds}.json"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, def.to_string()).unwrap();
    }
    let roles = json!({"roles": [{"roleUid": "clerk", "grants": grants}]});
    std::fs::write(dir.join("roles.json"), roles.to_string()).unwrap();
}

/// Every node in `on` answers a query of `ds` with 200 within the bound.
async fn served_everywhere(n: &Nodes, on: &[usize], l: &Login, ds: &str, what: &str) {
    let body = json!({"q": {"ds": ds, "query": {}}});
    for &i in on {
        let base = n.base(i);
        let took = within(BOUND, &format!("{what}: `{ds}` on node {i}"), || async {
            api(&base, l, &body).await.0 == 200
        })
        .await;
        eprintln!("{what}: `{ds}` on node {i} after {took:?}");
    }
}

in_each_setup!(
    metadata_loaded_or_patched_on_one_node_is_served_by_every_node,
    |kind, setup| async move {
        let app = tempfile::tempdir().unwrap();
        write_app(app.path(), &["Items"]);
        let dir = app.path().display().to_string();
        // The same app loaded by three nodes starting at once.
        let mut n = Nodes::start(kind, setup, 3, &["--app-dir", &dir]).await;
        n.cli(
            &["role", "grant"],
            &["--user", "admin", "--app", "shop", "--role", "clerk"],
            None,
        )
        .await
        .ok();
        let (status, body) = login(&n.base(0), "admin", ADMIN_PASSWORD).await;
        let admin = logged_in(status, body);
        served_everywhere(&n, &[0, 1, 2], &admin, "Items", "role granted by the CLI").await;
        // A new version of the app, loaded by a fourth node at its start.
        write_app(app.path(), &["Items", "Goods"]);
        let mut fourth = n.spawn(&["--app-dir", &dir]);
        fourth.wait_listening().await;
        served_everywhere(
            &n,
            &[0, 1, 2],
            &admin,
            "Goods",
            "--app-dir on a fourth node",
        )
        .await;
        n.nodes.push(fourth);
        // A patch through node 0 (`cloudio patch`, i.e. POST /v1/apps/shop/patch).
        write_app(app.path(), &["Items", "Goods", "Wares"]);
        let zip = n.db.dir.path().join("shop.zip").display().to_string();
        run(
            &n.db,
            &[
                "create-patch",
                "-a",
                "shop",
                "--from-dir",
                &dir,
                "--file",
                &zip,
            ]
            .map(String::from),
            &[],
            None,
        )
        .await
        .ok();
        let base = n.base(0);
        let run = run(
            &n.db,
            &[
                "patch", "-a", "shop", "--file", &zip, "--server", &base, "--user", "admin",
            ]
            .map(String::from),
            &[("CLOUDIO_PASSWORD", ADMIN_PASSWORD)],
            None,
        )
        .await;
        run.ok();
        served_everywhere(&n, &[1, 2, 3], &admin, "Wares", "patch through node 0").await;
        n.stop().await;
    }
);

in_each_setup!(
    the_login_limit_counts_failures_on_every_node,
    |kind, setup| async move {
        let n = Nodes::start(kind, setup, 3, &[]).await;
        n.create_user("erin", "erin-pw-1").await;
        // Ten failures (the default limit), spread over the nodes.
        for k in 0..10 {
            let (s, b) = login(&n.base(k % 3), "erin", "wrong").await;
            assert_eq!(s, 403, "failure {k}: {b}");
        }
        // Refused everywhere now, even with the right password.
        for i in 0..3 {
            let (s, b) = login(&n.base(i), "erin", "erin-pw-1").await;
            assert_eq!(s, 429, "node {i}: {b}");
        }
        n.stop().await;
    }
);

/// A private `redis-server` on a free loopback port, so a test may pause it.
struct PrivateRedis {
    child: tokio::process::Child,
    port: u16,
}

impl PrivateRedis {
    async fn start() -> PrivateRedis {
        let port = dead_port();
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server (scripts/services.sh installs it)");
        let me = PrivateRedis { child, port };
        within(Duration::from_secs(10), "private Redis answers", || {
            me.answers()
        })
        .await;
        me
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn answers(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").await.is_ok()
            && tokio::time::timeout(Duration::from_millis(200), s.read_exact(&mut buf))
                .await
                .is_ok_and(|r| r.is_ok())
            && &buf == b"+PONG\r\n"
    }

    /// SIGSTOP/SIGCONT: Redis hangs (every call times out) with its keys intact, as in a
    /// network partition, then comes back with whatever it held.
    fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("redis running");
        let ok = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} {pid}");
    }
}

async fn cache_state(n: &Nodes, i: usize) -> String {
    let b: Value = client()
        .get(format!("{}/v1/status", n.base(i)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(b["status"], "OK", "{b}");
    assert_eq!(b["database"], "OK", "{b}");
    b["cache"].as_str().unwrap_or_default().to_string()
}

/// Redis hangs while sessions it caches are used and one of them is ended: requests go on from
/// the database, the logout reaches every node, status says `"cache": "ERROR"`; when Redis comes
/// back holding the ended session's entry, no node serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_keeps_requests_working_and_leaves_nothing_stale() {
    let redis = PrivateRedis::start().await;
    let n = Nodes::start_with_redis(Kind::Postgres, Some(redis.url()), 3, &[]).await;
    n.create_user("alice", "alice-pw-1").await;
    let (status, body) = login(&n.base(0), "alice", "alice-pw-1").await;
    let alice = logged_in(status, body);
    for i in 0..3 {
        assert_eq!(session(&n.base(i), &alice).await.0, 200);
        assert_eq!(cache_state(&n, i).await, "OK");
    }
    // Redis hangs, holding alice's cached session.
    redis.signal("STOP");
    for i in 0..3 {
        let base = i;
        within(
            Duration::from_secs(5),
            "status says the cache is down",
            || async { cache_state(&n, base).await == "ERROR" },
        )
        .await;
    }
    // Requests go on from the database: a new session, used on every node.
    let (status, body) = login(&n.base(1), "admin", ADMIN_PASSWORD).await;
    let admin = logged_in(status, body);
    for i in 0..3 {
        let (s, b) = session(&n.base(i), &admin).await;
        assert_eq!(s, 200, "node {i} during the outage: {b}");
    }
    // Alice logs out on node 0; no node can tell Redis.
    let r = client()
        .post(format!("{}/v1/logout?csrf={}", n.base(0), alice.csrf))
        .header("Authorization", format!("Bearer {}", alice.jwt))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    sessions_become(&n, &[0, 1, 2], &alice, 401, "logout during the outage").await;
    // Redis comes back with alice's entry: no node may serve it.
    redis.signal("CONT");
    for i in 0..3 {
        let base = i;
        within(
            Duration::from_secs(5),
            "status says the cache is back",
            || async { cache_state(&n, base).await == "OK" },
        )
        .await;
    }
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for i in 0..3 {
            assert_eq!(
                session(&n.base(i), &alice).await.0,
                401,
                "node {i} served a session ended during the outage"
            );
            let (s, b) = session(&n.base(i), &admin).await;
            assert_eq!(s, 200, "{b}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    n.stop().await;
}

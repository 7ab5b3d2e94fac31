//! Start-up: open the database, run the platform's migrations, create the first-start
//! objects, load the JWT secret, bind the listener. Built for tests: bind port 0 and ask for the
//! real address.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use axum::Router;
use store::{Db, DbTarget, NewUser, Store};
use tokio::net::TcpListener;

use crate::apps::{AppSource, load_app};
use crate::auth::guard::TokenCache;
use crate::auth::jwt::Keys;
use crate::auth::password::Hasher;
use crate::config::{Config, DatabaseUrl};
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::router;
use crate::state::{AppState, Inner};

pub const PLATFORM_ORG: &str = "cloudio";
pub use store::PLATFORM_APP;
pub const PLATFORM_ROLES: [(&str, &str); 3] = [
    ("administrator", "Administrator"),
    ("developer", "Developer"),
    ("patch_administrator", "Patch Administrator"),
];

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Config(Vec<String>),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("{0}")]
    Io(String),
    #[error("cannot load apps:\n  - {}", .0.join("\n  - "))]
    Apps(Vec<String>),
}

/// Opens the database named by the configuration and brings the platform's tables up to date.
pub async fn open_store(config: &Config) -> Result<Store, StartError> {
    let target = DbTarget::from_config(
        &config.data_dir,
        config.database_url.as_ref().map(DatabaseUrl::expose),
    )?;
    let db = Db::connect(&target, config.max_connections).await?;
    let dialect = db.dialect();
    store::migrate::run(
        &db,
        PLATFORM_APP,
        &store::migrate::platform_migrations(dialect),
    )
    .await?;
    Ok(Store::new(db))
}

/// First start: the platform org, app and roles, and an `admin` user holding every platform role
/// (`administrator`, `developer`, `patch_administrator`).
/// Returns the generated password when one was made (the caller prints it once).
pub async fn bootstrap(
    store: &Store,
    hasher: &Hasher,
    admin_password: Option<&str>,
) -> Result<Option<String>, StartError> {
    store
        .ensure_org_and_app(PLATFORM_ORG, PLATFORM_APP, "CloudIO Platform")
        .await?;
    for (uid, name) in PLATFORM_ROLES {
        store.ensure_role(PLATFORM_APP, uid, name).await?;
    }
    // The built-in app, with the extension stored by an earlier `--app-dir` (if any) kept.
    let platform = match store.stored_app(PLATFORM_APP).await? {
        Some(stored) if !stored.files.is_empty() || !stored.scripts.is_empty() => {
            let files = stored.files.into_iter().chain(stored.scripts).collect();
            AppSource::from_files(files, store.dialect())
                .and_then(AppSource::with_platform)
                .map_err(StartError::Apps)?
        }
        _ => AppSource::platform(),
    };
    load_app(store, PLATFORM_ORG, &platform)
        .await
        .map_err(StartError::Apps)?;
    if store.count_users().await? > 0 {
        return Ok(None);
    }
    let (password, generated) = match admin_password {
        Some(p) => (p.to_string(), false),
        None => (random_token(18)?, true),
    };
    let hash = hasher
        .hash(password.clone())
        .await
        .map_err(|e| StartError::Io(e.to_string()))?;
    let admin = NewUser {
        org_uid: PLATFORM_ORG,
        user_name: "admin",
        display_name: Some("Administrator"),
        email_address: None,
        password_hash: &hash,
        created_by: "system",
    };
    match store.create_user(&admin).await {
        Ok(_) => {}
        // Another node created it first.
        Err(store::StoreError::Duplicate(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    // The spec's first-start `admin` holds every platform role.
    for (role, _) in PLATFORM_ROLES {
        store
            .grant_role(PLATFORM_ORG, "admin", PLATFORM_APP, role, "system")
            .await?;
    }
    tracing::info!("first start: created org, app, roles and user `admin`");
    Ok(generated.then_some(password))
}

/// Loads the demo app (`--demo`, granting its role to `admin`) and every `--app-dir`, reporting
/// all problems at once. On SQLite the pool is reopened so new app databases are attached.
async fn load_apps(store: Store, config: &Config) -> Result<Store, StartError> {
    if !config.demo && config.app_dirs.is_empty() {
        return Ok(store);
    }
    let dialect = store.dialect();
    let mut problems = Vec::new();
    if config.demo {
        match load_app(&store, PLATFORM_ORG, &AppSource::demo(dialect)).await {
            Ok(app) => {
                store
                    .grant_role(PLATFORM_ORG, "admin", &app, "demo_user", "system")
                    .await?
            }
            Err(p) => problems.extend(p.into_iter().map(|p| format!("demo: {p}"))),
        }
    }
    for dir in &config.app_dirs {
        let loaded = match AppSource::read_dir(dir, dialect) {
            Ok(src) => match src.with_platform() {
                Ok(src) => load_app(&store, PLATFORM_ORG, &src).await,
                Err(p) => Err(p),
            },
            Err(p) => Err(p),
        };
        match loaded {
            Ok(app) => tracing::info!(app = %app, dir = %dir.display(), "app loaded"),
            Err(p) => problems.extend(p.into_iter().map(|p| format!("{}: {p}", dir.display()))),
        }
    }
    if !problems.is_empty() {
        return Err(StartError::Apps(problems));
    }
    Ok(Store::new(store.db.reopen(config.max_connections).await?))
}

/// `n` random bytes as URL-safe text.
pub fn random_token(n: usize) -> Result<String, StartError> {
    use base64::Engine;
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| StartError::Io(e.to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf))
}

/// The configured secret, else the one made on first start: kept in `data_dir/jwt.secret`
/// (mode 0600) on the embedded database, in the platform's tables on a server database, so
/// every node sharing it signs and verifies with the same key.
async fn jwt_secret(config: &Config, store: &Store) -> Result<String, StartError> {
    if let Some(s) = &config.jwt_secret {
        return Ok(s.expose().to_string());
    }
    if store.dialect() == query::Dialect::Sqlite {
        let path = config.data_dir.join("jwt.secret");
        return read_or_create_secret(&path);
    }
    let secret = store
        .shared_secret("jwt.secret", &random_token(48)?)
        .await?;
    if secret.len() < 32 {
        return Err(StartError::Io("the stored JWT secret is too short".into()));
    }
    Ok(secret)
}

fn read_or_create_secret(path: &Path) -> Result<String, StartError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: std::io::Error| StartError::Io(format!("{}: {e}", path.display()));
    if let Ok(s) = std::fs::read_to_string(path) {
        let s = s.trim().to_string();
        if s.len() >= 32 {
            return Ok(s);
        }
        return Err(StartError::Io(format!(
            "{}: secret too short",
            path.display()
        )));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let secret = random_token(48)?;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut f) => {
            f.write_all(secret.as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
            Ok(secret)
        }
        // Another process made it meanwhile.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_or_create_secret(path),
        Err(e) => Err(io(e)),
    }
}

/// A server ready to run.
pub struct Server {
    listener: TcpListener,
    app: Router,
    state: AppState,
    /// The generated first-start `admin` password, to be printed once.
    pub generated_admin_password: Option<String>,
}

impl Server {
    pub async fn build(
        config: Config,
        admin_password: Option<String>,
    ) -> Result<Server, StartError> {
        Self::build_with_routes(config, admin_password, router::routes()).await
    }

    /// As [`Server::build`], with a route table of the caller's (tests add routes).
    pub async fn build_with_routes(
        config: Config,
        admin_password: Option<String>,
        routes: axum::Router<AppState>,
    ) -> Result<Server, StartError> {
        config.validate().map_err(StartError::Config)?;
        let started = Instant::now();
        let store = open_store(&config).await?;
        let hasher = Hasher::new(&config).map_err(StartError::Io)?;
        // Nodes starting at once on one database take turns from here to the loaded apps.
        let start_lock = store.db.start_lock().await?;
        let generated_admin_password =
            bootstrap(&store, &hasher, admin_password.as_deref()).await?;
        let store = load_apps(store, &config).await?;
        start_lock.release().await;
        let engine = Engine::new(
            store.clone(),
            hasher,
            config.engine_settings(),
            config.scripts.workers,
        );
        engine.catalog.reload(&store).await?;
        let workflows = crate::workflow::Workflows::new(
            store.clone(),
            engine.clone(),
            config.workflow_settings(),
        );
        let secret = jwt_secret(&config, &store).await?;
        let previous: Vec<&[u8]> = config
            .jwt_previous_secrets
            .iter()
            .map(|s| s.expose().as_bytes())
            .collect();
        let keys = Keys::new(secret.as_bytes(), &previous);
        let tokens = TokenCache::new(
            config.token_cache_capacity,
            Duration::from_millis(config.token_recheck_millis),
            config.session_absolute(),
        );
        let cache = match &config.redis_url {
            Some(url) => Some(std::sync::Arc::new(
                crate::cache::Redis::new(url.expose(), &config.redis_prefix)
                    .map_err(|e| StartError::Config(vec![e]))?,
            )),
            None => None,
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| StartError::Io(format!("cannot listen on {}: {e}", config.listen)))?;
        let sso = crate::sso::Sso::new(&config.sso).map_err(|e| StartError::Config(vec![e]))?;
        let state = AppState::new(Inner {
            sso,
            store,
            config,
            keys,
            tokens,
            engine,
            metrics: Metrics::default(),
            started,
            patching: tokio::sync::Mutex::new(()),
            workflows,
            cluster: crate::cluster::Cluster::new(),
            cache,
        });
        state.engine.hasher.start_trimmer();
        let app = router::app(state.clone(), routes);
        Ok(Server {
            listener,
            app,
            state,
            generated_admin_password,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish (up to the grace
    /// period) and closes the pool.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let addr = self.listener.local_addr()?;
        tracing::info!("listening on {addr}");
        let state = self.state.clone();
        let purge = tokio::spawn(purge_sessions(state.clone()));
        let watch = tokio::spawn(watch_database(state.clone()));
        let host = match addr.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
            ip if ip.is_unspecified() => "[::1]".to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        state
            .workflows
            .set_callback_url(format!("http://{host}:{}", addr.port()));
        let workflows = state.workflows.spawn();
        let cluster = crate::cluster::spawn(&state);
        if !state.config.app_dirs.is_empty() || state.config.demo {
            // Nodes already running load what this one stored.
            crate::cluster::publish(&state, crate::cluster::Event::Metadata).await;
        }
        let grace = router::grace(&state);
        let shutdown = async move {
            shutdown.await;
            tracing::info!("shutting down: finishing in-flight requests");
        };
        let result = crate::conn::serve(
            self.listener,
            self.app,
            &state.config,
            state.metrics.conns.clone(),
            shutdown,
            grace,
        )
        .await;
        purge.abort();
        watch.abort();
        for task in workflows.into_iter().chain(cluster) {
            task.abort();
        }
        state.store.db.close().await;
        tracing::info!("stopped");
        result
    }
}

/// Checks the database every five seconds as `/v1/status` does, so that SQLite files deleted,
/// replaced or overwritten under the server are found (and writes refused, the reason logged)
/// even when nobody asks.
async fn watch_database(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        if state.store.db.failure().is_some() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), state.store.db.ping()).await;
    }
}

/// Deletes expired sessions every ten minutes.
async fn purge_sessions(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tick.tick().await;
        let now = chrono::Utc::now().timestamp_micros();
        let idle = i64::try_from(state.config.session_idle_secs).unwrap_or(1800) * 1_000_000;
        let absolute =
            i64::try_from(state.config.session_absolute_secs).unwrap_or(43_200) * 1_000_000;
        if let Err(e) = state.store.purge_sessions(now - idle, now - absolute).await {
            tracing::warn!(error = %e, "session purge failed");
        }
    }
}

/// A future that resolves on SIGTERM or SIGINT. The handlers are installed by this call, not
/// when the future is first polled, so a signal that arrives during start-up (say, right after a
/// supervisor saw `listening on`) still stops the server gracefully.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}

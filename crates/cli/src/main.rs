//! `cloudio`: the one binary. Serves the platform and administers its database.

use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use server::auth::password::Hasher;
use server::{Config, Secret, Server};
use store::NewUser;

mod patches;

/// jemalloc, for Rust and (unprefixed) for QuickJS and SQLite too: glibc's allocator spent
/// ~10% of a loaded server's CPU in `malloc_consolidate` and `_int_malloc`, and kept a burst's
/// memory for good. Its options (a background thread that purges freed pages while idle) are
/// built in through `.cargo/config.toml`.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "cloudio",
    version,
    about = "An open, self-hostable CloudIO Platform server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct DbArgs {
    /// Embedded database and secrets.
    #[arg(long, env = "CLOUDIO_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// sqlite://DIR or postgres://...; overrides --data-dir's database.
    // `--help` would print the variable's value, password included.
    #[arg(long, env = "CLOUDIO_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// TOML configuration file.
    #[arg(long, env = "CLOUDIO_CONFIG")]
    config: Option<PathBuf>,
    /// The user's org.
    #[arg(long, default_value = "cloudio")]
    org: String,
    /// Redis for many nodes (optional): redis://HOST:PORT[/DB].
    #[arg(long, env = "CLOUDIO_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// Prefix of every Redis key and channel (default `cloudio:`).
    #[arg(long, env = "CLOUDIO_REDIS_PREFIX")]
    redis_prefix: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        #[command(flatten)]
        db: DbArgs,
        /// Bind address; port 0 picks a free port.
        #[arg(long, env = "CLOUDIO_LISTEN")]
        listen: Option<SocketAddr>,
        /// Load (or update) the app in DIR at start (repeatable).
        #[arg(long = "app-dir")]
        app_dirs: Vec<PathBuf>,
        /// Also load the demo app.
        #[arg(long)]
        demo: bool,
    },
    /// Apply pending migrations and exit: the platform's, or one app's (from --app-dir, else
    /// the files stored for -a APP), reporting each file run or skipped.
    Migrate {
        #[command(flatten)]
        db: DbArgs,
        /// The app whose migrations to apply.
        #[arg(short = 'a', long = "app")]
        app: Option<String>,
        /// The app directory holding the migrations.
        #[arg(long = "app-dir")]
        app_dir: Option<PathBuf>,
    },
    /// Export an app as a zip (<APP>.zip, or --file), from a server or from a directory.
    CreatePatch {
        #[arg(short = 'a', long = "app")]
        app: String,
        /// Make the zip from this app directory instead of a server.
        #[arg(long)]
        from_dir: Option<PathBuf>,
        #[arg(long)]
        file: Option<PathBuf>,
        #[command(flatten)]
        remote: patches::Remote,
    },
    /// Show what a patch would change on a server; exit 1 if it would fail.
    VerifyPatch {
        #[arg(short = 'a', long = "app")]
        app: String,
        #[arg(long)]
        file: Option<PathBuf>,
        #[command(flatten)]
        remote: patches::Remote,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Apply a patch to a server: its new migrations and its metadata, in one step.
    Patch {
        #[arg(short = 'a', long = "app")]
        app: String,
        #[arg(long)]
        file: Option<PathBuf>,
        #[command(flatten)]
        remote: patches::Remote,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Grant or revoke roles.
    Role {
        #[command(subcommand)]
        command: RoleCommand,
    },
    /// Issue, list and revoke API keys (key + secret pairs for `/v1/auth`).
    Apikey {
        #[command(subcommand)]
        command: ApikeyCommand,
    },
    /// Ask a running server for its status.
    Status {
        /// Server address.
        #[arg(long, default_value = "127.0.0.1:3090")]
        server: String,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user (password from stdin with --password-stdin, else prompted).
    Create {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        user: String,
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change a user's password; ends the user's sessions.
    Passwd {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        user: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Disable a user; ends the user's sessions.
    Disable {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        user: String,
    },
    /// List the org's users.
    List {
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Subcommand)]
enum RoleCommand {
    Grant {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        user: String,
        #[arg(long)]
        app: String,
        #[arg(long)]
        role: String,
    },
    Revoke {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        user: String,
        #[arg(long)]
        app: String,
        #[arg(long)]
        role: String,
    },
}

#[derive(Subcommand)]
enum ApikeyCommand {
    /// Issue a key for a user; prints `{"apiKey": "...", "secret": "..."}` once (the secret is
    /// stored only as a hash).
    Create {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        user: String,
        #[arg(long)]
        description: Option<String>,
    },
    /// List the org's keys (never their secrets), one JSON object a line.
    List {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a key; the sessions made with it end.
    Revoke {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        key: String,
    },
}

/// Defaults, then the TOML file, then environment and flags.
fn config(db: &DbArgs) -> Result<Config> {
    let mut c = match &db.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Config::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => Config::default(),
    };
    if let Some(d) = &db.data_dir {
        c.data_dir = d.clone();
    }
    if let Some(u) = &db.database_url {
        c.database_url = Some(u.clone().into());
    }
    if let Some(u) = &db.redis_url {
        c.redis_url = Some(u.clone().into());
    }
    if let Some(p) = &db.redis_prefix {
        c.redis_prefix = p.clone();
    }
    if let Ok(s) = std::env::var("CLOUDIO_JWT_SECRET") {
        c.jwt_secret = Some(Secret::new(s));
    }
    if let Err(problems) = c.validate() {
        bail!("invalid configuration:\n  - {}", problems.join("\n  - "));
    }
    Ok(c)
}

fn read_password(from_stdin: bool) -> Result<String> {
    let mut line = String::new();
    if from_stdin {
        std::io::stdin().read_to_string(&mut line)?;
    } else {
        eprint!("password: ");
        std::io::stderr().flush()?;
        std::io::stdin().lock().read_line(&mut line)?;
    }
    let p = line.trim_end_matches(['\n', '\r']).to_string();
    if p.is_empty() {
        bail!("the password must not be empty");
    }
    Ok(p)
}

async fn admin_tools(db: &DbArgs) -> Result<(store::Store, Hasher)> {
    let c = config(db)?;
    let store = server::startup::open_store(&c).await?;
    let hasher = Hasher::new(&c).map_err(anyhow::Error::msg)?;
    // In turn with servers starting on the same database.
    let lock = store.db.start_lock().await?;
    let generated = server::startup::bootstrap(
        &store,
        &hasher,
        std::env::var("CLOUDIO_ADMIN_PASSWORD").ok().as_deref(),
    )
    .await?;
    lock.release().await;
    if let Some(p) = generated {
        // The first command on a new database made `admin`: show its password now, or it is
        // lost (a later `serve` finds `admin` present and prints nothing). On stderr, so that
        // the output of `user list` stays data.
        eprintln!("first start: user `admin` created with password: {p}");
    }
    Ok((store, hasher))
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(std::env::var("RUST_LOG").ok()))
        .with_writer(std::io::stdout)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    match Cli::parse().command {
        Command::Serve {
            db,
            listen,
            app_dirs,
            demo,
        } => {
            let shutdown =
                server::startup::shutdown_signal().context("installing signal handlers")?;
            let mut c = config(&db)?;
            if let Some(l) = listen {
                c.listen = l;
            }
            c.app_dirs = app_dirs;
            c.demo = demo;
            let server = Server::build(c, std::env::var("CLOUDIO_ADMIN_PASSWORD").ok()).await?;
            if let Some(p) = &server.generated_admin_password {
                // Printed once, never logged.
                println!("first start: user `admin` created with password: {p}");
            }
            server.run_until(shutdown).await?;
        }
        Command::Migrate { db, app, app_dir } => migrate(&db, app, app_dir).await?,
        Command::CreatePatch {
            app,
            from_dir,
            file,
            remote,
        } => patches::create(&app, from_dir.as_deref(), file, &remote).await?,
        Command::VerifyPatch {
            app,
            file,
            remote,
            json,
        } => {
            if !patches::verify(&app, file, &remote, json).await? {
                std::process::exit(1);
            }
        }
        Command::Patch {
            app,
            file,
            remote,
            json,
        } => patches::apply(&app, file, &remote, json).await?,
        Command::User { command } => match command {
            UserCommand::Create {
                db,
                user,
                display_name,
                email,
                password_stdin,
            } => {
                // Before asking for a password: such a name could never log in.
                store::check_user_name(&user)
                    .map_err(|e| anyhow::anyhow!("invalid user name {user:?}: {e}"))?;
                let (store, hasher) = admin_tools(&db).await?;
                let hash = hasher
                    .hash_blocking(&read_password(password_stdin)?)
                    .map_err(anyhow::Error::msg)?;
                store
                    .create_user(&NewUser {
                        org_uid: &db.org,
                        user_name: &user,
                        display_name: display_name.as_deref(),
                        email_address: email.as_deref(),
                        password_hash: &hash,
                        created_by: "cli",
                    })
                    .await
                    .map_err(|e| match e {
                        store::StoreError::Duplicate(_) => {
                            anyhow::anyhow!("user `{user}` already exists")
                        }
                        e => e.into(),
                    })?;
                println!("user `{user}` created");
            }
            UserCommand::Passwd {
                db,
                user,
                password_stdin,
            } => {
                let (store, hasher) = admin_tools(&db).await?;
                let hash = hasher
                    .hash_blocking(&read_password(password_stdin)?)
                    .map_err(anyhow::Error::msg)?;
                if !store.set_password(&db.org, &user, &hash, "cli").await? {
                    bail!("no user `{user}`");
                }
                tell_nodes(&db, &store, &db.org, &user).await;
                println!("password changed; sessions of `{user}` ended");
            }
            UserCommand::Disable { db, user } => {
                let (store, _) = admin_tools(&db).await?;
                if !store.set_enabled(&db.org, &user, false, "cli").await? {
                    bail!("no user `{user}`");
                }
                tell_nodes(&db, &store, &db.org, &user).await;
                println!("user `{user}` disabled; sessions ended");
            }
            UserCommand::List { db } => {
                let (store, _) = admin_tools(&db).await?;
                for u in store.list_users(&db.org).await? {
                    println!(
                        "{}\t{}\t{}\t{}",
                        u.user_name,
                        u.display_name.unwrap_or_default(),
                        u.email_address.unwrap_or_default(),
                        if u.enabled { "enabled" } else { "disabled" }
                    );
                }
            }
        },
        Command::Role { command } => match command {
            RoleCommand::Grant {
                db,
                user,
                app,
                role,
            } => {
                let (store, _) = admin_tools(&db).await?;
                // The roles table refers to roles, not to users: check the user here, or a
                // typo'd name would be granted silently.
                if store.find_user(&db.org, &user).await?.is_none() {
                    bail!("no user `{user}` in org `{}`", db.org);
                }
                store.grant_role(&db.org, &user, &app, &role, "cli").await?;
                tell_nodes(&db, &store, &db.org, &user).await;
                println!("granted `{role}` in `{app}` to `{user}`");
            }
            RoleCommand::Revoke {
                db,
                user,
                app,
                role,
            } => {
                let (store, _) = admin_tools(&db).await?;
                if !store.revoke_role(&db.org, &user, &app, &role).await? {
                    bail!("`{user}` does not hold `{role}` in `{app}`");
                }
                tell_nodes(&db, &store, &db.org, &user).await;
                println!("revoked `{role}` in `{app}` from `{user}`");
            }
        },
        Command::Apikey { command } => apikey(command).await?,
        Command::Status { server } => {
            let body = http_get(&server, "/v1/status").await?;
            println!("{body}");
        }
    }
    Ok(())
}

/// Tells running servers that a user's sessions or roles changed, so they drop cached tokens
/// at once (PostgreSQL `NOTIFY`; elsewhere, and if this fails, they re-check within a second).
async fn tell_nodes(db: &DbArgs, store: &store::Store, org: &str, user: &str) {
    let event = server::cluster::Event::User {
        org: org.to_string(),
        user: user.to_string(),
    };
    let payload = event.payload(server::cluster::CLI);
    if let Err(e) = store.notify_cluster(&payload).await {
        eprintln!(
            "warning: running servers were not notified ({e}); they re-check within a second"
        );
    }
    // With Redis, its cached sessions of the user go too (and its subscribers hear of it).
    if let Some(url) = &db.redis_url {
        let prefix = db.redis_prefix.as_deref().unwrap_or("cloudio:");
        match server::cache::Redis::new(url, prefix) {
            Ok(redis) => redis.invalidate_and_publish(&event, &payload).await,
            Err(e) => eprintln!("warning: {e}"),
        }
    }
}

/// `apikey create|list|revoke`, directly on the database.
async fn apikey(command: ApikeyCommand) -> Result<()> {
    match command {
        ApikeyCommand::Create {
            db,
            user,
            description,
        } => {
            let (store, _) = admin_tools(&db).await?;
            if store.find_user(&db.org, &user).await?.is_none() {
                bail!("no user `{user}` in org `{}`", db.org);
            }
            let key = server::auth::apikey::new_key();
            let (secret, hash) = server::auth::apikey::new_secret().map_err(anyhow::Error::msg)?;
            store
                .create_api_key(&store::NewApiKey {
                    org_uid: &db.org,
                    api_key: &key,
                    user_name: &user,
                    description: description.as_deref(),
                    secret_hash: &hash,
                    created_by: "cli",
                })
                .await?;
            println!("{}", serde_json::json!({"apiKey": key, "secret": secret}));
        }
        ApikeyCommand::List { db, user } => {
            let (store, _) = admin_tools(&db).await?;
            for k in store.list_api_keys(&db.org, user.as_deref()).await? {
                println!(
                    "{}",
                    serde_json::json!({
                        "apiKey": k.api_key,
                        "userName": k.user_name,
                        "description": k.description,
                        "revoked": k.revoked,
                        "createdBy": k.created_by,
                        "creationDate": k.creation_date,
                    })
                );
            }
        }
        ApikeyCommand::Revoke { db, key } => {
            let (store, _) = admin_tools(&db).await?;
            let user = store
                .list_api_keys(&db.org, None)
                .await?
                .into_iter()
                .find(|k| k.api_key == key)
                .map(|k| k.user_name);
            if !store.revoke_api_key(&db.org, &key, "cli").await? {
                bail!("no API key `{key}` in org `{}`", db.org);
            }
            // Running servers drop the key's cached sessions at once.
            if let Some(user) = user {
                tell_nodes(&db, &store, &db.org, &user).await;
            }
            println!("API key `{key}` revoked; its sessions ended");
        }
    }
    Ok(())
}

/// `migrate`: the platform's pending migrations, or one app's, each file reported.
async fn migrate(db: &DbArgs, app: Option<String>, app_dir: Option<PathBuf>) -> Result<()> {
    let c = config(db)?;
    let target = store::DbTarget::from_config(
        &c.data_dir,
        c.database_url.as_ref().map(server::DatabaseUrl::expose),
    )?;
    let conn = store::Db::connect(&target, 2).await?;
    let dialect = conn.dialect();
    let platform = store::migrate::platform_migrations(dialect);
    let report = store::migrate::run(&conn, store::PLATFORM_APP, &platform).await?;
    conn.close().await;
    let (app_uid, migrations) = match (app, app_dir) {
        (None, None) => {
            print_report(store::PLATFORM_APP, &report);
            admin_tools(db).await?;
            println!("migrations applied");
            return Ok(());
        }
        (app, Some(dir)) => {
            let src = server::apps::AppSource::read_dir(&dir, dialect)
                .map_err(|p| anyhow::anyhow!("{}:\n  - {}", dir.display(), p.join("\n  - ")))?;
            let declared: serde_json::Value = serde_json::from_str(&src.app_json)
                .with_context(|| format!("{}: app.json", dir.display()))?;
            let uid = declared["appUid"].as_str().unwrap_or_default().to_string();
            if let Some(a) = app.filter(|a| *a != uid) {
                bail!(
                    "{}: app.json declares appUid `{uid}`, not `{a}`",
                    dir.display()
                );
            }
            (uid, src.migrations)
        }
        (Some(app), None) => {
            let (store, _) = admin_tools(db).await?;
            let Some(stored) = store.stored_app(&app).await? else {
                bail!("no app `{app}` on this database; give --app-dir DIR");
            };
            let files = stored.files.into_iter().chain(stored.scripts).collect();
            let src = server::apps::AppSource::from_files(files, dialect)
                .map_err(|p| anyhow::anyhow!("app `{app}`:\n  - {}", p.join("\n  - ")))?;
            (app, src.migrations)
        }
    };
    let (store, _) = admin_tools(db).await?;
    let report = store::migrate::run(&store.db, &app_uid, &migrations).await;
    store.db.close().await;
    print_report(&app_uid, &report?);
    println!("migrations applied");
    Ok(())
}

/// One line per file: applied, skipped, and a warning for a file changed after it was applied.
fn print_report(app: &str, report: &store::migrate::Report) {
    for name in &report.applied {
        println!("applied  {app}: {name}");
    }
    for name in &report.skipped {
        println!("skipped  {app}: {name} (applied before)");
    }
    for (name, recorded, now) in &report.changed {
        println!(
            "warning: {app}: {name} changed since it was applied (recorded checksum {recorded}, now {now}); the change is ignored"
        );
    }
    println!(
        "{app}: {} applied, {} skipped",
        report.applied.len(),
        report.skipped.len()
    );
}

/// A minimal HTTP/1.1 GET, enough for `status` without an HTTP client dependency.
async fn http_get(addr: &str, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{}\n{body}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}

/// `RUST_LOG`, else `info,sqlx=warn`. Scripts wait for the `listening on` line (spec section 8),
/// so start-up's own lines stay on unless `RUST_LOG` names `server::startup` itself.
fn log_filter(rust_log: Option<String>) -> tracing_subscriber::EnvFilter {
    let default = || tracing_subscriber::EnvFilter::new("info,sqlx=warn");
    match rust_log {
        Some(v) if !v.trim().is_empty() => {
            let v = if v.contains("server::startup") {
                v
            } else {
                format!("{v},server::startup=info")
            };
            tracing_subscriber::EnvFilter::try_new(v).unwrap_or_else(|_| default())
        }
        _ => default(),
    }
}

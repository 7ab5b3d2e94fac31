//! Typed configuration: defaults, then a TOML file, then `CLOUDIO_*` environment variables and
//! flags (applied by the binary). Validated once; tests build it in code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// A secret that never prints.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A database URL whose `Debug` hides the password (`postgres://user:***@host/db`).
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for DatabaseUrl {
    fn from(s: String) -> Self {
        DatabaseUrl(s)
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&store::redact_url(&self.0), f)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: Option<DatabaseUrl>,
    pub max_connections: u32,
    /// Requests handled at once; further requests wait in arrival order (their connections stay
    /// open). Bounds the memory of a burst: a waiting request holds its head, not a handler.
    pub max_inflight_requests: usize,
    /// The org used when `/v1/auth` names none.
    pub default_org: String,
    /// Largest accepted request body.
    pub body_limit_bytes: usize,
    pub session_idle_secs: u64,
    pub session_absolute_secs: u64,
    /// HS256 secret; when absent, generated at first start and kept in `data_dir/jwt.secret`.
    pub jwt_secret: Option<Secret>,
    /// Earlier secrets, still accepted for verification after a rotation.
    pub jwt_previous_secrets: Vec<Secret>,
    pub login_max_failures: i64,
    pub login_window_secs: u64,
    /// Guard cache: how many validated tokens are kept, and how long a validation is trusted
    /// before the session is re-read (bounds revocation delay across nodes).
    pub token_cache_capacity: u64,
    pub token_recheck_millis: u64,
    /// Argon2id cost for new password hashes (OWASP minimum: 19 MiB, 2 passes, 1 lane).
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    pub shutdown_grace_secs: u64,
    /// `limit` when a query gives none, the largest accepted, and the deepest filter nesting.
    pub query_default_limit: u64,
    pub query_max_limit: u64,
    pub query_max_depth: usize,
    /// Client connections open at once; `None` (the default): as many as the descriptor limit
    /// (`ulimit -n`) leaves room for, keeping an eighth of it (at least 256) for the database.
    /// A configured value above that is lowered, with a warning.
    pub max_client_connections: Option<usize>,
    /// Client connections open at once from one IP address.
    pub max_connections_per_address: usize,
    /// A request head must arrive whole within this many seconds of its first byte; otherwise
    /// the connection is closed.
    pub header_read_timeout_secs: u64,
    /// A connection with no request begun for this many seconds (after opening or after its
    /// previous response) is closed.
    pub keep_alive_timeout_secs: u64,
    /// A response that makes no progress for this many seconds (the client does not read)
    /// closes the connection.
    pub write_timeout_secs: u64,
    /// A request's body must arrive whole within this many seconds of its head (408 otherwise).
    pub body_read_timeout_secs: u64,
    /// App directories loaded at start (`--app-dir`).
    pub app_dirs: Vec<PathBuf>,
    /// Also load the built-in demo app (`--demo`).
    pub demo: bool,
    /// Server-side scripts (`[scripts]`).
    pub scripts: ScriptsConfig,
    /// Rows one `/v1/api` request may ask for across its query aliases (sum of their limits).
    pub request_max_rows: u64,
    /// Bytes (about) one request's answer may hold across its aliases.
    pub request_max_bytes: usize,
    /// `/v1/api` and function requests of one user handled at once (0: half the pool's
    /// connections, at least 1); more wait in line, so one user cannot take every connection.
    pub user_max_inflight: usize,
    /// The workflow engine (`[workflows]`).
    pub workflows: WorkflowsConfig,
    /// Redis for many nodes (`--redis-url`), optional: invalidations by pub/sub, the shared
    /// session cache, login lockouts. Without it the database does all of that.
    pub redis_url: Option<DatabaseUrl>,
    /// Prefix of every Redis key and channel, so several clusters (or test runs) can share one
    /// Redis.
    pub redis_prefix: String,
    /// Single sign-on (`[[sso.oidc]]`, `[[sso.saml]]`).
    pub sso: SsoConfig,
}

/// `[sso]`: the identity providers users may sign in through.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SsoConfig {
    pub oidc: Vec<OidcConfig>,
    pub saml: Vec<SamlConfig>,
}

/// One `[[sso.oidc]]` provider: OpenID Connect by issuer URL (discovery document, JWKS).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The `<provider>` path segment.
    pub provider: String,
    /// The issuer URL; for `provider = "google"` it may be left out (Google's).
    pub issuer: Option<String>,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    /// The environment variable holding the client secret, instead of `client_secret`.
    pub client_secret_env: Option<String>,
    pub redirect_uri: String,
    /// Where the browser lands with `?sso_code=`.
    pub app_url: String,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The ID token claim holding the user name.
    #[serde(default = "email")]
    pub user_claim: String,
    #[serde(default = "name")]
    pub display_name_attribute: String,
    #[serde(default = "email")]
    pub email_attribute: String,
    /// The org users sign in to (default: `default_org`).
    pub org_uid: Option<String>,
}

/// One `[[sso.saml]]` provider: a SAML 2.0 IdP, this server its service provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamlConfig {
    pub provider: String,
    /// The IdP's metadata XML; or `idp_sso_url` and `idp_certificate_file`.
    pub idp_metadata_file: Option<PathBuf>,
    pub idp_sso_url: Option<String>,
    pub idp_certificate_file: Option<PathBuf>,
    pub sp_entity_id: String,
    pub acs_url: String,
    /// The attribute holding the user name (unset: the `NameID`).
    pub name_attribute: Option<String>,
    pub email_attribute: Option<String>,
    pub display_name_attribute: Option<String>,
    pub app_url: String,
    pub org_uid: Option<String>,
}

/// The Google preset's issuer.
pub const GOOGLE_ISSUER: &str = "https://accounts.google.com";

fn default_scopes() -> Vec<String> {
    ["openid", "email", "profile"].map(String::from).to_vec()
}
fn email() -> String {
    "email".into()
}
fn name() -> String {
    "name".into()
}

impl OidcConfig {
    pub fn issuer(&self) -> &str {
        match &self.issuer {
            Some(i) => i,
            None => GOOGLE_ISSUER,
        }
    }

    /// The client secret, from the file or from the environment variable it names.
    pub fn client_secret(&self) -> Result<Secret, String> {
        match (&self.client_secret, &self.client_secret_env) {
            (Some(s), None) => Ok(s.clone()),
            (None, Some(var)) => std::env::var(var).map(Secret::new).map_err(|_| {
                format!(
                    "[[sso.oidc]] `{}`: client_secret_env names `{var}`, which is not set",
                    self.provider
                )
            }),
            _ => Err(format!(
                "[[sso.oidc]] `{}`: give exactly one of client_secret and client_secret_env",
                self.provider
            )),
        }
    }
}

/// Whether a URL may be used for SSO: https, or http to a loopback address (tests, a local IdP).
pub fn sso_url_allowed(url: &str) -> bool {
    if url.starts_with("https://") {
        return url.len() > "https://".len();
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl SsoConfig {
    fn problems(&self, problems: &mut Vec<String>) {
        let mut seen = std::collections::HashSet::new();
        let ok_name = |p: &str| {
            !p.is_empty()
                && p.len() <= 64
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        for o in &self.oidc {
            let p = &o.provider;
            if !ok_name(p) || !seen.insert(("oidc", p.clone())) {
                problems.push(format!(
                    "[[sso.oidc]] provider {p:?}: must be unique, 1-64 of [A-Za-z0-9_-]"
                ));
            }
            if o.issuer.is_none() && p != "google" {
                problems.push(format!("[[sso.oidc]] `{p}`: issuer is required"));
            }
            for (what, url) in [
                ("issuer", o.issuer()),
                ("redirect_uri", &o.redirect_uri),
                ("app_url", &o.app_url),
            ] {
                if !sso_url_allowed(url) {
                    problems.push(format!(
                        "[[sso.oidc]] `{p}`: {what} must be https (http only on a loopback address)"
                    ));
                }
            }
            if o.client_id.is_empty() {
                problems.push(format!("[[sso.oidc]] `{p}`: client_id is required"));
            }
            if let Err(e) = o.client_secret() {
                problems.push(e);
            }
            if !o.scopes.iter().any(|s| s == "openid") {
                problems.push(format!(
                    "[[sso.oidc]] `{p}`: scopes must include \"openid\""
                ));
            }
        }
        for s in &self.saml {
            let p = &s.provider;
            if !ok_name(p) || !seen.insert(("saml", p.clone())) {
                problems.push(format!(
                    "[[sso.saml]] provider {p:?}: must be unique, 1-64 of [A-Za-z0-9_-]"
                ));
            }
            for (what, url) in [("acs_url", &s.acs_url), ("app_url", &s.app_url)] {
                if !sso_url_allowed(url) {
                    problems.push(format!(
                        "[[sso.saml]] `{p}`: {what} must be https (http only on a loopback address)"
                    ));
                }
            }
            let by_url = s.idp_sso_url.is_some() && s.idp_certificate_file.is_some();
            if s.idp_metadata_file.is_some() == by_url {
                problems.push(format!(
                    "[[sso.saml]] `{p}`: give idp_metadata_file, or idp_sso_url and idp_certificate_file"
                ));
            }
            if let Some(url) = &s.idp_sso_url
                && !sso_url_allowed(url)
            {
                problems.push(format!(
                    "[[sso.saml]] `{p}`: idp_sso_url must be https (http only on a loopback address)"
                ));
            }
        }
    }
}

/// `[workflows]`: the engine's lease, polling, concurrency and retention.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkflowsConfig {
    /// How long a claimed execution is held without a renewal (renewed every third of it).
    pub lease_ms: u64,
    /// How often an idle server looks at the queue when nothing woke it.
    pub poll_ms: u64,
    /// Executions one server runs at once (0: none; the server only starts instances and
    /// answers callbacks, other servers on the same database run them).
    pub concurrency: usize,
    /// Days completed, failed and cancelled instances are kept.
    pub keep_finished_days: u64,
}

impl Default for WorkflowsConfig {
    fn default() -> Self {
        WorkflowsConfig {
            lease_ms: 30_000,
            poll_ms: 1_000,
            concurrency: 64,
            keep_finished_days: 7,
        }
    }
}

/// `[scripts]`: the sandbox's pool and the limits of each execution.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScriptsConfig {
    /// Executions at once (default: one per core); a request that finds every worker busy
    /// waits up to its own wall-clock limit, then gets 503.
    pub workers: usize,
    pub hook_timeout_ms: u64,
    pub function_timeout_ms: u64,
    pub memory_limit_mib: usize,
    pub stack_limit_kib: usize,
    pub max_db_calls: u32,
    /// Hosts (`name` or `name:port`) that `db.fetch` may reach; empty: every fetch refused.
    pub fetch_allow: Vec<String>,
    pub fetch_timeout_ms: u64,
    pub fetch_max_bytes: usize,
    /// `[scripts.apps.<appUid>]`: limits of one app's scripts, over the values above.
    pub apps: std::collections::BTreeMap<String, AppScriptLimits>,
}

/// Per-app overrides of the script limits; unset keys keep the `[scripts]` value.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppScriptLimits {
    pub hook_timeout_ms: Option<u64>,
    pub function_timeout_ms: Option<u64>,
    pub memory_limit_mib: Option<usize>,
    pub stack_limit_kib: Option<usize>,
    pub max_db_calls: Option<u32>,
}

impl Default for ScriptsConfig {
    fn default() -> Self {
        ScriptsConfig {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            hook_timeout_ms: 1_000,
            function_timeout_ms: 30_000,
            memory_limit_mib: 64,
            stack_limit_kib: 512,
            max_db_calls: 100,
            fetch_allow: Vec::new(),
            fetch_timeout_ms: 10_000,
            fetch_max_bytes: 10 << 20,
            apps: Default::default(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 3090)),
            data_dir: PathBuf::from("cloudio-data"),
            database_url: None,
            max_connections: 16,
            max_inflight_requests: 128,
            default_org: "cloudio".into(),
            body_limit_bytes: 10 * 1024 * 1024,
            session_idle_secs: 30 * 60,
            session_absolute_secs: 12 * 3600,
            jwt_secret: None,
            jwt_previous_secrets: Vec::new(),
            login_max_failures: 10,
            login_window_secs: 300,
            token_cache_capacity: 100_000,
            token_recheck_millis: 1000,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            shutdown_grace_secs: 30,
            query_default_limit: 100,
            query_max_limit: 10_000,
            query_max_depth: 32,
            max_client_connections: None,
            max_connections_per_address: 1024,
            header_read_timeout_secs: 10,
            keep_alive_timeout_secs: 30,
            write_timeout_secs: 30,
            body_read_timeout_secs: 30,
            app_dirs: Vec::new(),
            demo: false,
            scripts: ScriptsConfig::default(),
            request_max_rows: 20_000,
            request_max_bytes: 32 << 20,
            user_max_inflight: 0,
            workflows: WorkflowsConfig::default(),
            redis_url: None,
            redis_prefix: "cloudio:".into(),
            sso: SsoConfig::default(),
        }
    }
}

impl Config {
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Reports every problem at once.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.body_limit_bytes < 1024 {
            problems.push("body_limit_bytes must be at least 1024".into());
        }
        if self.session_idle_secs == 0 || self.session_absolute_secs == 0 {
            problems.push("session timeouts must be positive".into());
        }
        if self.session_idle_secs > self.session_absolute_secs {
            problems.push("session_idle_secs must not exceed session_absolute_secs".into());
        }
        if let Some(s) = &self.jwt_secret
            && s.expose().len() < 32
        {
            problems.push("jwt_secret must be at least 32 characters".into());
        }
        if self.argon2_memory_kib < 19 * 1024 || self.argon2_iterations < 2 {
            problems.push("argon2 cost below OWASP's minimum (19 MiB, 2 iterations)".into());
        }
        if self.login_max_failures < 1 {
            problems.push("login_max_failures must be at least 1".into());
        }
        if self.query_default_limit > self.query_max_limit {
            problems.push("query_default_limit must not exceed query_max_limit".into());
        }
        if self.max_connections == 0 {
            problems.push("max_connections must be at least 1".into());
        }
        let s = &self.scripts;
        if s.workers == 0 || s.hook_timeout_ms == 0 || s.function_timeout_ms == 0 {
            problems.push("[scripts] workers and timeouts must be positive".into());
        }
        if s.memory_limit_mib < 4 || s.stack_limit_kib < 64 {
            problems.push(
                "[scripts] memory_limit_mib must be at least 4 and stack_limit_kib at least 64"
                    .into(),
            );
        }
        for (app, o) in &s.apps {
            if o.hook_timeout_ms == Some(0)
                || o.function_timeout_ms == Some(0)
                || o.memory_limit_mib.is_some_and(|m| m < 4)
                || o.stack_limit_kib.is_some_and(|k| k < 64)
            {
                problems.push(format!(
                    "[scripts.apps.{app}]: timeouts must be positive, memory_limit_mib at least 4, stack_limit_kib at least 64"
                ));
            }
        }
        if self.request_max_rows < self.query_max_limit {
            problems.push("request_max_rows must be at least query_max_limit".into());
        }
        if self.max_inflight_requests == 0 {
            problems.push("max_inflight_requests must be at least 1".into());
        }
        if self.max_client_connections == Some(0) || self.max_connections_per_address == 0 {
            problems.push(
                "max_client_connections and max_connections_per_address must be at least 1".into(),
            );
        }
        if [
            self.header_read_timeout_secs,
            self.keep_alive_timeout_secs,
            self.body_read_timeout_secs,
            self.write_timeout_secs,
        ]
        .contains(&0)
        {
            problems.push(
                "header_read_timeout_secs, keep_alive_timeout_secs, body_read_timeout_secs and \
                 write_timeout_secs must be at least 1"
                    .into(),
            );
        }
        self.sso.problems(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The engine's part of the configuration.
    pub fn engine_settings(&self) -> crate::engine::Settings {
        let s = &self.scripts;
        let limits = |o: &AppScriptLimits| {
            let hook = script::Limits {
                wall: Duration::from_millis(o.hook_timeout_ms.unwrap_or(s.hook_timeout_ms)),
                memory_bytes: o.memory_limit_mib.unwrap_or(s.memory_limit_mib) << 20,
                stack_bytes: o.stack_limit_kib.unwrap_or(s.stack_limit_kib) << 10,
                max_host_calls: o.max_db_calls.unwrap_or(s.max_db_calls),
            };
            let function = script::Limits {
                wall: Duration::from_millis(o.function_timeout_ms.unwrap_or(s.function_timeout_ms)),
                ..hook
            };
            (hook, function)
        };
        let (hook, function) = limits(&AppScriptLimits::default());
        crate::engine::Settings {
            default_limit: self.query_default_limit,
            max_limit: self.query_max_limit,
            max_depth: self.query_max_depth,
            hook_limits: hook,
            function_limits: function,
            app_limits: s
                .apps
                .iter()
                .map(|(app, o)| (app.clone(), limits(o)))
                .collect(),
            request_max_rows: self.request_max_rows,
            request_max_bytes: self.request_max_bytes,
            user_max_inflight: if self.user_max_inflight == 0 {
                (self.max_connections as usize / 2).max(1)
            } else {
                self.user_max_inflight
            },
            fetch_allow: s.fetch_allow.clone(),
            fetch_timeout: Duration::from_millis(s.fetch_timeout_ms),
            fetch_max_bytes: s.fetch_max_bytes,
        }
    }

    /// The workflow engine's part of the configuration.
    pub fn workflow_settings(&self) -> crate::workflow::WfSettings {
        let w = &self.workflows;
        crate::workflow::WfSettings {
            lease: Duration::from_millis(w.lease_ms.max(100)),
            poll: Duration::from_millis(w.poll_ms.max(10)),
            concurrency: w.concurrency,
            keep_finished: Duration::from_secs(w.keep_finished_days.saturating_mul(24 * 3600)),
        }
    }

    pub fn session_idle(&self) -> Duration {
        Duration::from_secs(self.session_idle_secs)
    }
    pub fn session_absolute(&self) -> Duration {
        Duration::from_secs(self.session_absolute_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let c = Config {
            jwt_secret: Some(Secret::new("x".repeat(40))),
            ..Config::default()
        };
        assert!(!format!("{c:?}").contains("xxxx"));
    }

    #[test]
    fn database_passwords_do_not_print() {
        for url in [
            "postgres://app:hunter2@db.example:5432/cloudio",
            "postgres://app@db.example/cloudio?sslmode=require&password=hunter2",
        ] {
            let c = Config {
                database_url: Some(url.to_string().into()),
                ..Config::default()
            };
            let shown = format!("{c:?}");
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("db.example"), "{shown}");
            let target = store::DbTarget::from_config(&c.data_dir, Some(url)).unwrap();
            assert!(!format!("{target:?}").contains("hunter2"));
        }
    }

    #[test]
    fn validation_reports_every_problem() {
        let c = Config {
            body_limit_bytes: 1,
            max_connections: 0,
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().len(), 2);
    }

    #[test]
    fn connection_limits_are_read_from_the_file() {
        let c = Config::from_toml(
            "max_client_connections = 500\nmax_connections_per_address = 20\n\
             header_read_timeout_secs = 5\nkeep_alive_timeout_secs = 60\n\
             body_read_timeout_secs = 40\nwrite_timeout_secs = 50",
        )
        .unwrap();
        assert_eq!(c.max_client_connections, Some(500));
        assert_eq!(c.max_connections_per_address, 20);
        assert_eq!(
            (c.header_read_timeout_secs, c.keep_alive_timeout_secs),
            (5, 60)
        );
        assert_eq!((c.body_read_timeout_secs, c.write_timeout_secs), (40, 50));
        assert_eq!(Config::default().max_client_connections, None);
        let zero = Config {
            keep_alive_timeout_secs: 0,
            max_connections_per_address: 0,
            ..Config::default()
        };
        assert_eq!(zero.validate().unwrap_err().len(), 2);
    }

    #[test]
    fn sso_providers_are_read_as_the_spec_shows_them() {
        let c = Config::from_toml(
            r#"
[[sso.oidc]]
provider = "google"
issuer = "https://accounts.google.com"
client_id = "id-1"
client_secret = "very-secret-value"
redirect_uri = "http://127.0.0.1:3090/v1/sso/oidc/google/callback"
app_url = "http://127.0.0.1:3090/"
scopes = ["openid", "email", "profile"]
user_claim = "email"
org_uid = "cloudio"

[[sso.saml]]
provider = "okta"
idp_metadata_file = "/etc/cloudio/okta.xml"
sp_entity_id = "http://127.0.0.1:3090/v1/sso/saml/okta/metadata"
acs_url = "http://127.0.0.1:3090/v1/sso/saml/okta/acs"
name_attribute = "email"
email_attribute = "email"
display_name_attribute = "name"
app_url = "http://127.0.0.1:3090/"
org_uid = "cloudio"
"#,
        )
        .unwrap();
        assert_eq!(c.validate(), Ok(()));
        let mut bad = c.clone();
        // Both ways at once.
        bad.sso.saml[0].idp_sso_url = Some("https://idp.example.com/sso".into());
        bad.sso.saml[0].idp_certificate_file = Some("/etc/cloudio/okta.pem".into());
        assert_eq!(
            bad.validate().unwrap_err(),
            [
                "[[sso.saml]] `okta`: give idp_metadata_file, or idp_sso_url and idp_certificate_file"
            ]
        );
        // By URL, but not https.
        bad.sso.saml[0].idp_metadata_file = None;
        bad.sso.saml[0].idp_sso_url = Some("http://idp.example.com/sso".into());
        assert_eq!(
            bad.validate().unwrap_err(),
            ["[[sso.saml]] `okta`: idp_sso_url must be https (http only on a loopback address)"]
        );
        let g = &c.sso.oidc[0];
        assert_eq!(
            (g.issuer(), g.user_claim.as_str()),
            (GOOGLE_ISSUER, "email")
        );
        assert_eq!(g.client_secret().unwrap().expose(), "very-secret-value");
        assert!(!format!("{c:?}").contains("very-secret-value"));
        assert_eq!(c.sso.saml[0].name_attribute.as_deref(), Some("email"));
        let oidc_only = Config {
            sso: SsoConfig {
                oidc: c.sso.oidc.clone(),
                saml: Vec::new(),
            },
            ..Config::default()
        };
        assert_eq!(oidc_only.validate(), Ok(()));
    }

    #[test]
    fn sso_problems_are_all_reported() {
        let c = Config::from_toml(
            r#"
[[sso.oidc]]
provider = "acme"
issuer = "http://idp.example.com"
client_id = ""
redirect_uri = "https://app.example.com/cb"
app_url = "https://app.example.com/"
scopes = ["email"]
client_secret_env = "CLOUDIO_TEST_SURELY_UNSET_VARIABLE"
"#,
        )
        .unwrap();
        let problems = c.validate().unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(
            problems[0].contains("issuer must be https"),
            "{problems:#?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("CLOUDIO_TEST_SURELY_UNSET_VARIABLE"))
        );
    }

    #[test]
    fn http_is_for_loopback_only() {
        for ok in [
            "https://accounts.google.com",
            "http://127.0.0.1:3090/x",
            "http://localhost/cb",
            "http://[::1]:8080/",
            "http://127.9.9.9",
        ] {
            assert!(sso_url_allowed(ok), "{ok}");
        }
        for bad in [
            "http://idp.example.com",
            "http://127.0.0.1.evil.com/",
            "http://10.0.0.1/",
            "ftp://127.0.0.1/",
            "https://",
            "http://localhost.evil.com",
        ] {
            assert!(!sso_url_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn toml_rejects_unknown_keys() {
        assert!(Config::from_toml("listen = \"127.0.0.1:1\"\nbogus = 1").is_err());
        let c = Config::from_toml("listen = \"127.0.0.1:1\"").unwrap();
        assert_eq!(c.listen.port(), 1);
    }
}

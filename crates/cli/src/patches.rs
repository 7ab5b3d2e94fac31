//! `create-patch`, `verify-patch` and `patch`: a CLI over `/v1/apps/<appUid>/patch`, and
//! `create-patch --from-dir`, which needs no server.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use base64::Engine;
use clap::Args;
use serde_json::Value;

/// Where the server is and who asks.
#[derive(Args, Clone)]
pub struct Remote {
    /// The server's base URL.
    #[arg(long, env = "CLOUDIO_SERVER", default_value = "http://127.0.0.1:3090")]
    pub server: String,
    /// The user to log in as (password from CLOUDIO_PASSWORD, else prompted).
    #[arg(long, env = "CLOUDIO_USER")]
    pub user: Option<String>,
    /// The org to log in to.
    #[arg(long)]
    pub org: Option<String>,
}

/// A logged-in session on a server.
struct Session {
    client: reqwest::Client,
    base: String,
    jwt: String,
    csrf: String,
}

/// `CLOUDIO_PASSWORD`, else a prompt on the terminal (not echoed).
fn password(user: &str) -> Result<String> {
    if let Ok(p) = std::env::var("CLOUDIO_PASSWORD") {
        return Ok(p);
    }
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdin());
    eprint!("password for {user}: ");
    std::io::stderr().flush()?;
    let stty = |arg: &str| {
        if tty {
            let _ = std::process::Command::new("stty")
                .arg(arg)
                .stdin(std::process::Stdio::inherit())
                .status();
        }
    };
    stty("-echo");
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    stty("echo");
    if tty {
        eprintln!();
    }
    read?;
    let p = line.trim_end_matches(['\n', '\r']).to_string();
    if p.is_empty() {
        bail!("no password (set CLOUDIO_PASSWORD or type it at the prompt)");
    }
    Ok(p)
}

/// The message of an error envelope, or the body as it came.
fn error_text(status: reqwest::StatusCode, body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    match parsed
        .as_ref()
        .and_then(|j| j.get("message"))
        .and_then(Value::as_str)
    {
        Some(m) => format!("{status}: {m}"),
        None => format!("{status}: {}", String::from_utf8_lossy(body)),
    }
}

impl Session {
    async fn login(remote: &Remote) -> Result<Session> {
        let Some(user) = remote.user.clone() else {
            bail!("give --user NAME (or set CLOUDIO_USER)");
        };
        let password = password(&user)?;
        let client = reqwest::Client::builder()
            .build()
            .context("making the HTTP client")?;
        let base = remote.server.trim_end_matches('/').to_string();
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let body = match &remote.org {
            Some(org) => serde_json::json!({ "orgUid": org }).to_string(),
            None => "{}".into(),
        };
        let r = client
            .post(format!("{base}/v1/auth"))
            .header("Authorization", format!("Token {token}"))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .with_context(|| format!("connecting to {base}"))?;
        let status = r.status();
        let bytes = r.bytes().await?;
        if !status.is_success() {
            bail!("login failed: {}", error_text(status, &bytes));
        }
        let j: Value = serde_json::from_slice(&bytes).context("reading the login answer")?;
        let field = |k: &str| {
            j.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .with_context(|| format!("the login answer has no `{k}`"))
        };
        Ok(Session {
            jwt: field("jwt")?,
            csrf: field("csrf")?,
            client,
            base,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}?csrf={}", self.base, self.csrf)
    }

    /// Sends a request; the status and body.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<(reqwest::StatusCode, Vec<u8>)> {
        let r = req
            .header("Authorization", format!("Bearer {}", self.jwt))
            .send()
            .await
            .with_context(|| format!("connecting to {}", self.base))?;
        let status = r.status();
        Ok((status, r.bytes().await?.to_vec()))
    }
}

fn default_file(app: &str, file: Option<PathBuf>) -> PathBuf {
    file.unwrap_or_else(|| PathBuf::from(format!("{app}.zip")))
}

fn patch_path(app: &str) -> Result<String> {
    if !query::meta::is_identifier(&store::migrate::app_schema(app)) {
        bail!("`{app}` is not an app uid (letters, digits, `_` or `-`)");
    }
    Ok(format!("/v1/apps/{app}/patch"))
}

/// `create-patch`: from a server, or from a directory with `from_dir`.
pub async fn create(
    app: &str,
    from_dir: Option<&Path>,
    file: Option<PathBuf>,
    remote: &Remote,
) -> Result<()> {
    let path = patch_path(app)?;
    let out = default_file(app, file);
    let (zip, count) = match from_dir {
        Some(dir) => {
            let files = server::apps::read_tree(dir)
                .map_err(|p| anyhow::anyhow!("{}:\n  - {}", dir.display(), p.join("\n  - ")))?;
            let declared = files
                .get("app.json")
                .and_then(|t| serde_json::from_str::<Value>(t).ok())
                .and_then(|j| j.get("appUid").and_then(Value::as_str).map(str::to_string));
            if declared.as_deref() != Some(app) {
                bail!(
                    "{}: app.json declares appUid {:?}, not `{app}`",
                    dir.display(),
                    declared.unwrap_or_default()
                );
            }
            let zip = server::patch::write_zip(app, &files).map_err(anyhow::Error::msg)?;
            (zip, files.len())
        }
        None => {
            let s = Session::login(remote).await?;
            let (status, body) = s.send(s.client.get(s.url(&path))).await?;
            if !status.is_success() {
                bail!("create-patch failed: {}", error_text(status, &body));
            }
            let count = server::patch::read_zip(&body)
                .map_err(|e| anyhow::anyhow!("the server sent an unreadable zip: {e}"))?
                .len();
            (body, count)
        }
    };
    std::fs::write(&out, &zip).with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {} ({count} files of app `{app}`)", out.display());
    Ok(())
}

/// Prints a verify or patch answer for people.
fn print_report(j: &Value) {
    if let Some(app) = j.get("app").and_then(Value::as_str) {
        println!("app: {app}");
    }
    let list = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
            .collect()
    };
    if let Some(changes) = j.get("changes").and_then(Value::as_object) {
        for kind in ["datasources", "roles", "scripts", "functions", "workflows"] {
            let c = changes.get(kind);
            for what in ["added", "changed", "removed"] {
                let names = list(c.and_then(|c| c.get(what)));
                if !names.is_empty() {
                    println!("{kind} {what}: {}", names.join(", "));
                }
            }
        }
        let m = changes.get("migrations");
        let pending = list(m.and_then(|m| m.get("pending")));
        if pending.is_empty() {
            println!("migrations to run: none");
        } else {
            println!("migrations to run: {}", pending.join(", "));
        }
        for c in m
            .and_then(|m| m.get("changed"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            println!(
                "warning: migration {} changed since it was applied (recorded checksum {}, now {}); the change is ignored",
                c["file"].as_str().unwrap_or("?"),
                c["recordedChecksum"].as_str().unwrap_or("?"),
                c["checksum"].as_str().unwrap_or("?"),
            );
        }
    }
    let problems = list(j.get("problems"));
    if !problems.is_empty() {
        println!("problems:");
        for p in &problems {
            println!("  - {p}");
        }
    }
}

fn read_patch(app: &str, file: Option<PathBuf>) -> Result<Vec<u8>> {
    let path = default_file(app, file);
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

/// `verify-patch`: `Ok(true)` when the patch applies cleanly.
pub async fn verify(app: &str, file: Option<PathBuf>, remote: &Remote, json: bool) -> Result<bool> {
    let path = patch_path(app)?;
    let zip = read_patch(app, file)?;
    let s = Session::login(remote).await?;
    let req = s
        .client
        .post(s.url(&format!("{path}/verify")))
        .header("Content-Type", "application/zip")
        .body(zip);
    let (status, body) = s.send(req).await?;
    if !status.is_success() {
        bail!("verify-patch failed: {}", error_text(status, &body));
    }
    let j: Value = serde_json::from_slice(&body).context("reading the answer")?;
    let applies = j.get("applies").and_then(Value::as_bool) == Some(true);
    if json {
        println!("{j}");
    } else {
        print_report(&j);
        if applies {
            println!("the patch applies cleanly");
        } else {
            println!("the patch would fail");
        }
    }
    Ok(applies)
}

/// `patch`: applies the zip; an error lists every problem.
pub async fn apply(app: &str, file: Option<PathBuf>, remote: &Remote, json: bool) -> Result<()> {
    let path = patch_path(app)?;
    let zip = read_patch(app, file)?;
    let s = Session::login(remote).await?;
    let req = s
        .client
        .post(s.url(&path))
        .header("Content-Type", "application/zip")
        .body(zip);
    let (status, body) = s.send(req).await?;
    if !status.is_success() {
        bail!("patch failed: {}", error_text(status, &body));
    }
    let j: Value = serde_json::from_slice(&body).context("reading the answer")?;
    if json {
        println!("{j}");
    } else {
        print_report(&j);
        println!("patch applied to `{app}`");
    }
    Ok(())
}

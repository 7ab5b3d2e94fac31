//! The administrative subcommands, working directly on the database: before the server runs and
//! while it runs, with their effect checked through the live API.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;
use crate::on_both;

const BOB_OLD: &str = "bob-password-1";
const BOB_NEW: &str = "bob-password-2";

/// How long a revocation may take to reach a running server: the spec's one second, plus slack
/// for a loaded machine.
const REVOCATION: Duration = Duration::from_millis(1500);

on_both!(migrate_is_idempotent, |kind| async move {
    let db = TestDb::new(kind).await;
    for _ in 0..2 {
        let r = db
            .run_with(
                &["migrate"],
                &[],
                &[("CLOUDIO_ADMIN_PASSWORD", ADMIN_PASSWORD)],
                None,
            )
            .await;
        r.ok();
        assert!(r.stdout.contains("migrations applied"), "{r:#?}");
    }
    // The database the command prepared is one the server starts on.
    let server = Proc::serve(&db, &["--listen", "127.0.0.1:0"], &[]).await;
    let (status, body) = login(&server.base(), "admin", ADMIN_PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    server.stop().await;
});

on_both!(
    first_start_through_a_subcommand_shows_the_admin_password,
    |kind| async move {
        // `cloudio migrate` (or `user create`) on a new database creates `admin`; without
        // CLOUDIO_ADMIN_PASSWORD its generated password must be shown then, or it is lost:
        // `serve` later finds `admin` present and prints nothing.
        let db = TestDb::new(kind).await;
        let first = db.run(&["migrate"], &[], None).await;
        first.ok();
        let all = format!("{}\n{}", first.stdout, first.stderr);
        let lines: Vec<&str> = all.lines().filter(|l| l.contains("password")).collect();
        assert_eq!(lines.len(), 1, "{first:#?}");
        let password = lines[0].split_whitespace().last().unwrap().to_string();

        let again = db.run(&["migrate"], &[], None).await;
        again.ok();
        assert!(!again.stdout.contains("password") && !again.stderr.contains("password"));

        let server = Proc::serve(&db, &["--listen", "127.0.0.1:0"], &[]).await;
        assert!(!server.output().contains(&password));
        let (status, body) = login(&server.base(), "admin", &password).await;
        assert_eq!(status, 200, "{body}");
        server.stop().await;
    }
);

on_both!(users_are_managed_from_the_command_line, |kind| async move {
    let db = TestDb::new(kind).await;
    let env = [("CLOUDIO_ADMIN_PASSWORD", ADMIN_PASSWORD)];
    let create = [
        "--user",
        "bob",
        "--display-name",
        "Bob",
        "--email",
        "bob@example.com",
        "--password-stdin",
    ];

    // Before the server runs; the first command on a new database also makes `admin`.
    db.run_with(
        &["user", "create"],
        &create,
        &env,
        Some(&format!("{BOB_OLD}\n")),
    )
    .await
    .ok();
    db.run(&["user", "create"], &create, Some("another-password"))
        .await
        .fails_with(&["bob", "already exists"]);
    let list = db.run(&["user", "list"], &[], None).await;
    list.ok();
    assert!(
        list.stdout
            .lines()
            .any(|l| l == "bob\tBob\tbob@example.com\tenabled"),
        "{list:#?}"
    );
    assert!(
        list.stdout.lines().any(|l| l.starts_with("admin\t")),
        "{list:#?}"
    );

    let server = Proc::serve(&db, &["--listen", "127.0.0.1:0"], &[]).await;
    let base = server.base();
    let (status, body) = login(&base, "bob", BOB_OLD).await;
    let before = logged_in(status, body);
    assert_eq!(before.body["userName"], "bob");
    assert_eq!(before.body["displayName"], "Bob");
    assert_eq!(before.body["emailAddress"], "bob@example.com");
    // Used once, so the server holds it as validated: revocation must get past that cache.
    let (status, body) = session(&base, &before).await;
    assert_eq!(status, 200, "{body}");

    // While it runs: a new password ends the sessions made with the old one.
    db.run(
        &["user", "passwd"],
        &["--user", "bob", "--password-stdin"],
        Some(BOB_NEW),
    )
    .await
    .ok();
    assert_session_ends(&base, &before, REVOCATION).await;
    let (status, body) = login(&base, "bob", BOB_OLD).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = login(&base, "bob", BOB_NEW).await;
    let after = logged_in(status, body);
    let (status, body) = session(&base, &after).await;
    assert_eq!(status, 200, "{body}");

    // An empty password is refused, and changes nothing.
    db.run(
        &["user", "passwd"],
        &["--user", "bob", "--password-stdin"],
        Some("\n"),
    )
    .await
    .fails_with(&["empty"]);
    let (status, body) = login(&base, "bob", BOB_NEW).await;
    assert_eq!(status, 200, "{body}");

    // Disabling ends the sessions and refuses logins, with the documented 403.
    db.run(&["user", "disable"], &["--user", "bob"], None)
        .await
        .ok();
    assert_session_ends(&base, &after, REVOCATION).await;
    let (status, body) = login(&base, "bob", BOB_NEW).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body,
        json!({"code": 403, "status": "ERROR", "title": "Access Denied",
               "message": "Access Denied - Invalid username and/or password!"})
    );
    let list = db.run(&["user", "list"], &[], None).await;
    assert!(
        list.ok()
            .stdout
            .lines()
            .any(|l| l == "bob\tBob\tbob@example.com\tdisabled"),
        "{list:#?}"
    );

    // Unknown users are named in the error.
    db.run(
        &["user", "passwd"],
        &["--user", "nobody", "--password-stdin"],
        Some("x"),
    )
    .await
    .fails_with(&["nobody"]);
    db.run(&["user", "disable"], &["--user", "nobody"], None)
        .await
        .fails_with(&["nobody"]);
    server.stop().await;
});

on_both!(roles_are_granted_from_the_command_line, |kind| async move {
    let db = TestDb::new(kind).await;
    let server = Proc::serve(
        &db,
        &["--listen", "127.0.0.1:0"],
        &[("CLOUDIO_ADMIN_PASSWORD", ADMIN_PASSWORD)],
    )
    .await;
    let base = server.base();
    db.run(
        &["user", "create"],
        &["--user", "bob", "--password-stdin"],
        Some(BOB_OLD),
    )
    .await
    .ok();
    let (status, body) = login(&base, "bob", BOB_OLD).await;
    let bob = logged_in(status, body);
    let (status, body) = session(&base, &bob).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["roles"], json!({}), "{body}");

    let grant = ["--user", "bob", "--app", "cloudio", "--role", "developer"];
    db.run(&["role", "grant"], &grant, None).await.ok();
    // Granting twice is harmless.
    db.run(&["role", "grant"], &grant, None).await.ok();
    // The CLI is another process: the server sees its change within one second.
    assert_roles_become(&base, &bob, json!({"cloudio": ["developer"]})).await;

    db.run(&["role", "revoke"], &grant, None).await.ok();
    assert_roles_become(&base, &bob, json!({})).await;
    db.run(&["role", "revoke"], &grant, None)
        .await
        .fails_with(&["bob", "developer"]);

    db.run(
        &["role", "grant"],
        &["--user", "bob", "--app", "cloudio", "--role", "astronaut"],
        None,
    )
    .await
    .fails_with(&["astronaut"]);
    db.run(
        &["role", "grant"],
        &[
            "--user",
            "bob",
            "--app",
            "no-such-app",
            "--role",
            "developer",
        ],
        None,
    )
    .await
    .fails_with(&["no-such-app"]);
    db.run(
        &["role", "grant"],
        &[
            "--user",
            "nobody",
            "--app",
            "cloudio",
            "--role",
            "developer",
        ],
        None,
    )
    .await
    .fails_with(&["nobody"]);
    let (status, body) = session(&base, &bob).await;
    assert_eq!(body["roles"], json!({}), "{status} {body}");
    server.stop().await;
});

/// Polls `GET /v1/session` until the roles are `expected`, for at most 1.5 s.
async fn assert_roles_become(base: &str, l: &Login, expected: serde_json::Value) {
    let until = tokio::time::Instant::now() + std::time::Duration::from_millis(1500);
    loop {
        let (status, body) = session(base, l).await;
        assert_eq!(status, 200, "{body}");
        if body["roles"] == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "roles still {} after 1.5 s",
            body["roles"]
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn user_names_that_could_never_log_in_are_refused() {
    let db = TestDb::new(Kind::Sqlite).await;
    for (name, why) in [
        ("bob:smith", "`:`"),
        ("bob\nINFO forged line", "control characters"),
        ("", "empty"),
    ] {
        db.run(
            &["user", "create"],
            &["--user", name, "--password-stdin"],
            Some("a-password\n"),
        )
        .await
        .fails_with(&["invalid user name", why]);
    }
}

#[tokio::test]
async fn start_up_errors_name_the_database_file() {
    // A database overwritten with other bytes.
    let db = TestDb::new(Kind::Sqlite).await;
    db.run(&["migrate"], &[], None).await.ok();
    let main = db.dir.path().join("cloudio.db");
    for side in ["cloudio.db-wal", "cloudio.db-shm"] {
        let _ = std::fs::remove_file(db.dir.path().join(side));
    }
    std::fs::write(&main, vec![0x5a_u8; 64 * 1024]).unwrap();
    db.run(&["migrate"], &[], None)
        .await
        .fails_with(&[&main.display().to_string(), "not a database"]);

    // A file beside it that cannot be opened for writing (a directory stands in for a
    // read-only file: root may write those, and tests may run as root).
    let db = TestDb::new(Kind::Sqlite).await;
    db.run(&["migrate"], &[], None).await.ok();
    let wal = db.dir.path().join("cloudio.db-wal");
    let _ = std::fs::remove_file(&wal);
    std::fs::create_dir(&wal).unwrap();
    db.run(&["migrate"], &[], None)
        .await
        .fails_with(&[&wal.display().to_string(), "cannot be opened for writing"]);
}

//! `cloudio serve`: first start, the admin password, the JWT secret file, graceful shutdown.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;
use crate::on_both;

on_both!(first_start_with_admin_password, |kind| async move {
    let db = TestDb::new(kind).await;
    let server = Proc::serve(
        &db,
        &["--listen", "127.0.0.1:0"],
        &[("CLOUDIO_ADMIN_PASSWORD", ADMIN_PASSWORD)],
    )
    .await;
    let addr = server.addr.unwrap();
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");

    let r = client().get(server.url("/v1/status")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["status"], "OK", "{b}");
    assert_eq!(b["database"], "OK", "{b}");

    let (status, body) = login(&server.base(), "admin", ADMIN_PASSWORD).await;
    let admin = logged_in(status, body);
    assert_eq!(admin.body["userName"], "admin");
    let (status, body) = session(&server.base(), &admin).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["roles"]["cloudio"]
            .as_array()
            .unwrap()
            .contains(&"administrator".into()),
        "{body}"
    );

    // A password the operator chose is neither announced nor logged.
    let out = server.output();
    assert!(!out.contains(ADMIN_PASSWORD), "{out}");
    assert!(
        !server.stdout().iter().any(|l| l.contains("password")),
        "{out}"
    );

    if kind == Kind::Sqlite {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(db.dir.path().join("jwt.secret")).expect("jwt.secret");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
    server.stop().await;
});

on_both!(
    generated_admin_password_is_printed_once,
    |kind| async move {
        let db = TestDb::new(kind).await;
        let mut server = Proc::serve(&db, &["--listen", "127.0.0.1:0"], &[]).await;
        let lines: Vec<String> = server
            .stdout()
            .into_iter()
            .filter(|l| l.to_lowercase().contains("password"))
            .collect();
        // The password is printed before the server listens; it must be there already.
        assert_eq!(lines.len(), 1, "{}", server.output());
        let password = lines[0].split_whitespace().last().unwrap().to_string();
        assert!(password.len() >= 16, "{}", lines[0]);

        let (status, body) = login(&server.base(), "admin", &password).await;
        let admin = logged_in(status, body);
        let (status, body) = login(&server.base(), "admin", "not-the-password").await;
        assert_eq!(status, 403, "{body}");
        server.signal("TERM");
        assert!(server.wait_exit(Duration::from_secs(10)).await.success());

        // Second start over the same database: nothing printed, the same password still works, and a
        // session made before the restart is still good (the JWT secret was kept).
        let server = Proc::serve(&db, &["--listen", "127.0.0.1:0"], &[]).await;
        let out = server.output();
        assert!(!out.contains(&password), "{out}");
        assert!(
            !server
                .stdout()
                .iter()
                .any(|l| l.to_lowercase().contains("password")),
            "{out}"
        );
        let (status, body) = login(&server.base(), "admin", &password).await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = session(&server.base(), &admin).await;
        assert_eq!(status, 200, "a session should survive a restart: {body}");
        server.stop().await;
    }
);

async fn stops_on(kind: Kind, sig: &str) {
    let db = TestDb::new(kind).await;
    let mut server = Proc::serve(
        &db,
        &["--listen", "127.0.0.1:0"],
        &[("CLOUDIO_ADMIN_PASSWORD", ADMIN_PASSWORD)],
    )
    .await;
    // At once: from the moment it says `listening on`, a signal must mean a graceful stop, not
    // the default disposition's sudden death.
    server.signal(sig);
    let st = server.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(st.code(), Some(0), "SIG{sig}: {st}\n{}", server.output());
    assert!(
        server.stdout().iter().any(|l| l.contains("stopped")),
        "{}",
        server.output()
    );
}

on_both!(sigterm_stops_gracefully, |kind| stops_on(kind, "TERM"));
on_both!(sigint_stops_gracefully, |kind| stops_on(kind, "INT"));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listening_line_survives_a_quiet_log_filter() {
    // Scripts find the port in `listening on <addr>`; `RUST_LOG=warn` must not hide it.
    let db = TestDb::new(Kind::Sqlite).await;
    let server = Proc::serve(
        &db,
        &["--listen", "127.0.0.1:0"],
        &[
            ("CLOUDIO_ADMIN_PASSWORD", ADMIN_PASSWORD),
            ("RUST_LOG", "warn"),
        ],
    )
    .await;
    let r = client().get(server.url("/v1/status")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Other modules' info lines stay off.
    assert!(
        !server
            .stdout()
            .iter()
            .any(|l| l.contains("INFO") && !l.contains("server::startup")),
        "{}",
        server.output()
    );
    server.stop().await;
}

#[tokio::test]
async fn client_text_cannot_forge_log_lines() {
    let db = TestDb::new(Kind::Sqlite).await;
    let mut server = Proc::serve(
        &db,
        &["--listen", "127.0.0.1:0"],
        &[("CLOUDIO_ADMIN_PASSWORD", ADMIN_PASSWORD)],
    )
    .await;
    let forged = "nobody\n2026-01-01T00:00:00Z  INFO forged: admin logged in";
    let (status, _) = login(&server.base(), forged, "wrong").await;
    assert_eq!(status, 403);
    let line = server
        .wait_for_line("login refused", Duration::from_secs(10))
        .await;
    assert!(line.contains(r"nobody\n2026"), "{line}");
    assert!(
        !server
            .stdout()
            .iter()
            .any(|l| l.contains("INFO forged") && !l.contains("login refused")),
        "{}",
        server.output()
    );
    server.stop().await;
}

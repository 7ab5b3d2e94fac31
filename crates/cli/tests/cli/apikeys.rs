//! `cloudio apikey create|list|revoke`, on the database while the server runs.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;
use crate::on_both;

const REVOCATION: Duration = Duration::from_millis(1500);

on_both!(
    api_keys_are_managed_from_the_command_line,
    |kind| async move {
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
            &[
                "--user",
                "agent",
                "--display-name",
                "Agent",
                "--password-stdin",
            ],
            Some("agent-password-1"),
        )
        .await
        .ok();

        // Issued: one JSON line on stdout, the secret in it once.
        let create = db
            .run(
                &["apikey", "create"],
                &["--user", "agent", "--description", "nightly sync"],
                None,
            )
            .await;
        create.ok();
        let issued: Value = serde_json::from_str(create.stdout.trim()).expect("one JSON object");
        let key = issued["apiKey"].as_str().unwrap().to_string();
        let secret = issued["secret"].as_str().unwrap().to_string();
        assert_eq!(issued.as_object().unwrap().len(), 2, "{issued}");

        // Listed, never with the secret or its hash.
        let list = db
            .run(&["apikey", "list"], &["--user", "agent"], None)
            .await;
        list.ok();
        assert!(!list.stdout.contains(&secret), "{list:#?}");
        assert!(!list.stdout.contains("sha256"), "{list:#?}");
        let rows: Vec<Value> = list
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), 1, "{list:#?}");
        assert_eq!(rows[0]["apiKey"], json!(key));
        assert_eq!(rows[0]["userName"], "agent");
        assert_eq!(rows[0]["description"], "nightly sync");
        assert_eq!(rows[0]["revoked"], false);
        let others = db
            .run(&["apikey", "list"], &["--user", "admin"], None)
            .await;
        assert_eq!(others.ok().stdout.trim(), "");

        // Exchanged at /v1/auth: the session acts as the key's user.
        let (status, body) = login(&base, &key, &secret).await;
        let l = logged_in(status, body);
        assert_eq!(l.body["userName"], "agent");
        assert_eq!(l.body["displayName"], "Agent");
        let (status, body) = session(&base, &l).await;
        assert_eq!(status, 200, "{body}");

        // Revoked: its sessions end within the bound, and it logs in no more.
        db.run(&["apikey", "revoke"], &["--key", &key], None)
            .await
            .ok();
        assert_session_ends(&base, &l, REVOCATION).await;
        let (status, body) = login(&base, &key, &secret).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(
            body,
            json!({"code": 403, "status": "ERROR", "title": "Access Denied",
               "message": "Access Denied - Invalid username and/or password!"})
        );
        let list = db.run(&["apikey", "list"], &[], None).await;
        assert!(list.ok().stdout.contains("\"revoked\":true"), "{list:#?}");
        // The user's password still works: only the key was revoked.
        let (status, body) = login(&base, "agent", "agent-password-1").await;
        assert_eq!(status, 200, "{body}");

        // Unknown users and keys are named in the error.
        db.run(&["apikey", "create"], &["--user", "nobody"], None)
            .await
            .fails_with(&["nobody"]);
        db.run(&["apikey", "revoke"], &["--key", "no-such-key"], None)
            .await
            .fails_with(&["no-such-key"]);
        server.stop().await;
    }
);

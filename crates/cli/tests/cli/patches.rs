//! `create-patch`, `verify-patch`, `patch` and `migrate -a` as an operator runs them: an app
//! made into a zip from its directory, verified and applied to a fresh running server (both
//! databases; on the embedded one its new database file is made and attached while the server
//! runs) and queried there, exported from it again; a broken patch exits 1; migrations run on
//! demand.

use std::path::Path;

use crate::helpers::*;
use crate::on_both;

const ITEMS: &str = r#"{"name": "Items", "table": "ITEMS", "primaryKey": ["itemId"],
  "keyGeneration": "auto",
  "attributes": [{"code": "itemId", "type": "Integer"}, {"code": "title", "type": "String"}]}"#;

const CREATE: &str = "CREATE TABLE ITEMS (ITEM_ID INTEGER PRIMARY KEY, TITLE TEXT, \
    CREATED_BY TEXT, CREATION_DATE TEXT, LAST_UPDATED_BY TEXT, LAST_UPDATE_DATE TEXT);\n\
    INSERT INTO ITEMS (ITEM_ID, TITLE) VALUES (1, 'apple');\n";

fn write_app(dir: &Path, extra: &[(&str, &str)]) {
    let files = [
        ("app.json", r#"{"appUid": "shop", "name": "Shop"}"#),
        ("datasources/Items.json", ITEMS),
        (
            "roles.json",
            r#"{"roles": [{"roleUid": "clerk", "grants": {"Items": ["query"]}}]}"#,
        ),
        ("migrations/io_20260101000000_create_items.sql", CREATE),
        ("README.md", "not part of the app"),
    ];
    for (rel, text) in files.iter().chain(extra) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

on_both!(
    an_app_goes_to_a_server_with_the_three_commands,
    |kind| async move {
        let db = TestDb::new(kind).await;
        let src = tempfile::tempdir().unwrap();
        write_app(src.path(), &[]);
        let zip = db.dir.path().join("from-dir.zip");
        let zip_arg = zip.display().to_string();
        let src_arg = src.path().display().to_string();

        // From the directory, no server needed.
        run(
            &db,
            &s(&[
                "create-patch",
                "-a",
                "shop",
                "--from-dir",
                &src_arg,
                "--file",
                &zip_arg,
            ]),
            &[],
            None,
        )
        .await
        .ok();
        assert!(zip.is_file());

        // A fresh server, on the embedded database as on PostgreSQL: the app comes by patch.
        let server = Proc::serve(
            &db,
            &["--listen", "127.0.0.1:0"],
            &[("CLOUDIO_ADMIN_PASSWORD", ADMIN_PASSWORD)],
        )
        .await;
        let base = server.base();
        let remote = |cmd: &str| {
            s(&[
                cmd, "-a", "shop", "--file", &zip_arg, "--server", &base, "--user", "admin",
            ])
        };
        let env = [("CLOUDIO_PASSWORD", ADMIN_PASSWORD)];
        let r = run(&db, &remote("verify-patch"), &env, None).await;
        r.ok();
        assert!(r.stdout.contains("app: new"), "{r:#?}");
        assert!(r.stdout.contains("datasources added: Items"), "{r:#?}");
        assert!(
            r.stdout
                .contains("migrations to run: io_20260101000000_create_items.sql"),
            "{r:#?}"
        );
        assert!(r.stdout.contains("the patch applies cleanly"), "{r:#?}");
        if kind == Kind::Sqlite {
            // Verifying made nothing: no database file for the app.
            assert!(!db.dir.path().join("shop.db").exists());
        }
        let r = run(&db, &remote("patch"), &env, None).await;
        r.ok();
        assert!(r.stdout.contains("patch applied"), "{r:#?}");

        // Served at once: its migrated row, through the API.
        db.run(
            &["role", "grant"],
            &["--user", "admin", "--app", "shop", "--role", "clerk"],
            None,
        )
        .await
        .ok();
        let (status, body) = login(&base, "admin", ADMIN_PASSWORD).await;
        let admin = logged_in(status, body);
        let r = client()
            .post(format!("{base}/v1/api?csrf={}", admin.csrf))
            .header("Authorization", format!("Bearer {}", admin.jwt))
            .json(&serde_json::json!({"A": {"ds": "Items", "appUid": "shop", "query": {}}}))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status().as_u16(), 200);
        let body: serde_json::Value = r.json().await.expect("json body");
        assert_eq!(body["data"]["A"]["data"][0]["title"], "apple", "{body}");

        // Now on the server: a second verify changes nothing.
        let r = run(&db, &remote("verify-patch"), &env, None).await;
        r.ok();
        assert!(r.stdout.contains("migrations to run: none"), "{r:#?}");
        assert!(
            !r.stdout.contains(" added:") && !r.stdout.contains(" changed:"),
            "{r:#?}"
        );

        // Exported from the server into the current directory as `shop.zip`: the app's files
        // (README.md is not part of the app).
        let r = run(
            &db,
            &s(&[
                "create-patch",
                "-a",
                "shop",
                "--server",
                &base,
                "--user",
                "admin",
            ]),
            &env,
            None,
        )
        .await;
        r.ok();
        let exported =
            server::patch::read_zip(&std::fs::read(db.dir.path().join("shop.zip")).unwrap())
                .unwrap();
        assert_eq!(
            exported,
            server::apps::read_tree(src.path()).unwrap(),
            "{r:#?}"
        );
        assert!(!exported.contains_key("README.md"));

        // A broken version: verify exits 1 naming every problem, patch fails the same way.
        let broken = tempfile::tempdir().unwrap();
        write_app(
            broken.path(),
            &[
                (
                    "migrations/io_20260102000000_bad.sql",
                    "ALTER TABLE NOPE ADD COLUMN X TEXT;\n",
                ),
                ("datasources/Items.beforeInsert.js", "let = 1;\n"),
            ],
        );
        let broken_arg = broken.path().display().to_string();
        run(
            &db,
            &s(&[
                "create-patch",
                "-a",
                "shop",
                "--from-dir",
                &broken_arg,
                "--file",
                &zip_arg,
            ]),
            &[],
            None,
        )
        .await
        .ok();
        let r = run(&db, &remote("verify-patch"), &env, None).await;
        assert_eq!(r.status.code(), Some(1), "{r:#?}");
        assert!(r.stdout.contains("io_20260102000000_bad.sql"), "{r:#?}");
        assert!(r.stdout.contains("Items.beforeInsert.js"), "{r:#?}");
        assert!(r.stdout.contains("the patch would fail"), "{r:#?}");
        let r = run(&db, &remote("patch"), &env, None).await;
        r.fails_with(&["400", "io_20260102000000_bad.sql", "Items.beforeInsert.js"]);

        // Without the password: refused before anything is sent.
        let r = run(&db, &remote("patch"), &[], None).await;
        r.fails_with(&["password"]);
        server.stop().await;
    }
);

on_both!(
    migrate_runs_an_apps_pending_files_and_reports_each,
    |kind| async move {
        let db = TestDb::new(kind).await;
        let dir = tempfile::tempdir().unwrap();
        write_app(dir.path(), &[]);
        let app_dir = dir.path().display().to_string();
        let env = [("CLOUDIO_ADMIN_PASSWORD", ADMIN_PASSWORD)];
        let r = db
            .run_with(
                &["migrate"],
                &["-a", "shop", "--app-dir", &app_dir],
                &env,
                None,
            )
            .await;
        r.ok();
        assert!(
            r.stdout
                .contains("applied  shop: io_20260101000000_create_items.sql"),
            "{r:#?}"
        );
        // A new file: run; the old one: skipped; the old one edited: a warning with checksums.
        std::fs::write(
            dir.path().join("migrations/io_20260102000000_more.sql"),
            "INSERT INTO ITEMS (ITEM_ID, TITLE) VALUES (2, 'pear');\n",
        )
        .unwrap();
        std::fs::write(
            dir.path()
                .join("migrations/io_20260101000000_create_items.sql"),
            format!("{CREATE}-- edited\n"),
        )
        .unwrap();
        let r = db
            .run_with(
                &["migrate"],
                &["-a", "shop", "--app-dir", &app_dir],
                &env,
                None,
            )
            .await;
        r.ok();
        assert!(
            r.stdout
                .contains("applied  shop: io_20260102000000_more.sql"),
            "{r:#?}"
        );
        assert!(
            r.stdout
                .contains("skipped  shop: io_20260101000000_create_items.sql"),
            "{r:#?}"
        );
        assert!(
            r.stdout
                .contains("warning: shop: io_20260101000000_create_items.sql changed")
                && r.stdout.contains("recorded checksum"),
            "{r:#?}"
        );
        assert!(r.stdout.contains("shop: 1 applied, 1 skipped"), "{r:#?}");
        // A bad file: the command fails naming it, and it is not recorded (it is tried again).
        std::fs::write(
            dir.path().join("migrations/io_20260103000000_bad.sql"),
            "NOT SQL;\n",
        )
        .unwrap();
        for _ in 0..2 {
            let r = db
                .run_with(
                    &["migrate"],
                    &["-a", "shop", "--app-dir", &app_dir],
                    &env,
                    None,
                )
                .await;
            r.fails_with(&["io_20260103000000_bad.sql"]);
        }
        // The app's name must match.
        let r = db
            .run_with(
                &["migrate"],
                &["-a", "other", "--app-dir", &app_dir],
                &env,
                None,
            )
            .await;
        r.fails_with(&["shop"]);
    }
);

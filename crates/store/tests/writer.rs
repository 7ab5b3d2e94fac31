//! SQLite's batching writer: every job answered on its own, a failing job undoes only itself,
//! a commit that fails is retried job by job, a panic is an error (not a dead writer).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use query::{AttrType, Value};
use store::{Db, DbTarget, StoreError, Writer};

async fn db() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect(&DbTarget::SqliteDir(dir.path().to_path_buf()), 4)
        .await
        .unwrap();
    db.acquire()
        .await
        .unwrap()
        .raw()
        .execute_script(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
             CREATE TABLE parent (id INTEGER PRIMARY KEY);
             CREATE TABLE child (id INTEGER PRIMARY KEY,
               parent_id INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);
             INSERT INTO parent (id) VALUES (1);",
        )
        .await
        .unwrap();
    (dir, db)
}

async fn names(db: &Db) -> Vec<String> {
    db.fetch_all("SELECT name FROM t ORDER BY name", &[], &[AttrType::String])
        .await
        .unwrap()
        .into_iter()
        .map(|r| match &r[0] {
            Value::Text(s) => s.clone(),
            v => panic!("{v:?}"),
        })
        .collect()
}

fn insert(w: &Writer, name: String) -> impl Future<Output = Result<i64, StoreError>> + use<> {
    let w = w.clone();
    async move {
        w.run(move |c| {
            let rows = c.fetch_all(
                "INSERT INTO t (name) VALUES (?) RETURNING id",
                &[Value::Text(name.clone())],
                &[AttrType::Integer],
            )?;
            match rows.first().map(|r| &r[0]) {
                Some(Value::Int(id)) => Ok(*id),
                other => Err(StoreError::Other(format!("{other:?}"))),
            }
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_jobs_are_all_answered_and_all_kept() {
    let (_dir, db) = db().await;
    let w = db.writer().unwrap().clone();
    let jobs: Vec<_> = (0..300)
        .map(|i| tokio::spawn(insert(&w, format!("n{i:03}"))))
        .collect();
    let mut ids = Vec::new();
    for j in jobs {
        ids.push(j.await.unwrap().unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 300, "every job got its own row id");
    assert_eq!(names(&db).await.len(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_undoes_only_its_own_work() {
    let (_dir, db) = db().await;
    let w = db.writer().unwrap().clone();
    insert(&w, "taken".into()).await.unwrap();
    let turn = db.write_turn().await;
    let mut handles = Vec::new();
    for i in 0..100 {
        let w = w.clone();
        handles.push(tokio::spawn(async move {
            // Every third job writes a row, then breaks a constraint with its second statement.
            w.run(move |c| {
                c.fetch_all(
                    "INSERT INTO t (name) VALUES (?) RETURNING id",
                    &[Value::Text(format!("j{i:03}"))],
                    &[AttrType::Integer],
                )?;
                if i % 3 == 0 {
                    c.fetch_all(
                        "INSERT INTO t (name) VALUES ('taken') RETURNING id",
                        &[],
                        &[AttrType::Integer],
                    )?;
                }
                Ok(i)
            })
            .await
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    drop(turn);
    for (i, h) in handles.into_iter().enumerate() {
        match h.await.unwrap() {
            Ok(n) => assert!(n % 3 != 0 && n == i),
            Err(StoreError::Duplicate(_)) => assert_eq!(i % 3, 0),
            Err(e) => panic!("job {i}: {e}"),
        }
    }
    let got = names(&db).await;
    let mut want: Vec<String> = (0..100)
        .filter(|i| i % 3 != 0)
        .map(|i| format!("j{i:03}"))
        .collect();
    want.push("taken".into());
    want.sort();
    assert_eq!(got, want, "no half-done job survives, no good job is lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_fails_is_retried_job_by_job() {
    let (_dir, db) = db().await;
    let w = db.writer().unwrap().clone();
    // A deferred foreign key is checked at COMMIT: the orphan breaks its batch's commit, and the
    // writer must then find the culprit by running each job alone.
    let runs = Arc::new(AtomicUsize::new(0));
    // Holding the write turn while the jobs queue makes them one batch (after at most one
    // job the writer took before it waited for the turn).
    let turn = db.write_turn().await;
    let mut handles = Vec::new();
    for i in 0..60i64 {
        let w = w.clone();
        let runs = runs.clone();
        handles.push(tokio::spawn(async move {
            w.run(move |c| {
                runs.fetch_add(1, Ordering::Relaxed);
                let parent = if i % 20 == 7 { 999 } else { 1 };
                c.fetch_all(
                    "INSERT INTO child (id, parent_id) VALUES (?, ?) RETURNING id",
                    &[Value::Int(i), Value::Int(parent)],
                    &[AttrType::Integer],
                )?;
                Ok(i)
            })
            .await
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    drop(turn);
    for (i, h) in handles.into_iter().enumerate() {
        let r = h.await.unwrap();
        if i % 20 == 7 {
            assert!(matches!(r, Err(StoreError::Constraint(_))), "{i}: {r:?}");
        } else {
            assert_eq!(r.unwrap(), i as i64);
        }
    }
    let kept = db
        .fetch_all(
            "SELECT id FROM child ORDER BY id",
            &[],
            &[AttrType::Integer],
        )
        .await
        .unwrap();
    let want: Vec<Vec<Value>> = (0..60)
        .filter(|i| i % 20 != 7)
        .map(|i| vec![Value::Int(i)])
        .collect();
    assert_eq!(kept, want);
    // The failed batch ran again job by job.
    assert!(runs.load(Ordering::Relaxed) > 100, "{runs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_job_is_an_error_and_the_writer_goes_on() {
    let (_dir, db) = db().await;
    let w = db.writer().unwrap().clone();
    let r = w
        .run(|c| -> Result<(), StoreError> {
            c.fetch_all(
                "INSERT INTO t (name) VALUES ('before panic') RETURNING id",
                &[],
                &[AttrType::Integer],
            )?;
            panic!("bug in a job");
        })
        .await;
    assert!(matches!(r, Err(StoreError::Other(_))), "{r:?}");
    insert(&w, "after".into()).await.unwrap();
    assert_eq!(names(&db).await, vec!["after".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_shares_the_write_turn_with_pool_transactions() {
    let (_dir, db) = db().await;
    let w = db.writer().unwrap().clone();
    // A pool transaction holds the turn: the writer's job waits for it, then sees its row.
    let mut tx = db.begin_write().await.unwrap();
    tx.raw()
        .execute("INSERT INTO t (name) VALUES ('from tx')", &[])
        .await
        .unwrap();
    let job = tokio::spawn(insert(&w, "from writer".into()));
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(!job.is_finished(), "the writer waited for the turn");
    tx.commit().await.unwrap();
    job.await.unwrap().unwrap();
    assert_eq!(names(&db).await, vec!["from tx", "from writer"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_database_refuses_jobs() {
    let (_dir, db) = db().await;
    let w = db.writer().unwrap().clone();
    db.close().await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let r = insert(&w, "late".into()).await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_runs_alone_keeps_its_place_between_batches() {
    let (_dir, db) = db().await;
    let w = db.writer().unwrap().clone();
    let turn = db.write_turn().await;
    let mut small = Vec::new();
    for i in 0..10 {
        small.push(tokio::spawn(insert(&w, format!("a{i}"))));
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    // Many rows, then a duplicate: nothing of it may remain.
    let big = {
        let w = w.clone();
        tokio::spawn(async move {
            w.run_alone(|c| -> Result<(), StoreError> {
                for i in 0..500 {
                    c.fetch_all(
                        "INSERT INTO t (name) VALUES (?) RETURNING id",
                        &[Value::Text(format!("big{i:03}"))],
                        &[AttrType::Integer],
                    )?;
                }
                c.fetch_all(
                    "INSERT INTO t (name) VALUES ('a0') RETURNING id",
                    &[],
                    &[AttrType::Integer],
                )?;
                Ok(())
            })
            .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    for i in 0..10 {
        small.push(tokio::spawn(insert(&w, format!("b{i}"))));
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    drop(turn);
    for s in small {
        s.await.unwrap().unwrap();
    }
    let r = big.await.unwrap();
    assert!(matches!(r, Err(StoreError::Duplicate(_))), "{r:?}");
    let got = names(&db).await;
    assert_eq!(got.len(), 20, "{got:?}");
    assert!(got.iter().all(|n| !n.starts_with("big")));
}

/// Waits up to `within` for `f` to hold.
async fn eventually(within: std::time::Duration, f: impl Fn() -> bool) -> bool {
    let until = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < until {
        if f() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    f()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_give_their_page_caches_back_once_after_work() {
    use std::time::Duration;
    let (_dir, db) = db().await;
    let w = db.writer().unwrap().clone();
    let shrinks = || db.sqlite_idle_shrinks().unwrap();
    // Busy (a read and a write every 100 ms for 2.5 s): nobody shrinks meanwhile, except
    // once for the set-up's work if it came before the first read.
    let before = shrinks();
    for i in 0..25 {
        insert(&w, format!("busy{i:02}")).await.unwrap();
        assert_eq!(names(&db).await.len(), i + 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let busy = shrinks();
    assert!(
        busy.0 <= before.0 + 1 && busy.1 <= before.1 + 1,
        "{before:?} -> {busy:?}"
    );
    // Idle: the pool and the writer each give their caches back, once.
    assert!(
        eventually(Duration::from_secs(5), || {
            let s = shrinks();
            s.0 > busy.0 && s.1 > busy.1
        })
        .await,
        "no shrink after going idle: {busy:?} -> {:?}",
        shrinks()
    );
    let once = shrinks();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        shrinks(),
        once,
        "an idle database shrinks once, not on every tick"
    );
    // Nothing is lost, and the next work is served as before.
    assert_eq!(names(&db).await.len(), 25);
    insert(&w, "after".into()).await.unwrap();
    assert_eq!(names(&db).await.len(), 26);
}

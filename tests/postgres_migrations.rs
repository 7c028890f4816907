//! `PostgresStore`'s schema versions: older schemas are migrated, what they stored
//! reads back, and a newer schema is refused. Needs `EDA_TEST_POSTGRES_URL`, as
//! `postgres_store.rs`.

#![allow(missing_docs)]

use eda::prelude::*;
use eda::{Metadata, PostgresOptions};
use eda_test::postgres::TestDb;

/// A version 2 schema (before aggregates kept their last position) is migrated:
/// the positions are filled in from the events, and appends go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_schema_is_migrated() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    for id in ["x", "y"] {
        db.store
            .append(
                eda_test::stream("Doc", id),
                0,
                vec![
                    eda_test::new_event("Noted", "{}"),
                    eda_test::new_event("Noted", "{}"),
                ],
                &Metadata::default(),
            )
            .await
            .unwrap();
    }
    let sql = db.connect().await;
    sql.batch_execute(
        "ALTER TABLE eda_aggregates DROP COLUMN last_position; DROP TABLE eda_idempotency;
         DROP TABLE eda_checkpoints; DROP TABLE eda_parked_events; UPDATE eda_schema SET version = 2",
    )
    .await
    .unwrap();
    let store = PostgresStore::connect_with(&db.url, PostgresOptions::new().schema(&db.schema))
        .await
        .unwrap();
    let rows = sql
        .query(
            "SELECT g.last_position, (SELECT max(position) FROM eda_events e WHERE e.aggregate_id = g.aggregate_id)
             FROM eda_aggregates g ORDER BY aggregate_id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert_eq!(row.get::<_, i64>(0), row.get::<_, i64>(1));
    }
    let version: i32 = sql
        .query_one("SELECT version FROM eda_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 6);
    store
        .append(
            eda_test::stream("Doc", "x"),
            2,
            vec![eda_test::new_event("Noted", "{}")],
            &Metadata::default(),
        )
        .await
        .unwrap();
    drop(store);
    db.drop_schema().await;
}

/// A version 3 schema (payloads in `jsonb`, no key records) is migrated: the
/// payload columns become `json`, which keeps text as given, what was stored reads
/// back as before, and new payloads keep their exact text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_3_schema_is_migrated_to_exact_payloads() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let sql = db.connect().await;
    sql.batch_execute(
        "ALTER TABLE eda_events ALTER COLUMN payload TYPE jsonb USING payload::jsonb,
                                ALTER COLUMN metadata TYPE jsonb USING metadata::jsonb;
         ALTER TABLE eda_snapshots ALTER COLUMN payload TYPE jsonb USING payload::jsonb;
         DROP TABLE eda_idempotency; DROP TABLE eda_checkpoints; DROP TABLE eda_parked_events;
         UPDATE eda_schema SET version = 3",
    )
    .await
    .unwrap();
    let old = db.store.clone();
    // The old `jsonb` statements, as a version 3 store ran them.
    sql.batch_execute(&format!(
        r#"INSERT INTO eda_events (position, event_id, aggregate_type, aggregate_id, version, name, event_version, payload, metadata)
           VALUES (1, '{}', 'Doc', 'old', 1, 'Noted', 1, '{{"b":1, "a":2}}'::jsonb,
                   '{{"idempotency_key": "old-key", "command": "Note"}}'::jsonb);
           INSERT INTO eda_aggregates VALUES ('Doc', 'old', 1, 1)"#,
        eda::new_event_id()
    ))
    .await
    .unwrap();
    drop(old);
    let store = PostgresStore::connect_with(&db.url, PostgresOptions::new().schema(&db.schema))
        .await
        .unwrap();
    let types: Vec<(String, String)> = sql
        .query(
            "SELECT table_name::text || '.' || column_name::text, data_type::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND column_name IN ('payload', 'metadata') ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let json = |column: &str| (column.to_string(), "json".to_string());
    assert_eq!(
        types,
        [
            json("eda_events.metadata"),
            json("eda_events.payload"),
            json("eda_snapshots.payload")
        ]
    );
    let version: i32 = sql
        .query_one("SELECT version FROM eda_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 6);
    // The key of a stored event is known after the migration.
    let record = store
        .read_idempotency_key("old-key")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            record.command.as_str(),
            record.expected_version,
            record.version,
            record.position
        ),
        ("Note", 0, 1, Some(1))
    );
    // `jsonb` had sorted the keys; that text is what there is now.
    let old = store
        .read_stream(eda_test::stream("Doc", "old"), 0)
        .await
        .unwrap();
    assert_eq!(old[0].payload, r#"{"a": 2, "b": 1}"#);
    let exact = r#"{"b":1,"a":-0.0}"#;
    store
        .append(
            eda_test::stream("Doc", "old"),
            1,
            vec![eda_test::new_event("Noted", exact)],
            &Metadata::default(),
        )
        .await
        .unwrap();
    let read = store
        .read_stream(eda_test::stream("Doc", "old"), 1)
        .await
        .unwrap();
    assert_eq!(read[0].payload, exact);
    drop(store);
    db.drop_schema().await;
}

/// A version 4 schema (before checkpoints) is migrated: it gets the checkpoints'
/// table (and the parked events') and keeps its events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_4_schema_gets_checkpoints() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let s = eda_test::stream("Doc", "d");
    db.store
        .append(
            s,
            0,
            vec![eda_test::new_event("Noted", "{}")],
            &Metadata::default(),
        )
        .await
        .unwrap();
    let sql = db.connect().await;
    let downgrade =
        "DROP TABLE eda_checkpoints; DROP TABLE eda_parked_events; UPDATE eda_schema SET version = 4";
    let (store, version) = reopened_after(&db, &sql, downgrade).await;
    assert_eq!(version, 6);
    assert_eq!(store.read_stream(s, 0).await.unwrap().len(), 1);
    assert_eq!(store.read_checkpoint("mailer").await.unwrap(), None);
    store.write_checkpoint("mailer", None, 1).await.unwrap();
    store.write_checkpoint("mailer", Some(1), 2).await.unwrap();
    let stored: i64 = sql
        .query_one(
            "SELECT position FROM eda_checkpoints WHERE name = 'mailer'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 2);
    drop(store);
    db.drop_schema().await;
}

/// A version 5 schema (before parked events) is migrated: it gets the parked
/// events' table, and keeps its events and checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_5_schema_gets_parked_events() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    db.store
        .append(
            eda_test::stream("Doc", "d"),
            0,
            vec![eda_test::new_event("Noted", "{}")],
            &Metadata::default(),
        )
        .await
        .unwrap();
    db.store.write_checkpoint("mailer", None, 1).await.unwrap();
    let sql = db.connect().await;
    let downgrade = "DROP TABLE eda_parked_events; UPDATE eda_schema SET version = 5";
    let (store, version) = reopened_after(&db, &sql, downgrade).await;
    assert_eq!(version, 6);
    let log = store.read_all(0, 10).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(store.read_checkpoint("mailer").await.unwrap(), Some(1));
    assert!(store.parked("mailer").await.unwrap().is_empty());
    let parked = eda::ParkedEvent::from_event(&log[0], "smtp: timed out");
    store.park("mailer", &parked).await.unwrap();
    assert_eq!(store.parked("mailer").await.unwrap(), [parked]);
    let stored: String = sql
        .query_one(
            "SELECT error FROM eda_parked_events WHERE runner = 'mailer'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, "smtp: timed out");
    drop(store);
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    db.connect()
        .await
        .batch_execute("UPDATE eda_schema SET version = 7")
        .await
        .unwrap();
    let err = PostgresStore::connect_with(&db.url, PostgresOptions::new().schema(&db.schema))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::IncompatibleSchema {
                found: 7,
                supported: 6
            }
        ),
        "{err:?}"
    );
    db.drop_schema().await;
}

/// The store opened again after `downgrade` (statements that take its schema
/// back to an older version), and the schema version it migrated to.
async fn reopened_after(
    db: &TestDb,
    sql: &tokio_postgres::Client,
    downgrade: &str,
) -> (PostgresStore, i32) {
    sql.batch_execute(downgrade).await.unwrap();
    let options = PostgresOptions::new().schema(&db.schema);
    let store = PostgresStore::connect_with(&db.url, options).await.unwrap();
    let version = sql
        .query_one("SELECT version FROM eda_schema", &[])
        .await
        .unwrap()
        .get(0);
    (store, version)
}

//! PostgreSQL for the tests: the server named by `EDA_TEST_POSTGRES_URL`, a fresh
//! schema per test (dropped at its end), one test at a time per test binary.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use eda::{PostgresOptions, PostgresStore};

static SCHEMAS: AtomicUsize = AtomicUsize::new(0);

/// One test at a time: an open transaction anywhere in the database holds back
/// every reader's `read_all` (by design), so concurrent tests would see each
/// other's transactions.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The server to test on, from `EDA_TEST_POSTGRES_URL`; without it `None`, and
/// a note that the test is skipped.
pub fn url() -> Option<String> {
    let url = std::env::var("EDA_TEST_POSTGRES_URL").ok();
    if url.is_none() {
        eprintln!("skipped: EDA_TEST_POSTGRES_URL is not set");
    }
    url
}

/// A store in a fresh schema, or `None` (and a note) without a server to test on.
pub struct TestDb {
    /// The server's URL.
    pub url: String,
    /// The schema of this test.
    pub schema: String,
    /// A store on that schema, with the default options.
    pub store: PostgresStore,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl TestDb {
    /// A store in a schema of its own, once the tests before it have finished;
    /// `None` without a server ([`url`]).
    pub async fn new() -> Option<TestDb> {
        let url = url()?;
        let turn = ONE_AT_A_TIME.lock().await;
        let schema = format!(
            "eda_test_{}_{}",
            std::process::id(),
            SCHEMAS.fetch_add(1, Ordering::Relaxed)
        );
        let store = PostgresStore::connect_with(&url, PostgresOptions::new().schema(&schema))
            .await
            .unwrap();
        Some(TestDb {
            url,
            schema,
            store,
            _turn: turn,
        })
    }

    /// A plain connection with the test schema on its search path.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(&format!("SET search_path = {}", self.schema))
            .await
            .unwrap();
        client
    }

    /// Another store on the test schema, with a pool of 4 and so one committing
    /// task: concurrent appends queue up and share statements.
    pub async fn one_committer(&self) -> PostgresStore {
        PostgresStore::connect_with(
            &self.url,
            PostgresOptions::new()
                .schema(&self.schema)
                .pool_size(4)
                // Batches wait for locks as long as the tests hold them.
                .batch_lock_timeout(Duration::from_secs(60)),
        )
        .await
        .unwrap()
    }

    /// Another schema of this test, `<schema>_<suffix>` (for read models), which
    /// [`drop_schema`](Self::drop_schema) drops too.
    pub fn other_schema(&self, suffix: &str) -> String {
        format!("{}_{suffix}", self.schema)
    }

    /// Drops the test's schema and its [other schemas](Self::other_schema), and
    /// with them everything the test stored.
    pub async fn drop_schema(self) {
        let client = self.connect().await;
        drop(self.store);
        let others = client
            .query(
                "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1)",
                &[&format!("{}_", self.schema)],
            )
            .await
            .unwrap();
        let mut schemas = vec![self.schema.clone()];
        schemas.extend(others.iter().map(|row| row.get::<_, String>(0)));
        client
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", schemas.join(", ")))
            .await
            .unwrap();
    }
}

/// Runs a conformance check on a fresh schema (or skips it without a server): the
/// `$with_store` of [`conformance_tests!`](crate::conformance_tests).
pub async fn with_store<F: std::future::Future<Output = ()>>(
    check: impl FnOnce(PostgresStore) -> F,
) {
    let Some(db) = TestDb::new().await else {
        return;
    };
    check(db.store.clone()).await;
    db.drop_schema().await;
}

//! Where a kit test's stores live: a SQLite file in a temporary directory, or a fresh PostgreSQL database.
//! `store()` opens another instance on the same data each time it is called: another replica, or the CLI
//! next to a server.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clustercred_store::{PgStore, PgStoreOptions, SqliteStore, Store};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

pub enum Env {
    Sqlite {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
    },
    Postgres {
        admin: Box<PgConnectOptions>,
        admin_url: String,
        database: String,
    },
}

/// The server the PostgreSQL half of the kit runs against.
pub fn postgres_url() -> String {
    std::env::var("CLUSTERCRED_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_POSTGRES.to_string())
}

impl Env {
    pub async fn sqlite() -> Env {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("kit.sqlite");
        Env::Sqlite { _dir: dir, path }
    }

    /// A database of its own for one test. Fails the test, never skips it, when no server answers.
    pub async fn postgres() -> Env {
        Env::postgres_at(postgres_url()).await
    }

    pub async fn postgres_at(admin_url: String) -> Env {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let admin = PgConnectOptions::from_str(&admin_url)
            .unwrap_or_else(|e| panic!("CLUSTERCRED_TEST_POSTGRES={admin_url} is not a URL: {e}"));
        let mut conn = connect_admin(&admin, &admin_url).await;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let database = format!(
            "kit_{}_{}_{}",
            std::process::id(),
            nanos,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("creating database {database} on {admin_url}: {e}"));
        let _ = conn.close().await;
        Env::Postgres {
            admin: Box::new(admin),
            admin_url,
            database,
        }
    }

    /// Connection options for this test's PostgreSQL database.
    pub fn pg_options(&self) -> PgConnectOptions {
        match self {
            Env::Postgres {
                admin, database, ..
            } => (**admin).clone().database(database),
            Env::Sqlite { .. } => panic!("not a PostgreSQL environment"),
        }
    }

    pub async fn pg_store(&self) -> PgStore {
        let options = PgStoreOptions {
            max_connections: 4,
            acquire_timeout: Duration::from_secs(10),
            ..PgStoreOptions::default()
        };
        PgStore::connect_with(self.pg_options(), options)
            .await
            .expect("connecting a PgStore to the kit database")
    }

    /// A new store instance on this test's data.
    pub async fn store(&self) -> Arc<dyn Store> {
        match self {
            Env::Sqlite { path, .. } => Arc::new(
                SqliteStore::open(path)
                    .await
                    .expect("opening the kit SQLite file"),
            ),
            Env::Postgres { .. } => Arc::new(self.pg_store().await),
        }
    }
}

async fn connect_admin(admin: &PgConnectOptions, url: &str) -> PgConnection {
    match tokio::time::timeout(Duration::from_secs(10), PgConnection::connect_with(admin)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!(
            "the store kit needs PostgreSQL and cannot reach it at {url}: {e}. Start one (scripts/pg-for-tests \
             prints a URL) and set CLUSTERCRED_TEST_POSTGRES."
        ),
        Err(_) => panic!(
            "the store kit needs PostgreSQL and {url} did not answer within 10 s. Start one \
             (scripts/pg-for-tests prints a URL) and set CLUSTERCRED_TEST_POSTGRES."
        ),
    }
}

impl Drop for Env {
    /// Drops the test's database, also when the test failed. Async work cannot run in `drop`, so a thread
    /// with a runtime of its own does it.
    fn drop(&mut self) {
        let Env::Postgres {
            admin,
            admin_url,
            database,
        } = self
        else {
            return;
        };
        let (admin, url, database) = ((**admin).clone(), admin_url.clone(), database.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut conn = PgConnection::connect_with(&admin).await.ok()?;
                let sql = format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)");
                let result = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await;
                let _ = conn.close().await;
                result.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("note: could not drop a kit database on {url}");
        }
    }
}

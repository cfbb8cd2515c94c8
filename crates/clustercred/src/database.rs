//! The one place a store is opened from the configuration: SQLite in the data directory (the embedded
//! default), or a PostgreSQL database that several replicas share.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clustercred_store::{PgStore, PgStoreOptions, SqliteStore, Store};

use crate::bootstrap;

/// Whether `database` names a PostgreSQL database (`postgres://` or `postgresql://`); refuses anything else.
pub fn is_postgres(database: Option<&str>) -> Result<bool> {
    match database {
        None => Ok(false),
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => Ok(true),
        Some(_) => bail!(
            "--database must be a postgres:// URL; without it clustercred keeps SQLite in the data directory"
        ),
    }
}

/// Opens the configured store. SQLite must exist already unless `create` (the server creates it on first
/// start; CLI commands refuse a directory the server never used). `timeout` bounds every wait for the
/// database (a connection, a lock, a statement; see `serve --store-timeout`).
pub async fn open(
    data_dir: &Path,
    database: Option<&str>,
    create: bool,
    timeout: Duration,
) -> Result<Arc<dyn Store>> {
    if is_postgres(database)? {
        let url = database.unwrap_or_default();
        let options = PgStoreOptions {
            acquire_timeout: timeout,
            statement_timeout: timeout,
            ..PgStoreOptions::default()
        };
        let store = PgStore::connect(url, options)
            .await
            .with_context(|| format!("connecting to PostgreSQL at {}", redact(url)))?;
        return Ok(Arc::new(store));
    }
    let path = data_dir.join(bootstrap::DATABASE_FILE);
    if !create && !path.exists() {
        bail!(
            "no clustercred database at {} (start the server once, or pass --data-dir or --database)",
            path.display()
        );
    }
    bootstrap::check_data_dir(data_dir)?;
    Ok(Arc::new(
        SqliteStore::open_with_timeout(&path, timeout)
            .await
            .context("opening the database")?,
    ))
}

/// Replicas must seal and open keys with one master key: with a shared database it has to be given, never
/// generated per replica.
pub fn require_shared_master_key(database: Option<&str>, file: Option<&Path>) -> Result<()> {
    if is_postgres(database)?
        && file.is_none()
        && std::env::var_os("CLUSTERCRED_MASTER_KEY").is_none()
    {
        bail!(
            "with --database (PostgreSQL) every replica needs the same master key: pass --master-key-file or \
             set CLUSTERCRED_MASTER_KEY; clustercred does not generate one per replica"
        );
    }
    Ok(())
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/cc"),
            "postgres://app@db:5432/cc"
        );
        assert_eq!(redact("postgres://db/cc"), "postgres://db/cc");
    }

    #[test]
    fn only_postgres_urls_are_databases() {
        assert!(!is_postgres(None).unwrap());
        assert!(is_postgres(Some("postgresql://h/d")).unwrap());
        assert!(is_postgres(Some("mysql://h/d")).is_err());
    }
}

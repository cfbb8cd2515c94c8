//! Database users as PostgreSQL roles in an AlloyDB cluster's backend database.
//!
//! One connection per call, one transaction per change: a role, its password and its memberships change
//! together or not at all, and a dry run (`validate_only`) is the same transaction rolled back, so PostgreSQL
//! itself checks everything it would check for real.
//!
//! Safety of the SQL: role names and the roles granted are identifiers, always written double-quoted with
//! every `"` doubled; reads take them as bound parameters. Passwords never reach PostgreSQL, its logs or ours:
//! the statement carries a SCRAM-SHA-256 verifier computed here (what `psql`'s `\password` sends), written as
//! an escaped string literal, and statement logging is off on these connections.

use std::borrow::Cow;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine;
use sqlx::postgres::{PgConnectOptions, PgDatabaseError};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, PgConnection};

/// PostgreSQL truncates longer identifiers (NAMEDATALEN - 1).
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// Predefined roles that amount to superuser (server files and programs): never granted through the API.
pub const NEVER_GRANTED: &[&str] = &[
    "pg_execute_server_program",
    "pg_read_server_files",
    "pg_write_server_files",
];

/// How long reaching the backend may take before the call fails as unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Iterations of new SCRAM verifiers: PostgreSQL's default (`scram_iterations`).
const SCRAM_ITERATIONS: u32 = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoleError {
    /// The backend could not be reached, or it failed in a way worth retrying (shutdown, timeouts,
    /// serialization failures). Nothing was changed.
    #[error("the backend database is unavailable: {0}")]
    Unavailable(String),
    /// A role of that name exists (the check found it, or PostgreSQL refused the create: its message).
    #[error("the role already exists: {0}")]
    Exists(String),
    #[error("no role named {0:?} exists")]
    Missing(String),
    #[error("no role named {} exists", .0.join(", "))]
    UnknownRoles(Vec<String>),
    /// Roles this module refuses to grant: superusers, the backend's own user, the server-file roles.
    #[error("{0}")]
    RefusedRoles(String),
    /// A name PostgreSQL keeps for itself (`pg_*`, `public`, `none`).
    #[error("{0}")]
    ReservedName(String),
    /// A membership loop (a role granted to itself, directly or not).
    #[error("{0}")]
    InvalidGrant(String),
    /// The backend's user lacks a privilege (CREATEROLE, ADMIN OPTION on a role, ...).
    #[error("the backend's user may not do this: {0}")]
    NotPermitted(String),
    /// DROP ROLE refused: the role owns objects or holds privileges (PostgreSQL's detail names them).
    #[error("{0}")]
    InUse(String),
    #[error("unexpected backend error: {0}")]
    Other(String),
}

/// How the role logs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Login<'a> {
    /// LOGIN with this password (stored as a SCRAM-SHA-256 verifier).
    Password(&'a str),
    /// LOGIN without any password (an IAM database user: clustercred's instance endpoint vouches for it).
    NoPassword,
    /// Leave the password as it is (updates only).
    Unchanged,
}

/// What a role should look like.
#[derive(Clone, Copy, Debug)]
pub struct RoleSpec<'a> {
    pub name: &'a str,
    pub login: Login<'a>,
    /// The roles it is a member of; `None` leaves memberships as they are.
    pub member_of: Option<&'a [String]>,
    /// Keep memberships `member_of` does not list (otherwise they are revoked).
    pub keep_extra: bool,
}

/// `"name"`: an identifier, double-quoted, every `"` doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `E'text'`: a string literal that means the same whatever `standard_conforming_strings` is (`\` and `'`
/// doubled).
pub fn quote_literal(text: &str) -> String {
    format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

/// The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802, RFC 7677; PostgreSQL's
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`). The password is SASLprep-normalised as
/// PostgreSQL and libpq do, falling back to the raw bytes where SASLprep refuses it.
pub fn scram_sha256_verifier(password: &str, salt: &[u8], iterations: NonZeroU32) -> String {
    use aws_lc_rs::{digest, hmac, pbkdf2};
    let prepared: Cow<'_, str> = stringprep::saslprep(password).unwrap_or(Cow::Borrowed(password));
    let mut salted = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        prepared.as_bytes(),
        &mut salted,
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
    let client_key = hmac::sign(&key, b"Client Key");
    let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
    let server_key = hmac::sign(&key, b"Server Key");
    let b64 = base64::engine::general_purpose::STANDARD;
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        b64.encode(salt),
        b64.encode(stored_key.as_ref()),
        b64.encode(server_key.as_ref())
    )
}

fn new_verifier(password: &str) -> Result<String, RoleError> {
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt)
        .map_err(|_| RoleError::Other("no random bytes for a password salt".into()))?;
    let iterations = NonZeroU32::new(SCRAM_ITERATIONS)
        .ok_or_else(|| RoleError::Other("zero SCRAM iterations".into()))?;
    Ok(scram_sha256_verifier(password, &salt, iterations))
}

/// SQLSTATE classes and codes that mean "try again later" rather than "no".
fn transient(code: &str) -> bool {
    code.starts_with("08") // connection exception
        || code.starts_with("53") // insufficient resources
        || code.starts_with("57P") // operator intervention: shutdown, cannot connect now
        || matches!(
            code,
            "40001" | "40P01" | "55P03" | "57014" // serialization, deadlock, lock timeout, statement timeout
        )
}

fn db_error(e: sqlx::Error) -> RoleError {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            let message = db.message().to_string();
            let detail = db
                .try_downcast_ref::<PgDatabaseError>()
                .and_then(|pg| pg.detail())
                .map(str::to_string);
            let full = match &detail {
                Some(d) => format!("{message} ({d})"),
                None => message.clone(),
            };
            match code.as_str() {
                // duplicate_object, or the catalogue's unique index when two creates race.
                "42710" | "23505" => RoleError::Exists(full),
                "42501" => RoleError::NotPermitted(full),
                "42939" => RoleError::ReservedName(full),
                "2BP01" => RoleError::InUse(full),
                "0LP01" => RoleError::InvalidGrant(full),
                c if transient(c) => RoleError::Unavailable(full),
                _ => RoleError::Other(format!("{full} [SQLSTATE {code}]")),
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => RoleError::Unavailable(e.to_string()),
        other => RoleError::Other(other.to_string()),
    }
}

/// A connection to the backend at `url`, with statement logging off (statements may carry verifiers).
pub async fn connect(url: &str) -> Result<PgConnection, RoleError> {
    // The URL may hold the backend's password: errors never quote it.
    let options = PgConnectOptions::from_str(url)
        .map_err(|_| RoleError::Unavailable("the backend URL does not parse".into()))?
        .disable_statement_logging();
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(sqlx::Error::Database(db))) => Err(RoleError::Unavailable(format!(
            "connecting: {}",
            db.message()
        ))),
        Ok(Err(e)) => Err(RoleError::Unavailable(format!("connecting: {e}"))),
        Err(_) => Err(RoleError::Unavailable(format!(
            "connecting took longer than {}s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

async fn exec(conn: &mut PgConnection, sql: String) -> Result<(), RoleError> {
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(&mut *conn)
        .await
        .map(|_| ())
        .map_err(db_error)
}

async fn role_exists(conn: &mut PgConnection, name: &str) -> Result<bool, RoleError> {
    sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
        .bind(name)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error)
}

/// The roles `name` is a direct member of, sorted.
async fn memberships_on(conn: &mut PgConnection, name: &str) -> Result<Vec<String>, RoleError> {
    sqlx::query_scalar::<_, String>(
        "SELECT DISTINCT r.rolname::text FROM pg_auth_members m \
         JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles u ON u.oid = m.member \
         WHERE u.rolname = $1 ORDER BY 1",
    )
    .bind(name)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)
}

/// Refuses roles that do not exist and roles never granted through the API.
async fn check_grantable(conn: &mut PgConnection, roles: &[String]) -> Result<(), RoleError> {
    if roles.is_empty() {
        return Ok(());
    }
    let found: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT rolname::text, rolsuper, rolname = session_user FROM pg_roles WHERE rolname = ANY($1)",
    )
    .bind(roles)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    let mut unknown: Vec<String> = roles
        .iter()
        .filter(|r| !found.iter().any(|(name, _, _)| name == *r))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        unknown.sort();
        unknown.dedup();
        return Err(RoleError::UnknownRoles(unknown));
    }
    let mut refused = Vec::new();
    for (name, superuser, backend_user) in &found {
        if *superuser {
            refused.push(format!("{name:?} is a superuser role"));
        } else if *backend_user {
            refused.push(format!("{name:?} is the role clustercred manages roles as"));
        } else if NEVER_GRANTED.contains(&name.as_str()) {
            refused.push(format!(
                "{name:?} gives access to the server's files or programs"
            ));
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        refused.sort();
        Err(RoleError::RefusedRoles(format!(
            "not granted through the Users API: {}",
            refused.join("; ")
        )))
    }
}

/// Grants what `spec.member_of` lists and the role lacks; revokes the rest unless `keep_extra`.
async fn converge_memberships(
    conn: &mut PgConnection,
    spec: &RoleSpec<'_>,
) -> Result<(), RoleError> {
    let Some(wanted) = spec.member_of else {
        return Ok(());
    };
    check_grantable(conn, wanted).await?;
    let current = memberships_on(conn, spec.name).await?;
    let role = quote_ident(spec.name);
    for granted in wanted.iter().filter(|r| !current.contains(r)) {
        exec(conn, format!("GRANT {} TO {role}", quote_ident(granted))).await?;
    }
    if !spec.keep_extra {
        for extra in current.iter().filter(|r| !wanted.contains(r)) {
            exec(conn, format!("REVOKE {} FROM {role}", quote_ident(extra))).await?;
        }
    }
    Ok(())
}

async fn begin(conn: &mut PgConnection) -> Result<(), RoleError> {
    // Role changes take catalogue locks: wait for them briefly, never for long.
    exec(
        conn,
        "BEGIN; SET LOCAL lock_timeout = '10s'; SET LOCAL statement_timeout = '30s'".into(),
    )
    .await
}

async fn finish<T>(
    conn: &mut PgConnection,
    result: Result<T, RoleError>,
    dry_run: bool,
) -> Result<T, RoleError> {
    match result {
        Ok(value) if !dry_run => {
            exec(conn, "COMMIT".into()).await?;
            Ok(value)
        }
        other => {
            // A failed rollback leaves nothing behind either: the connection closes with the transaction open.
            let _ = exec(conn, "ROLLBACK".into()).await;
            other
        }
    }
}

fn login_clause(login: Login<'_>) -> Result<String, RoleError> {
    Ok(match login {
        Login::Password(p) => format!("LOGIN PASSWORD {}", quote_literal(&new_verifier(p)?)),
        Login::NoPassword => "LOGIN PASSWORD NULL".into(),
        Login::Unchanged => String::new(),
    })
}

/// Creates the role with its memberships; `Exists` if any role of that name exists. Answers the memberships
/// it ends with. `dry_run` checks everything and changes nothing.
pub async fn create_role(
    url: &str,
    spec: &RoleSpec<'_>,
    dry_run: bool,
) -> Result<Vec<String>, RoleError> {
    let mut conn = connect(url).await?;
    begin(&mut conn).await?;
    let result = async {
        if role_exists(&mut conn, spec.name).await? {
            return Err(RoleError::Exists(format!("role {:?}", spec.name)));
        }
        let login = match spec.login {
            Login::Unchanged => Login::NoPassword,
            other => other,
        };
        // A role created concurrently since the check above fails here as `Exists` too.
        exec(
            &mut conn,
            format!(
                "CREATE ROLE {} WITH {}",
                quote_ident(spec.name),
                login_clause(login)?
            ),
        )
        .await?;
        converge_memberships(&mut conn, spec).await?;
        memberships_on(&mut conn, spec.name).await
    }
    .await;
    let result = finish(&mut conn, result, dry_run).await;
    let _ = conn.close().await;
    result
}

/// Changes the password and memberships of an existing role; `Missing` if it does not exist. Answers the
/// memberships it ends with.
pub async fn update_role(
    url: &str,
    spec: &RoleSpec<'_>,
    dry_run: bool,
) -> Result<Vec<String>, RoleError> {
    let mut conn = connect(url).await?;
    begin(&mut conn).await?;
    let result = async {
        if !role_exists(&mut conn, spec.name).await? {
            return Err(RoleError::Missing(spec.name.to_string()));
        }
        if spec.login != Login::Unchanged {
            exec(
                &mut conn,
                format!(
                    "ALTER ROLE {} WITH {}",
                    quote_ident(spec.name),
                    login_clause(spec.login)?
                ),
            )
            .await?;
        }
        converge_memberships(&mut conn, spec).await?;
        memberships_on(&mut conn, spec.name).await
    }
    .await;
    let result = finish(&mut conn, result, dry_run).await;
    let _ = conn.close().await;
    result
}

/// Drops the role. Objects it owns and privileges it holds are left alone: PostgreSQL then refuses (`InUse`,
/// its detail naming them) and the operator decides (REASSIGN OWNED / DROP OWNED). Answers whether the role
/// existed; a missing role is not an error.
pub async fn drop_role(url: &str, name: &str, dry_run: bool) -> Result<bool, RoleError> {
    let mut conn = connect(url).await?;
    begin(&mut conn).await?;
    let result = async {
        if !role_exists(&mut conn, name).await? {
            return Ok(false);
        }
        exec(&mut conn, format!("DROP ROLE {}", quote_ident(name))).await?;
        Ok(true)
    }
    .await;
    let result = finish(&mut conn, result, dry_run).await;
    let _ = conn.close().await;
    result
}

/// The roles `name` is a direct member of, or `None` when no such role exists.
pub async fn memberships(url: &str, name: &str) -> Result<Option<Vec<String>>, RoleError> {
    let mut conn = connect(url).await?;
    let result = async {
        if !role_exists(&mut conn, name).await? {
            return Ok(None);
        }
        memberships_on(&mut conn, name).await.map(Some)
    }
    .await;
    let _ = conn.close().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_ident("plain"), "\"plain\"");
        assert_eq!(
            quote_ident("a\"; DROP ROLE x; --"),
            "\"a\"\"; DROP ROLE x; --\""
        );
        assert_eq!(quote_literal("it's"), "E'it''s'");
        assert_eq!(quote_literal("back\\slash'"), "E'back\\\\slash'''");
    }

    /// RFC 7677's example exchange (user "user", password "pencil"): a server holding our verifier accepts
    /// the client's proof and answers the RFC's server signature.
    #[test]
    fn scram_verifier_accepts_the_rfc_7677_exchange() {
        use aws_lc_rs::{digest, hmac};
        let b64 = base64::engine::general_purpose::STANDARD;
        let salt = b64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = scram_sha256_verifier("pencil", &salt, NonZeroU32::new(4096).unwrap());
        let rest = v
            .strip_prefix("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$")
            .unwrap();
        let (stored, server) = rest.split_once(':').unwrap();
        let (stored, server) = (b64.decode(stored).unwrap(), b64.decode(server).unwrap());
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,\
            r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,\
            c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let proof = b64
            .decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        let signature = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &stored),
            auth_message.as_bytes(),
        );
        let client_key: Vec<u8> = proof
            .iter()
            .zip(signature.as_ref())
            .map(|(a, b)| a ^ b)
            .collect();
        assert_eq!(
            digest::digest(&digest::SHA256, &client_key).as_ref(),
            stored.as_slice()
        );
        let server_signature = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &server),
            auth_message.as_bytes(),
        );
        assert_eq!(
            b64.encode(server_signature.as_ref()),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn saslprep_maps_non_ascii_spaces() {
        let salt = [7u8; 16];
        let n = NonZeroU32::new(16).unwrap();
        // U+00A0 (no-break space) maps to a space under SASLprep.
        assert_eq!(
            scram_sha256_verifier("a\u{a0}b", &salt, n),
            scram_sha256_verifier("a b", &salt, n)
        );
        // A control character makes SASLprep refuse: the raw password is used, as PostgreSQL does.
        assert_ne!(
            scram_sha256_verifier("a\u{7}b", &salt, n),
            scram_sha256_verifier("ab", &salt, n)
        );
    }

    #[test]
    fn transient_codes() {
        for c in ["08006", "53300", "57P01", "57P03", "40001", "55P03"] {
            assert!(transient(c), "{c}");
        }
        for c in ["42501", "42710", "2BP01", "XX000"] {
            assert!(!transient(c), "{c}");
        }
    }
}

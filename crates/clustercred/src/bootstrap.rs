//! First start: the data directory, the administrator and its bearer token, the token-signing key, the
//! audit key. Every start: the data directory and its secrets are checked before anything in them is used.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clustercred_api::context::signing_key_context;
use clustercred_api::signing::{KeySet, SigningKeys};
use clustercred_authority::{MasterKey, TokenSigner};
use clustercred_store::{AuditKeyRecord, AuditSigner, PrincipalRecord, SigningKeyRecord, Store};
use sha2::{Digest, Sha256};

pub const ADMIN_PRINCIPAL: &str = "admin";
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
pub const DATABASE_FILE: &str = "clustercred.db";

/// Creates the data directory (mode 0700) if needed, then checks it (see [`check_data_dir`]). A directory
/// that holds none of our files yet (an operator's fresh `mkdir`, mode 0755) is tightened to 0700 rather than
/// refused: nothing in it was exposed, and it is closed before the first secret is written. One that others
/// may write to is refused even then (they could have planted files). The database file is created here, mode
/// 0600, because SQLite would create it with the umask's mode (often 0644) and gives its `-wal` and `-shm`
/// files the database file's mode.
pub fn data_dir(dir: &Path, with_database: bool) -> Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating data directory {}", dir.display()))?;
        }
        Err(e) => {
            return Err(e).with_context(|| format!("reading data directory {}", dir.display()));
        }
    }
    let fresh = [MASTER_KEY_FILE, ADMIN_TOKEN_FILE, DATABASE_FILE]
        .iter()
        .all(|name| fs::symlink_metadata(dir.join(name)).is_err());
    if fresh
        && let Ok(meta) = fs::symlink_metadata(dir)
        && meta.is_dir()
        && meta.uid() == rustix::process::geteuid().as_raw()
        && meta.mode() & 0o022 == 0
        && meta.mode() & 0o077 != 0
    {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod 700 {}", dir.display()))?;
        tracing::warn!(path = %dir.display(), "the new data directory was readable by others: changed its mode to 0700");
    }
    check_data_dir(dir)?;
    let db = dir.join(DATABASE_FILE);
    if with_database && !db.exists() {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&db)
            .with_context(|| format!("creating {}", db.display()))?;
    }
    Ok(())
}

/// Refuses a data directory someone else could read or swap: the directory must be a real directory (not a
/// symbolic link) owned by the user running clustercred with no access for group or others, and
/// `master.key`, `admin.token` and the database, where present, real files owned by that user that only it
/// can read or write.
pub fn check_data_dir(dir: &Path) -> Result<()> {
    let uid = rustix::process::geteuid().as_raw();
    let shown = dir.display();
    let meta =
        fs::symlink_metadata(dir).with_context(|| format!("reading data directory {shown}"))?;
    if meta.file_type().is_symlink() {
        bail!(
            "the data directory {shown} is a symbolic link; clustercred does not follow it: pass the real              directory as --data-dir"
        );
    }
    if !meta.is_dir() {
        bail!("the data directory {shown} is not a directory");
    }
    if meta.uid() != uid {
        bail!(
            "the data directory {shown} is owned by uid {}, not by the user running clustercred (uid {uid});              run clustercred as its owner or `chown -R {uid} {shown}`",
            meta.uid()
        );
    }
    if meta.mode() & 0o077 != 0 {
        bail!(
            "the data directory {shown} is accessible to group or others (mode {:04o}); fix it with `chmod 700 {shown}`",
            meta.mode() & 0o7777
        );
    }
    for name in [MASTER_KEY_FILE, ADMIN_TOKEN_FILE, DATABASE_FILE] {
        check_secret_file(&dir.join(name), uid)?;
    }
    Ok(())
}

/// A secret in the data directory, if present, is a regular file of ours with mode 0600 or stricter.
fn check_secret_file(path: &Path, uid: u32) -> Result<()> {
    let shown = path.display();
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {shown}")),
    };
    if meta.file_type().is_symlink() {
        bail!(
            "{shown} is a symbolic link; clustercred does not follow it: replace it with the file itself"
        );
    }
    if !meta.is_file() {
        bail!("{shown} is not a regular file");
    }
    if meta.uid() != uid {
        bail!(
            "{shown} is owned by uid {}, not by the user running clustercred (uid {uid}); `chown {uid} {shown}`",
            meta.uid()
        );
    }
    if meta.mode() & 0o077 != 0 {
        bail!(
            "{shown} is readable or writable by group or others (mode {:04o}); fix it with `chmod 600 {shown}`",
            meta.mode() & 0o7777
        );
    }
    Ok(())
}

/// Reads a secret without following a symbolic link in its last component.
fn read_secret(path: &Path) -> Result<zeroize::Zeroizing<String>> {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let mut text = zeroize::Zeroizing::new(String::new());
    file.read_to_string(&mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(text)
}

/// On first start, creates the administrator and writes its bearer token to `admin.token` (mode 0600). The
/// store keeps only the token's SHA-256. Returns the token file's path.
/// Creates the administrator and its bearer token once: with several replicas on one database, the one whose
/// insert wins writes `admin.token` into its data directory; the others use the administrator it created.
pub async fn admin(store: &dyn Store, dir: &Path, now_unix: i64) -> Result<PathBuf> {
    let path = dir.join(ADMIN_TOKEN_FILE);
    if store.get_principal(ADMIN_PRINCIPAL).await?.is_some() {
        return Ok(path);
    }
    let token =
        zeroize::Zeroizing::new(format!("ccadm_{}", hex::encode(rand::random::<[u8; 32]>())));
    // The file is written (and synced) before the token exists in the store, and put in place only if ours
    // is the administrator created: a crash in between leaves a stray temporary file, never a working token
    // that nobody holds.
    let pending = dir.join(format!("{ADMIN_TOKEN_FILE}.new"));
    let _ = fs::remove_file(&pending);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&pending)
        .with_context(|| format!("writing {}", pending.display()))?;
    file.write_all(token.as_bytes())?;
    file.sync_all()?;
    let created = store
        .create_user(
            &PrincipalRecord {
                id: ADMIN_PRINCIPAL.into(),
                kind: "user".into(),
                display_name: "Administrator (created on first start)".into(),
                create_time_unix: now_unix,
            },
            &Sha256::digest(token.as_bytes()),
            None,
        )
        .await;
    match created {
        Ok(true) => {
            fs::rename(&pending, &path)
                .with_context(|| format!("moving the admin token to {}", path.display()))?;
            tracing::info!(path = %path.display(), "created the administrator; its bearer token is in this file");
        }
        Ok(false) => {
            let _ = fs::remove_file(&pending);
            tracing::info!("the administrator was created by another replica");
        }
        Err(e) => {
            let _ = fs::remove_file(&pending);
            return Err(e.into());
        }
    }
    Ok(path)
}

pub async fn root_policy(store: &dyn Store, now_unix: i64) -> Result<()> {
    use clustercred_api::iam::{policy, roles};
    let current = policy::load(store, policy::ROOT)
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    if current.etag != policy::EMPTY_ETAG {
        return Ok(());
    }
    let member = format!("user:{ADMIN_PRINCIPAL}");
    let event = clustercred_store::AuditEvent {
        time_unix_nanos: now_unix.saturating_mul(1_000_000_000),
        principal: "clustercred:bootstrap".into(),
        method: "bootstrap".into(),
        resource: policy::ROOT.into(),
        outcome: "ok".into(),
        status: "OK".into(),
        detail: format!("+{} {member}", roles::ADMIN_ROLE),
        ..Default::default()
    };
    let changed = policy::change_binding(
        store,
        policy::ROOT,
        roles::ADMIN_ROLE,
        &member,
        true,
        now_unix,
        Some(&event),
    )
    .await;
    match changed {
        Ok(_) => Ok(()),
        // Another replica starting at the same time wrote the root policy first.
        Err(_)
            if policy::load(store, policy::ROOT)
                .await
                .is_ok_and(|p| p.etag != policy::EMPTY_ETAG) =>
        {
            Ok(())
        }
        Err(s) => Err(anyhow::anyhow!("{}", s.message())),
    }
}

/// The newest token-signing key (sealed under the master key), generated on first start.
pub async fn signing_key(
    store: &dyn Store,
    master: &MasterKey,
    now_unix: i64,
) -> Result<TokenSigner> {
    if let Some(record) = store.signing_keys().await?.into_iter().next() {
        let der = master
            .open(&record.key_der, &signing_key_context(&record.kid))
            .context("opening the token-signing key")?;
        return TokenSigner::from_pkcs8(&der).context("loading the token-signing key");
    }
    let (signer, der) = TokenSigner::generate().context("generating the token-signing key")?;
    let stored = store
        .first_signing_key(&SigningKeyRecord {
            kid: signer.kid().to_string(),
            key_der: master.seal(&der, &signing_key_context(signer.kid()))?,
            create_time_unix: now_unix,
        })
        .await?;
    if stored.kid == signer.kid() {
        return Ok(signer);
    }
    // Another replica stored its key first: every replica signs and verifies with that one.
    let der = master
        .open(&stored.key_der, &signing_key_context(&stored.kid))
        .context("opening the token-signing key")?;
    TokenSigner::from_pkcs8(&der).context("loading the token-signing key")
}

/// How long a replaced token-signing key keeps verifying: the longest token lifetime (1 h) and a margin for
/// clock skew.
pub const SIGNING_KEY_OVERLAP_SECS: i64 = 3600 + 300;

/// The token-signing key set in use: the newest stored key signs, and every key replaced less than
/// [`SIGNING_KEY_OVERLAP_SECS`] ago still verifies, so a token signed before a rotation keeps working until it
/// expires. Generates the first key on first start.
pub async fn signing_keys(store: &dyn Store, master: &MasterKey, now_unix: i64) -> Result<KeySet> {
    let current = signing_key(store, master, now_unix).await?;
    let records = store.signing_keys().await?;
    let known = [std::sync::Arc::new(current)];
    key_set(&records, now_unix, master, &known)
}

/// Re-reads the stored keys and replaces `keys` when the set in use has changed: a rotation made by the CLI
/// or another replica, or a replaced key whose overlap ended. Keys already open are reused, not unsealed
/// again. Answers whether the set changed; on an error the set in use stays.
pub async fn reload_signing_keys(
    store: &dyn Store,
    master: &MasterKey,
    keys: &SigningKeys,
    now_unix: i64,
) -> Result<bool> {
    let records = store.signing_keys().await?;
    let current = keys.current();
    let wanted: Vec<&str> = in_use(&records, now_unix)
        .iter()
        .map(|r| r.kid.as_str())
        .collect();
    if wanted.is_empty() || wanted == current.kids() {
        return Ok(false);
    }
    let set = key_set(&records, now_unix, master, current.keys())?;
    tracing::info!(kid = %set.signer().kid(), keys = set.keys().len(), "the token-signing key set changed");
    keys.replace(set);
    Ok(true)
}

/// The records of the keys in use, newest first: the newest, and each older one whose successor was created
/// less than [`SIGNING_KEY_OVERLAP_SECS`] ago.
fn in_use(records: &[SigningKeyRecord], now_unix: i64) -> Vec<&SigningKeyRecord> {
    let mut keys: Vec<&SigningKeyRecord> = records.iter().take(1).collect();
    for pair in records.windows(2) {
        let (successor, record) = (&pair[0], &pair[1]);
        if successor.create_time_unix + SIGNING_KEY_OVERLAP_SECS < now_unix {
            break;
        }
        if !keys.iter().any(|k| k.kid == record.kid) {
            keys.push(record);
        }
    }
    keys
}

/// The key set of `records` in use at `now_unix`, reusing the keys of `known` by id.
fn key_set(
    records: &[SigningKeyRecord],
    now_unix: i64,
    master: &MasterKey,
    known: &[std::sync::Arc<TokenSigner>],
) -> Result<KeySet> {
    let mut keys = Vec::new();
    for record in in_use(records, now_unix) {
        if let Some(key) = known.iter().find(|k| k.kid() == record.kid) {
            keys.push(key.clone());
            continue;
        }
        let der = master
            .open(&record.key_der, &signing_key_context(&record.kid))
            .with_context(|| format!("opening the token-signing key {}", record.kid))?;
        keys.push(std::sync::Arc::new(
            TokenSigner::from_pkcs8(&der).context("loading a token-signing key")?,
        ));
    }
    let mut keys = keys.into_iter();
    let current = keys.next().context("no token-signing key is stored")?;
    Ok(KeySet::new(current, keys.collect()))
}

pub const MASTER_KEY_FILE: &str = "master.key";

/// Where the key-encryption key comes from, first match wins: `--master-key-file`, the environment
/// (`CLUSTERCRED_MASTER_KEY`, base64), or `DIR/master.key`, generated on first start with a warning that
/// it belongs elsewhere (a key beside the database it protects only guards against a stolen database file).
pub fn master_key(dir: &Path, file: Option<&Path>) -> Result<MasterKey> {
    use base64::Engine;
    if let Some(key) = existing_master_key(dir, file)? {
        return Ok(key);
    }
    let path = dir.join(MASTER_KEY_FILE);
    let (key, bytes) = MasterKey::generate()?;
    let encoded = zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&bytes));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)?;
    f.write_all(encoded.as_bytes())?;
    f.sync_all()?;
    tracing::warn!(path = %path.display(), "generated a master key beside the database; in production keep it \
        elsewhere (--master-key-file or CLUSTERCRED_MASTER_KEY) so a copy of the data directory does not carry it");
    Ok(key)
}

/// The master key from the same places as [`master_key`], without generating one when there is none.
pub fn existing_master_key(dir: &Path, file: Option<&Path>) -> Result<Option<MasterKey>> {
    use base64::Engine;
    let decode = |text: &str| -> Result<MasterKey> {
        let text = text.trim();
        let bytes = zeroize::Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
                .context("the master key must be 32 bytes, base64-encoded")?,
        );
        Ok(MasterKey::from_bytes(&bytes)?)
    };
    if let Some(path) = file {
        let text = zeroize::Zeroizing::new(
            fs::read_to_string(path)
                .with_context(|| format!("reading the master key {}", path.display()))?,
        );
        return decode(&text).map(Some);
    }
    if let Ok(text) = std::env::var("CLUSTERCRED_MASTER_KEY") {
        let text = zeroize::Zeroizing::new(text);
        return decode(&text).map(Some);
    }
    let path = dir.join(MASTER_KEY_FILE);
    if fs::symlink_metadata(&path).is_ok() {
        check_secret_file(&path, rustix::process::geteuid().as_raw())?;
        return decode(&read_secret(&path)?).map(Some);
    }
    Ok(None)
}

/// What a sealed audit key is bound to: its key id.
pub fn audit_key_context(kid: &str) -> String {
    format!("audit-key:{kid}")
}

/// The key that signs audit checkpoints (sealed under the master key), generated on first start. Two first
/// starts at once agree on one key (the store keeps the first).
pub async fn audit_key(
    store: &dyn Store,
    master: &MasterKey,
    now_unix: i64,
) -> Result<AuditSigner> {
    if let Some(record) = store.audit_keys().await?.into_iter().next() {
        return open_audit_key(master, &record);
    }
    let (signer, der) = AuditSigner::generate().context("generating the audit key")?;
    let record = AuditKeyRecord {
        kid: signer.kid(),
        key_der: master.seal(&der, &audit_key_context(&signer.kid()))?,
        public_key: signer.public_key().raw().to_vec(),
        create_time_unix: now_unix,
    };
    let stored = store.put_audit_key(&record).await?;
    if stored.kid == record.kid {
        Ok(signer)
    } else {
        open_audit_key(master, &stored)
    }
}

/// Opens a stored audit key; its id must be the id of the key inside (the id names the public key).
pub fn open_audit_key(master: &MasterKey, record: &AuditKeyRecord) -> Result<AuditSigner> {
    let der = master
        .open(&record.key_der, &audit_key_context(&record.kid))
        .context("opening the audit key with the master key")?;
    let signer = AuditSigner::from_pkcs8(&der).context("loading the audit key")?;
    if signer.kid() != record.kid {
        bail!(
            "the stored audit key {} holds key {}: the key table was altered",
            record.kid,
            signer.kid()
        );
    }
    Ok(signer)
}

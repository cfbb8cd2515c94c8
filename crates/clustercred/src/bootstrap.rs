//! First start: the data directory, the administrator and its bearer token, the token-signing key.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clustercred_api::context::signing_key_context;
use clustercred_authority::{MasterKey, TokenSigner};
use clustercred_store::{PrincipalRecord, SigningKeyRecord, Store};
use sha2::{Digest, Sha256};

pub const ADMIN_PRINCIPAL: &str = "admin";
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
pub const DATABASE_FILE: &str = "clustercred.db";

/// Creates the data directory (mode 0700) if needed.
pub fn data_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating data directory {}", dir.display()))?;
    }
    Ok(())
}

/// On first start, creates the administrator and writes its bearer token to `admin.token` (mode 0600). The
/// store keeps only the token's SHA-256. Returns the token file's path.
pub async fn admin(store: &dyn Store, dir: &Path, now_unix: i64) -> Result<PathBuf> {
    let path = dir.join(ADMIN_TOKEN_FILE);
    if store.get_principal(ADMIN_PRINCIPAL).await?.is_some() {
        return Ok(path);
    }
    let token = format!("ccadm_{}", hex::encode(rand::random::<[u8; 32]>()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    // An existing file keeps its old mode through open(): set it explicitly.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
    file.write_all(token.as_bytes())?;
    file.sync_all()?;
    store
        .put_principal(&PrincipalRecord {
            id: ADMIN_PRINCIPAL.into(),
            kind: "user".into(),
            display_name: "Administrator (created on first start)".into(),
            create_time_unix: now_unix,
        })
        .await?;
    store
        .put_bearer_token(
            &Sha256::digest(token.as_bytes()),
            ADMIN_PRINCIPAL,
            now_unix,
            None,
        )
        .await?;
    tracing::info!(path = %path.display(), "created the administrator; its bearer token is in this file");
    Ok(path)
}

/// On first start (or on a database from before IAM), binds the administrator to clustercred's admin role in
/// the root policy, which sits above every project.
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
        status: "Ok".into(),
        detail: format!("+{} {member}", roles::ADMIN_ROLE),
        ..Default::default()
    };
    policy::change_binding(
        store,
        policy::ROOT,
        roles::ADMIN_ROLE,
        &member,
        true,
        now_unix,
        Some(&event),
    )
    .await
    .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    Ok(())
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
    store
        .put_signing_key(&SigningKeyRecord {
            kid: signer.kid().to_string(),
            key_der: master.seal(&der, &signing_key_context(signer.kid()))?,
            create_time_unix: now_unix,
        })
        .await?;
    Ok(signer)
}

pub const MASTER_KEY_FILE: &str = "master.key";

/// Where the key-encryption key comes from, first match wins: `--master-key-file`, the environment
/// (`CLUSTERCRED_MASTER_KEY`, base64), or `DIR/master.key`, generated on first start with a warning that
/// it belongs elsewhere (a key beside the database it protects only guards against a stolen database file).
pub fn master_key(dir: &Path, file: Option<&Path>) -> Result<MasterKey> {
    use base64::Engine;
    let decode = |text: &str| -> Result<zeroize::Zeroizing<Vec<u8>>> {
        let text = text.trim();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
            .context("the master key must be 32 bytes, base64-encoded")?;
        Ok(zeroize::Zeroizing::new(bytes))
    };
    if let Some(path) = file {
        let text = zeroize::Zeroizing::new(
            fs::read_to_string(path)
                .with_context(|| format!("reading the master key {}", path.display()))?,
        );
        return Ok(MasterKey::from_bytes(&decode(&text)?)?);
    }
    if let Ok(text) = std::env::var("CLUSTERCRED_MASTER_KEY") {
        let text = zeroize::Zeroizing::new(text);
        return Ok(MasterKey::from_bytes(&decode(&text)?)?);
    }
    let path = dir.join(MASTER_KEY_FILE);
    if path.exists() {
        let text = zeroize::Zeroizing::new(fs::read_to_string(&path)?);
        return Ok(MasterKey::from_bytes(&decode(&text)?)?);
    }
    let (key, bytes) = MasterKey::generate()?;
    let encoded = zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&bytes));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(encoded.as_bytes())?;
    f.sync_all()?;
    tracing::warn!(path = %path.display(), "generated a master key beside the database; in production keep it \
        elsewhere (--master-key-file or CLUSTERCRED_MASTER_KEY) so a copy of the data directory does not carry it");
    Ok(key)
}

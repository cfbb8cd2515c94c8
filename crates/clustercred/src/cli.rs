//! Offline administration against the data directory: audit log listing and verification, IAM bindings,
//! users and service accounts. These work while the server runs (SQLite in WAL mode allows it).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use clustercred_api::iam::service_accounts::IamService;
use clustercred_api::iam::{policy, roles};
use clustercred_api::{
    Caller, Clock, Ctx, Principal, PrincipalKind, RequestMeta, Settings, SystemClock,
};
use clustercred_store::{AuditEvent, AuditFilter, AuditPublicKey, Store, verify_anchored};

use crate::bootstrap;

#[derive(Args)]
pub struct DataDir {
    /// The server's data directory.
    #[arg(
        long,
        env = "CLUSTERCRED_DATA_DIR",
        default_value = "./clustercred-data"
    )]
    pub data_dir: PathBuf,
    /// The server's PostgreSQL database, when it runs on one (`--database` of `serve`).
    #[arg(long, env = "CLUSTERCRED_DATABASE")]
    pub database: Option<String>,
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Print audit events as JSON lines, oldest first.
    List {
        #[command(flatten)]
        dir: DataDir,
        /// Only events of this principal (e.g. `user:admin`, `serviceAccount:EMAIL`).
        #[arg(long)]
        principal: Option<String>,
        /// Only events on this resource or below it (e.g. a cluster name).
        #[arg(long)]
        resource: Option<String>,
        /// Only events whose method contains this text (e.g. `GenerateClientCertificate`).
        #[arg(long)]
        method: Option<String>,
        /// Only events at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only events before this RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Check the hash chain of the whole audit log and every signed checkpoint of it (signature, on the
    /// chain, chain not shorter than the newest); exits 1 naming what broke. On success, anchors the head
    /// with a new checkpoint when the master key is at hand.
    Verify {
        #[command(flatten)]
        dir: DataDir,
        /// Verify checkpoints with this public key (from `clustercred audit public-key`, kept elsewhere)
        /// instead of the key in the database: catches a log rewritten and re-signed with a fresh key.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// The master key, when not in the environment or the data directory.
        #[arg(long)]
        master_key_file: Option<PathBuf>,
    },
    /// Print the audit checkpoint key's public half (PEM); keep a copy away from the server for
    /// `audit verify --public-key`.
    PublicKey {
        #[command(flatten)]
        dir: DataDir,
        /// The master key, when not in the environment or the data directory.
        #[arg(long)]
        master_key_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum IamCommand {
    /// Grant a role to a member on a project, or on every project (`--project` left out: the root policy).
    AddBinding {
        #[command(flatten)]
        dir: DataDir,
        #[arg(long)]
        project: Option<String>,
        /// `user:NAME`, `serviceAccount:EMAIL` or `group:NAME`.
        #[arg(long)]
        member: String,
        /// e.g. `roles/alloydb.client`.
        #[arg(long)]
        role: String,
    },
    /// Take a role away from a member.
    RemoveBinding {
        #[command(flatten)]
        dir: DataDir,
        #[arg(long)]
        project: Option<String>,
        #[arg(long)]
        member: String,
        #[arg(long)]
        role: String,
    },
    /// Print a policy as JSON.
    GetPolicy {
        #[command(flatten)]
        dir: DataDir,
        #[arg(long)]
        project: Option<String>,
    },
    /// List the predefined roles.
    Roles,
    /// Create a user principal (`user:ID`) with a bearer token written to `--token-file` (mode 0600).
    CreateUser {
        #[command(flatten)]
        dir: DataDir,
        #[arg(long)]
        id: String,
        #[arg(long)]
        token_file: PathBuf,
        /// The token stops working this many seconds after it is made (default: until revoked).
        #[arg(long)]
        expires_in_secs: Option<u64>,
    },
    /// Revoke every bearer token of a user at once (issue a new one with `create-user`).
    RevokeTokens {
        #[command(flatten)]
        dir: DataDir,
        #[arg(long)]
        id: String,
    },
    /// Create a service account, and with `--key-file` a key file for it (mode 0600).
    CreateServiceAccount {
        #[command(flatten)]
        dir: DataDir,
        #[arg(long)]
        project: String,
        #[arg(long)]
        account_id: String,
        #[arg(long, default_value = "")]
        display_name: String,
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// The master key, when not in the environment or the data directory.
        #[arg(long)]
        master_key_file: Option<PathBuf>,
        /// The server's public URL, for the key file's token_uri.
        #[arg(
            long,
            env = "CLUSTERCRED_ISSUER_URL",
            default_value = "http://127.0.0.1:8080"
        )]
        issuer_url: String,
    },
}

async fn open(dir: &DataDir) -> Result<Arc<dyn Store>> {
    crate::database::open(
        &dir.data_dir,
        dir.database.as_deref(),
        false,
        clustercred_store::DEFAULT_STORE_TIMEOUT,
    )
    .await
}

fn operator() -> String {
    std::env::var("USER").unwrap_or_else(|_| "unknown".into())
}

fn cli_event(resource: &str, method: &str, detail: String) -> AuditEvent {
    AuditEvent {
        time_unix_nanos: i64::try_from(SystemClock.now().unix_timestamp_nanos())
            .unwrap_or(i64::MAX),
        principal: format!("cli:{}", operator()),
        method: format!("cli/{method}"),
        resource: resource.to_string(),
        outcome: "ok".into(),
        status: "OK".into(),
        detail,
        ..Default::default()
    }
}

fn parse_time(flag: &str, value: &Option<String>) -> Result<Option<i64>> {
    value
        .as_deref()
        .map(|v| {
            let t = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
                .with_context(|| format!("--{flag} must be an RFC 3339 time"))?;
            Ok(i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX))
        })
        .transpose()
}

pub async fn audit(command: AuditCommand) -> Result<()> {
    match command {
        AuditCommand::List {
            dir,
            principal,
            resource,
            method,
            since,
            until,
            limit,
        } => {
            let store = open(&dir).await?;
            let filter = AuditFilter {
                principal,
                resource_prefix: resource,
                method_contains: method,
                since_unix_nanos: parse_time("since", &since)?,
                until_unix_nanos: parse_time("until", &until)?,
                limit,
            };
            for stored in store.list_audit(&filter).await? {
                let mut line = serde_json::to_value(&stored.event)?;
                line["seq"] = stored.seq.into();
                line["hash"] = hex::encode(&stored.hash).into();
                println!("{line}");
            }
            Ok(())
        }
        AuditCommand::Verify {
            dir,
            public_key,
            master_key_file,
        } => verify(&dir, public_key.as_deref(), master_key_file.as_deref()).await,
        AuditCommand::PublicKey {
            dir,
            master_key_file,
        } => {
            let store = open(&dir).await?;
            crate::database::require_shared_master_key(
                dir.database.as_deref(),
                master_key_file.as_deref(),
            )?;
            let master = bootstrap::master_key(&dir.data_dir, master_key_file.as_deref())?;
            let now = SystemClock.now().unix_timestamp();
            let signer = bootstrap::audit_key(store.as_ref(), &master, now).await?;
            print!("{}", signer.public_key().to_pem());
            store.close().await;
            Ok(())
        }
    }
}

/// `audit verify`: the chain, then the checkpoints against trusted keys. Trusted keys are, in order of
/// strength: `--public-key`; the stored audit key opened with the master key (a key swapped in without the
/// master key does not open); the public keys stored in the clear, with a warning.
async fn verify(
    dir: &DataDir,
    public_key: Option<&Path>,
    master_key_file: Option<&Path>,
) -> Result<()> {
    let store = open(dir).await?;
    let master = bootstrap::existing_master_key(&dir.data_dir, master_key_file)?;
    let mut signer = None;
    let trusted = match public_key {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the audit public key {}", path.display()))?;
            vec![AuditPublicKey::parse(&text).with_context(|| path.display().to_string())?]
        }
        None => {
            let mut keys = Vec::new();
            for record in store.audit_keys().await? {
                match &master {
                    Some(master) => {
                        let s = bootstrap::open_audit_key(master, &record)?;
                        keys.push(s.public_key().clone());
                        signer.get_or_insert(s);
                    }
                    None => keys.push(
                        AuditPublicKey::from_raw(&record.public_key)
                            .with_context(|| format!("the stored audit key {}", record.kid))?,
                    ),
                }
            }
            if master.is_none() {
                eprintln!(
                    "warning: no master key at hand: checkpoints are checked against the public key stored in \
                     the database; pass --public-key FILE (or the master key) for a check that does not trust it"
                );
            }
            keys
        }
    };
    // Checkpoints first: one written after the events were read would name events not yet read.
    let checkpoints = store.checkpoints().await?;
    let events = store.list_audit(&AuditFilter::default()).await?;
    let report =
        verify_anchored(&events, &checkpoints, &trusted).map_err(|b| anyhow::anyhow!("{b}"))?;
    let last = events.last();
    println!(
        "audit log intact: {} events, last hash {}; {} checkpoints verified{}",
        report.events,
        last.map(|e| hex::encode(&e.hash)).unwrap_or_default(),
        report.checkpoints,
        report
            .newest_checkpoint_seq
            .map(|s| format!(" (newest vouches for event {s})"))
            .unwrap_or_default()
    );
    // Anchor what was just verified, so a later truncation or rewrite of it is caught.
    if let (Some(last), Some(master)) = (last, &master)
        && report.newest_checkpoint_seq != Some(last.seq)
    {
        let signer = match signer {
            Some(s) => s,
            None => {
                bootstrap::audit_key(store.as_ref(), master, SystemClock.now().unix_timestamp())
                    .await?
            }
        };
        if public_key.is_none() || trusted.contains(signer.public_key()) {
            let now = i64::try_from(SystemClock.now().unix_timestamp_nanos()).unwrap_or(i64::MAX);
            let id = store
                .append_checkpoint(&signer.checkpoint(last.seq, &last.hash, now))
                .await?;
            println!("wrote checkpoint {id} for event {}", last.seq);
        }
    }
    store.close().await;
    Ok(())
}

fn policy_resource(project: &Option<String>) -> String {
    match project {
        Some(p) => policy::resource_of_project(p),
        None => policy::ROOT.to_string(),
    }
}

fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

pub async fn iam(command: IamCommand) -> Result<()> {
    let now = SystemClock.now().unix_timestamp();
    match command {
        IamCommand::AddBinding {
            dir,
            project,
            member,
            role,
        } => binding(dir, project, member, role, true, now).await,
        IamCommand::RemoveBinding {
            dir,
            project,
            member,
            role,
        } => binding(dir, project, member, role, false, now).await,
        IamCommand::GetPolicy { dir, project } => {
            let store = open(&dir).await?;
            let p = policy::load(store.as_ref(), &policy_resource(&project))
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            println!("{}", serde_json::to_string_pretty(&policy_json(&p))?);
            Ok(())
        }
        IamCommand::Roles => {
            for r in roles::known_roles() {
                println!("{r}");
            }
            Ok(())
        }
        IamCommand::CreateUser {
            dir,
            id,
            token_file,
            expires_in_secs,
        } => {
            let expires = expires_in_secs
                .map(|s| {
                    i64::try_from(s)
                        .ok()
                        .and_then(|s| now.checked_add(s))
                        .filter(|_| s > 0)
                        .context("--expires-in-secs must be between 1 and 2^63 - now")
                })
                .transpose()?;
            if id.is_empty()
                || id.len() > 128
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "@._-".contains(c))
            {
                bail!("--id may hold letters, digits and @ . _ - (at most 128)");
            }
            let store = open(&dir).await?;
            let token = format!("ccusr_{}", hex::encode(rand::random::<[u8; 32]>()));
            write_secret(&token_file, token.as_bytes())?;
            store
                .put_principal(&clustercred_store::PrincipalRecord {
                    id: id.clone(),
                    kind: "user".into(),
                    display_name: id.clone(),
                    create_time_unix: now,
                })
                .await?;
            use sha2::Digest;
            store
                .put_bearer_token(&sha2::Sha256::digest(token.as_bytes()), &id, now, expires)
                .await?;
            store
                .append_audit(&cli_event(
                    &format!("user:{id}"),
                    "create-user",
                    "created user and bearer token".into(),
                ))
                .await?;
            println!(
                "created user:{id}; its bearer token is in {} (grant roles with `clustercred iam add-binding`)",
                token_file.display()
            );
            Ok(())
        }
        IamCommand::RevokeTokens { dir, id } => {
            let store = open(&dir).await?;
            let event = cli_event(
                &format!("user:{id}"),
                "revoke-tokens",
                "revoked every bearer token".into(),
            );
            let revoked = store.revoke_bearer_tokens(&id, Some(&event)).await?;
            println!("revoked {revoked} bearer token(s) of user:{id}");
            Ok(())
        }
        IamCommand::CreateServiceAccount {
            dir,
            project,
            account_id,
            display_name,
            key_file,
            master_key_file,
            issuer_url,
        } => {
            crate::database::require_shared_master_key(
                dir.database.as_deref(),
                master_key_file.as_deref(),
            )?;
            let store = open(&dir).await?;
            let master = Arc::new(bootstrap::master_key(
                &dir.data_dir,
                master_key_file.as_deref(),
            )?);
            let signing = Arc::new(clustercred_api::signing::SigningKeys::new(
                bootstrap::signing_keys(store.as_ref(), &master, now).await?,
            ));
            let dyn_store: Arc<dyn Store> = store.clone();
            let clock: Arc<dyn Clock> = Arc::new(SystemClock);
            let settings = Settings {
                token_issuer: issuer_url.trim_end_matches('/').to_string(),
                ..Settings::default()
            };
            let access = Arc::new(clustercred_api::iam::access::IamAccess::new(
                dyn_store.clone(),
                signing.clone(),
                clock.clone(),
                settings.token_issuer.clone(),
                settings.token_leeway,
            ));
            let ctx = Arc::new(Ctx::new(
                dyn_store, clock, settings, signing, access, master,
            ));
            let caller = Caller {
                principal: Principal {
                    id: operator(),
                    kind: PrincipalKind::Cli,
                    scopes: None,
                },
                meta: RequestMeta {
                    method: "cli/create-service-account".into(),
                    ..Default::default()
                },
                held: Vec::new(),
            };
            let service = IamService::new(ctx);
            let account = service
                .create_account(&caller, &project, &account_id, &display_name, "")
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            println!("created service account {}", account.email);
            if let Some(path) = key_file {
                let key = service
                    .create_key(&caller, &account.name)
                    .await
                    .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
                write_secret(&path, &key.private_key_data)?;
                println!("wrote its key file to {}", path.display());
            }
            Ok(())
        }
    }
}

async fn binding(
    dir: DataDir,
    project: Option<String>,
    member: String,
    role: String,
    add: bool,
    now: i64,
) -> Result<()> {
    let store = open(&dir).await?;
    let resource = policy_resource(&project);
    let sign = if add { '+' } else { '-' };
    let event = cli_event(&resource, "iam", format!("{sign}{role} {member}"));
    let updated = policy::change_binding(
        store.as_ref(),
        &resource,
        &role,
        &member,
        add,
        now,
        Some(&event),
    )
    .await
    .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    println!("{}", serde_json::to_string_pretty(&policy_json(&updated))?);
    Ok(())
}

fn policy_json(p: &clustercred_proto::google::iam::v1::Policy) -> serde_json::Value {
    use base64::Engine;
    serde_json::json!({
        "version": p.version,
        "etag": base64::engine::general_purpose::STANDARD.encode(&p.etag),
        "bindings": p.bindings.iter().map(|b| serde_json::json!({"role": b.role, "members": b.members})).collect::<Vec<_>>(),
    })
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Re-seal every stored private key under a new master key, in one transaction. Stop the server first.
    RotateMaster {
        #[command(flatten)]
        dir: DataDir,
        /// The current master key, when not in the environment or the data directory.
        #[arg(long)]
        master_key_file: Option<PathBuf>,
        /// The new master key (32 bytes, base64). Generated into this path (mode 0600) if it does not exist.
        #[arg(long)]
        new_master_key_file: PathBuf,
    },
    /// Add a new token-signing key. Running servers sign with it within their cache staleness bound, without a
    /// restart; tokens signed with the key it replaces keep verifying for an hour and five minutes after this.
    RotateSigning {
        #[command(flatten)]
        dir: DataDir,
        /// The master key, when not in the environment or the data directory.
        #[arg(long)]
        master_key_file: Option<PathBuf>,
    },
}

async fn rotate_signing(dir: DataDir, master_key_file: Option<PathBuf>) -> Result<()> {
    use clustercred_api::context::signing_key_context;
    crate::database::require_shared_master_key(
        dir.database.as_deref(),
        master_key_file.as_deref(),
    )?;
    let store = open(&dir).await?;
    let master = bootstrap::existing_master_key(&dir.data_dir, master_key_file.as_deref())?
        .context("no master key: pass --master-key-file or set CLUSTERCRED_MASTER_KEY")?;
    let now = SystemClock.now().unix_timestamp();
    // Never at the same second as the key it replaces: "newest" is decided by creation time.
    let newest = store
        .signing_keys()
        .await?
        .first()
        .map(|k| k.create_time_unix);
    let create_time = newest.map_or(now, |t| now.max(t + 1));
    let (signer, der) = clustercred_authority::TokenSigner::generate()?;
    store
        .put_signing_key(&clustercred_store::SigningKeyRecord {
            kid: signer.kid().to_string(),
            key_der: master.seal(&der, &signing_key_context(signer.kid()))?,
            create_time_unix: create_time,
        })
        .await?;
    store
        .append_audit(&cli_event(
            "signing-keys",
            "clustercred keys rotate-signing",
            format!("+{}", signer.kid()),
        ))
        .await?;
    println!(
        "added token-signing key {}; running servers sign with it within their cache staleness bound \
         (--cache-staleness-ms)",
        signer.kid()
    );
    store.close().await;
    Ok(())
}

pub async fn keys(command: KeysCommand) -> Result<()> {
    use base64::Engine;
    use clustercred_api::context::{ca_key_context, signing_key_context};
    use clustercred_authority::MasterKey;
    let (dir, master_key_file, new_master_key_file) = match command {
        KeysCommand::RotateMaster {
            dir,
            master_key_file,
            new_master_key_file,
        } => (dir, master_key_file, new_master_key_file),
        KeysCommand::RotateSigning {
            dir,
            master_key_file,
        } => return rotate_signing(dir, master_key_file).await,
    };
    crate::database::require_shared_master_key(
        dir.database.as_deref(),
        master_key_file.as_deref(),
    )?;
    let store = open(&dir).await?;
    let current = bootstrap::master_key(&dir.data_dir, master_key_file.as_deref())?;
    let new = if new_master_key_file.exists() {
        bootstrap::master_key(&dir.data_dir, Some(&new_master_key_file))?
    } else {
        let (key, bytes) = MasterKey::generate()?;
        let encoded =
            zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&bytes));
        write_secret(&new_master_key_file, encoded.as_bytes())?;
        key
    };
    if new.id() == current.id() {
        bail!("the new master key is the current one");
    }
    let mut resealed = Vec::new();
    for key in store.sealed_keys().await? {
        let context = match key.kind.as_str() {
            "ca" => ca_key_context(&key.id),
            "audit_key" => bootstrap::audit_key_context(&key.id),
            _ => signing_key_context(&key.id),
        };
        let plaintext = current.open(&key.sealed, &context).with_context(|| {
            format!(
                "opening the {} key of {} with the current master key",
                key.kind, key.id
            )
        })?;
        resealed.push(clustercred_store::SealedKey {
            sealed: new.seal(&plaintext, &context)?,
            ..key
        });
    }
    let event = cli_event(
        "keys",
        "rotate-master",
        format!(
            "re-sealed {} keys: master key {} -> {}",
            resealed.len(),
            current.id(),
            new.id()
        ),
    );
    store.replace_sealed_keys(&resealed, Some(&event)).await?;
    // A default setup reads DIR/master.key: keep it working by putting the new key there too.
    let default_path = dir.data_dir.join(bootstrap::MASTER_KEY_FILE);
    if master_key_file.is_none()
        && std::env::var("CLUSTERCRED_MASTER_KEY").is_err()
        && default_path.exists()
    {
        let tmp = dir.data_dir.join("master.key.new");
        let _ = std::fs::remove_file(&tmp);
        std::fs::copy(&new_master_key_file, &tmp)?;
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        std::fs::rename(&tmp, &default_path)?;
        println!(
            "re-sealed {} keys under master key {}; {} now holds it",
            resealed.len(),
            new.id(),
            default_path.display()
        );
    } else {
        println!(
            "re-sealed {} keys under master key {}; start the server with --master-key-file {}",
            resealed.len(),
            new.id(),
            new_master_key_file.display()
        );
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum AlloydbCommand {
    /// Revoke AlloyDB client certificates: one by serial, or every unexpired one of a principal. Instance
    /// endpoints (every replica) refuse them from the next connection on.
    RevokeCertificate {
        #[command(flatten)]
        dir: DataDir,
        /// The cluster whose CA issued them: `projects/P/locations/L/clusters/C`.
        #[arg(long)]
        cluster: String,
        /// The certificate's serial number in hex (as in the issuance records and the audit log).
        #[arg(
            long,
            conflicts_with = "principal",
            required_unless_present = "principal"
        )]
        serial: Option<String>,
        /// Every unexpired certificate issued to this principal id (the certificate's subject CN).
        #[arg(long)]
        principal: Option<String>,
    },
    /// A local PostgreSQL port in front of an instance (like the AlloyDB Auth Proxy): `psql -h 127.0.0.1`.
    Proxy(crate::proxy::ProxyArgs),
}

pub async fn alloydb(command: AlloydbCommand) -> Result<()> {
    match command {
        AlloydbCommand::Proxy(args) => crate::proxy::run(args, None).await,
        AlloydbCommand::RevokeCertificate {
            dir,
            cluster,
            serial,
            principal,
        } => {
            clustercred_api::names::parse_resource("cluster", &cluster, "clusters")
                .map_err(|e| anyhow::anyhow!("--cluster: {}", e.message()))?;
            let owner =
                clustercred_store::ca_owner(clustercred_api::alloydb::CLUSTER_KIND, &cluster);
            let (target, what) = match (serial, principal) {
                (Some(serial), _) => {
                    let serial = serial.trim().to_ascii_lowercase();
                    if serial.is_empty() || !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
                        bail!("--serial must be hexadecimal");
                    }
                    let what = format!("certificate {serial}");
                    (
                        clustercred_store::RevocationTarget::Serial {
                            owner,
                            serial_hex: serial,
                        },
                        what,
                    )
                }
                (None, Some(subject)) => {
                    let what = format!("every unexpired certificate of {subject}");
                    (
                        clustercred_store::RevocationTarget::Subject { owner, subject },
                        what,
                    )
                }
                (None, None) => bail!("give --serial or --principal"),
            };
            let store = open(&dir).await?;
            let now = SystemClock.now().unix_timestamp();
            let event = cli_event(
                &cluster,
                "alloydb-revoke-certificate",
                format!("revoked {what}"),
            );
            let revoked = store.revoke_issuances(&target, now, Some(&event)).await?;
            if revoked.is_empty() {
                bail!("nothing to revoke: no unrevoked {what} of {cluster}");
            }
            for serial in &revoked {
                println!("revoked {serial}");
            }
            Ok(())
        }
    }
}

//! The AlloyDB instance endpoints of this server: one per instance, on the addresses its ConnectionInfo
//! hands out, kept in step with the store (instances created or deleted anywhere, this replica or another,
//! gain or lose their endpoint within a second), and the gatekeeper that decides who gets through.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use clustercred_api::Ctx;
use clustercred_api::alloydb::{CLUSTER_KIND, INSTANCE_KIND};
use clustercred_api::context::RequestMeta;
use clustercred_authority::{GeneratedKeyAlgorithm, generate_key_pair};
use clustercred_dataplane::backend::Backends;
use clustercred_dataplane::endpoint::{
    Admission, BackendAddr, ConnectionSummary, Endpoint, EndpointSpec, Failure, Gatekeeper,
    IamLogin, InstanceInfo, server_tls,
};
use clustercred_proto::google::cloud::alloydb::v1 as pb;
use prost::Message;
use tokio::sync::watch;
use tonic::Code;

/// How often the store is asked whether anything changed (one small read).
const POLL: Duration = Duration::from_millis(250);
/// A failed bind or CA load is tried again after this long.
const RETRY: Duration = Duration::from_secs(5);
/// Lifetime of an endpoint's server certificate (never past its CA's); a restart renews it.
const SERVER_CERT_LIFETIME: time::Duration = time::Duration::days(397);

#[derive(Clone, Debug, PartialEq, Eq)]
struct Wanted {
    cluster: String,
    ips: Vec<IpAddr>,
    /// The Private Service Connect DNS name, where one is configured: a DNS SAN (the connectors dial it).
    dns: Vec<String>,
    backend: Option<String>,
}

pub struct EndpointOptions {
    pub backends: Backends,
    /// Where the backend client CA's certificate is written for operators (`alloydb-backend-ca.pem`).
    pub data_dir: std::path::PathBuf,
    pub max_connections: usize,
    /// The port instances listen on: 5433, where the connectors dial.
    pub port: u16,
}

/// Runs until `stop` turns true, then closes every endpoint and its connections.
pub async fn run(ctx: Arc<Ctx>, options: EndpointOptions, mut stop: watch::Receiver<bool>) {
    let gate: Arc<dyn Gatekeeper> = Arc::new(Gate {
        ctx: ctx.clone(),
        backends: options.backends.clone(),
    });
    if options.backends.any() {
        match backend_ca(&ctx).await {
            Ok(ca) => {
                let path = options.data_dir.join(BACKEND_CA_FILE);
                if let Err(e) = std::fs::write(&path, ca.cert_pem()) {
                    tracing::warn!(path = %path.display(), error = %e, "writing the backend client CA failed");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "the backend client CA is not available; IAM logins fail")
            }
        }
    }
    let mut running: HashMap<String, (Wanted, Endpoint)> = HashMap::new();
    let mut failed: HashMap<String, Instant> = HashMap::new();
    let mut seen_epoch = None;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {}
        }
        let epoch = match ctx.store.change_epoch().await {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(error = %e, "instance endpoints: reading the change epoch failed");
                continue;
            }
        };
        let retry_due = failed.values().any(|t| t.elapsed() >= RETRY);
        if seen_epoch == Some(epoch) && !retry_due {
            continue;
        }
        let wanted = match wanted(&ctx, &options).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "instance endpoints: listing instances failed");
                continue;
            }
        };
        seen_epoch = Some(epoch);
        // Gone or changed: stop first, so a changed instance can bind its addresses again.
        let stale: Vec<String> = running
            .iter()
            .filter(|(name, (w, _))| wanted.get(*name) != Some(w))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some((_, endpoint)) = running.remove(&name) {
                tracing::info!(instance = %name, "instance endpoint closing");
                endpoint.stop().await;
            }
        }
        failed.retain(|name, _| wanted.contains_key(name));
        for (name, want) in wanted {
            if running.contains_key(&name) || failed.get(&name).is_some_and(|t| t.elapsed() < RETRY)
            {
                continue;
            }
            match start(&ctx, &options, &gate, &name, &want).await {
                Ok(endpoint) => {
                    tracing::info!(instance = %name, addresses = ?endpoint.addresses,
                        backend = want.backend.is_some(), "instance endpoint listening");
                    failed.remove(&name);
                    running.insert(name, (want, endpoint));
                }
                Err(e) => {
                    if !failed.contains_key(&name) {
                        tracing::warn!(instance = %name, error = %e,
                            "instance endpoint cannot start; retrying every {}s", RETRY.as_secs());
                    }
                    failed.insert(name, Instant::now());
                }
            }
        }
    }
    for (_, (_, endpoint)) in running {
        endpoint.stop().await;
    }
}

async fn wanted(ctx: &Ctx, options: &EndpointOptions) -> anyhow::Result<HashMap<String, Wanted>> {
    let mut out = HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = ctx
            .store
            .list_all_resources(INSTANCE_KIND, after.as_deref(), 500)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.name.clone());
        for record in &page {
            let Ok(instance) = pb::Instance::decode(record.data.as_slice()) else {
                tracing::warn!(instance = %record.name, "instance record does not decode; no endpoint");
                continue;
            };
            let ips: Vec<IpAddr> = [&instance.ip_address, &instance.public_ip_address]
                .into_iter()
                .filter_map(|a| a.parse().ok())
                .collect();
            if ips.is_empty() {
                continue;
            }
            let dns = instance
                .psc_instance_config
                .as_ref()
                .map(|p| p.psc_dns_name.trim_end_matches('.').to_string())
                .filter(|d| !d.is_empty())
                .into_iter()
                .collect();
            out.insert(
                record.name.clone(),
                Wanted {
                    cluster: record.parent.clone(),
                    ips,
                    dns,
                    backend: options
                        .backends
                        .for_instance(&record.name)
                        .map(str::to_string),
                },
            );
        }
    }
    Ok(out)
}

async fn start(
    ctx: &Ctx,
    options: &EndpointOptions,
    gate: &Arc<dyn Gatekeeper>,
    name: &str,
    want: &Wanted,
) -> anyhow::Result<Endpoint> {
    let ca = ctx
        .ca(&clustercred_store::ca_owner(CLUSTER_KIND, &want.cluster))
        .await
        .map_err(|s| anyhow::anyhow!("loading the cluster CA: {}", s.message()))?
        .ok_or_else(|| anyhow::anyhow!("cluster {} has no CA", want.cluster))?;
    // A fresh key each start, kept in memory only; the certificate names every address handed out.
    let key = generate_key_pair(GeneratedKeyAlgorithm::EcdsaP256)?;
    let cert = ca.issue_server_certificate(
        &key.public_key,
        &want.dns,
        &want.ips,
        SERVER_CERT_LIFETIME,
        ctx.now(),
    )?;
    let chain = format!("{}{}", cert.cert_pem, ca.cert_pem());
    let tls =
        server_tls(ca.cert_pem(), &chain, &key.private_key_pem).map_err(anyhow::Error::msg)?;
    let backend = want
        .backend
        .as_deref()
        .map(BackendAddr::from_url)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let spec = EndpointSpec {
        instance: InstanceInfo {
            name: name.to_string(),
            cluster: want.cluster.clone(),
        },
        addresses: want
            .ips
            .iter()
            .map(|ip| SocketAddr::new(*ip, options.port))
            .collect(),
        tls,
        backend,
        max_connections: options.max_connections,
    };
    Ok(Endpoint::start(spec, gate.clone()).await?)
}

/// The audit method of instance connections.
const CONNECT: &str = "alloydb.instances.connect";

/// The CA whose client certificates the backends trust (`pg_hba` `cert`) for IAM logins: one for the whole
/// deployment, kept sealed in the store like the cluster CAs; its certificate goes in each backend's
/// `ssl_ca_file`.
pub const BACKEND_CA_OWNER: &str = "clustercred:alloydb-backend-client-ca";
pub const BACKEND_CA_FILE: &str = "alloydb-backend-ca.pem";
/// Lifetime of the client certificate an IAM login presents to the backend: long enough for the handshake.
const BACKEND_LOGIN_LIFETIME: time::Duration = time::Duration::minutes(5);

/// The backend client CA, created on first use (replicas racing to create it keep the first one stored).
pub async fn backend_ca(ctx: &Ctx) -> anyhow::Result<Arc<clustercred_api::context::ClusterCaRef>> {
    if let Some(ca) = ctx
        .ca(BACKEND_CA_OWNER)
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
    {
        return Ok(ca);
    }
    let (record, _) = ctx
        .new_ca(BACKEND_CA_OWNER, "alloydb backend client")
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    match ctx.store.put_ca(&record).await {
        Ok(()) | Err(clustercred_store::StoreError::AlreadyExists) => {}
        Err(e) => return Err(e.into()),
    }
    ctx.ca(BACKEND_CA_OWNER)
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .ok_or_else(|| anyhow::anyhow!("the backend client CA vanished"))
}

/// Admits client certificates by their issuance records, read from the database on every connection so a
/// revocation holds at once on every replica.
struct Gate {
    ctx: Arc<Ctx>,
    backends: Backends,
}

#[async_trait]
impl Gatekeeper for Gate {
    async fn admit(&self, instance: &InstanceInfo, serial_hex: &str) -> Result<Admission, String> {
        let status = self
            .ctx
            .store
            .get_issuance(serial_hex)
            .await
            .map_err(|e| format!("looking up certificate {serial_hex}: {e}"))?
            .ok_or_else(|| format!("certificate {serial_hex} was not issued by this cluster"))?;
        let record = status.record;
        // The handshake checked the chain to this cluster's CA; the record must agree.
        if record.owner != clustercred_store::ca_owner(CLUSTER_KIND, &instance.cluster)
            || record.kind != "client_certificate"
        {
            return Err(format!(
                "certificate {serial_hex} is not a client certificate of this cluster"
            ));
        }
        if let Some(at) = status.revoke_time_unix {
            return Err(format!(
                "certificate {serial_hex} was revoked (unix time {at})"
            ));
        }
        Ok(Admission {
            principal: record.subject,
            serial_hex: record.serial_hex,
            metadata_exchange: record.metadata_exchange,
        })
    }

    async fn iam_login(
        &self,
        instance: &InstanceInfo,
        _admission: &Admission,
        token: &str,
    ) -> Result<IamLogin, String> {
        let login =
            clustercred_api::alloydb::authorize_iam_login(&self.ctx, token, &instance.name, None)
                .await
                .map_err(|s| s.message().to_string())?;
        let user = login.role;
        let backend = self
            .backends
            .for_instance(&instance.name)
            .ok_or("the instance has no backend database")?;
        let backend = BackendAddr::from_url(backend)?;
        let ca = backend_ca(&self.ctx).await.map_err(|e| e.to_string())?;
        let key = generate_key_pair(GeneratedKeyAlgorithm::EcdsaP256).map_err(|e| e.to_string())?;
        let cert = ca
            .issue_client_certificate(
                &clustercred_authority::LeafRequest {
                    public_key: &key.public_key,
                    subject_common_name: &user,
                    subject_organization: None,
                    lifetime: BACKEND_LOGIN_LIFETIME,
                },
                self.ctx.now(),
            )
            .map_err(|e| e.to_string())?;
        let chain = format!("{}{}", cert.cert_pem, ca.cert_pem());
        Ok(IamLogin {
            principal: login.principal.member(),
            database_user: user,
            backend_tls: backend.client_tls(&chain, &key.private_key_pem)?,
        })
    }

    async fn is_iam_user(&self, instance: &InstanceInfo, user: &str) -> bool {
        matches!(
            clustercred_api::alloydb::iam_database_user(&self.ctx, &instance.cluster, user).await,
            Ok(Some(_))
        )
    }

    fn accept(&self, peer: SocketAddr) -> bool {
        // An address that used up its refusals, or its request rate, costs no handshake.
        let limits = &self.ctx.limits;
        limits.failing(peer.ip()).is_ok() && limits.address(peer.ip()).is_ok()
    }

    async fn closed(&self, instance: &InstanceInfo, s: ConnectionSummary) {
        let auth = s.auth_type.map_or("-", |a| a.as_str());
        let detail = format!(
            "certificate {} auth {} user {} database {} bytes in {} out {} for {} ms{}",
            s.serial_hex.as_deref().unwrap_or("-"),
            auth,
            s.database_user.as_deref().unwrap_or("-"),
            s.database.as_deref().unwrap_or("-"),
            s.bytes_from_client,
            s.bytes_to_client,
            s.duration.as_millis(),
            s.refusal
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default(),
        );
        // Reasons may quote what the client sent (a user name up to the startup packet's size): bounded.
        let detail: String = detail.chars().take(1024).collect();
        // The certificate names its principal by id; the audit trail by member string.
        let principal = match s.principal.as_deref() {
            None => "anonymous".to_string(),
            Some(id) => match self.ctx.store.get_principal(id).await {
                Ok(Some(p)) if p.kind == "serviceAccount" => format!("serviceAccount:{id}"),
                _ => format!("user:{id}"),
            },
        };
        let meta = RequestMeta {
            method: CONNECT.into(),
            client_address: s.peer.to_string(),
            user_agent: String::new(),
        };
        if s.relayed || s.refusal.is_none() {
            // A session: one event, written when it ends.
            let event = self
                .ctx
                .event(&principal, &meta, &instance.name, Code::Ok, detail, "");
            self.ctx.audit(&event).await;
            return;
        }
        // A refusal: through the aggregator, so a flood of handshakes costs no write apiece (and counts
        // against the address like any refused call).
        let code = match s.failure {
            Failure::Unauthenticated => Code::Unauthenticated,
            Failure::PermissionDenied => Code::PermissionDenied,
            Failure::InvalidArgument => Code::InvalidArgument,
            Failure::Unavailable => Code::Unavailable,
            Failure::ShuttingDown => Code::Aborted,
        };
        self.ctx
            .refused(
                &principal,
                &meta,
                "",
                &instance.name,
                &tonic::Status::new(code, detail),
            )
            .await;
    }
}

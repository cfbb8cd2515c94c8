//! What every API adapter shares: the store, the clock, settings, the token signer, the access-control seam,
//! and helpers for operations, idempotency and CAs.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use clustercred_authority::{
    CaMaterial, CaParams, ClusterCa, GeneratedKeyAlgorithm, MasterKey, TokenSigner,
};
use clustercred_store::{
    AuditEvent, CaRecord, IdempotencyRecord, IssuanceOutcome, IssuanceRecord, Store,
};
use prost::Message;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use crate::errors::{from_authority, from_store, invalid_field};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// Server settings that shape issuance. Defaults are documented in the README.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Lifetime of a new cluster CA.
    pub ca_validity: Duration,
    /// AlloyDB client certificates: default and allowed range of `cert_duration`.
    pub client_cert_default: Duration,
    pub client_cert_min: Duration,
    pub client_cert_max: Duration,
    /// Edge offline credentials: lifetime and key algorithm.
    pub offline_credential_lifetime: Duration,
    pub offline_key_algorithm: GeneratedKeyAlgorithm,
    /// Agent tokens: lifetime, issuer (`iss`, also where /.well-known/openid-configuration is served),
    /// audiences accepted in subject tokens besides `<project>.svc.id.goog`, clock skew allowed.
    pub agent_token_lifetime: Duration,
    pub token_issuer: String,
    pub extra_agent_audiences: Vec<String>,
    pub token_leeway: Duration,
    /// How long a completed request id is remembered (Google promises at least 60 minutes).
    pub idempotency_retention: Duration,
    /// Defaults for an Edge cluster's Kubernetes API endpoint when the create request names none.
    pub edge_default_endpoint: String,
    pub edge_default_port: i32,
    /// The address of the first AlloyDB instance; later instances take the addresses after it (a last
    /// octet of 0 or 255 is skipped). Loopback by default, so every instance can have its own endpoint on
    /// one machine.
    pub alloydb_first_address: std::net::Ipv4Addr,
    /// Rate limits and concurrency caps.
    pub limits: crate::limits::LimitSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            ca_validity: Duration::days(3650),
            client_cert_default: Duration::hours(1),
            client_cert_min: Duration::hours(1),
            client_cert_max: Duration::hours(24),
            offline_credential_lifetime: Duration::hours(12),
            offline_key_algorithm: GeneratedKeyAlgorithm::EcdsaP256,
            agent_token_lifetime: Duration::hours(1),
            token_issuer: "http://127.0.0.1:8080".into(),
            extra_agent_audiences: Vec::new(),
            token_leeway: Duration::seconds(60),
            idempotency_retention: Duration::hours(24),
            edge_default_endpoint: "127.0.0.1".into(),
            edge_default_port: 6443,
            alloydb_first_address: std::net::Ipv4Addr::new(127, 1, 0, 1),
            limits: crate::limits::LimitSettings::default(),
        }
    }
}

/// What kind of identity a principal is; each kind has its own member namespace, so no identity of one kind
/// can ever equal one of another (a federated subject `admin` is not the local user `admin`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrincipalKind {
    /// A local user (bearer token issued by clustercred): member `user:ID`.
    User,
    /// One of our service accounts: member `serviceAccount:EMAIL`; `unique_id` is the account's numeric id,
    /// which a recreated account of the same email does not share.
    ServiceAccount { unique_id: String },
    /// An identity of a trusted external OIDC issuer: member
    /// `principal://clustercred/issuers/ISSUER/subject/ID`; `sets` are the `principalSet://` members it belongs
    /// to (the issuer's whole set, and its groups).
    Federated { issuer: String, sets: Vec<String> },
    /// The operator running the `clustercred` CLI on the data directory: member `cli:NAME`, granted nothing.
    Cli,
}

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The identity certificates and tokens name (e.g. `admin`, an email, a federated subject).
    pub id: String,
    pub kind: PrincipalKind,
    /// The OAuth scopes the credential was limited to; `None` when the credential carries no scopes.
    pub scopes: Option<Vec<String>>,
}

/// The host part of federated member names (`principal://clustercred/...`).
pub const FEDERATED_NAMESPACE: &str = "clustercred";

impl Principal {
    pub fn user(id: impl Into<String>) -> Self {
        Principal {
            id: id.into(),
            kind: PrincipalKind::User,
            scopes: None,
        }
    }

    /// The IAM member string: `user:admin`, `serviceAccount:EMAIL`, `principal://clustercred/issuers/I/subject/S`.
    pub fn member(&self) -> String {
        match &self.kind {
            PrincipalKind::User => format!("user:{}", self.id),
            PrincipalKind::ServiceAccount { .. } => format!("serviceAccount:{}", self.id),
            PrincipalKind::Federated { issuer, .. } => {
                format!(
                    "principal://{FEDERATED_NAMESPACE}/issuers/{issuer}/subject/{}",
                    self.id
                )
            }
            PrincipalKind::Cli => format!("cli:{}", self.id),
        }
    }

    /// Every member string a policy binding may name to grant this principal something.
    pub fn members(&self) -> Vec<String> {
        let mut members = vec![self.member()];
        if let PrincipalKind::Federated { sets, .. } = &self.kind {
            members.extend(sets.iter().cloned());
        }
        members
    }
}

/// The peer address of a request, put in the request's extensions by the transport.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddress(pub std::net::SocketAddr);

/// What the audit log records about where a call came from.
#[derive(Clone, Debug, Default)]
pub struct RequestMeta {
    /// `package.Service/Method`.
    pub method: String,
    pub client_address: String,
    pub user_agent: String,
}

impl RequestMeta {
    /// What the gate knows of a request before it is decoded.
    pub fn from_parts(
        method: &str,
        address: Option<std::net::SocketAddr>,
        headers: &http::HeaderMap,
    ) -> Self {
        RequestMeta {
            method: method.chars().take(200).collect(),
            client_address: address.map(|a| a.to_string()).unwrap_or_default(),
            user_agent: headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.chars().take(256).collect())
                .unwrap_or_default(),
        }
    }

    /// The caller's IP address, when the transport knew it.
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        self.client_address
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|a| a.ip())
    }

    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        // Set by the transport for gRPC and transcoded REST alike.
        let method = request
            .metadata()
            .get("x-clustercred-method")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(200).collect())
            .unwrap_or_default();
        let client_address = request
            .extensions()
            .get::<ClientAddress>()
            .map(|a| a.0.to_string())
            .unwrap_or_default();
        let user_agent = request
            .metadata()
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(256).collect())
            .unwrap_or_default();
        RequestMeta {
            method,
            client_address,
            user_agent,
        }
    }
}

/// An authenticated, authorized caller, put in the request's extensions by the gate.
#[derive(Clone, Debug)]
pub struct Caller {
    pub principal: Principal,
    pub meta: RequestMeta,
    /// For rules that accept any of several permissions: the indexes of those the caller holds.
    pub held: Vec<usize>,
}

/// The access-control seam: every method authenticates the caller and checks the Google permission it
/// documents (e.g. `alloydb.clusters.generateClientCertificate`) on the resource it touches.
#[async_trait]
pub trait AccessControl: Send + Sync + 'static {
    async fn authenticate(&self, metadata: &MetadataMap) -> Result<Principal, Status>;
    async fn authorize(
        &self,
        principal: &Principal,
        permission: &str,
        resource: &str,
    ) -> Result<(), Status>;
}

/// The structured log line of an audit event (target `audit`).
pub fn log_event(e: &AuditEvent) {
    tracing::info!(target: "audit", principal = %e.principal, method = %e.method, resource = %e.resource,
        outcome = %e.outcome, status = %e.status, detail = %e.detail, request_id = %e.request_id,
        client = %e.client_address, user_agent = %e.user_agent, "audit");
}

pub use clustercred_proto::status_name;

/// What a sealed CA key is bound to: its owner.
pub fn ca_key_context(owner: &str) -> String {
    format!("ca:{owner}")
}

/// What a sealed token-signing key is bound to: its key id.
pub fn signing_key_context(kid: &str) -> String {
    format!("signing-key:{kid}")
}

/// Shared state of the API adapters.
pub struct Ctx {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub settings: Settings,
    /// The token-signing keys; a rotation replaces them while the server runs.
    pub signing: Arc<crate::signing::SigningKeys>,
    pub access: Arc<dyn AccessControl>,
    /// Seals the private keys the store keeps.
    pub master: Arc<MasterKey>,
    pub limits: crate::limits::Limits,
    refusals: crate::refusals::Refusals,
    cas: RwLock<HashMap<String, Arc<LoadedCa>>>,
}

struct LoadedCa {
    cert_pem: String,
    ca: ClusterCa,
}

/// A refusal's audit detail: the permission asked for, when there is one, and the status message.
fn refusal_detail(permission: &str, status: &Status) -> String {
    if permission.is_empty() {
        status.message().to_string()
    } else {
        format!("{permission}: {}", status.message())
    }
}

impl Ctx {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        settings: Settings,
        signing: Arc<crate::signing::SigningKeys>,
        access: Arc<dyn AccessControl>,
        master: Arc<MasterKey>,
    ) -> Self {
        Ctx {
            limits: crate::limits::Limits::new(&settings.limits),
            refusals: crate::refusals::Refusals::default(),
            store,
            clock,
            settings,
            signing,
            access,
            master,
            cas: RwLock::new(HashMap::new()),
        }
    }

    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// The key new tokens are signed with: the newest of the current set.
    pub fn signer(&self) -> Arc<TokenSigner> {
        self.signing.current().signer().clone()
    }

    /// The caller the gate authenticated and authorized for this request (see `crate::gate`). A request that
    /// did not pass the gate has none, and is refused.
    pub fn caller<T>(&self, request: &tonic::Request<T>) -> Result<Caller, Status> {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| {
                tracing::error!("a request reached a handler without passing the access gate");
                Status::unauthenticated("the request was not authenticated")
            })
    }

    /// The checks that run before any work on a request, credential or not: the caller's address budget, and
    /// whether that address keeps failing. A refusal here is itself recorded (aggregated).
    pub async fn admit_address(&self, meta: &RequestMeta) -> Result<(), Status> {
        let Some(ip) = meta.ip() else {
            return Ok(());
        };
        let admitted = self
            .limits
            .address(ip)
            .and_then(|()| self.limits.failing(ip));
        if let Err(status) = &admitted {
            self.refused("anonymous", meta, "", "", status).await;
        }
        admitted
    }

    /// Records a refused call: counted against the caller's address (unless it was RESOURCE_EXHAUSTED: refused
    /// for its rate or for overload alone), and audited through the aggregator (repeats become one counted event
    /// per window).
    pub async fn refused(
        &self,
        principal: &str,
        meta: &RequestMeta,
        permission: &str,
        resource: &str,
        status: &Status,
    ) {
        if status.code() == Code::ResourceExhausted {
            self.refused_exhausted(principal, meta, permission, resource, status);
            return;
        }
        if let Some(ip) = meta.ip() {
            self.limits.note_failure(ip);
        }
        if let Some(event) = self.note_refusal(principal, meta, permission, resource, status) {
            self.audit(&event).await;
        }
    }

    /// The refusal's event, counted by the aggregator: the event to write now, or none (counted for later).
    fn note_refusal(
        &self,
        principal: &str,
        meta: &RequestMeta,
        permission: &str,
        resource: &str,
        status: &Status,
    ) -> Option<AuditEvent> {
        let detail = refusal_detail(permission, status);
        let event = self.event(principal, meta, resource, status.code(), detail, "");
        self.refusals.note(event)
    }

    /// Records a RESOURCE_EXHAUSTED refusal without waiting: an overload refusal must stay cheap and quick when
    /// the store is what is overloaded, so its event (when the aggregator writes one now) is written in the
    /// background instead of waiting in the commit queue. Bounded: the aggregator lets only a few events a
    /// second through to be written at once; the rest are counted into one event per window.
    pub fn refused_exhausted(
        &self,
        principal: &str,
        meta: &RequestMeta,
        permission: &str,
        resource: &str,
        status: &Status,
    ) {
        if let Some(event) = self.note_refusal(principal, meta, permission, resource, status) {
            log_event(&event);
            let store = self.store.clone();
            tokio::spawn(async move {
                if let Err(e) = store.append_audit(&event).await {
                    tracing::error!(error = %e, "writing an audit event failed");
                }
            });
        }
    }

    /// Writes the aggregated refusals of the window that just closed.
    pub async fn flush_refusals(&self) {
        let now = i64::try_from(self.now().unix_timestamp_nanos()).unwrap_or(i64::MAX);
        for event in self.refusals.drain(now) {
            self.audit(&event).await;
        }
    }

    /// An audit event for this moment (format [`clustercred_store::AUDIT_FORMAT_VERSION`]).
    #[allow(clippy::too_many_arguments)]
    pub fn event(
        &self,
        principal: &str,
        meta: &RequestMeta,
        resource: &str,
        status: Code,
        detail: impl Into<String>,
        request_id: &str,
    ) -> AuditEvent {
        let outcome = match status {
            Code::Ok => "ok",
            Code::PermissionDenied | Code::Unauthenticated => "denied",
            _ => "error",
        };
        AuditEvent {
            time_unix_nanos: i64::try_from(self.now().unix_timestamp_nanos()).unwrap_or(i64::MAX),
            principal: principal.to_string(),
            method: meta.method.clone(),
            resource: resource.to_string(),
            outcome: outcome.to_string(),
            status: status_name(status).to_string(),
            detail: detail.into(),
            request_id: request_id.to_string(),
            client_address: meta.client_address.clone(),
            user_agent: meta.user_agent.clone(),
            ..AuditEvent::default()
        }
    }

    /// A successful action's audit event.
    pub fn ok_event(
        &self,
        caller: &Caller,
        resource: &str,
        detail: impl Into<String>,
        request_id: &str,
    ) -> AuditEvent {
        self.event(
            &caller.principal.member(),
            &caller.meta,
            resource,
            Code::Ok,
            detail,
            request_id,
        )
    }

    /// Writes an event on its own and mirrors it to the log. A failed audit write is logged, not hidden.
    pub async fn audit(&self, event: &AuditEvent) {
        log_event(event);
        if let Err(e) = self.store.append_audit(event).await {
            tracing::error!(error = %e, "writing an audit event failed");
        }
    }

    /// A new CA for the resource `owner`, ready to persist with it. Subject: CN = the resource id (at most 63
    /// characters, within X.520's 64), O = "clustercred <api> cluster CA".
    pub fn new_ca(&self, owner: &str, api: &str) -> Result<(CaRecord, String), Status> {
        let now = self.now();
        // The CN is the resource id: the last segment of `kind:projects/.../clusters/ID`.
        let id = owner.rsplit(['/', ':']).next().unwrap_or(owner);
        let (_, material) = ClusterCa::generate(
            &CaParams {
                common_name: id.to_string(),
                organization: Some(format!("clustercred {api} cluster CA")),
                validity: self.settings.ca_validity,
            },
            now,
        )
        .map_err(|e| from_authority("generating a cluster CA", e))?;
        let CaMaterial {
            cert_pem,
            key_pkcs8_der,
        } = material;
        let record = CaRecord {
            owner: owner.to_string(),
            cert_pem: cert_pem.clone(),
            key_der: self
                .master
                .seal(&key_pkcs8_der, &ca_key_context(owner))
                .map_err(|e| from_authority("sealing a CA key", e))?,
            not_after_unix: (now + self.settings.ca_validity).unix_timestamp(),
            create_time_unix: now.unix_timestamp(),
        };
        Ok((record, cert_pem))
    }

    /// The CA of `owner`, parsed once and cached while the stored certificate stays the same.
    pub async fn ca(&self, owner: &str) -> Result<Option<Arc<ClusterCaRef>>, Status> {
        let Some(record) = self
            .store
            .get_ca(owner)
            .await
            .map_err(|e| from_store("loading a cluster CA", e))?
        else {
            return Ok(None);
        };
        if let Ok(cache) = self.cas.read()
            && let Some(loaded) = cache.get(owner)
            && loaded.cert_pem == record.cert_pem
        {
            return Ok(Some(Arc::new(ClusterCaRef(loaded.clone()))));
        }
        let key = self
            .master
            .open(&record.key_der, &ca_key_context(owner))
            .map_err(|e| from_authority("opening a CA key", e))?;
        let ca = ClusterCa::from_material(&record.cert_pem, &key)
            .map_err(|e| from_authority("loading a cluster CA", e))?;
        let loaded = Arc::new(LoadedCa {
            cert_pem: record.cert_pem,
            ca,
        });
        if let Ok(mut cache) = self.cas.write() {
            cache.insert(owner.to_string(), loaded.clone());
        }
        Ok(Some(Arc::new(ClusterCaRef(loaded))))
    }

    pub fn forget_ca(&self, owner: &str) {
        if let Ok(mut cache) = self.cas.write() {
            cache.retain(|k, _| k != owner && !k.starts_with(&format!("{owner}/")));
        }
    }

    /// Runs `issue` at most once per request id: a retry with the same id and the same request gets the first
    /// response back; the same id with a different request is refused. The issuance record (and the
    /// idempotency record) are durable before the response is returned.
    pub async fn issue_once<R, F>(
        &self,
        scope: &str,
        request_id: Option<&str>,
        request_fingerprint: &[u8],
        issue: F,
    ) -> Result<R, Status>
    where
        R: Replayable,
        F: FnOnce() -> Result<(R, IssuanceRecord, AuditEvent), Status>,
    {
        let hash = Sha256::digest(request_fingerprint).to_vec();
        let now = self.now();
        let retention_start = (now - self.settings.idempotency_retention).unix_timestamp();
        // No read before signing: the store inserts the request id or answers the record that holds it, in
        // the same (group) commit as the issuance, so a retry costs a signature and a new request costs no read.
        let (response, issuance, event) = issue()?;
        let idempotency = request_id.map(|id| IdempotencyRecord {
            scope: scope.to_string(),
            request_id: id.to_string(),
            request_hash: hash.clone(),
            response: response.stored(),
            create_time_unix: now.unix_timestamp(),
        });
        let record = || async {
            self.store
                .record_issuance(&issuance, idempotency.as_ref(), Some(&event))
                .await
                .map_err(|e| from_store("recording the issued certificate", e))
        };
        let outcome = match record().await? {
            // A record past its retention, not purged yet, must not block a new request under its id.
            IssuanceOutcome::Replay(old) if old.create_time_unix < retention_start => {
                self.store
                    .purge_idempotency(retention_start, PURGE_BATCH)
                    .await
                    .map_err(|e| from_store("purging old request ids", e))?;
                record().await?
            }
            outcome => outcome,
        };
        match outcome {
            IssuanceOutcome::Recorded => {
                log_event(&event);
                Ok(response)
            }
            IssuanceOutcome::Replay(existing) => replay(existing, &hash),
        }
    }
}

/// Request ids forgotten per purge transaction.
pub const PURGE_BATCH: u32 = 10_000;

/// A response kept for replay under its request id. The stored form may leave out what the response repeats, so
/// that a record fills less of a database page (every new request id writes one).
pub trait Replayable: Message + Default {
    fn stored(&self) -> Vec<u8> {
        self.encode_to_vec()
    }
    /// The response again, from what [`Replayable::stored`] kept (or from a plain encoding, written earlier).
    fn restored(stored: &[u8]) -> Result<Self, prost::DecodeError> {
        Self::decode(stored)
    }
}

fn replay<R: Replayable>(existing: IdempotencyRecord, hash: &[u8]) -> Result<R, Status> {
    if existing.request_hash != hash {
        return Err(invalid_field(
            "request_id",
            "was already used for a different request; use a new request id",
        ));
    }
    R::restored(existing.response.as_slice())
        .map_err(|e| crate::errors::internal("replaying a response", e))
}

/// A loaded cluster CA.
pub struct ClusterCaRef(Arc<LoadedCa>);

impl std::ops::Deref for ClusterCaRef {
    type Target = ClusterCa;
    fn deref(&self) -> &ClusterCa {
        &self.0.ca
    }
}

/// Resource persistence shared by the adapters: typed messages in, typed messages out, store errors mapped
/// to the status Google returns (`label` names the resource type in messages, e.g. "cluster").
impl Ctx {
    pub async fn load<M: Message + Default>(
        &self,
        kind: &str,
        label: &str,
        name: &str,
    ) -> Result<M, Status> {
        let record = self
            .store
            .get_resource(kind, name)
            .await
            .map_err(|e| from_store("reading a resource", e))?
            .ok_or_else(|| crate::errors::not_found(label, name))?;
        M::decode(record.data.as_slice())
            .map_err(|e| crate::errors::internal("decoding a stored resource", e))
    }

    /// One page of resources of `kind` under `parent`, and the token of the next page.
    pub async fn list<M: Message + Default>(
        &self,
        kind: &str,
        parent: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<M>, String), Status> {
        let page = crate::common::parse_page(page_size, page_token, parent)?;
        let records = self
            .store
            .list_resources(kind, parent, page.after.as_deref(), page.size)
            .await
            .map_err(|e| from_store("listing resources", e))?;
        let next = crate::common::next_page_token(
            records.len(),
            &page,
            records.last().map(|r| r.name.as_str()),
        );
        let items = records
            .iter()
            .map(|r| M::decode(r.data.as_slice()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| crate::errors::internal("decoding stored resources", e))?;
        Ok((items, next))
    }

    pub async fn insert(
        &self,
        label: &str,
        record: &clustercred_store::ResourceRecord,
        ca: Option<&CaRecord>,
        operation: Option<&clustercred_store::OperationRecord>,
        audit: Option<&AuditEvent>,
    ) -> Result<(), Status> {
        match self
            .store
            .create_resource(record, ca, operation, audit)
            .await
        {
            Ok(()) => {
                if let Some(event) = audit {
                    log_event(event);
                }
                self.forget_ca(&clustercred_store::ca_owner(&record.kind, &record.name));
                Ok(())
            }
            Err(clustercred_store::StoreError::AlreadyExists) => {
                Err(crate::errors::already_exists(label, &record.name))
            }
            Err(e) => Err(from_store("creating a resource", e)),
        }
    }

    pub async fn remove(
        &self,
        kind: &str,
        label: &str,
        name: &str,
        operation: Option<&clustercred_store::OperationRecord>,
        audit: Option<&AuditEvent>,
    ) -> Result<(), Status> {
        match self
            .store
            .delete_resource(kind, name, operation, audit)
            .await
        {
            Ok(()) => {
                if let Some(event) = audit {
                    log_event(event);
                }
                self.forget_ca(&clustercred_store::ca_owner(kind, name));
                Ok(())
            }
            Err(clustercred_store::StoreError::NotFound) => {
                Err(crate::errors::not_found(label, name))
            }
            Err(e) => Err(from_store("deleting a resource", e)),
        }
    }
}

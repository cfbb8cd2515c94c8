//! GKE Multi-Cloud v1 attached clusters and the agent-token exchange (RFC 8693): an attached cluster's
//! Kubernetes service-account JWT, verified against the OIDC keys registered with the cluster, is exchanged
//! for a short-lived access token signed by clustercred.

use std::collections::HashMap;
use std::sync::Arc;

use clustercred_authority::{Jwks, MintRequest, SubjectTokenPolicy, verify_service_account_token};
use clustercred_proto::google::cloud::gkemulticloud::v1 as pb;
use clustercred_proto::google::cloud::gkemulticloud::v1::attached_clusters_server::{
    AttachedClusters, AttachedClustersServer,
};
use clustercred_proto::google::longrunning::Operation;
use clustercred_store::{OperationRecord, ResourceRecord, TokenRecord};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::common::*;
use crate::context::Ctx;
use crate::errors::{from_jwks, from_store, from_token, invalid_field};
use crate::names::{parse_location, parse_resource, validate_id};

const KIND: &str = "gkemulticloud.AttachedCluster";
const LABEL: &str = "attached cluster";

pub const GRANT_TYPE_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const DEFAULT_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

#[derive(Clone)]
pub struct AttachedClustersService {
    ctx: Arc<Ctx>,
    /// Parsed JWKS per cluster, with the stored text they came from: parsing RSA keys on every exchange
    /// would cost more than verifying the token.
    jwks: Arc<std::sync::Mutex<JwksCache>>,
}

/// Cluster name → (the stored JWKS text, its parsed keys).
type JwksCache = HashMap<String, (Vec<u8>, Arc<Jwks>)>;

/// Clusters whose parsed keys are kept at most; past it the cache starts over.
const JWKS_CACHE_ENTRIES: usize = 4096;

impl AttachedClustersService {
    pub fn new(ctx: Arc<Ctx>) -> Self {
        AttachedClustersService {
            ctx,
            jwks: Arc::default(),
        }
    }

    /// The cluster's JWKS, parsed once per stored text.
    fn parsed_jwks(&self, cluster: &str, text: &[u8]) -> Result<Arc<Jwks>, Status> {
        if let Ok(cache) = self.jwks.lock()
            && let Some((stored, parsed)) = cache.get(cluster)
            && stored.as_slice() == text
        {
            return Ok(parsed.clone());
        }
        let parsed = Arc::new(
            Jwks::parse(text).map_err(|e| crate::errors::internal("parsing a stored JWKS", e))?,
        );
        if let Ok(mut cache) = self.jwks.lock() {
            if cache.len() >= JWKS_CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(cluster.to_string(), (text.to_vec(), parsed.clone()));
        }
        Ok(parsed)
    }

    pub fn into_server(self) -> AttachedClustersServer<Self> {
        AttachedClustersServer::new(self)
    }

    fn operation(
        &self,
        location: &str,
        target: &str,
        verb: &str,
        response: prost_types::Any,
    ) -> (Operation, OperationRecord) {
        let now = self.ctx.now();
        let metadata = pb::OperationMetadata {
            create_time: Some(timestamp(now)),
            end_time: Some(timestamp(now)),
            target: target.to_string(),
            verb: verb.to_string(),
            ..Default::default()
        };
        let metadata = pack("google.cloud.gkemulticloud.v1.OperationMetadata", &metadata);
        done_operation(now, location, metadata, response)
    }

    /// The audiences a subject token may carry for this cluster: its workload pool, plus configured extras.
    fn accepted_audiences(&self, project: &str) -> Vec<String> {
        let mut audiences = vec![workload_pool(project)];
        audiences.extend(self.ctx.settings.extra_agent_audiences.iter().cloned());
        audiences
    }
}

fn workload_pool(project: &str) -> String {
    format!("{project}.svc.id.goog")
}

fn validate_issuer_url(url: &str) -> Result<(), Status> {
    const FIELD: &str = "attached_cluster.oidc_config.issuer_url";
    if url.is_empty() {
        return Err(invalid_field(FIELD, "is required"));
    }
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| invalid_field(FIELD, "must be an https:// (or http://) URL"))?;
    let host = rest.split('/').next().unwrap_or_default();
    if url.len() > 2048
        || host.is_empty()
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid_field(FIELD, "is not a valid URL"));
    }
    Ok(())
}

fn require(field: &str, value: &str, max: usize) -> Result<(), Status> {
    if value.trim().is_empty() {
        return Err(invalid_field(field, "is required"));
    }
    if value.len() > max {
        return Err(invalid_field(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl AttachedClusters for AttachedClustersService {
    async fn create_attached_cluster(
        &self,
        request: Request<pb::CreateAttachedClusterRequest>,
    ) -> Result<Response<Operation>, Status> {
        let req = request.get_ref();
        let location = parse_location("parent", &req.parent)?;
        validate_id("attached_cluster_id", &req.attached_cluster_id)?;
        let mut cluster = req
            .attached_cluster
            .clone()
            .ok_or_else(|| invalid_field("attached_cluster", "is required"))?;
        let name = format!("{location}/attachedClusters/{}", req.attached_cluster_id);
        let caller = self.ctx.caller(&request)?;

        let oidc = cluster
            .oidc_config
            .as_ref()
            .ok_or_else(|| invalid_field("attached_cluster.oidc_config", "is required"))?;
        validate_issuer_url(&oidc.issuer_url)?;
        if !oidc.jwks.is_empty() {
            Jwks::parse(&oidc.jwks)
                .map_err(|e| from_jwks("attached_cluster.oidc_config.jwks", e))?;
        }
        require(
            "attached_cluster.platform_version",
            &cluster.platform_version,
            128,
        )?;
        require("attached_cluster.distribution", &cluster.distribution, 64)?;
        // Google registers every attached cluster in a fleet: `fleet.project` is required.
        let fleet_project = cluster
            .fleet
            .as_ref()
            .map(|f| f.project.as_str())
            .unwrap_or_default();
        match fleet_project.strip_prefix("projects/") {
            Some(p) if !p.is_empty() && !p.contains('/') && p.len() <= 100 => {}
            _ => {
                return Err(invalid_field(
                    "attached_cluster.fleet.project",
                    "is required, as projects/{project}",
                ));
            }
        }

        let now = self.ctx.now();
        cluster.name = name.clone();
        cluster.uid = uuid::Uuid::new_v4().to_string();
        cluster.state = pb::attached_cluster::State::Running as i32;
        cluster.reconciling = false;
        cluster.create_time = Some(timestamp(now));
        cluster.update_time = Some(timestamp(now));
        cluster.etag = cluster.uid.clone();
        cluster.kubernetes_version = cluster.platform_version.clone();
        cluster.workload_identity_config = Some(pb::WorkloadIdentityConfig {
            issuer_uri: oidc.issuer_url.clone(),
            workload_pool: workload_pool(&location.project),
            identity_provider: oidc.issuer_url.clone(),
        });
        let (op, op_record) = self.operation(
            &location.to_string(),
            &name,
            "create",
            pack("google.cloud.gkemulticloud.v1.AttachedCluster", &cluster),
        );
        if req.validate_only {
            return Ok(Response::new(Operation {
                name: String::new(),
                ..op
            }));
        }
        let record = ResourceRecord {
            kind: KIND.into(),
            name: name.clone(),
            parent: location.to_string(),
            uid: cluster.uid.clone(),
            data: cluster.encode_to_vec(),
            create_time_unix: now.unix_timestamp(),
        };
        let event = self
            .ctx
            .ok_event(&caller, &name, "registered attached cluster", "");
        self.ctx
            .insert(LABEL, &record, None, Some(&op_record), Some(&event))
            .await?;
        Ok(Response::new(op))
    }

    async fn get_attached_cluster(
        &self,
        request: Request<pb::GetAttachedClusterRequest>,
    ) -> Result<Response<pb::AttachedCluster>, Status> {
        let name = parse_resource("name", &request.get_ref().name, "attachedClusters")?.to_string();
        self.ctx.caller(&request)?;
        Ok(Response::new(self.ctx.load(KIND, LABEL, &name).await?))
    }

    async fn list_attached_clusters(
        &self,
        request: Request<pb::ListAttachedClustersRequest>,
    ) -> Result<Response<pb::ListAttachedClustersResponse>, Status> {
        let req = request.get_ref();
        let parent = parse_location("parent", &req.parent)?.to_string();
        self.ctx.caller(&request)?;
        let (attached_clusters, next_page_token) = self
            .ctx
            .list(KIND, &parent, req.page_size, &req.page_token)
            .await?;
        Ok(Response::new(pb::ListAttachedClustersResponse {
            attached_clusters,
            next_page_token,
        }))
    }

    async fn delete_attached_cluster(
        &self,
        request: Request<pb::DeleteAttachedClusterRequest>,
    ) -> Result<Response<Operation>, Status> {
        let req = request.get_ref();
        let name = parse_resource("name", &req.name, "attachedClusters")?;
        let name_s = name.to_string();
        let caller = self.ctx.caller(&request)?;
        let (op, op_record) =
            self.operation(&name.parent.to_string(), &name_s, "delete", empty_any());
        let existing = self
            .ctx
            .store
            .get_resource(KIND, &name_s)
            .await
            .map_err(|e| from_store("reading an attached cluster", e))?;
        let Some(existing) = existing else {
            if req.allow_missing {
                return Ok(Response::new(op));
            }
            return Err(crate::errors::not_found(LABEL, &name_s));
        };
        if !req.etag.is_empty() {
            let cluster = pb::AttachedCluster::decode(existing.data.as_slice())
                .map_err(|e| crate::errors::internal("decoding a stored attached cluster", e))?;
            if cluster.etag != req.etag {
                return Err(Status::aborted(
                    "etag does not match the attached cluster's current etag",
                ));
            }
        }
        if req.validate_only {
            return Ok(Response::new(Operation {
                name: String::new(),
                ..op
            }));
        }
        let event = self
            .ctx
            .ok_event(&caller, &name_s, "deleted attached cluster", "");
        self.ctx
            .remove(KIND, LABEL, &name_s, Some(&op_record), Some(&event))
            .await?;
        Ok(Response::new(op))
    }

    async fn generate_attached_cluster_agent_token(
        &self,
        request: Request<pb::GenerateAttachedClusterAgentTokenRequest>,
    ) -> Result<Response<pb::GenerateAttachedClusterAgentTokenResponse>, Status> {
        // No bearer token: like Google STS, the subject token itself is the credential.
        let meta = crate::context::RequestMeta::of(&request);
        let req = request.get_ref();
        let name = parse_resource(
            "attached_cluster",
            &req.attached_cluster,
            "attachedClusters",
        )?;
        require("subject_token", &req.subject_token, 16 * 1024)?;
        require("subject_token_type", &req.subject_token_type, 256)?;
        require("version", &req.version, 128)?;
        if req.subject_token_type != TOKEN_TYPE_JWT {
            return Err(invalid_field(
                "subject_token_type",
                format!("must be {TOKEN_TYPE_JWT}"),
            ));
        }
        if !req.grant_type.is_empty() && req.grant_type != GRANT_TYPE_TOKEN_EXCHANGE {
            return Err(invalid_field(
                "grant_type",
                format!("must be {GRANT_TYPE_TOKEN_EXCHANGE}"),
            ));
        }
        if !req.requested_token_type.is_empty()
            && req.requested_token_type != TOKEN_TYPE_ACCESS_TOKEN
        {
            return Err(invalid_field(
                "requested_token_type",
                format!("must be {TOKEN_TYPE_ACCESS_TOKEN}"),
            ));
        }
        if req.scope.len() > 1024 || req.scope.chars().any(|c| c.is_control()) {
            return Err(invalid_field(
                "scope",
                "must be at most 1024 printable characters",
            ));
        }
        let accepted = self.accepted_audiences(&name.parent.project);
        if !req.audience.is_empty() && !accepted.contains(&req.audience) {
            return Err(invalid_field(
                "audience",
                "is not an audience this attached cluster accepts",
            ));
        }

        let name_s = name.to_string();
        self.ctx.limits.cluster(&name_s)?;
        let _permit = self.ctx.limits.signing()?;
        let policy = SubjectTokenPolicy {
            issuer: String::new(),
            accepted_audiences: accepted.clone(),
            leeway: self.ctx.settings.token_leeway,
        };
        // An anonymous caller must not learn which clusters exist, nor which lack keys: a missing cluster and
        // one without a registered JWKS answer exactly as a token whose key is not among the cluster's.
        let (jwks, issuer) = match self
            .ctx
            .load::<pb::AttachedCluster>(KIND, LABEL, &name_s)
            .await
        {
            Ok(cluster) => {
                let oidc = cluster.oidc_config.unwrap_or_default();
                if oidc.jwks.is_empty() {
                    tracing::warn!(cluster = %name_s, "agent token refused: the attached cluster has no JWKS \
                        registered (oidc_config.jwks); clustercred does not fetch keys from the issuer");
                    (Arc::default(), String::new())
                } else {
                    (self.parsed_jwks(&name_s, &oidc.jwks)?, oidc.issuer_url)
                }
            }
            Err(status) if status.code() == tonic::Code::NotFound => {
                (Arc::default(), String::new())
            }
            Err(status) => return Err(status),
        };
        let now = self.ctx.now();
        let verified = verify_service_account_token(
            &req.subject_token,
            &jwks,
            &SubjectTokenPolicy { issuer, ..policy },
            now,
        );
        let verified = match verified {
            Ok(v) => v,
            Err(e) => {
                let status = from_token("subject_token", e);
                self.ctx
                    .refused("anonymous", &meta, "", &name_s, &status)
                    .await;
                return Err(status);
            }
        };

        let audience = if req.audience.is_empty() {
            accepted[0].clone()
        } else {
            req.audience.clone()
        };
        let scope = if req.scope.is_empty() {
            DEFAULT_SCOPE
        } else {
            req.scope.as_str()
        };
        let lifetime = self
            .ctx
            .settings
            .agent_token_lifetime
            .min(time::Duration::hours(1));
        let mut extra = serde_json::Map::new();
        extra.insert("attached_cluster".into(), name_s.clone().into());
        extra.insert(
            "kubernetes.io".into(),
            serde_json::json!({ "namespace": verified.namespace, "serviceaccount": { "name": verified.name } }),
        );
        extra.insert("agent_version".into(), req.version.clone().into());
        let minted = self
            .ctx
            .signer()
            .mint(
                &MintRequest {
                    kind: clustercred_authority::TokenKind::Agent,
                    issuer: &self.ctx.settings.token_issuer,
                    subject: &verified.subject,
                    audience: &audience,
                    scope: Some(scope),
                    lifetime,
                    extra,
                },
                now,
            )
            .map_err(|e| crate::errors::from_authority("minting an access token", e))?;
        let event = self.ctx.event(
            &format!("kubernetes:{}", verified.subject),
            &meta,
            &name_s,
            tonic::Code::Ok,
            format!(
                "agent access token {} until {}",
                minted.token_id,
                minted.expires_at.unix_timestamp()
            ),
            "",
        );
        self.ctx
            .store
            .record_token(
                &TokenRecord {
                    token_id: minted.token_id.clone(),
                    owner: name_s.clone(),
                    subject: verified.subject.clone(),
                    expires_unix: minted.expires_at.unix_timestamp(),
                    create_time_unix: now.unix_timestamp(),
                },
                Some(&event),
            )
            .await
            .map_err(|e| from_store("recording the minted token", e))?;
        crate::context::log_event(&event);
        let expires_in = i32::try_from((minted.expires_at - now).whole_seconds()).unwrap_or(0);
        Ok(Response::new(
            pb::GenerateAttachedClusterAgentTokenResponse {
                access_token: minted.token,
                expires_in,
                token_type: "Bearer".into(),
            },
        ))
    }
}

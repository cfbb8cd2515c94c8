//! Edge Container v1: clusters and offline credentials. Each cluster gets its own CA at creation; an offline
//! credential is a fresh key pair and a client certificate for the caller chained to that CA, so kubectl can
//! reach the cluster's API server while the cluster is cut off.

use std::sync::Arc;

use clustercred_authority::{GeneratedKeyAlgorithm, LeafRequest, generate_key_pair};
use clustercred_proto::google::cloud::edgecontainer::v1 as pb;
use clustercred_proto::google::cloud::edgecontainer::v1::edge_container_server::{
    EdgeContainer, EdgeContainerServer,
};
use clustercred_proto::google::longrunning::Operation;
use clustercred_store::{IssuanceRecord, OperationRecord, ResourceRecord};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::common::*;
use crate::context::Ctx;
use crate::errors::{from_authority, from_store, invalid_field, not_found};
use crate::names::{parse_location, parse_resource, validate_id};

const CLUSTER_KIND: &str = "edgecontainer.Cluster";

#[derive(Clone)]
pub struct EdgeContainerService {
    ctx: Arc<Ctx>,
}

impl EdgeContainerService {
    pub fn new(ctx: Arc<Ctx>) -> Self {
        EdgeContainerService { ctx }
    }

    pub fn into_server(self) -> EdgeContainerServer<Self> {
        EdgeContainerServer::new(self)
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
            api_version: "v1".into(),
            ..Default::default()
        };
        let metadata = pack("google.cloud.edgecontainer.v1.OperationMetadata", &metadata);
        done_operation(now, location, metadata, response)
    }
}

#[tonic::async_trait]
impl EdgeContainer for EdgeContainerService {
    async fn create_cluster(
        &self,
        request: Request<pb::CreateClusterRequest>,
    ) -> Result<Response<Operation>, Status> {
        let req = request.get_ref();
        let location = parse_location("parent", &req.parent)?;
        validate_id("cluster_id", &req.cluster_id)?;
        parse_request_id(&req.request_id)?;
        let mut cluster = req
            .cluster
            .clone()
            .ok_or_else(|| invalid_field("cluster", "is required"))?;
        let name = format!("{location}/clusters/{}", req.cluster_id);
        let caller = self.ctx.caller(&request)?;

        let now = self.ctx.now();
        let settings = &self.ctx.settings;
        let (ca, ca_pem) = self.ctx.new_ca(
            &clustercred_store::ca_owner(CLUSTER_KIND, &name),
            "Edge Container",
        )?;
        cluster.name = name.clone();
        cluster.create_time = Some(timestamp(now));
        cluster.update_time = Some(timestamp(now));
        cluster.status = pb::cluster::Status::Running as i32;
        cluster.cluster_ca_certificate = ca_pem;
        // Google fills endpoint and port itself; here they say where the operator's API server listens, so a
        // value given at creation is kept.
        if cluster.endpoint.is_empty() {
            cluster.endpoint = settings.edge_default_endpoint.clone();
        }
        if cluster.port <= 0 || cluster.port > 65535 {
            cluster.port = settings.edge_default_port;
        }
        let (op, op_record) = self.operation(
            &location.to_string(),
            &name,
            "create",
            pack("google.cloud.edgecontainer.v1.Cluster", &cluster),
        );
        let record = ResourceRecord {
            kind: CLUSTER_KIND.into(),
            name: name.clone(),
            parent: location.to_string(),
            uid: uuid::Uuid::new_v4().to_string(),
            data: cluster.encode_to_vec(),
            create_time_unix: now.unix_timestamp(),
        };
        self.ctx
            .insert(
                "cluster",
                &record,
                Some(&ca),
                Some(&op_record),
                Some(&self.ctx.ok_event(
                    &caller,
                    &name,
                    "created cluster and its CA",
                    &req.request_id,
                )),
            )
            .await?;
        Ok(Response::new(op))
    }

    async fn get_cluster(
        &self,
        request: Request<pb::GetClusterRequest>,
    ) -> Result<Response<pb::Cluster>, Status> {
        let name = parse_resource("name", &request.get_ref().name, "clusters")?.to_string();
        self.ctx.caller(&request)?;
        Ok(Response::new(
            self.ctx.load(CLUSTER_KIND, "cluster", &name).await?,
        ))
    }

    async fn list_clusters(
        &self,
        request: Request<pb::ListClustersRequest>,
    ) -> Result<Response<pb::ListClustersResponse>, Status> {
        let req = request.get_ref();
        let parent = parse_location("parent", &req.parent)?.to_string();
        self.ctx.caller(&request)?;
        let (clusters, next_page_token) = self
            .ctx
            .list(CLUSTER_KIND, &parent, req.page_size, &req.page_token)
            .await?;
        Ok(Response::new(pb::ListClustersResponse {
            clusters,
            next_page_token,
            unreachable: vec![],
        }))
    }

    async fn delete_cluster(
        &self,
        request: Request<pb::DeleteClusterRequest>,
    ) -> Result<Response<Operation>, Status> {
        let req = request.get_ref();
        let name = parse_resource("name", &req.name, "clusters")?;
        parse_request_id(&req.request_id)?;
        let name_s = name.to_string();
        let caller = self.ctx.caller(&request)?;
        let (op, op_record) =
            self.operation(&name.parent.to_string(), &name_s, "delete", empty_any());
        self.ctx
            .remove(
                CLUSTER_KIND,
                "cluster",
                &name_s,
                Some(&op_record),
                Some(&self.ctx.ok_event(
                    &caller,
                    &name_s,
                    "deleted cluster and its CA",
                    &req.request_id,
                )),
            )
            .await?;
        Ok(Response::new(op))
    }

    async fn generate_offline_credential(
        &self,
        request: Request<pb::GenerateOfflineCredentialRequest>,
    ) -> Result<Response<pb::GenerateOfflineCredentialResponse>, Status> {
        let name = parse_resource("cluster", &request.get_ref().cluster, "clusters")?.to_string();
        // Google documents `edgecontainer.clusters.get` for this method: the certificate only says who the
        // caller is; Kubernetes RBAC decides what it may do.
        let caller = self.ctx.caller(&request)?;
        let principal = caller.principal.clone();
        let _: pb::Cluster = self.ctx.load(CLUSTER_KIND, "cluster", &name).await?;
        let ca = self
            .ctx
            .ca(&clustercred_store::ca_owner(CLUSTER_KIND, &name))
            .await?
            .ok_or_else(|| not_found("cluster", &name))?;

        self.ctx.limits.cluster(&name)?;
        let _permit = self.ctx.limits.signing()?;
        let algorithm = self.ctx.settings.offline_key_algorithm;
        let key = if matches!(algorithm, GeneratedKeyAlgorithm::EcdsaP256) {
            generate_key_pair(algorithm)
        } else {
            // RSA generation takes tens of milliseconds: keep it off the async workers, capped apart.
            let rsa = self.ctx.limits.rsa_keygen()?;
            tokio::task::spawn_blocking(move || {
                let key = generate_key_pair(algorithm);
                drop(rsa);
                key
            })
            .await
            .map_err(|e| crate::errors::internal("generating a key pair", e))?
        }
        .map_err(|e| from_authority("generating a key pair", e))?;

        let now = self.ctx.now();
        let issued = ca
            .issue_client_certificate(
                &LeafRequest {
                    public_key: &key.public_key,
                    subject_common_name: &principal.id,
                    subject_organization: None,
                    lifetime: self.ctx.settings.offline_credential_lifetime,
                },
                now,
            )
            .map_err(|e| from_authority("issuing an offline credential", e))?;
        let record = IssuanceRecord {
            serial_hex: issued.serial_hex.clone(),
            // Kind and name, like the CA: an AlloyDB cluster may have the same name.
            owner: clustercred_store::ca_owner(CLUSTER_KIND, &name),
            kind: "offline_credential".into(),
            subject: principal.id.clone(),
            not_before_unix: issued.not_before.unix_timestamp(),
            not_after_unix: issued.not_after.unix_timestamp(),
            requester: principal.id.clone(),
            request_id: None,
            public_key_sha256: key.public_key.sha256_fingerprint_hex(),
            create_time_unix: now.unix_timestamp(),
            metadata_exchange: false,
        };
        let event = self.ctx.ok_event(
            &caller,
            &name,
            format!(
                "offline credential serial {} for {} until {}",
                record.serial_hex, record.subject, record.not_after_unix
            ),
            "",
        );
        self.ctx
            .store
            .record_issuance(&record, None, Some(&event))
            .await
            .map_err(|e| from_store("recording the offline credential", e))?;
        crate::context::log_event(&event);
        Ok(Response::new(pb::GenerateOfflineCredentialResponse {
            client_certificate: issued.cert_pem,
            client_key: key.private_key_pem.to_string(),
            user_id: principal.id,
            expire_time: Some(timestamp(issued.not_after)),
        }))
    }
}

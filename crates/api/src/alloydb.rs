//! AlloyDB Admin: clusters, instances, connection info and client certificates, served as v1, v1beta and
//! v1alpha. The three versions share field numbers, so v1beta and v1alpha requests are re-read as v1 messages
//! and answered by the same code; only the `@type` of packed messages names the caller's version.

use std::sync::Arc;

use clustercred_authority::{ClientPublicKey, LeafRequest};
use clustercred_proto::google::cloud::alloydb::v1 as pb;
use clustercred_proto::google::longrunning::Operation;
use clustercred_store::{IssuanceRecord, OperationRecord, ResourceRecord};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::common::*;
use crate::context::Ctx;
use crate::errors::{from_key, from_store, internal, invalid_field, not_found};
use crate::names::{
    ChildName, ResourceName, parse_child, parse_location, parse_resource, validate_id,
};

pub mod users;

pub use users::{
    DatabaseUserError, DatabaseUsers, IamLogin, NoBackends, RoleChange, RoleLogin,
    authorize_iam_login, iam_database_user, iam_database_username,
};

pub const CLUSTER_KIND: &str = "alloydb.Cluster";
pub const INSTANCE_KIND: &str = "alloydb.Instance";

/// The version-independent implementation.
#[derive(Clone)]
pub struct AlloyDb {
    ctx: Arc<Ctx>,
    /// The roles of database users in the clusters' backend databases.
    users: Arc<dyn DatabaseUsers>,
}

impl AlloyDb {
    /// Without backend databases: the Users API answers FAILED_PRECONDITION until [`Self::with_database_users`].
    pub fn new(ctx: Arc<Ctx>) -> Self {
        AlloyDb {
            ctx,
            users: Arc::new(NoBackends),
        }
    }

    /// Database users are applied to the backends through `users`.
    pub fn with_database_users(mut self, users: Arc<dyn DatabaseUsers>) -> Self {
        self.users = users;
        self
    }

    fn operation(
        &self,
        version: &str,
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
            api_version: version.to_string(),
            ..Default::default()
        };
        let metadata = pack(
            &format!("google.cloud.alloydb.{version}.OperationMetadata"),
            &metadata,
        );
        done_operation(now, location, metadata, response)
    }

    async fn load_cluster(&self, name: &ResourceName) -> Result<pb::Cluster, Status> {
        self.ctx
            .load(CLUSTER_KIND, "cluster", &name.to_string())
            .await
    }

    async fn load_instance(&self, name: &ChildName) -> Result<pb::Instance, Status> {
        self.ctx
            .load(INSTANCE_KIND, "instance", &name.to_string())
            .await
    }

    pub async fn create_cluster(
        &self,
        version: &str,
        request: Request<pb::CreateClusterRequest>,
    ) -> Result<Operation, Status> {
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
        cluster.name = name.clone();
        cluster.uid = uuid::Uuid::new_v4().to_string();
        cluster.create_time = Some(timestamp(now));
        cluster.update_time = Some(timestamp(now));
        cluster.delete_time = None;
        cluster.state = pb::cluster::State::Ready as i32;
        cluster.reconciling = false;
        cluster.etag = cluster.uid.clone();
        if cluster.cluster_type == pb::cluster::ClusterType::Unspecified as i32 {
            cluster.cluster_type = pb::cluster::ClusterType::Primary as i32;
        }
        if cluster.database_version == pb::DatabaseVersion::Unspecified as i32 {
            cluster.database_version = pb::DatabaseVersion::Postgres16 as i32;
        }
        // The initial password is write-only: never kept, never echoed.
        if let Some(user) = cluster.initial_user.as_mut() {
            user.password.clear();
        }
        cluster.ssl_config = Some(pb::SslConfig {
            ssl_mode: pb::ssl_config::SslMode::EncryptedOnly as i32,
            ca_source: pb::ssl_config::CaSource::Managed as i32,
        });

        let type_name = format!("google.cloud.alloydb.{version}.Cluster");
        let (op, op_record) = self.operation(
            version,
            &location.to_string(),
            &name,
            "create",
            pack(&type_name, &cluster),
        );
        if req.validate_only {
            return Ok(Operation {
                name: String::new(),
                ..op
            });
        }
        let (ca, _) = self
            .ctx
            .new_ca(&clustercred_store::ca_owner(CLUSTER_KIND, &name), "AlloyDB")?;
        let record = ResourceRecord {
            kind: CLUSTER_KIND.into(),
            name: name.clone(),
            parent: location.to_string(),
            uid: cluster.uid.clone(),
            data: cluster.encode_to_vec(),
            create_time_unix: now.unix_timestamp(),
        };
        let event = self.ctx.ok_event(
            &caller,
            &name,
            "created cluster and its CA",
            &req.request_id,
        );
        self.ctx
            .insert(
                "cluster",
                &record,
                Some(&ca),
                Some(&op_record),
                Some(&event),
            )
            .await?;
        Ok(op)
    }

    pub async fn get_cluster(
        &self,
        request: Request<pb::GetClusterRequest>,
    ) -> Result<pb::Cluster, Status> {
        let name = parse_resource("name", &request.get_ref().name, "clusters")?;
        self.ctx.caller(&request)?;
        self.load_cluster(&name).await
    }

    pub async fn list_clusters(
        &self,
        request: Request<pb::ListClustersRequest>,
    ) -> Result<pb::ListClustersResponse, Status> {
        let req = request.get_ref();
        let parent = parse_location("parent", &req.parent)?;
        self.ctx.caller(&request)?;
        let (clusters, next_page_token) = self
            .ctx
            .list(
                CLUSTER_KIND,
                &parent.to_string(),
                req.page_size,
                &req.page_token,
            )
            .await?;
        Ok(pb::ListClustersResponse {
            clusters,
            next_page_token,
            unreachable: vec![],
        })
    }

    pub async fn delete_cluster(
        &self,
        version: &str,
        request: Request<pb::DeleteClusterRequest>,
    ) -> Result<Operation, Status> {
        let req = request.get_ref();
        let name = parse_resource("name", &req.name, "clusters")?;
        parse_request_id(&req.request_id)?;
        let name_s = name.to_string();
        let caller = self.ctx.caller(&request)?;
        let cluster = self.load_cluster(&name).await?;
        if !req.etag.is_empty() && req.etag != cluster.etag {
            return Err(Status::aborted(
                "etag does not match the cluster's current etag",
            ));
        }
        if !req.force {
            for (kind, what) in [
                (INSTANCE_KIND, "instances"),
                (users::USER_KIND, "database users"),
            ] {
                let children = self
                    .ctx
                    .store
                    .list_resources(kind, &name_s, None, 1)
                    .await
                    .map_err(|e| from_store("listing the cluster's resources", e))?;
                if !children.is_empty() {
                    return Err(Status::failed_precondition(format!(
                        "the cluster still has {what}: delete them first or set force (force leaves the \
                         database users' roles in the backend database)"
                    )));
                }
            }
        }
        let (op, op_record) = self.operation(
            version,
            &name.parent.to_string(),
            &name_s,
            "delete",
            empty_any(),
        );
        if req.validate_only {
            return Ok(Operation {
                name: String::new(),
                ..op
            });
        }
        let event = self.ctx.ok_event(
            &caller,
            &name_s,
            "deleted cluster and its CA",
            &req.request_id,
        );
        self.ctx
            .remove(
                CLUSTER_KIND,
                "cluster",
                &name_s,
                Some(&op_record),
                Some(&event),
            )
            .await?;
        Ok(op)
    }

    pub async fn create_instance(
        &self,
        version: &str,
        request: Request<pb::CreateInstanceRequest>,
    ) -> Result<Operation, Status> {
        let req = request.get_ref();
        let cluster_name = parse_resource("parent", &req.parent, "clusters")?;
        validate_id("instance_id", &req.instance_id)?;
        parse_request_id(&req.request_id)?;
        let mut instance = req
            .instance
            .clone()
            .ok_or_else(|| invalid_field("instance", "is required"))?;
        let name = format!("{cluster_name}/instances/{}", req.instance_id);
        let caller = self.ctx.caller(&request)?;
        self.load_cluster(&cluster_name).await?;

        let now = self.ctx.now();
        instance.name = name.clone();
        instance.uid = uuid::Uuid::new_v4().to_string();
        instance.create_time = Some(timestamp(now));
        instance.update_time = Some(timestamp(now));
        instance.delete_time = None;
        instance.state = pb::instance::State::Ready as i32;
        instance.reconciling = false;
        instance.etag = instance.uid.clone();
        if instance.instance_type == pb::instance::InstanceType::Unspecified as i32 {
            instance.instance_type = pb::instance::InstanceType::Primary as i32;
        }
        let type_name = format!("google.cloud.alloydb.{version}.Instance");
        if req.validate_only {
            let (op, _) = self.operation(
                version,
                &cluster_name.parent.to_string(),
                &name,
                "create",
                pack(&type_name, &instance),
            );
            return Ok(Operation {
                name: String::new(),
                ..op
            });
        }
        instance.ip_address = self.allocate_ip().await?;
        let (op, op_record) = self.operation(
            version,
            &cluster_name.parent.to_string(),
            &name,
            "create",
            pack(&type_name, &instance),
        );
        let record = ResourceRecord {
            kind: INSTANCE_KIND.into(),
            name: name.clone(),
            parent: cluster_name.to_string(),
            uid: instance.uid.clone(),
            data: instance.encode_to_vec(),
            create_time_unix: now.unix_timestamp(),
        };
        let event = self.ctx.ok_event(
            &caller,
            &name,
            format!("created instance at {}", instance.ip_address),
            &req.request_id,
        );
        self.ctx
            .insert("instance", &record, None, Some(&op_record), Some(&event))
            .await?;
        Ok(op)
    }

    /// Distinct addresses from `alloydb_first_address` upwards (127.1.0.1 by default), so that every instance
    /// can have its own endpoint on port 5433.
    async fn allocate_ip(&self) -> Result<String, Status> {
        let n = self
            .ctx
            .store
            .next_counter("alloydb.instance_ip")
            .await
            .map_err(|e| from_store("allocating an instance address", e))?;
        let n = u32::try_from(n - 1)
            .map_err(|_| Status::resource_exhausted("no instance addresses left"))?;
        nth_address(self.ctx.settings.alloydb_first_address, n)
            .map(|ip| ip.to_string())
            .ok_or_else(|| Status::resource_exhausted("no instance addresses left"))
    }

    pub async fn get_instance(
        &self,
        request: Request<pb::GetInstanceRequest>,
    ) -> Result<pb::Instance, Status> {
        let name = parse_child("name", &request.get_ref().name, "clusters", "instances")?;
        self.ctx.caller(&request)?;
        self.load_instance(&name).await
    }

    pub async fn list_instances(
        &self,
        request: Request<pb::ListInstancesRequest>,
    ) -> Result<pb::ListInstancesResponse, Status> {
        let req = request.get_ref();
        // `-` for the cluster lists the instances of every cluster in a location: not supported yet.
        let cluster = parse_resource("parent", &req.parent, "clusters")?;
        let parent = cluster.to_string();
        self.ctx.caller(&request)?;
        let (instances, next_page_token) = self
            .ctx
            .list(INSTANCE_KIND, &parent, req.page_size, &req.page_token)
            .await?;
        Ok(pb::ListInstancesResponse {
            instances,
            next_page_token,
            unreachable: vec![],
        })
    }

    pub async fn delete_instance(
        &self,
        version: &str,
        request: Request<pb::DeleteInstanceRequest>,
    ) -> Result<Operation, Status> {
        let req = request.get_ref();
        let name = parse_child("name", &req.name, "clusters", "instances")?;
        parse_request_id(&req.request_id)?;
        let name_s = name.to_string();
        let caller = self.ctx.caller(&request)?;
        let instance = self.load_instance(&name).await?;
        if !req.etag.is_empty() && req.etag != instance.etag {
            return Err(Status::aborted(
                "etag does not match the instance's current etag",
            ));
        }
        let (op, op_record) = self.operation(
            version,
            &name.parent.parent.to_string(),
            &name_s,
            "delete",
            empty_any(),
        );
        if req.validate_only {
            return Ok(Operation {
                name: String::new(),
                ..op
            });
        }
        let event = self
            .ctx
            .ok_event(&caller, &name_s, "deleted instance", &req.request_id);
        self.ctx
            .remove(
                INSTANCE_KIND,
                "instance",
                &name_s,
                Some(&op_record),
                Some(&event),
            )
            .await?;
        Ok(op)
    }

    pub async fn get_connection_info(
        &self,
        request: Request<pb::GetConnectionInfoRequest>,
    ) -> Result<pb::ConnectionInfo, Status> {
        let req = request.get_ref();
        let name = parse_child("parent", &req.parent, "clusters", "instances")?;
        parse_request_id(&req.request_id)?;
        self.ctx.caller(&request)?;
        let instance = self.load_instance(&name).await?;
        Ok(pb::ConnectionInfo {
            name: format!("{name}/connectionInfo"),
            ip_address: instance.ip_address,
            public_ip_address: instance.public_ip_address,
            instance_uid: instance.uid,
        })
    }

    pub async fn generate_client_certificate(
        &self,
        version: &str,
        request: Request<pb::GenerateClientCertificateRequest>,
    ) -> Result<pb::GenerateClientCertificateResponse, Status> {
        let req = request.get_ref();
        let cluster_name = parse_resource("parent", &req.parent, "clusters")?;
        let cluster_s = cluster_name.to_string();
        let caller = self.ctx.caller(&request)?;
        let principal = &caller.principal;
        let request_id = parse_request_id(&req.request_id)?;
        let settings = &self.ctx.settings;
        let lifetime = match &req.cert_duration {
            None => settings.client_cert_default,
            Some(d) => {
                let d = duration("cert_duration", d)?;
                if d < settings.client_cert_min || d > settings.client_cert_max {
                    return Err(invalid_field(
                        "cert_duration",
                        format!(
                            "must be between {}s and {}s",
                            settings.client_cert_min.whole_seconds(),
                            settings.client_cert_max.whole_seconds()
                        ),
                    ));
                }
                d
            }
        };
        if req.public_key.trim().is_empty() {
            return Err(invalid_field(
                "public_key",
                "is required (a PEM public key)",
            ));
        }
        let public_key =
            ClientPublicKey::from_pem(&req.public_key).map_err(|e| from_key("public_key", e))?;
        self.load_cluster(&cluster_name).await?;
        let ca = self
            .ctx
            .ca(&clustercred_store::ca_owner(CLUSTER_KIND, &cluster_s))
            .await?
            .ok_or_else(|| not_found("cluster", &cluster_s))?;

        let fingerprint = [
            version.as_bytes(),
            principal.id.as_bytes(),
            cluster_s.as_bytes(),
            &lifetime.whole_nanoseconds().to_be_bytes(),
            public_key.spki_der(),
            &[u8::from(req.use_metadata_exchange)],
        ]
        .join(&0u8);
        self.ctx.limits.cluster(&cluster_s)?;
        let _permit = self.ctx.limits.signing()?;
        let now = self.ctx.now();
        self.ctx
            .issue_once(
                &format!("alloydb.{version}.generateClientCertificate"),
                request_id.as_deref(),
                &fingerprint,
                || {
                    let issued = ca
                        .issue_client_certificate(
                            &LeafRequest {
                                public_key: &public_key,
                                subject_common_name: &principal.id,
                                subject_organization: None,
                                lifetime,
                            },
                            now,
                        )
                        .map_err(|e| {
                            crate::errors::from_authority("issuing a client certificate", e)
                        })?;
                    let record = IssuanceRecord {
                        serial_hex: issued.serial_hex.clone(),
                        // Kind and name, like the CA: an Edge cluster may have the same name.
                        owner: clustercred_store::ca_owner(CLUSTER_KIND, &cluster_s),
                        kind: "client_certificate".into(),
                        subject: principal.id.clone(),
                        not_before_unix: issued.not_before.unix_timestamp(),
                        not_after_unix: issued.not_after.unix_timestamp(),
                        requester: principal.id.clone(),
                        request_id: request_id.clone(),
                        public_key_sha256: public_key.sha256_fingerprint_hex(),
                        create_time_unix: now.unix_timestamp(),
                        metadata_exchange: req.use_metadata_exchange,
                    };
                    let response = pb::GenerateClientCertificateResponse {
                        pem_certificate_chain: vec![issued.cert_pem, ca.cert_pem().to_string()],
                        ca_cert: ca.cert_pem().to_string(),
                    };
                    let event = self.ctx.ok_event(
                        &caller,
                        &cluster_s,
                        format!(
                            "client certificate serial {} for {} until {}",
                            record.serial_hex, record.subject, record.not_after_unix
                        ),
                        request_id.as_deref().unwrap_or_default(),
                    );
                    Ok((response, record, event))
                },
            )
            .await
    }
}

/// The CA certificate is also the chain's last element: the stored copy leaves `ca_cert` out (a third of the
/// response), and replay puts it back. A response stored whole, as before, has it and keeps it.
impl crate::context::Replayable for pb::GenerateClientCertificateResponse {
    fn stored(&self) -> Vec<u8> {
        let mut compact = self.clone();
        if self.pem_certificate_chain.last() == Some(&self.ca_cert) {
            compact.ca_cert.clear();
        }
        compact.encode_to_vec()
    }

    fn restored(stored: &[u8]) -> Result<Self, prost::DecodeError> {
        let mut response = Self::decode(stored)?;
        if response.ca_cert.is_empty()
            && let Some(ca) = response.pem_certificate_chain.last()
        {
            response.ca_cert = ca.clone();
        }
        Ok(response)
    }
}

/// Re-reads a message as its same-numbered twin of another version.
fn convert<A: Message, B: Message + Default>(a: &A) -> Result<B, Status> {
    B::decode(a.encode_to_vec().as_slice())
        .map_err(|e| internal("converting between API versions", e))
}

fn convert_request<A: Message, B: Message + Default>(
    request: Request<A>,
) -> Result<Request<B>, Status> {
    let (metadata, extensions, message) = request.into_parts();
    Ok(Request::from_parts(
        metadata,
        extensions,
        convert(&message)?,
    ))
}

macro_rules! alloydb_version {
    ($service:ident, $version:ident) => {
        /// `google.cloud.alloydb.$version.AlloyDBAdmin`.
        #[derive(Clone)]
        pub struct $service(pub AlloyDb);

        impl $service {
            pub fn into_server(
                self,
            ) -> clustercred_proto::google::cloud::alloydb::$version::alloy_db_admin_server::AlloyDbAdminServer<Self>
            {
                clustercred_proto::google::cloud::alloydb::$version::alloy_db_admin_server::AlloyDbAdminServer::new(self)
            }
        }

        #[tonic::async_trait]
        impl clustercred_proto::google::cloud::alloydb::$version::alloy_db_admin_server::AlloyDbAdmin for $service {
            async fn create_cluster(
                &self,
                request: Request<clustercred_proto::google::cloud::alloydb::$version::CreateClusterRequest>,
            ) -> Result<Response<Operation>, Status> {
                let op = self.0.create_cluster(stringify!($version), convert_request(request)?).await?;
                Ok(Response::new(op))
            }
            async fn get_cluster(
                &self,
                request: Request<clustercred_proto::google::cloud::alloydb::$version::GetClusterRequest>,
            ) -> Result<Response<clustercred_proto::google::cloud::alloydb::$version::Cluster>, Status> {
                let c = self.0.get_cluster(convert_request(request)?).await?;
                Ok(Response::new(convert(&c)?))
            }
            async fn list_clusters(
                &self,
                request: Request<clustercred_proto::google::cloud::alloydb::$version::ListClustersRequest>,
            ) -> Result<Response<clustercred_proto::google::cloud::alloydb::$version::ListClustersResponse>, Status>
            {
                let r = self.0.list_clusters(convert_request(request)?).await?;
                Ok(Response::new(convert(&r)?))
            }
            async fn delete_cluster(
                &self,
                request: Request<clustercred_proto::google::cloud::alloydb::$version::DeleteClusterRequest>,
            ) -> Result<Response<Operation>, Status> {
                let op = self.0.delete_cluster(stringify!($version), convert_request(request)?).await?;
                Ok(Response::new(op))
            }
            async fn create_instance(
                &self,
                request: Request<clustercred_proto::google::cloud::alloydb::$version::CreateInstanceRequest>,
            ) -> Result<Response<Operation>, Status> {
                let op = self.0.create_instance(stringify!($version), convert_request(request)?).await?;
                Ok(Response::new(op))
            }
            async fn get_instance(
                &self,
                request: Request<clustercred_proto::google::cloud::alloydb::$version::GetInstanceRequest>,
            ) -> Result<Response<clustercred_proto::google::cloud::alloydb::$version::Instance>, Status> {
                let i = self.0.get_instance(convert_request(request)?).await?;
                Ok(Response::new(convert(&i)?))
            }
            async fn list_instances(
                &self,
                request: Request<clustercred_proto::google::cloud::alloydb::$version::ListInstancesRequest>,
            ) -> Result<Response<clustercred_proto::google::cloud::alloydb::$version::ListInstancesResponse>, Status>
            {
                let r = self.0.list_instances(convert_request(request)?).await?;
                Ok(Response::new(convert(&r)?))
            }
            async fn delete_instance(
                &self,
                request: Request<clustercred_proto::google::cloud::alloydb::$version::DeleteInstanceRequest>,
            ) -> Result<Response<Operation>, Status> {
                let op = self.0.delete_instance(stringify!($version), convert_request(request)?).await?;
                Ok(Response::new(op))
            }
            async fn get_connection_info(
                &self,
                request: Request<clustercred_proto::google::cloud::alloydb::$version::GetConnectionInfoRequest>,
            ) -> Result<Response<clustercred_proto::google::cloud::alloydb::$version::ConnectionInfo>, Status> {
                let r = self.0.get_connection_info(convert_request(request)?).await?;
                Ok(Response::new(convert(&r)?))
            }
            async fn list_users(
                &self,
                request: Request<clustercred_proto::google::cloud::alloydb::$version::ListUsersRequest>,
            ) -> Result<Response<clustercred_proto::google::cloud::alloydb::$version::ListUsersResponse>, Status> {
                let r = self.0.list_users(convert_request(request)?).await?;
                Ok(Response::new(convert(&r)?))
            }
            async fn get_user(
                &self,
                request: Request<clustercred_proto::google::cloud::alloydb::$version::GetUserRequest>,
            ) -> Result<Response<clustercred_proto::google::cloud::alloydb::$version::User>, Status> {
                let u = self.0.get_user(convert_request(request)?).await?;
                Ok(Response::new(convert(&u)?))
            }
            async fn create_user(
                &self,
                request: Request<clustercred_proto::google::cloud::alloydb::$version::CreateUserRequest>,
            ) -> Result<Response<clustercred_proto::google::cloud::alloydb::$version::User>, Status> {
                let u = self.0.create_user(convert_request(request)?).await?;
                Ok(Response::new(convert(&u)?))
            }
            async fn update_user(
                &self,
                request: Request<clustercred_proto::google::cloud::alloydb::$version::UpdateUserRequest>,
            ) -> Result<Response<clustercred_proto::google::cloud::alloydb::$version::User>, Status> {
                let u = self.0.update_user(convert_request(request)?).await?;
                Ok(Response::new(convert(&u)?))
            }
            async fn delete_user(
                &self,
                request: Request<clustercred_proto::google::cloud::alloydb::$version::DeleteUserRequest>,
            ) -> Result<Response<()>, Status> {
                self.0.delete_user(convert_request(request)?).await?;
                Ok(Response::new(()))
            }
            async fn generate_client_certificate(
                &self,
                request: Request<
                    clustercred_proto::google::cloud::alloydb::$version::GenerateClientCertificateRequest,
                >,
            ) -> Result<
                Response<clustercred_proto::google::cloud::alloydb::$version::GenerateClientCertificateResponse>,
                Status,
            > {
                let r = self
                    .0
                    .generate_client_certificate(stringify!($version), convert_request(request)?)
                    .await?;
                Ok(Response::new(convert(&r)?))
            }
        }
    };
}

alloydb_version!(AlloyDbV1, v1);
alloydb_version!(AlloyDbV1beta, v1beta);
alloydb_version!(AlloyDbV1alpha, v1alpha);

/// The `n`-th address from `first` on (0-based), skipping last octets 0 and 255; none past 255.255.255.254.
fn nth_address(first: std::net::Ipv4Addr, n: u32) -> Option<std::net::Ipv4Addr> {
    let first = u32::from(first);
    // Usable addresses per /24 are .1 to .254: count in that space, then map back.
    let (block, octet) = (first >> 8, (first & 0xff).clamp(1, 254) - 1);
    let index = u64::from(block) * 254 + u64::from(octet) + u64::from(n);
    let (block, octet) = (index / 254, index % 254 + 1);
    u32::try_from(block)
        .ok()
        .filter(|b| *b <= 0x00ff_ffff)
        .map(|b| std::net::Ipv4Addr::from((b << 8) | octet as u32))
}

#[cfg(test)]
mod address_tests {
    use super::nth_address;
    use std::net::Ipv4Addr;

    #[test]
    fn addresses_skip_network_and_broadcast_octets() {
        let first = Ipv4Addr::new(127, 1, 0, 1);
        assert_eq!(nth_address(first, 0), Some(first));
        assert_eq!(nth_address(first, 253), Some(Ipv4Addr::new(127, 1, 0, 254)));
        assert_eq!(nth_address(first, 254), Some(Ipv4Addr::new(127, 1, 1, 1)));
        assert_eq!(
            nth_address(Ipv4Addr::new(10, 0, 0, 250), 5),
            Some(Ipv4Addr::new(10, 0, 1, 1))
        );
        assert_eq!(
            nth_address(Ipv4Addr::new(255, 255, 255, 254), 0),
            Some(Ipv4Addr::new(255, 255, 255, 254))
        );
        assert_eq!(nth_address(Ipv4Addr::new(255, 255, 255, 254), 1), None);
    }
}

#[cfg(test)]
mod replay_tests {
    use super::pb;
    use crate::context::Replayable;
    use prost::Message;

    #[test]
    fn a_client_certificate_response_is_stored_without_its_repeated_ca() {
        let ca = "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n".to_string();
        let response = pb::GenerateClientCertificateResponse {
            pem_certificate_chain: vec!["leaf".into(), ca.clone()],
            ca_cert: ca.clone(),
        };
        let stored = response.stored();
        assert!(stored.len() + ca.len() <= response.encode_to_vec().len());
        assert_eq!(
            pb::GenerateClientCertificateResponse::restored(&stored).unwrap(),
            response
        );
        // A record written whole (before this form existed) reads back as it was.
        let whole = response.encode_to_vec();
        assert_eq!(
            pb::GenerateClientCertificateResponse::restored(&whole).unwrap(),
            response
        );
        // A CA that is not the chain's end is kept.
        let odd = pb::GenerateClientCertificateResponse {
            pem_certificate_chain: vec!["leaf".into()],
            ca_cert: ca,
        };
        assert_eq!(
            pb::GenerateClientCertificateResponse::restored(&odd.stored()).unwrap(),
            odd
        );
    }
}

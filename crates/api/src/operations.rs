//! google.longrunning.Operations for all three APIs. Our operations finish before the create or delete
//! that started them returns; these methods let clients read them back afterwards.

use std::sync::Arc;

use clustercred_proto::google::longrunning::operations_server::{Operations, OperationsServer};
use clustercred_proto::google::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest,
    ListOperationsResponse, Operation,
};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::common::{next_page_token, parse_page};
use crate::context::Ctx;
use crate::errors::{from_store, internal, not_found};
use crate::names::parse_location;

#[derive(Clone)]
pub struct OperationsService {
    ctx: Arc<Ctx>,
}

impl OperationsService {
    pub fn new(ctx: Arc<Ctx>) -> Self {
        OperationsService { ctx }
    }

    pub fn into_server(self) -> OperationsServer<Self> {
        OperationsServer::new(self)
    }

    async fn load(&self, name: &str) -> Result<Operation, Status> {
        let record = self
            .ctx
            .store
            .get_operation(name)
            .await
            .map_err(|e| from_store("reading an operation", e))?
            .ok_or_else(|| not_found("operation", name))?;
        Operation::decode(record.data.as_slice())
            .map_err(|e| internal("decoding a stored operation", e))
    }
}

/// `alloydb`, `edgecontainer` or `gkemulticloud`: the API whose metadata the operation carries, which names
/// the permission (`alloydb.operations.get`, ...).
fn api_of(op: &Operation) -> &str {
    op.metadata
        .as_ref()
        .and_then(|m| m.type_url.strip_prefix("type.googleapis.com/google.cloud."))
        .and_then(|rest| rest.split('.').next())
        .unwrap_or("clustercred")
}

use crate::methods::OPERATION_APIS as APIS;

impl OperationsService {
    /// The APIs whose `<api>.operations.<verb>` the caller holds on `resource` (refused when none), checked
    /// before any operation is read, so a caller without access learns nothing about which exist.
    async fn allowed<T>(
        &self,
        request: &Request<T>,
        verb: &str,
        resource: &str,
    ) -> Result<Vec<&'static str>, Status> {
        // The gate checked `<api>.operations.<verb>` for each API (methods::OPERATION_APIS order) on
        // `resource` and refused the call when none is held.
        let _ = (verb, resource);
        let caller = self.ctx.caller(request)?;
        Ok(caller
            .held
            .into_iter()
            .filter_map(|i| APIS.get(i).copied())
            .collect())
    }

    /// An operation the caller may act on with `verb`.
    async fn load_allowed<T>(
        &self,
        request: &Request<T>,
        verb: &str,
        name: &str,
    ) -> Result<Operation, Status> {
        let apis = self.allowed(request, verb, name).await?;
        let op = self.load(name).await?;
        if !apis.contains(&api_of(&op)) {
            return Err(Status::permission_denied(format!(
                "Permission '{}.operations.{verb}' denied on resource '{name}' (or it may not exist).",
                api_of(&op)
            )));
        }
        Ok(op)
    }
}

#[tonic::async_trait]
impl Operations for OperationsService {
    async fn list_operations(
        &self,
        request: Request<ListOperationsRequest>,
    ) -> Result<Response<ListOperationsResponse>, Status> {
        let req = request.get_ref();
        let parent = parse_location("name", &req.name)?.to_string();
        let apis = self.allowed(&request, "list", &parent).await?;
        if !req.filter.is_empty() {
            return Err(crate::errors::invalid_field(
                "filter",
                "filters are not supported",
            ));
        }
        let page = parse_page(req.page_size, &req.page_token, &parent)?;
        let records = self
            .ctx
            .store
            .list_operations(&parent, page.after.as_deref(), page.size)
            .await
            .map_err(|e| from_store("listing operations", e))?;
        let next = next_page_token(
            records.len(),
            &page,
            records.last().map(|r| r.name.as_str()),
        );
        let operations = records
            .iter()
            .map(|r| Operation::decode(r.data.as_slice()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| internal("decoding stored operations", e))?
            .into_iter()
            // Only the operations of APIs the caller may list.
            .filter(|op| apis.contains(&api_of(op)))
            .collect();
        Ok(Response::new(ListOperationsResponse {
            operations,
            next_page_token: next,
            unreachable: vec![],
        }))
    }

    async fn get_operation(
        &self,
        request: Request<GetOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let name = operation_name(&request.get_ref().name)?;
        Ok(Response::new(
            self.load_allowed(&request, "get", &name).await?,
        ))
    }

    async fn delete_operation(
        &self,
        request: Request<DeleteOperationRequest>,
    ) -> Result<Response<()>, Status> {
        let name = operation_name(&request.get_ref().name)?;
        self.load_allowed(&request, "delete", &name).await?;
        self.ctx
            .store
            .delete_operation(&name)
            .await
            .map_err(|e| from_store("deleting an operation", e))?;
        Ok(Response::new(()))
    }

    /// Every operation is already done, so cancelling one changes nothing (as on Google's side).
    async fn cancel_operation(
        &self,
        request: Request<CancelOperationRequest>,
    ) -> Result<Response<()>, Status> {
        let name = operation_name(&request.get_ref().name)?;
        self.load_allowed(&request, "cancel", &name).await?;
        Ok(Response::new(()))
    }
}

/// Operation ids are ours (`operation-<millis>-<hex>`), not RFC 1035 ids, so they get their own check.
fn operation_name(name: &str) -> Result<String, Status> {
    let bad = || {
        crate::errors::invalid_field(
            "name",
            "must have the form projects/{project}/locations/{location}/operations/{id}",
        )
    };
    let (location, id) = name.rsplit_once("/operations/").ok_or_else(bad)?;
    parse_location("name", location)?;
    if id.is_empty()
        || id.len() > 128
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(bad());
    }
    Ok(name.to_string())
}

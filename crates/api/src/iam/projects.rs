//! Project IAM policies, served like Resource Manager v1 (`:getIamPolicy`, `:setIamPolicy`,
//! `:testIamPermissions`), so `gcloud projects add-iam-policy-binding` works through an endpoint override.

use std::sync::Arc;

use clustercred_proto::google::cloudresourcemanager::v1::projects_server::{
    Projects, ProjectsServer,
};
use clustercred_proto::google::iam::v1::{
    GetIamPolicyRequest, Policy, SetIamPolicyRequest, TestIamPermissionsRequest,
    TestIamPermissionsResponse,
};
use tonic::{Request, Response, Status};

use super::policy;
use crate::context::Ctx;
use crate::errors::invalid_field;

#[derive(Clone)]
pub struct ProjectsService {
    ctx: Arc<Ctx>,
}

impl ProjectsService {
    pub fn new(ctx: Arc<Ctx>) -> Self {
        ProjectsService { ctx }
    }

    pub fn into_server(self) -> ProjectsServer<Self> {
        ProjectsServer::new(self)
    }
}

fn project_resource(resource: &str) -> Result<String, Status> {
    match resource.strip_prefix("projects/") {
        Some(p)
            if !p.is_empty()
                && p.len() <= 100
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') =>
        {
            Ok(resource.to_string())
        }
        _ => Err(invalid_field(
            "resource",
            "must have the form projects/{project}",
        )),
    }
}

/// A short, reviewable description of a policy change for the audit log.
fn describe_change(before: &Policy, after: &Policy) -> String {
    let pairs = |p: &Policy| {
        p.bindings
            .iter()
            .flat_map(|b| b.members.iter().map(move |m| format!("{} {m}", b.role)))
            .collect::<std::collections::BTreeSet<_>>()
    };
    let (old, new) = (pairs(before), pairs(after));
    let added: Vec<_> = new.difference(&old).map(|s| format!("+{s}")).collect();
    let removed: Vec<_> = old.difference(&new).map(|s| format!("-{s}")).collect();
    let mut all = added;
    all.extend(removed);
    if all.is_empty() {
        "policy rewritten without binding changes".into()
    } else {
        all.join(", ")
    }
}

#[tonic::async_trait]
impl Projects for ProjectsService {
    async fn get_iam_policy(
        &self,
        request: Request<GetIamPolicyRequest>,
    ) -> Result<Response<Policy>, Status> {
        let resource = project_resource(&request.get_ref().resource)?;
        self.ctx.caller(&request)?;
        Ok(Response::new(
            policy::load(self.ctx.store.as_ref(), &resource).await?,
        ))
    }

    async fn set_iam_policy(
        &self,
        request: Request<SetIamPolicyRequest>,
    ) -> Result<Response<Policy>, Status> {
        let req = request.get_ref();
        let resource = project_resource(&req.resource)?;
        let caller = self.ctx.caller(&request)?;
        let mut new = req
            .policy
            .clone()
            .ok_or_else(|| invalid_field("policy", "is required"))?;
        if req
            .update_mask
            .as_ref()
            .is_some_and(|m| m.paths.iter().any(|p| p != "bindings" && p != "etag"))
        {
            return Err(invalid_field(
                "update_mask",
                "only bindings and etag can be set",
            ));
        }
        if !matches!(new.version, 0 | 1 | 3) {
            return Err(invalid_field("policy.version", "must be 1 or 3"));
        }
        new.version = new.version.max(1);
        let before = policy::load(self.ctx.store.as_ref(), &resource).await?;
        // No etag in the request is a blind write, as Google allows; otherwise it must still be current.
        let expected = (!new.etag.is_empty()).then(|| new.etag.clone());
        let mut normalised = new.clone();
        normalised.bindings = policy::normalise(std::mem::take(&mut normalised.bindings))?;
        let event = self.ctx.ok_event(
            &caller,
            &resource,
            describe_change(&before, &normalised),
            "",
        );
        let stored = policy::store_policy(
            self.ctx.store.as_ref(),
            &resource,
            new,
            expected.as_deref(),
            self.ctx.now().unix_timestamp(),
            Some(&event),
        )
        .await?;
        crate::context::log_event(&event);
        Ok(Response::new(stored))
    }

    async fn test_iam_permissions(
        &self,
        request: Request<TestIamPermissionsRequest>,
    ) -> Result<Response<TestIamPermissionsResponse>, Status> {
        let req = request.get_ref();
        let resource = project_resource(&req.resource)?;
        if req.permissions.len() > 100 {
            return Err(invalid_field(
                "permissions",
                "at most 100 permissions per call",
            ));
        }
        let principal = self.ctx.caller(&request)?.principal;
        let mut held = Vec::new();
        for permission in &req.permissions {
            if policy::allows(
                self.ctx.store.as_ref(),
                &principal.members(),
                permission,
                &resource,
            )
            .await?
            {
                held.push(permission.clone());
            }
        }
        Ok(Response::new(TestIamPermissionsResponse {
            permissions: held,
        }))
    }
}

//! Policies: the server-wide root policy (bootstrap, CLI) and one per project (Resource Manager API).
//! A member holds a permission on a resource when a binding in the root policy or in the resource's project
//! policy gives it a role that grants the permission.

use clustercred_proto::google::iam::v1::{Binding, Policy};
use clustercred_store::{AuditEvent, PolicyRecord, Store, StoreError};
use prost::Message;
use tonic::Status;

use super::roles;
use crate::errors::{from_store, internal, invalid_field};

/// The policy above every project: where the first-start administrator is bound.
pub const ROOT: &str = "root";
/// The etag of a policy never written.
pub const EMPTY_ETAG: &[u8] = b"\x00empty\x00";

pub fn resource_of_project(project: &str) -> String {
    format!("projects/{project}")
}

/// A stored policy, or the empty one with its etag.
pub async fn load(store: &dyn Store, resource: &str) -> Result<Policy, Status> {
    match store
        .get_policy(resource)
        .await
        .map_err(|e| from_store("reading a policy", e))?
    {
        Some(record) => {
            let mut policy = Policy::decode(record.data.as_slice())
                .map_err(|e| internal("decoding a stored policy", e))?;
            policy.etag = record.etag;
            Ok(policy)
        }
        None => Ok(Policy {
            version: 1,
            etag: EMPTY_ETAG.to_vec(),
            ..Default::default()
        }),
    }
}

/// Whether any of a principal's `members` holds `permission` on `resource` (deny by default).
pub async fn allows(
    store: &dyn Store,
    members: &[String],
    permission: &str,
    resource: &str,
) -> Result<bool, Status> {
    let mut scopes = vec![ROOT.to_string()];
    if let Some(project) = super::project_of(resource) {
        scopes.push(resource_of_project(&project));
    }
    for scope in scopes {
        let policy = load(store, &scope).await?;
        let granted = policy.bindings.iter().any(|b| {
            b.members
                .iter()
                .any(|m| m == "allAuthenticatedUsers" || members.iter().any(|x| x == m))
                && roles::grants(&b.role, permission)
        });
        if granted {
            return Ok(true);
        }
    }
    Ok(false)
}

fn valid_member(member: &str) -> bool {
    if member == "allAuthenticatedUsers" {
        return true;
    }
    let printable =
        |id: &str| !id.is_empty() && id.len() <= 256 && id.chars().all(|c| c.is_ascii_graphic());
    let federated = format!("//{}/issuers/", crate::context::FEDERATED_NAMESPACE);
    if let Some(rest) = member
        .strip_prefix("principal:")
        .and_then(|r| r.strip_prefix(federated.as_str()))
    {
        return rest
            .split_once("/subject/")
            .is_some_and(|(issuer, subject)| valid_issuer_id(issuer) && printable(subject));
    }
    if let Some(rest) = member
        .strip_prefix("principalSet:")
        .and_then(|r| r.strip_prefix(federated.as_str()))
    {
        return match rest.split_once('/') {
            Some((issuer, "*")) => valid_issuer_id(issuer),
            Some((issuer, set)) => {
                valid_issuer_id(issuer) && set.strip_prefix("group/").is_some_and(printable)
            }
            None => false,
        };
    }
    // What deleting a service account leaves of its bindings; kept so a read-modify-write round-trips.
    if let Some(rest) = member.strip_prefix("deleted:serviceAccount:") {
        return rest
            .split_once("?uid=")
            .is_some_and(|(email, uid)| printable(email) && printable(uid));
    }
    let Some((kind, id)) = member.split_once(':') else {
        return false;
    };
    matches!(kind, "user" | "serviceAccount" | "group") && printable(id)
}

/// The id a trusted issuer is configured under (names it in federated members): RFC 1035-like.
pub fn valid_issuer_id(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !id.ends_with('-')
}

/// Checks and normalises bindings: known roles, well-formed members (`allUsers` is refused: every caller
/// must authenticate), no conditions, each role once, members sorted and unique.
pub fn normalise(bindings: Vec<Binding>) -> Result<Vec<Binding>, Status> {
    let mut merged: Vec<Binding> = Vec::new();
    for (i, binding) in bindings.into_iter().enumerate() {
        let field = format!("policy.bindings[{i}]");
        if !roles::is_known(&binding.role) {
            return Err(invalid_field(
                &format!("{field}.role"),
                format!("unknown role {:?}", binding.role),
            ));
        }
        if binding.condition.is_some() {
            return Err(invalid_field(
                &format!("{field}.condition"),
                "conditional bindings are not supported",
            ));
        }
        for member in &binding.members {
            if !valid_member(member) {
                return Err(invalid_field(
                    &format!("{field}.members"),
                    format!(
                        "{member:?} is not a member (user:, serviceAccount:, group:, principal://clustercred/issuers/I/subject/S, principalSet://clustercred/issuers/I/group/G or /*, or allAuthenticatedUsers)"
                    ),
                ));
            }
        }
        match merged.iter_mut().find(|b| b.role == binding.role) {
            Some(existing) => existing.members.extend(binding.members),
            None => merged.push(binding),
        }
    }
    for b in &mut merged {
        b.members.sort();
        b.members.dedup();
    }
    merged.retain(|b| !b.members.is_empty());
    Ok(merged)
}

/// Replaces a policy if `expected_etag` (when given) is still current. Returns the stored policy.
pub async fn store_policy(
    store: &dyn Store,
    resource: &str,
    mut policy: Policy,
    expected_etag: Option<&[u8]>,
    now_unix: i64,
    audit: Option<&AuditEvent>,
) -> Result<Policy, Status> {
    policy.bindings = normalise(std::mem::take(&mut policy.bindings))?;
    policy.etag = rand::random::<[u8; 8]>().to_vec();
    let mut data = policy.clone();
    data.etag.clear();
    let record = PolicyRecord {
        resource: resource.to_string(),
        data: data.encode_to_vec(),
        etag: policy.etag.clone(),
        update_time_unix: now_unix,
    };
    // The empty policy's etag stands for "nothing stored yet".
    let expected = expected_etag.map(|e| if e == EMPTY_ETAG { &[][..] } else { e });
    match store.set_policy(&record, expected, audit).await {
        Ok(()) => Ok(policy),
        Err(StoreError::Conflict) => Err(Status::aborted(
            "There were concurrent policy changes. Please retry the whole read-modify-write with exponential backoff.",
        )),
        Err(e) => Err(from_store("writing a policy", e)),
    }
}

/// Adds (or removes) one member of one role, for the CLI and bootstrap.
pub async fn change_binding(
    store: &dyn Store,
    resource: &str,
    role: &str,
    member: &str,
    add: bool,
    now_unix: i64,
    audit: Option<&AuditEvent>,
) -> Result<Policy, Status> {
    let mut policy = load(store, resource).await?;
    let etag = policy.etag.clone();
    match policy.bindings.iter_mut().find(|b| b.role == role) {
        Some(b) if add => b.members.push(member.to_string()),
        Some(b) => b.members.retain(|m| m != member),
        None if add => policy.bindings.push(Binding {
            role: role.to_string(),
            members: vec![member.to_string()],
            condition: None,
        }),
        None => {}
    }
    store_policy(store, resource, policy, Some(&etag), now_unix, audit).await
}

/// Replaces `member` by `replacement` in every stored policy (each rewrite audited with `audit`'s event for
/// that policy). Used when a service account is deleted: its bindings become `deleted:` members that grant
/// nothing, so an account created later with the same email starts with no access.
pub async fn retire_member(
    store: &dyn Store,
    member: &str,
    replacement: &str,
    now_unix: i64,
    audit: impl Fn(&str) -> AuditEvent,
) -> Result<usize, Status> {
    let mut rewritten = 0;
    let records = store
        .list_policies()
        .await
        .map_err(|e| from_store("reading policies", e))?;
    for record in records {
        // A concurrent change of the same policy is retried from a fresh read.
        for attempt in 0.. {
            let mut policy = load(store, &record.resource).await?;
            let mut changed = false;
            for binding in &mut policy.bindings {
                for m in &mut binding.members {
                    if m == member {
                        *m = replacement.to_string();
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
            let etag = policy.etag.clone();
            let event = audit(&record.resource);
            match store_policy(
                store,
                &record.resource,
                policy,
                Some(&etag),
                now_unix,
                Some(&event),
            )
            .await
            {
                Ok(_) => {
                    rewritten += 1;
                    break;
                }
                Err(s) if s.code() == tonic::Code::Aborted && attempt < 10 => continue,
                Err(s) => return Err(s),
            }
        }
    }
    Ok(rewritten)
}

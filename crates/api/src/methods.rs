//! The access table: for every gRPC method the server answers, who may call it (the permissions, and which
//! request field names the resource they are checked on), its rate-limit class and what the audit log keeps
//! of it. The gate (`crate::gate`) applies it to every call, gRPC and transcoded REST alike, before a handler
//! runs; the server refuses to start when a served method has no entry.

use std::collections::HashMap;

use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor};

/// Where the resource a permission is checked on comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    /// A string field holding a resource name (`projects/P/...`); a dotted path reaches into singular message
    /// fields (`user.name`).
    Field(&'static str),
    /// A string field holding a bare project id (Resource Manager v1: `resource` = `P` or `projects/P`).
    ProjectId(&'static str),
}

impl Resource {
    pub fn field(&self) -> &'static str {
        match self {
            Resource::Field(f) | Resource::ProjectId(f) => f,
        }
    }
}

/// Who may call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No bearer credential: the request carries its own (the agent-token exchange) or asks nothing (health).
    Public,
    /// Any authenticated caller (testIamPermissions answers about the caller itself).
    Authenticated,
    /// Every one of the permissions on the resource.
    All(&'static [&'static str], Resource),
    /// At least one of them; the handler learns which (`Caller::held`). Operations are shared by three APIs.
    Any(&'static [&'static str], Resource),
}

/// Which token bucket a call draws from besides the per-address one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateClass {
    /// Unauthenticated calls: the per-address and anonymous buckets only.
    Public,
    /// Authenticated calls: the per-principal bucket too.
    Principal,
}

/// What the audit log keeps of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditMode {
    /// Refusals only (reads).
    Refusals,
    /// Refusals, and the action itself, written by the handler in the same transaction as its records.
    Actions,
}

#[derive(Clone, Copy, Debug)]
pub struct MethodRule {
    pub access: Access,
    pub rate: RateClass,
    pub audit: AuditMode,
    /// Hands out a credential (certificate, key, token): never reachable through a `*.get`/`*.list` grant alone.
    pub mints: bool,
}

impl MethodRule {
    /// The permissions the rule checks.
    pub fn permissions(&self) -> &'static [&'static str] {
        match self.access {
            Access::All(p, _) | Access::Any(p, _) => p,
            Access::Public | Access::Authenticated => &[],
        }
    }

    pub fn resource(&self) -> Option<Resource> {
        match self.access {
            Access::All(_, r) | Access::Any(_, r) => Some(r),
            Access::Public | Access::Authenticated => None,
        }
    }
}

/// Rules keyed by the full method name, `package.Service/Method`.
#[derive(Clone, Debug, Default)]
pub struct MethodTable {
    rules: HashMap<String, MethodRule>,
}

const fn read(perm: &'static [&'static str], resource: Resource) -> MethodRule {
    MethodRule {
        access: Access::All(perm, resource),
        rate: RateClass::Principal,
        audit: AuditMode::Refusals,
        mints: false,
    }
}

const fn write(perm: &'static [&'static str], resource: Resource) -> MethodRule {
    MethodRule {
        access: Access::All(perm, resource),
        rate: RateClass::Principal,
        audit: AuditMode::Actions,
        mints: false,
    }
}

const fn mint(perm: &'static [&'static str], resource: Resource) -> MethodRule {
    MethodRule {
        access: Access::All(perm, resource),
        rate: RateClass::Principal,
        audit: AuditMode::Actions,
        mints: true,
    }
}

const PUBLIC: MethodRule = MethodRule {
    access: Access::Public,
    rate: RateClass::Public,
    audit: AuditMode::Refusals,
    mints: false,
};

use Resource::{Field, ProjectId};

/// AlloyDB Admin, the same for v1, v1beta and v1alpha.
const ALLOYDB: &[(&str, MethodRule)] = &[
    (
        "ListClusters",
        read(&["alloydb.clusters.list"], Field("parent")),
    ),
    ("GetCluster", read(&["alloydb.clusters.get"], Field("name"))),
    (
        "CreateCluster",
        write(&["alloydb.clusters.create"], Field("parent")),
    ),
    (
        "DeleteCluster",
        write(&["alloydb.clusters.delete"], Field("name")),
    ),
    (
        "ListInstances",
        read(&["alloydb.instances.list"], Field("parent")),
    ),
    (
        "GetInstance",
        read(&["alloydb.instances.get"], Field("name")),
    ),
    (
        "CreateInstance",
        write(&["alloydb.instances.create"], Field("parent")),
    ),
    (
        "DeleteInstance",
        write(&["alloydb.instances.delete"], Field("name")),
    ),
    (
        "GenerateClientCertificate",
        mint(
            &["alloydb.clusters.generateClientCertificate"],
            Field("parent"),
        ),
    ),
    (
        "GetConnectionInfo",
        read(&["alloydb.instances.connect"], Field("parent")),
    ),
    ("ListUsers", read(&["alloydb.users.list"], Field("parent"))),
    ("GetUser", read(&["alloydb.users.get"], Field("name"))),
    (
        "CreateUser",
        write(&["alloydb.users.create"], Field("parent")),
    ),
    (
        "UpdateUser",
        write(&["alloydb.users.update"], Field("user.name")),
    ),
    (
        "DeleteUser",
        write(&["alloydb.users.delete"], Field("name")),
    ),
];

const EDGE: &[(&str, MethodRule)] = &[
    (
        "ListClusters",
        read(&["edgecontainer.clusters.list"], Field("parent")),
    ),
    (
        "GetCluster",
        read(&["edgecontainer.clusters.get"], Field("name")),
    ),
    (
        "CreateCluster",
        write(&["edgecontainer.clusters.create"], Field("parent")),
    ),
    (
        "DeleteCluster",
        write(&["edgecontainer.clusters.delete"], Field("name")),
    ),
    // The method's reference page names `clusters.get`; the dedicated permission is what keeps viewers out.
    (
        "GenerateOfflineCredential",
        mint(
            &[
                "edgecontainer.clusters.get",
                "edgecontainer.clusters.generateOfflineCredential",
            ],
            Field("cluster"),
        ),
    ),
];

const GKEMULTICLOUD: &[(&str, MethodRule)] = &[
    (
        "CreateAttachedCluster",
        write(&["gkemulticloud.attachedClusters.create"], Field("parent")),
    ),
    (
        "GetAttachedCluster",
        read(&["gkemulticloud.attachedClusters.get"], Field("name")),
    ),
    (
        "ListAttachedClusters",
        read(&["gkemulticloud.attachedClusters.list"], Field("parent")),
    ),
    (
        "DeleteAttachedCluster",
        write(&["gkemulticloud.attachedClusters.delete"], Field("name")),
    ),
    // The subject token is the credential (RFC 8693); the handler verifies it against the cluster's keys.
    (
        "GenerateAttachedClusterAgentToken",
        MethodRule {
            audit: AuditMode::Actions,
            mints: true,
            ..PUBLIC
        },
    ),
];

const OPERATIONS_LIST: &[&str] = &[
    "alloydb.operations.list",
    "edgecontainer.operations.list",
    "gkemulticloud.operations.list",
];
const OPERATIONS_GET: &[&str] = &[
    "alloydb.operations.get",
    "edgecontainer.operations.get",
    "gkemulticloud.operations.get",
];
const OPERATIONS_DELETE: &[&str] = &[
    "alloydb.operations.delete",
    "edgecontainer.operations.delete",
    "gkemulticloud.operations.delete",
];
const OPERATIONS_CANCEL: &[&str] = &[
    "alloydb.operations.cancel",
    "edgecontainer.operations.cancel",
    "gkemulticloud.operations.cancel",
];

/// The APIs whose operations `google.longrunning.Operations` serves, in the order of the permission lists above.
pub const OPERATION_APIS: [&str; 3] = ["alloydb", "edgecontainer", "gkemulticloud"];

const fn any(perm: &'static [&'static str], audit: AuditMode) -> MethodRule {
    MethodRule {
        access: Access::Any(perm, Field("name")),
        rate: RateClass::Principal,
        audit,
        mints: false,
    }
}

const OPERATIONS: &[(&str, MethodRule)] = &[
    ("ListOperations", any(OPERATIONS_LIST, AuditMode::Refusals)),
    ("GetOperation", any(OPERATIONS_GET, AuditMode::Refusals)),
    (
        "DeleteOperation",
        any(OPERATIONS_DELETE, AuditMode::Actions),
    ),
    (
        "CancelOperation",
        any(OPERATIONS_CANCEL, AuditMode::Actions),
    ),
];

const PROJECTS: &[(&str, MethodRule)] = &[
    (
        "GetIamPolicy",
        read(
            &["resourcemanager.projects.getIamPolicy"],
            ProjectId("resource"),
        ),
    ),
    (
        "SetIamPolicy",
        write(
            &["resourcemanager.projects.setIamPolicy"],
            ProjectId("resource"),
        ),
    ),
    (
        "TestIamPermissions",
        MethodRule {
            access: Access::Authenticated,
            rate: RateClass::Principal,
            audit: AuditMode::Refusals,
            mints: false,
        },
    ),
];

const IAM: &[(&str, MethodRule)] = &[
    (
        "ListServiceAccounts",
        read(&["iam.serviceAccounts.list"], Field("name")),
    ),
    (
        "GetServiceAccount",
        read(&["iam.serviceAccounts.get"], Field("name")),
    ),
    (
        "CreateServiceAccount",
        write(&["iam.serviceAccounts.create"], Field("name")),
    ),
    (
        "DeleteServiceAccount",
        write(&["iam.serviceAccounts.delete"], Field("name")),
    ),
    (
        "ListServiceAccountKeys",
        read(&["iam.serviceAccountKeys.list"], Field("name")),
    ),
    (
        "GetServiceAccountKey",
        read(&["iam.serviceAccountKeys.get"], Field("name")),
    ),
    // A key is a credential: its private half is returned once.
    (
        "CreateServiceAccountKey",
        mint(&["iam.serviceAccountKeys.create"], Field("name")),
    ),
    (
        "DeleteServiceAccountKey",
        write(&["iam.serviceAccountKeys.delete"], Field("name")),
    ),
    (
        "DisableServiceAccountKey",
        write(&["iam.serviceAccountKeys.disable"], Field("name")),
    ),
    (
        "EnableServiceAccountKey",
        write(&["iam.serviceAccountKeys.enable"], Field("name")),
    ),
    (
        "DisableServiceAccount",
        write(&["iam.serviceAccounts.disable"], Field("name")),
    ),
    (
        "EnableServiceAccount",
        write(&["iam.serviceAccounts.enable"], Field("name")),
    ),
];

impl MethodTable {
    /// The rules of every method clustercred serves.
    pub fn standard() -> Self {
        let mut table = MethodTable::default();
        for version in ["v1", "v1beta", "v1alpha"] {
            table.add_service(
                &format!("google.cloud.alloydb.{version}.AlloyDBAdmin"),
                ALLOYDB,
            );
        }
        table.add_service("google.cloud.edgecontainer.v1.EdgeContainer", EDGE);
        table.add_service(
            "google.cloud.gkemulticloud.v1.AttachedClusters",
            GKEMULTICLOUD,
        );
        table.add_service("google.longrunning.Operations", OPERATIONS);
        table.add_service("google.cloudresourcemanager.v1.Projects", PROJECTS);
        table.add_service("google.iam.admin.v1.IAM", IAM);
        table.add_service(
            "grpc.health.v1.Health",
            &[("Check", PUBLIC), ("Watch", PUBLIC)],
        );
        table.add_service(
            "grpc.reflection.v1.ServerReflection",
            &[("ServerReflectionInfo", PUBLIC)],
        );
        table
    }

    pub fn add_service(&mut self, service: &str, methods: &[(&str, MethodRule)]) {
        for (method, rule) in methods {
            self.rules.insert(format!("{service}/{method}"), *rule);
        }
    }

    /// The rule of `package.Service/Method`.
    pub fn get(&self, method: &str) -> Option<&MethodRule> {
        self.rules.get(method)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &MethodRule)> {
        self.rules.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Checks the table against the served descriptors: every method of every service in `pool` has a rule,
    /// and every rule's resource field is a string field of that method's request. The server does not start
    /// otherwise, so a new method cannot be served without saying who may call it.
    pub fn check(&self, pool: &DescriptorPool) -> Result<(), String> {
        let mut problems = Vec::new();
        for service in pool.services() {
            for method in service.methods() {
                let full = format!("{}/{}", service.full_name(), method.name());
                let Some(rule) = self.rules.get(&full) else {
                    problems.push(format!("{full} is served but has no access rule"));
                    continue;
                };
                if let Some(resource) = rule.resource() {
                    let field = resource.field();
                    match field_at(&method.input(), field) {
                        Some(f) if f.kind() == Kind::String && !f.is_list() => {}
                        _ => problems.push(format!(
                            "{full}: resource field `{field}` is not a string field of {}",
                            method.input().full_name()
                        )),
                    }
                }
                if matches!(rule.access, Access::All(p, _) | Access::Any(p, _) if p.is_empty()) {
                    problems.push(format!("{full}: a rule with permissions names none"));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            problems.sort();
            Err(problems.join("; "))
        }
    }
}

/// The field a dotted path (`user.name`) names, every step before the last a singular message field.
pub fn field_at(message: &MessageDescriptor, path: &str) -> Option<FieldDescriptor> {
    let mut current = message.clone();
    let mut steps = path.split('.').peekable();
    while let Some(step) = steps.next() {
        let field = current.get_field_by_name(step)?;
        if steps.peek().is_none() {
            return Some(field);
        }
        match field.kind() {
            Kind::Message(m) if !field.is_list() && !field.is_map() => current = m,
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> DescriptorPool {
        DescriptorPool::decode(clustercred_proto::FILE_DESCRIPTOR_SET).expect("descriptors")
    }

    #[test]
    fn every_served_method_has_a_rule() {
        MethodTable::standard()
            .check(&pool())
            .expect("table complete");
    }

    #[test]
    fn a_method_without_a_rule_is_reported() {
        let mut table = MethodTable::standard();
        table
            .rules
            .remove("google.cloud.edgecontainer.v1.EdgeContainer/GenerateOfflineCredential");
        let err = table.check(&pool()).unwrap_err();
        assert!(
            err.contains(
                "EdgeContainer/GenerateOfflineCredential is served but has no access rule"
            ),
            "{err}"
        );
    }

    #[test]
    fn nested_resource_fields_are_checked_step_by_step() {
        let pool = pool();
        let update = pool
            .get_message_by_name("google.cloud.alloydb.v1.UpdateUserRequest")
            .expect("UpdateUserRequest");
        assert_eq!(
            field_at(&update, "user.name").map(|f| f.full_name().to_string()),
            Some("google.cloud.alloydb.v1.User.name".to_string())
        );
        assert!(field_at(&update, "user.nope").is_none());
        assert!(field_at(&update, "request_id.x").is_none());
        let mut table = MethodTable::standard();
        table.add_service(
            "google.cloud.alloydb.v1.AlloyDBAdmin",
            &[(
                "UpdateUser",
                write(&["alloydb.users.update"], Field("user.database_roles")),
            )],
        );
        let err = table.check(&pool).unwrap_err();
        assert!(
            err.contains("resource field `user.database_roles`"),
            "{err}"
        );
    }

    #[test]
    fn a_wrong_resource_field_is_reported() {
        let mut table = MethodTable::standard();
        table.add_service(
            "google.cloud.alloydb.v1.AlloyDBAdmin",
            &[("GetCluster", read(&["alloydb.clusters.get"], Field("nope")))],
        );
        let err = table.check(&pool()).unwrap_err();
        assert!(err.contains("resource field `nope`"), "{err}");
    }

    /// Finding of the security review: a read-only grant must never reach a method that mints a credential.
    #[test]
    fn no_get_or_list_grant_reaches_a_minting_method() {
        let table = MethodTable::standard();
        let minting: Vec<_> = table.iter().filter(|(_, r)| r.mints).collect();
        assert!(minting.len() >= 6, "the credential methods are marked");
        for role in crate::iam::roles::known_roles() {
            for (method, rule) in &minting {
                if rule.permissions().is_empty() {
                    continue;
                }
                // The role reaches the method only if it holds every permission of an `All` rule.
                let reaches = rule
                    .permissions()
                    .iter()
                    .all(|p| crate::iam::roles::grants(role, p));
                if !reaches {
                    continue;
                }
                // At least one of the permissions it needs must come from a grant made for it.
                let dedicated = rule.permissions().iter().any(|p| {
                    crate::iam::roles::granting_patterns(role, p)
                        .iter()
                        .any(|pat| !pat.ends_with(".get") && !pat.ends_with(".list"))
                });
                assert!(
                    dedicated,
                    "{role} reaches {method} through read-only patterns only"
                );
            }
        }
        for viewer in [
            "roles/viewer",
            "roles/alloydb.viewer",
            "roles/edgecontainer.viewer",
            "roles/gkemulticloud.viewer",
            "roles/iam.securityReviewer",
        ] {
            for (method, rule) in &minting {
                let reaches = !rule.permissions().is_empty()
                    && rule
                        .permissions()
                        .iter()
                        .all(|p| crate::iam::roles::grants(viewer, p));
                assert!(!reaches, "{viewer} must not reach {method}");
            }
        }
    }
}

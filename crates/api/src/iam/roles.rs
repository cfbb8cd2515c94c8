//! Predefined roles, named and composed like Google's for the APIs clustercred serves. A permission pattern
//! may end in `*` (any suffix) or contain `*` between dots (any one segment), so `alloydb.*.get` holds
//! `alloydb.clusters.get`.

/// clustercred's own administrator role: every permission.
pub const ADMIN_ROLE: &str = "roles/clustercred.admin";

const ROLES: &[(&str, &[&str])] = &[
    (ADMIN_ROLE, &["*"]),
    ("roles/owner", &["*"]),
    (
        "roles/editor",
        &[
            "alloydb.*",
            "edgecontainer.*",
            "gkemulticloud.*",
            "iam.serviceAccounts.*",
            "iam.serviceAccountKeys.*",
            "resourcemanager.projects.getIamPolicy",
        ],
    ),
    (
        "roles/viewer",
        &[
            "*.*.get",
            "*.*.list",
            "resourcemanager.projects.getIamPolicy",
        ],
    ),
    ("roles/alloydb.admin", &["alloydb.*"]),
    (
        "roles/alloydb.client",
        &[
            "alloydb.clusters.generateClientCertificate",
            "alloydb.clusters.get",
            "alloydb.instances.get",
            "alloydb.instances.connect",
        ],
    ),
    // Logging in to a database as an IAM database user (with `alloydb.instances.connect` of
    // roles/alloydb.client at the instance endpoint).
    ("roles/alloydb.databaseUser", &["alloydb.users.login"]),
    ("roles/alloydb.viewer", &["alloydb.*.get", "alloydb.*.list"]),
    ("roles/edgecontainer.admin", &["edgecontainer.*"]),
    // Offline kubectl access to clusters, and nothing else: what `get-credentials --offline-credential` needs.
    (
        "roles/edgecontainer.offlineCredentialUser",
        &[
            "edgecontainer.clusters.get",
            "edgecontainer.clusters.generateOfflineCredential",
        ],
    ),
    (
        "roles/edgecontainer.viewer",
        &["edgecontainer.*.get", "edgecontainer.*.list"],
    ),
    ("roles/gkemulticloud.admin", &["gkemulticloud.*"]),
    (
        "roles/gkemulticloud.viewer",
        &["gkemulticloud.*.get", "gkemulticloud.*.list"],
    ),
    ("roles/iam.serviceAccountAdmin", &["iam.serviceAccounts.*"]),
    (
        "roles/iam.serviceAccountKeyAdmin",
        &[
            "iam.serviceAccountKeys.*",
            "iam.serviceAccounts.get",
            "iam.serviceAccounts.list",
        ],
    ),
    (
        "roles/iam.securityReviewer",
        &[
            "resourcemanager.projects.getIamPolicy",
            "iam.*.get",
            "iam.*.list",
        ],
    ),
    (
        "roles/resourcemanager.projectIamAdmin",
        &[
            "resourcemanager.projects.getIamPolicy",
            "resourcemanager.projects.setIamPolicy",
        ],
    ),
];

pub fn is_known(role: &str) -> bool {
    ROLES.iter().any(|(r, _)| *r == role)
}

pub fn known_roles() -> impl Iterator<Item = &'static str> {
    ROLES.iter().map(|(r, _)| *r)
}

fn pattern_matches(pattern: &str, permission: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix(".*")
        && !prefix.contains('*')
    {
        return permission.starts_with(prefix) && permission[prefix.len()..].starts_with('.');
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let q: Vec<&str> = permission.split('.').collect();
    p.len() == q.len() && p.iter().zip(&q).all(|(a, b)| *a == "*" || a == b)
}

/// The patterns of `role` that hold `permission` (for reviewing what reaches a method).
pub fn granting_patterns(role: &str, permission: &str) -> Vec<&'static str> {
    ROLES
        .iter()
        .find(|(r, _)| *r == role)
        .map(|(_, perms)| {
            perms
                .iter()
                .copied()
                .filter(|p| pattern_matches(p, permission))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `role` holds `permission`.
pub fn grants(role: &str, permission: &str) -> bool {
    ROLES
        .iter()
        .find(|(r, _)| *r == role)
        .is_some_and(|(_, perms)| perms.iter().any(|p| pattern_matches(p, permission)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_compose_like_googles() {
        assert!(grants(
            "roles/alloydb.client",
            "alloydb.clusters.generateClientCertificate"
        ));
        assert!(!grants("roles/alloydb.client", "alloydb.clusters.delete"));
        assert!(grants("roles/alloydb.viewer", "alloydb.clusters.get"));
        assert!(!grants(
            "roles/alloydb.viewer",
            "alloydb.clusters.generateClientCertificate"
        ));
        assert!(grants("roles/alloydb.admin", "alloydb.instances.delete"));
        for p in [
            "alloydb.users.list",
            "alloydb.users.get",
            "alloydb.users.create",
            "alloydb.users.update",
            "alloydb.users.delete",
            "alloydb.users.login",
        ] {
            assert!(grants("roles/alloydb.admin", p), "{p}");
        }
        assert!(grants("roles/alloydb.viewer", "alloydb.users.list"));
        assert!(grants("roles/alloydb.viewer", "alloydb.users.get"));
        for p in [
            "alloydb.users.create",
            "alloydb.users.update",
            "alloydb.users.delete",
            "alloydb.users.login",
        ] {
            assert!(!grants("roles/alloydb.viewer", p), "{p}");
        }
        // IAM database authentication: login from databaseUser, connect from client, neither from the other.
        assert!(grants("roles/alloydb.databaseUser", "alloydb.users.login"));
        assert!(!grants(
            "roles/alloydb.databaseUser",
            "alloydb.instances.connect"
        ));
        assert!(!grants("roles/alloydb.databaseUser", "alloydb.users.get"));
        assert!(grants("roles/alloydb.client", "alloydb.instances.connect"));
        assert!(!grants("roles/alloydb.client", "alloydb.users.login"));
        assert!(!grants("roles/alloydb.admin", "alloydbx.clusters.get"));
        assert!(!grants("roles/alloydb.admin", "edgecontainer.clusters.get"));
        assert!(grants(ADMIN_ROLE, "resourcemanager.projects.setIamPolicy"));
        assert!(grants("roles/viewer", "gkemulticloud.attachedClusters.get"));
        assert!(!grants(
            "roles/viewer",
            "gkemulticloud.attachedClusters.delete"
        ));
        assert!(!grants(
            "roles/editor",
            "resourcemanager.projects.setIamPolicy"
        ));
        assert!(!grants("roles/nope", "alloydb.clusters.get"));
        assert!(is_known("roles/edgecontainer.viewer") && !is_known("roles/made.up"));
    }
}

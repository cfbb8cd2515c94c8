//! Identity and access: service accounts and their keys (Google's IAM API shape), project IAM policies
//! (Resource Manager's), the OAuth 2.0 token endpoint (RFC 7523 JWT-bearer), and the access control that
//! authenticates bearer tokens and checks each method's permission against the policies. Deny by default.

pub mod access;
mod accounts;
pub mod oauth;
pub mod oidc;
pub mod policy;
pub mod projects;
pub mod roles;
pub mod service_accounts;

/// Service-account emails are `NAME@PROJECT.iam.clustercred.internal`: plainly clustercred's, never Google's.
pub const SA_EMAIL_DOMAIN: &str = "iam.clustercred.internal";
/// Store kinds.
pub const SA_KIND: &str = "iam.ServiceAccount";
pub const SA_KEY_KIND: &str = "iam.ServiceAccountKey";

/// The project of an email we issued (`name@P.iam.clustercred.internal`).
pub fn project_of_email(email: &str) -> Option<&str> {
    let (_, domain) = email.split_once('@')?;
    domain.strip_suffix(SA_EMAIL_DOMAIN)?.strip_suffix('.')
}

/// The project a resource name belongs to, for policy lookup: `projects/P/...`, with `projects/-/serviceAccounts/
/// EMAIL` resolved through the email.
pub fn project_of(resource: &str) -> Option<String> {
    let rest = resource.strip_prefix("projects/")?;
    let (project, tail) = rest.split_once('/').unwrap_or((rest, ""));
    if project == "-" {
        let email = tail.strip_prefix("serviceAccounts/")?.split('/').next()?;
        return project_of_email(email).map(str::to_string);
    }
    (!project.is_empty()).then(|| project.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projects_of_resources() {
        assert_eq!(
            project_of("projects/p1/locations/l/clusters/c").as_deref(),
            Some("p1")
        );
        assert_eq!(project_of("projects/p1").as_deref(), Some("p1"));
        assert_eq!(
            project_of("projects/-/serviceAccounts/sa@p2.iam.clustercred.internal/keys/k")
                .as_deref(),
            Some("p2")
        );
        assert_eq!(
            project_of("projects/-/serviceAccounts/sa@p2.iam.gserviceaccount.com"),
            None
        );
        assert_eq!(project_of("root"), None);
    }
}

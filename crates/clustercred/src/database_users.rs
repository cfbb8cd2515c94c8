//! Database users of AlloyDB clusters applied to their backend PostgreSQL databases: the API's
//! [`DatabaseUsers`] over `clustercred_dataplane::roles`, each cluster's database chosen by the backend map
//! (`--alloydb-backend`, `--alloydb-backend-for`).

use async_trait::async_trait;
use clustercred_api::alloydb::{DatabaseUserError, DatabaseUsers, RoleChange, RoleLogin};
use clustercred_dataplane::backend::Backends;
use clustercred_dataplane::roles::{self, Login, RoleError, RoleSpec};

pub struct BackendDatabaseUsers {
    backends: Backends,
}

impl BackendDatabaseUsers {
    pub fn new(backends: Backends) -> Self {
        BackendDatabaseUsers { backends }
    }

    fn url(&self, cluster: &str) -> Result<&str, DatabaseUserError> {
        self.backends
            .for_cluster(cluster)
            .ok_or(DatabaseUserError::NoBackend)
    }
}

fn api_error(e: RoleError) -> DatabaseUserError {
    match e {
        RoleError::Unavailable(d) => DatabaseUserError::Unavailable(d),
        RoleError::Exists(_) => DatabaseUserError::RoleExists,
        RoleError::Missing(_) => DatabaseUserError::RoleMissing,
        RoleError::UnknownRoles(r) => DatabaseUserError::UnknownRoles(r),
        RoleError::RefusedRoles(d) => DatabaseUserError::RefusedRoles(d),
        RoleError::ReservedName(d) => DatabaseUserError::ReservedName(d),
        RoleError::InvalidGrant(d) => DatabaseUserError::InvalidGrant(d),
        RoleError::NotPermitted(d) => DatabaseUserError::NotPermitted(d),
        RoleError::InUse(d) => DatabaseUserError::InUse(d),
        RoleError::Other(d) => DatabaseUserError::Other(d),
    }
}

fn spec<'a>(change: &'a RoleChange<'a>) -> RoleSpec<'a> {
    RoleSpec {
        name: change.user_id,
        login: match change.login {
            RoleLogin::Password(p) => Login::Password(p),
            RoleLogin::NoPassword => Login::NoPassword,
            RoleLogin::Unchanged => Login::Unchanged,
        },
        member_of: change.database_roles,
        keep_extra: change.keep_extra_roles,
    }
}

#[async_trait]
impl DatabaseUsers for BackendDatabaseUsers {
    async fn create(&self, change: &RoleChange<'_>) -> Result<Vec<String>, DatabaseUserError> {
        let url = self.url(change.cluster)?;
        roles::create_role(url, &spec(change), change.validate_only)
            .await
            .map_err(api_error)
    }

    async fn update(&self, change: &RoleChange<'_>) -> Result<Vec<String>, DatabaseUserError> {
        let url = self.url(change.cluster)?;
        roles::update_role(url, &spec(change), change.validate_only)
            .await
            .map_err(api_error)
    }

    async fn delete(
        &self,
        cluster: &str,
        user_id: &str,
        validate_only: bool,
    ) -> Result<bool, DatabaseUserError> {
        let url = self.url(cluster)?;
        roles::drop_role(url, user_id, validate_only)
            .await
            .map_err(api_error)
    }
}

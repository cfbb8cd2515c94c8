//! Which PostgreSQL database stands behind an AlloyDB instance.
//!
//! One default (`--alloydb-backend`) and overrides per cluster or per instance
//! (`--alloydb-backend-for NAME=URL`, NAME a full resource name). An instance's backend is its own override,
//! else its cluster's, else the default; the Users API acts on the cluster's (the primary's data).

use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackendConfigError {
    #[error("backend override {0:?} is not NAME=postgres://...")]
    Malformed(String),
    #[error("backend {0:?} is not a postgres:// or postgresql:// URL")]
    NotPostgres(String),
    #[error(
        "{0:?} is not an AlloyDB cluster or instance name (projects/P/locations/L/clusters/C[/instances/I])"
    )]
    NotAName(String),
    #[error("backend for {0} is given twice")]
    Duplicate(String),
}

/// The backend map; empty when no backend is configured (instances then refuse connections and the Users
/// API answers FAILED_PRECONDITION).
#[derive(Clone, Debug, Default)]
pub struct Backends {
    default: Option<String>,
    overrides: BTreeMap<String, String>,
}

fn check_url(url: &str) -> Result<String, BackendConfigError> {
    let url = url.trim();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(url.to_string())
    } else {
        Err(BackendConfigError::NotPostgres(url.to_string()))
    }
}

fn is_resource_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    let shape = |keys: &[&str]| {
        parts.len() == keys.len() * 2
            && keys
                .iter()
                .enumerate()
                .all(|(i, k)| parts[2 * i] == *k && !parts[2 * i + 1].is_empty())
    };
    shape(&["projects", "locations", "clusters"])
        || shape(&["projects", "locations", "clusters", "instances"])
}

impl Backends {
    /// `default` from `--alloydb-backend`, `overrides` from `--alloydb-backend-for NAME=URL`.
    pub fn new(default: Option<&str>, overrides: &[String]) -> Result<Self, BackendConfigError> {
        let default = default
            .filter(|d| !d.trim().is_empty())
            .map(check_url)
            .transpose()?;
        let mut map = BTreeMap::new();
        for entry in overrides {
            let (name, url) = entry
                .split_once('=')
                .ok_or_else(|| BackendConfigError::Malformed(entry.clone()))?;
            let name = name.trim().to_string();
            if !is_resource_name(&name) {
                return Err(BackendConfigError::NotAName(name));
            }
            let url = check_url(url)?;
            if map.insert(name.clone(), url).is_some() {
                return Err(BackendConfigError::Duplicate(name));
            }
        }
        Ok(Backends {
            default,
            overrides: map,
        })
    }

    /// Whether any backend is configured.
    pub fn any(&self) -> bool {
        self.default.is_some() || !self.overrides.is_empty()
    }

    /// The backend of a cluster (`projects/P/locations/L/clusters/C`): its override, else the default.
    pub fn for_cluster(&self, cluster: &str) -> Option<&str> {
        self.overrides
            .get(cluster)
            .or(self.default.as_ref())
            .map(String::as_str)
    }

    /// The backend of an instance (`.../clusters/C/instances/I`): its override, else its cluster's.
    pub fn for_instance(&self, instance: &str) -> Option<&str> {
        if let Some(url) = self.overrides.get(instance) {
            return Some(url);
        }
        let cluster = instance
            .rsplit_once("/instances/")
            .map_or(instance, |(cluster, _)| cluster);
        self.for_cluster(cluster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "projects/p/locations/l/clusters/c";

    #[test]
    fn instance_then_cluster_then_default() {
        let b = Backends::new(
            Some("postgres://default/db"),
            &[
                format!("{C}=postgres://cluster/db"),
                format!("{C}/instances/special=postgresql://instance/db"),
            ],
        )
        .unwrap();
        assert_eq!(
            b.for_instance(&format!("{C}/instances/special")),
            Some("postgresql://instance/db")
        );
        assert_eq!(
            b.for_instance(&format!("{C}/instances/other")),
            Some("postgres://cluster/db")
        );
        assert_eq!(b.for_cluster(C), Some("postgres://cluster/db"));
        assert_eq!(
            b.for_instance("projects/p/locations/l/clusters/d/instances/i"),
            Some("postgres://default/db")
        );
        assert_eq!(
            Backends::default().for_instance(&format!("{C}/instances/i")),
            None
        );
    }

    #[test]
    fn refuses_what_is_not_a_backend() {
        assert_eq!(
            Backends::new(Some("mysql://x"), &[]).unwrap_err(),
            BackendConfigError::NotPostgres("mysql://x".into())
        );
        assert!(matches!(
            Backends::new(None, &["postgres://x".into()]),
            Err(BackendConfigError::Malformed(_))
        ));
        assert!(matches!(
            Backends::new(None, &["projects/p=postgres://x".into()]),
            Err(BackendConfigError::NotAName(_))
        ));
        assert!(matches!(
            Backends::new(
                None,
                &[format!("{C}=postgres://a"), format!("{C}=postgres://b")]
            ),
            Err(BackendConfigError::Duplicate(_))
        ));
    }
}

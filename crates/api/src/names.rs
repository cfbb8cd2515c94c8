//! Resource names: `projects/P/locations/L[/COLLECTION/ID[/COLLECTION/ID]]`, validated strictly so that
//! nothing odd reaches the store or a certificate.

use std::fmt;

use tonic::Status;

use crate::errors::invalid_field;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LocationName {
    pub project: String,
    pub location: String,
}

impl fmt::Display for LocationName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "projects/{}/locations/{}", self.project, self.location)
    }
}

/// A resource directly below a location, e.g. `projects/P/locations/L/clusters/C`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResourceName {
    pub parent: LocationName,
    pub collection: &'static str,
    pub id: String,
}

impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.parent, self.collection, self.id)
    }
}

/// A resource below another, e.g. `projects/P/locations/L/clusters/C/instances/I`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChildName {
    pub parent: ResourceName,
    pub collection: &'static str,
    pub id: String,
}

impl fmt::Display for ChildName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.parent, self.collection, self.id)
    }
}

const MAX_NAME_LEN: usize = 512;

/// Resource ids: RFC 1035 labels (lowercase letter first, then letters, digits and hyphens, no trailing
/// hyphen, at most 63 characters), as Google requires for cluster and instance ids.
pub fn validate_id(field: &str, id: &str) -> Result<(), Status> {
    let bytes = id.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.last() != Some(&b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid_field(
            field,
            "must be 1 to 63 characters: a lowercase letter, then lowercase letters, digits or hyphens, \
             not ending with a hyphen (RFC 1035)",
        ))
    }
}

/// Project ids (`my-project`, `example.com:my-project`) or numbers.
fn valid_project(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 100
        && p.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b':')
        })
        && p.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
}

fn valid_location(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn shape_error(field: &str, expected: &str) -> Status {
    invalid_field(field, format!("must have the form {expected}"))
}

fn segments<'a>(field: &str, name: &'a str, expected: &str) -> Result<Vec<&'a str>, Status> {
    if name.is_empty() {
        return Err(invalid_field(field, format!("is required ({expected})")));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid_field(field, "is too long"));
    }
    Ok(name.split('/').collect())
}

fn location_from(field: &str, segs: &[&str], expected: &str) -> Result<LocationName, Status> {
    match segs {
        ["projects", project, "locations", location, ..] => {
            if !valid_project(project) {
                return Err(invalid_field(field, "has an invalid project id"));
            }
            if !valid_location(location) {
                return Err(invalid_field(field, "has an invalid location"));
            }
            Ok(LocationName {
                project: (*project).to_string(),
                location: (*location).to_string(),
            })
        }
        _ => Err(shape_error(field, expected)),
    }
}

pub fn parse_location(field: &str, name: &str) -> Result<LocationName, Status> {
    let expected = "projects/{project}/locations/{location}";
    let segs = segments(field, name, expected)?;
    if segs.len() != 4 {
        return Err(shape_error(field, expected));
    }
    location_from(field, &segs, expected)
}

pub fn parse_resource(
    field: &str,
    name: &str,
    collection: &'static str,
) -> Result<ResourceName, Status> {
    let expected = format!("projects/{{project}}/locations/{{location}}/{collection}/{{id}}");
    let segs = segments(field, name, &expected)?;
    if segs.len() != 6 || segs[4] != collection {
        return Err(shape_error(field, &expected));
    }
    let parent = location_from(field, &segs, &expected)?;
    validate_id(field, segs[5])?;
    Ok(ResourceName {
        parent,
        collection,
        id: segs[5].to_string(),
    })
}

pub fn parse_child(
    field: &str,
    name: &str,
    collection: &'static str,
    child_collection: &'static str,
) -> Result<ChildName, Status> {
    let expected = format!(
        "projects/{{project}}/locations/{{location}}/{collection}/{{id}}/{child_collection}/{{id}}"
    );
    let segs = segments(field, name, &expected)?;
    if segs.len() != 8 || segs[4] != collection || segs[6] != child_collection {
        return Err(shape_error(field, &expected));
    }
    let location = location_from(field, &segs, &expected)?;
    validate_id(field, segs[5])?;
    validate_id(field, segs[7])?;
    Ok(ChildName {
        parent: ResourceName {
            parent: location,
            collection,
            id: segs[5].to_string(),
        },
        collection: child_collection,
        id: segs[7].to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn ids_follow_rfc1035() {
        for ok in ["a", "c1", "my-cluster", &"a".repeat(63)] {
            assert!(validate_id("cluster_id", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "-a",
            "a-",
            "Abc",
            "a_b",
            "a.b",
            "a/b",
            &"a".repeat(64),
            "é",
        ] {
            let e = validate_id("cluster_id", bad).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{bad}");
            assert!(e.message().contains("cluster_id"));
        }
    }

    #[test]
    fn parses_and_round_trips_names() {
        let n = parse_resource(
            "name",
            "projects/p-1/locations/us-central1/clusters/c1",
            "clusters",
        )
        .unwrap();
        assert_eq!(n.parent.project, "p-1");
        assert_eq!(n.parent.location, "us-central1");
        assert_eq!(n.id, "c1");
        assert_eq!(
            n.to_string(),
            "projects/p-1/locations/us-central1/clusters/c1"
        );

        let c = parse_child(
            "parent",
            "projects/p/locations/l/clusters/c/instances/i",
            "clusters",
            "instances",
        )
        .unwrap();
        assert_eq!(c.parent.id, "c");
        assert_eq!(c.id, "i");
        assert_eq!(
            c.to_string(),
            "projects/p/locations/l/clusters/c/instances/i"
        );

        let l = parse_location("parent", "projects/example.com:p/locations/global").unwrap();
        assert_eq!(l.to_string(), "projects/example.com:p/locations/global");
    }

    #[test]
    fn refuses_malformed_names() {
        for bad in [
            "",
            "projects/p/locations/l/clusters",
            "projects/p/locations/l/clusters/c/extra",
            "projects/p/locations/l/instances/c",
            "projects//locations/l/clusters/c",
            "projects/P/locations/l/clusters/c",
            "projects/p/locations/L/clusters/c",
            "projects/p/locations/l/clusters/C",
            "folders/p/locations/l/clusters/c",
            "projects/p/locations/l/clusters/c%2F",
        ] {
            let e = parse_resource("name", bad, "clusters").unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{bad}");
            assert!(e.message().contains("name"), "{bad}: {}", e.message());
        }
        assert!(parse_resource("name", &"x".repeat(600), "clusters").is_err());
    }
}

//! Small helpers shared by the adapters: timestamps, Any packing, operation names, paging, durations,
//! request ids.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message;
use prost_types::{Any, Timestamp};
use time::OffsetDateTime;
use tonic::Status;

use crate::errors::invalid_field;

pub fn timestamp(t: OffsetDateTime) -> Timestamp {
    Timestamp {
        seconds: t.unix_timestamp(),
        nanos: i32::try_from(t.nanosecond()).unwrap_or(0),
    }
}

pub fn pack<M: Message>(full_name: &str, message: &M) -> Any {
    Any {
        type_url: format!("type.googleapis.com/{full_name}"),
        value: message.encode_to_vec(),
    }
}

pub fn empty_any() -> Any {
    Any {
        type_url: "type.googleapis.com/google.protobuf.Empty".into(),
        value: Vec::new(),
    }
}

/// Google-style operation ids: `operation-<millis>-<random>`.
pub fn new_operation_id(now: OffsetDateTime) -> String {
    let millis = now.unix_timestamp_nanos() / 1_000_000;
    format!(
        "operation-{millis}-{}",
        hex::encode(rand::random::<[u8; 8]>())
    )
}

pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;

/// A validated page request: how many to return, and the last name of the previous page.
pub struct Page {
    pub size: u32,
    pub after: Option<String>,
}

/// Page tokens are the last name returned, base64url-encoded, bound to the collection they came from.
pub fn parse_page(page_size: i32, page_token: &str, parent: &str) -> Result<Page, Status> {
    let size = match page_size {
        n if n < 0 => return Err(invalid_field("page_size", "must not be negative")),
        0 => DEFAULT_PAGE_SIZE,
        n => u32::try_from(n).unwrap_or(MAX_PAGE_SIZE).min(MAX_PAGE_SIZE),
    };
    if page_token.is_empty() {
        return Ok(Page { size, after: None });
    }
    let bad = || invalid_field("page_token", "is not a token this list returned");
    let raw = URL_SAFE_NO_PAD
        .decode(page_token.as_bytes())
        .map_err(|_| bad())?;
    let after = String::from_utf8(raw).map_err(|_| bad())?;
    if !after.starts_with(&format!("{parent}/")) {
        return Err(bad());
    }
    Ok(Page {
        size,
        after: Some(after),
    })
}

/// The token for the page after one that ended with `last` (empty when the page was not full).
pub fn next_page_token(returned: usize, page: &Page, last: Option<&str>) -> String {
    match last {
        Some(name) if returned >= page.size as usize => URL_SAFE_NO_PAD.encode(name.as_bytes()),
        _ => String::new(),
    }
}

/// `request_id`: optional; when present a UUID other than the zero UUID.
pub fn parse_request_id(request_id: &str) -> Result<Option<String>, Status> {
    if request_id.is_empty() {
        return Ok(None);
    }
    let uuid = uuid::Uuid::try_parse(request_id).map_err(|_| {
        invalid_field(
            "request_id",
            "must be a UUID (e.g. 123e4567-e89b-12d3-a456-426614174000)",
        )
    })?;
    if uuid.is_nil() {
        return Err(invalid_field("request_id", "must not be the zero UUID"));
    }
    Ok(Some(uuid.hyphenated().to_string()))
}

/// A protobuf Duration as a `time::Duration`, refusing values the proto spec does not allow.
pub fn duration(field: &str, d: &prost_types::Duration) -> Result<time::Duration, Status> {
    let valid = d.seconds.abs() <= 315_576_000_000
        && d.nanos.abs() < 1_000_000_000
        && !(d.seconds > 0 && d.nanos < 0)
        && !(d.seconds < 0 && d.nanos > 0);
    if !valid {
        return Err(invalid_field(field, "is not a valid duration"));
    }
    Ok(time::Duration::new(d.seconds, d.nanos))
}

/// A finished operation (ours complete before the reply) and the record that makes it readable later.
pub fn done_operation(
    now: OffsetDateTime,
    location: &str,
    metadata: Any,
    response: Any,
) -> (
    clustercred_proto::google::longrunning::Operation,
    clustercred_store::OperationRecord,
) {
    use clustercred_proto::google::longrunning::{Operation, operation};
    let name = format!("{location}/operations/{}", new_operation_id(now));
    let op = Operation {
        name: name.clone(),
        metadata: Some(metadata),
        done: true,
        result: Some(operation::Result::Response(response)),
    };
    let record = clustercred_store::OperationRecord {
        name,
        parent: location.to_string(),
        data: op.encode_to_vec(),
        create_time_unix: now.unix_timestamp(),
    };
    (op, record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_tokens_round_trip_and_are_bound_to_their_parent() {
        let page = parse_page(2, "", "projects/p/locations/l").unwrap();
        assert_eq!(page.size, 2);
        let token = next_page_token(2, &page, Some("projects/p/locations/l/clusters/b"));
        let next = parse_page(2, &token, "projects/p/locations/l").unwrap();
        assert_eq!(
            next.after.as_deref(),
            Some("projects/p/locations/l/clusters/b")
        );
        assert!(parse_page(2, &token, "projects/q/locations/l").is_err());
        assert!(parse_page(2, "!!!", "projects/p/locations/l").is_err());
        assert_eq!(
            next_page_token(1, &page, Some("x")),
            "",
            "a short page is the last"
        );
        assert!(parse_page(-1, "", "p").is_err());
        assert_eq!(parse_page(0, "", "p").unwrap().size, DEFAULT_PAGE_SIZE);
        assert_eq!(parse_page(5000, "", "p").unwrap().size, MAX_PAGE_SIZE);
    }

    #[test]
    fn request_ids_are_uuids_but_not_zero() {
        assert_eq!(parse_request_id("").unwrap(), None);
        assert!(
            parse_request_id("123e4567-e89b-12d3-a456-426614174000")
                .unwrap()
                .is_some()
        );
        assert!(parse_request_id("00000000-0000-0000-0000-000000000000").is_err());
        assert!(parse_request_id("not-a-uuid").is_err());
    }

    #[test]
    fn durations_follow_the_proto_rules() {
        let d = duration(
            "d",
            &prost_types::Duration {
                seconds: 3600,
                nanos: 500,
            },
        )
        .unwrap();
        assert_eq!(d, time::Duration::new(3600, 500));
        assert!(
            duration(
                "d",
                &prost_types::Duration {
                    seconds: 1,
                    nanos: -1
                }
            )
            .is_err()
        );
        assert!(
            duration(
                "d",
                &prost_types::Duration {
                    seconds: 0,
                    nanos: 1_000_000_000
                }
            )
            .is_err()
        );
    }
}

//! Google's REST error shape: `{"error": {"code", "message", "status", "details"}}` with the HTTP status that
//! matches the gRPC code, details rendered from `google.rpc.Status` through the descriptor pool.

use axum::body::Body;
use http::{HeaderValue, Response, StatusCode};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::{Value, json};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        // 499 Client Closed Request is not in the standard set but is what Google answers.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Internal | Code::Unknown | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub use clustercred_proto::status_name;

/// INVALID_ARGUMENT naming the request field at fault.
pub fn invalid_field(field: &str, description: impl Into<String>) -> Status {
    let description = description.into();
    Status::with_error_details(
        Code::InvalidArgument,
        format!("Invalid value at '{field}': {description}"),
        ErrorDetails::with_bad_request_violation(field, description),
    )
}

/// Renders each detail of the status that the pool knows; unknown ones are left out rather than failing.
fn details_json(status: &Status, pool: &DescriptorPool) -> Vec<Value> {
    if status.details().is_empty() {
        return Vec::new();
    }
    let Ok(decoded) = tonic_types::pb::Status::decode(status.details()) else {
        return Vec::new();
    };
    let Some(any_desc) = pool.get_message_by_name("google.protobuf.Any") else {
        return Vec::new();
    };
    let options = SerializeOptions::new().skip_default_fields(true);
    decoded
        .details
        .iter()
        .filter_map(|any| {
            let bytes = prost_types::Any {
                type_url: any.type_url.clone(),
                value: any.value.clone(),
            }
            .encode_to_vec();
            let message = DynamicMessage::decode(any_desc.clone(), bytes.as_slice()).ok()?;
            message
                .serialize_with_options(serde_json::value::Serializer, &options)
                .ok()
        })
        .collect()
}

pub fn error_body(status: &Status, pool: &DescriptorPool) -> Value {
    let http = http_status(status.code());
    let mut error = json!({
        "code": http.as_u16(),
        "message": status.message(),
        "status": status_name(status.code()),
    });
    let details = details_json(status, pool);
    if !details.is_empty() {
        error["details"] = Value::Array(details);
    }
    json!({ "error": error })
}

/// A `tonic::Status` as Google's REST error response.
pub fn status_to_http(status: &Status, pool: &DescriptorPool) -> Response<Body> {
    let body = error_body(status, pool);
    let mut response = json_response(http_status(status.code()), &body);
    if status.code() == Code::Unauthenticated {
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
    }
    response
}

pub fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

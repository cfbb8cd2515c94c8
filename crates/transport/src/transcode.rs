//! REST/JSON → gRPC transcoding, driven by the `google.api.http` rules in the descriptor pool. A REST request
//! is matched to a method, turned into its request message (path variables, query parameters, body), sent
//! through the gRPC services in process, and the reply (or error) is turned back into JSON.

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::Body;
use base64::Engine;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use clustercred_proto::google::api::HttpRule;
use clustercred_proto::google::api::http_rule::Pattern;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor,
    MethodDescriptor, ReflectMessage, SerializeOptions, Value,
};
use tonic::{Code, Status};
use tonic_types::StatusExt;
use tower::ServiceExt;

use crate::errors::{error_body, invalid_field, json_response, status_to_http};
use crate::template::{Bindings, RequestPath, Template, TemplateError};

/// Metadata naming the gRPC method a request is for, set by the transport (never taken from clients).
pub const METHOD_HEADER: &str = "x-clustercred-method";

/// Default limit of a REST request body.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// Query parameters every Google API accepts that are not request fields.
const SYSTEM_PARAMETERS: &[&str] = &[
    "$alt",
    "alt",
    "$fields",
    "fields",
    "prettyPrint",
    "$prettyPrint",
    "key",
    "$callback",
    "callback",
    "quotaUser",
    "$quotaUser",
    "upload_protocol",
    "uploadType",
    "access_token",
    "$.xgafv",
    "oauth_token",
    "userIp",
];

/// Request headers passed on to the gRPC service as metadata.
fn forwarded(name: &str) -> bool {
    matches!(
        name,
        "authorization" | "user-agent" | "x-forwarded-for" | "x-request-id" | "traceparent"
    ) || name.starts_with("x-goog-")
}

/// A REST route, for documentation and tests.
#[derive(Clone, Debug)]
pub struct RouteInfo {
    pub prefix: String,
    pub method: Method,
    pub path: String,
    pub rpc: String,
    pub input: String,
    pub output: String,
    pub body: Option<String>,
}

/// One API served under a path prefix and recognised by Host.
#[derive(Clone, Debug)]
pub struct ApiMount {
    /// e.g. `alloydb`: requests under `/alloydb/...`.
    pub prefix: String,
    /// Services whose full name starts with one of these belong to the API (e.g. `google.cloud.alloydb.`).
    pub packages: Vec<String>,
    /// A Host that starts with, or contains after `-` or `.`, one of these names the API (e.g. `alloydb.`).
    pub host_markers: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("method {0}: {1}")]
    Rule(String, String),
    #[error("the descriptor pool has no google.api.http extension")]
    NoHttpExtension,
}

struct Route {
    method: Method,
    path: String,
    template: Template,
    rpc: MethodDescriptor,
    /// The gRPC path, `/package.Service/Method`, made once.
    grpc_path: String,
    /// `None`: no body; `Some("*")`: the whole message; `Some(field)`: that field.
    body: Option<String>,
    response_body: Option<String>,
}

impl Route {
    /// `package.Service/Method`.
    fn full_method(&self) -> &str {
        &self.grpc_path[1..]
    }
}

struct Mount {
    api: ApiMount,
    routes: Vec<Route>,
}

/// The REST side of the server. Cheap to clone.
#[derive(Clone)]
pub struct RestGateway {
    inner: Arc<Inner>,
}

struct Inner {
    pool: DescriptorPool,
    mounts: Vec<Mount>,
    body_limit: usize,
    admission: Option<Admission>,
}

/// Asked with the gRPC method (`package.Service/Method`) and the request head once the route is known, before
/// the body is read: an error is the answer, and the body is never read or transcoded.
pub type Admission = Arc<dyn Fn(&str, &http::request::Parts) -> Result<(), Status> + Send + Sync>;

fn rule_route(rpc: &MethodDescriptor, rule: &HttpRule) -> Result<Option<Route>, GatewayError> {
    let (method, path) = match &rule.pattern {
        Some(Pattern::Get(p)) => (Method::GET, p.as_str()),
        Some(Pattern::Put(p)) => (Method::PUT, p.as_str()),
        Some(Pattern::Post(p)) => (Method::POST, p.as_str()),
        Some(Pattern::Delete(p)) => (Method::DELETE, p.as_str()),
        Some(Pattern::Patch(p)) => (Method::PATCH, p.as_str()),
        Some(Pattern::Custom(c)) => (
            Method::from_bytes(c.kind.as_bytes())
                .map_err(|e| GatewayError::Rule(rpc.full_name().into(), e.to_string()))?,
            c.path.as_str(),
        ),
        None => return Ok(None),
    };
    let input = rpc.input();
    let body = match rule.body.as_str() {
        "" => None,
        "*" => Some("*".to_string()),
        field => {
            if input.get_field_by_name(field).is_none() {
                return Err(GatewayError::Rule(
                    rpc.full_name().into(),
                    format!("body field {field} does not exist"),
                ));
            }
            Some(field.to_string())
        }
    };
    let response_body = (!rule.response_body.is_empty()).then(|| rule.response_body.clone());
    Ok(Some(Route {
        method,
        path: path.to_string(),
        template: Template::parse(path)?,
        rpc: rpc.clone(),
        grpc_path: format!("/{}/{}", rpc.parent_service().full_name(), rpc.name()),
        body,
        response_body,
    }))
}

impl RestGateway {
    /// Reads the HTTP rules (and additional bindings) of every method of the services in each mount's packages;
    /// services in `shared_packages` (e.g. google.longrunning) are served under every mount.
    pub fn new(
        pool: DescriptorPool,
        mounts: Vec<ApiMount>,
        shared_packages: Vec<String>,
    ) -> Result<Self, GatewayError> {
        let http_ext = pool
            .get_extension_by_name("google.api.http")
            .ok_or(GatewayError::NoHttpExtension)?;
        let mut built = Vec::with_capacity(mounts.len());
        for api in mounts {
            let mut routes = Vec::new();
            for service in pool.services() {
                let name = service.full_name();
                let ours = api
                    .packages
                    .iter()
                    .chain(shared_packages.iter())
                    .any(|p| name.starts_with(p.as_str()));
                if !ours {
                    continue;
                }
                for rpc in service.methods() {
                    let options = rpc.options();
                    if !options.has_extension(&http_ext) {
                        continue;
                    }
                    let Value::Message(rule) = options.get_extension(&http_ext).into_owned() else {
                        continue;
                    };
                    let rule = HttpRule::decode(rule.encode_to_vec().as_slice())
                        .map_err(|e| GatewayError::Rule(rpc.full_name().into(), e.to_string()))?;
                    routes.extend(rule_route(&rpc, &rule)?);
                    for extra in &rule.additional_bindings {
                        routes.extend(rule_route(&rpc, extra)?);
                    }
                }
            }
            built.push(Mount { api, routes });
        }
        Ok(RestGateway {
            inner: Arc::new(Inner {
                pool,
                mounts: built,
                body_limit: DEFAULT_BODY_LIMIT,
                admission: None,
            }),
        })
    }

    /// Sets the largest request body accepted (call right after `new`).
    pub fn with_body_limit(mut self, limit: usize) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.body_limit = limit;
        }
        self
    }

    /// Sets the check made before a request body is read (call right after `new`).
    pub fn with_admission(mut self, admission: Admission) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.admission = Some(admission);
        }
        self
    }

    /// Every REST route: (mount prefix, HTTP method, path template, full gRPC method, body rule).
    pub fn route_table(&self) -> Vec<RouteInfo> {
        self.inner
            .mounts
            .iter()
            .flat_map(|m| {
                m.routes.iter().map(|r| RouteInfo {
                    prefix: m.api.prefix.clone(),
                    method: r.method.clone(),
                    path: r.path.clone(),
                    rpc: format!("{}/{}", r.rpc.parent_service().full_name(), r.rpc.name()),
                    input: r.rpc.input().full_name().to_string(),
                    output: r.rpc.output().full_name().to_string(),
                    body: r.body.clone(),
                })
            })
            .collect()
    }

    pub fn pool(&self) -> &DescriptorPool {
        &self.inner.pool
    }

    /// Transcodes one HTTP request, calls `grpc` in process and transcodes the answer.
    pub async fn handle<S>(&self, grpc: S, req: Request<Body>) -> Response<Body>
    where
        S: tower::Service<Request<tonic::body::Body>, Response = Response<tonic::body::Body>>
            + Send
            + 'static,
        S::Error: std::fmt::Display,
        S::Future: Send,
    {
        match self.try_handle(grpc, req).await {
            Ok(response) => response,
            Err(status) => status_to_http(&status, &self.inner.pool),
        }
    }

    fn mount_for<'a>(&self, path: &'a str, headers: &HeaderMap) -> Option<(&Mount, &'a str)> {
        for mount in &self.inner.mounts {
            let prefix = format!("/{}", mount.api.prefix);
            if let Some(rest) = path.strip_prefix(prefix.as_str())
                && rest.starts_with('/')
            {
                return Some((mount, rest));
            }
        }
        let host = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| h.split(':').next().unwrap_or(h).to_ascii_lowercase())?;
        self.inner
            .mounts
            .iter()
            .find(|m| {
                m.api.host_markers.iter().any(|marker| {
                    host.starts_with(marker.as_str())
                        || host.contains(&format!("-{marker}"))
                        || host.contains(&format!(".{marker}"))
                })
            })
            .map(|m| (m, path))
    }

    /// The route and path bindings of a request, or NOT_FOUND.
    fn route_for(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<(&Route, Bindings), Status> {
        let not_found =
            || Status::not_found(format!("{method} {path} is not a method of this server"));
        let (mount, rest) = self.mount_for(path, headers).ok_or_else(not_found)?;
        let request_path = RequestPath::parse(rest).ok_or_else(not_found)?;
        let mut best: Option<(&Route, Bindings)> = None;
        for route in mount.routes.iter().filter(|r| r.method == *method) {
            if let Some(bindings) = route.template.matches(&request_path)
                && best
                    .as_ref()
                    .is_none_or(|(b, _)| route.template.specificity() > b.template.specificity())
            {
                best = Some((route, bindings));
            }
        }
        best.ok_or_else(not_found)
    }

    /// Transcodes a request without calling anything: the gRPC method path and the encoded request message.
    /// What `handle` does before dispatch, exposed for fuzzing and tests.
    pub fn transcode(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(String, Vec<u8>), Status> {
        let (route, bindings) = self.route_for(method, uri.path(), headers)?;
        let params = QueryParams::parse(uri.query().unwrap_or(""))?;
        if body.len() > self.inner.body_limit {
            return Err(Status::invalid_argument("request body too large"));
        }
        let message = build_request(route, &bindings, &params, body)?;
        Ok((route.grpc_path.clone(), message.encode_to_vec()))
    }

    async fn try_handle<S>(&self, grpc: S, req: Request<Body>) -> Result<Response<Body>, Status>
    where
        S: tower::Service<Request<tonic::body::Body>, Response = Response<tonic::body::Body>>
            + Send
            + 'static,
        S::Error: std::fmt::Display,
        S::Future: Send,
    {
        let (mut parts, body) = req.into_parts();
        // HTTP/2 names the host in `:authority` (the URI), not in a Host header.
        if !parts.headers.contains_key(http::header::HOST)
            && let Some(host) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            parts.headers.insert(http::header::HOST, host);
        }
        let (route, bindings) = self.route_for(&parts.method, parts.uri.path(), &parts.headers)?;
        if let Some(admit) = &self.inner.admission {
            admit(route.full_method(), &parts)?;
        }
        let query = parts.uri.query().unwrap_or("");
        let params = QueryParams::parse(query)?;
        let limit = self.inner.body_limit;
        let body_bytes = match axum::body::to_bytes(body, limit).await {
            Ok(bytes) => bytes,
            Err(e) => {
                let too_large = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
                if !too_large {
                    return Err(Status::invalid_argument(format!(
                        "the request body could not be read: {e}"
                    )));
                }
                // 413 in Google's error shape (the code table has no gRPC code that maps to 413).
                let status = Status::with_error_details(
                    Code::InvalidArgument,
                    format!("Request payload size exceeds the limit: {limit} bytes."),
                    tonic_types::ErrorDetails::with_bad_request_violation(
                        "body",
                        format!("larger than {limit} bytes"),
                    ),
                );
                let mut body = error_body(&status, &self.inner.pool);
                body["error"]["code"] = StatusCode::PAYLOAD_TOO_LARGE.as_u16().into();
                return Ok(json_response(StatusCode::PAYLOAD_TOO_LARGE, &body));
            }
        };
        let message = build_request(route, &bindings, &params, &body_bytes)?;

        let response = call(grpc, route, &parts, message).await?;
        let value = match &route.response_body {
            Some(field) => {
                let fd = response
                    .descriptor()
                    .get_field_by_name(field)
                    .ok_or_else(|| Status::internal("response_body names no field"))?;
                field_json(&response, &fd, params.enum_numbers)?
            }
            None => response
                .serialize_with_options(
                    serde_json::value::Serializer,
                    &serialize_options(params.enum_numbers),
                )
                .map_err(|e| Status::internal(format!("rendering the response: {e}")))?,
        };
        Ok(json_response(StatusCode::OK, &value))
    }
}

fn serialize_options(enum_numbers: bool) -> SerializeOptions {
    SerializeOptions::new()
        .stringify_64_bit_integers(true)
        .use_enum_numbers(enum_numbers)
        .skip_default_fields(true)
}

fn field_json(
    message: &DynamicMessage,
    field: &FieldDescriptor,
    enum_numbers: bool,
) -> Result<serde_json::Value, Status> {
    // Serialize a one-field copy and take that field out: prost-reflect renders values only within messages.
    let mut copy = DynamicMessage::new(message.descriptor());
    copy.set_field(field, message.get_field(field).into_owned());
    let mut whole = copy
        .serialize_with_options(
            serde_json::value::Serializer,
            &serialize_options(enum_numbers),
        )
        .map_err(|e| Status::internal(format!("rendering the response: {e}")))?;
    Ok(whole
        .get_mut(field.json_name())
        .map(serde_json::Value::take)
        .unwrap_or(serde_json::json!({})))
}

/// Query parameters split into system parameters (`$alt`, ...) and request fields.
struct QueryParams {
    fields: Vec<(String, String)>,
    enum_numbers: bool,
}

impl QueryParams {
    fn parse(query: &str) -> Result<QueryParams, Status> {
        let mut fields = Vec::new();
        let mut enum_numbers = false;
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if key == "$alt" || key == "alt" {
                // `json`, optionally with `;enum-encoding=int`.
                let mut parts = value.split(';');
                if parts.next() != Some("json") {
                    return Err(invalid_field(&key, "only alt=json is supported"));
                }
                for option in parts {
                    match option {
                        "enum-encoding=int" => enum_numbers = true,
                        "enum-encoding=string" | "" => {}
                        _ => {
                            return Err(invalid_field(
                                &key,
                                format!("unsupported option {option:?}"),
                            ));
                        }
                    }
                }
                continue;
            }
            if SYSTEM_PARAMETERS.contains(&key.as_ref()) {
                continue;
            }
            fields.push((key.into_owned(), value.into_owned()));
        }
        Ok(QueryParams {
            fields,
            enum_numbers,
        })
    }
}

fn find_field(desc: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    desc.get_field_by_json_name(name)
        .or_else(|| desc.get_field_by_name(name))
}

/// The message that holds the last component of `path`, creating intermediate messages.
fn parent_of<'m>(
    message: &'m mut DynamicMessage,
    path: &[String],
    shown: &str,
) -> Result<(&'m mut DynamicMessage, FieldDescriptor), Status> {
    let (last, intermediate) = path
        .split_last()
        .ok_or_else(|| invalid_field(shown, "empty field name"))?;
    let mut current = message;
    for name in intermediate {
        let field = find_field(&current.descriptor(), name)
            .ok_or_else(|| invalid_field(shown, "is not a field of this request"))?;
        if field.is_list() || field.is_map() || !matches!(field.kind(), Kind::Message(_)) {
            return Err(invalid_field(shown, "not a message field"));
        }
        let Value::Message(child) = current.get_field_mut(&field) else {
            return Err(invalid_field(shown, "not a message field"));
        };
        current = child;
    }
    let field = find_field(&current.descriptor(), last)
        .ok_or_else(|| invalid_field(shown, "is not a field of this request"))?;
    Ok((current, field))
}

/// A string from a path or query parameter as a value of `field`'s type.
fn parse_scalar(field: &FieldDescriptor, raw: &str, shown: &str) -> Result<Value, Status> {
    let bad = |what: &str| invalid_field(shown, format!("{raw:?} is not a valid {what}"));
    Ok(match field.kind() {
        Kind::String => Value::String(raw.to_string()),
        Kind::Bool => match raw.to_ascii_lowercase().as_str() {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => return Err(bad("boolean")),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(raw.parse().map_err(|_| bad("int32"))?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(raw.parse().map_err(|_| bad("int64"))?)
        }
        Kind::Uint32 | Kind::Fixed32 => Value::U32(raw.parse().map_err(|_| bad("uint32"))?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(raw.parse().map_err(|_| bad("uint64"))?),
        Kind::Float => Value::F32(raw.parse().map_err(|_| bad("float"))?),
        Kind::Double => Value::F64(raw.parse().map_err(|_| bad("double"))?),
        Kind::Bytes => {
            let cleaned = raw.trim_end_matches('=');
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(cleaned)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(cleaned))
                .map_err(|_| bad("base64 value"))?;
            Value::Bytes(Bytes::from(bytes))
        }
        Kind::Enum(e) => match e.get_value_by_name(raw) {
            Some(v) => Value::EnumNumber(v.number()),
            None => Value::EnumNumber(raw.parse().map_err(|_| bad("enum value"))?),
        },
        Kind::Message(m) if m.full_name() == "google.protobuf.FieldMask" => {
            Value::Message(field_mask_from_query(m, raw).ok_or_else(|| bad("FieldMask"))?)
        }
        Kind::Message(m) => {
            // Well-known types with a string JSON form (Duration, Timestamp, wrappers).
            let name = m.name().to_string();
            let message =
                DynamicMessage::deserialize(m, serde_json::Value::String(raw.to_string()))
                    .map_err(|_| bad(&name))?;
            Value::Message(message)
        }
    })
}

/// A FieldMask from a URL: comma-separated paths whose names may be lowerCamelCase (the JSON form) or
/// snake_case (the proto names, which gcloud sends: `updateMask=database_roles`); both mean the same field,
/// as at Google's front end. Paths are kept in proto (snake_case) form.
fn field_mask_from_query(desc: MessageDescriptor, raw: &str) -> Option<DynamicMessage> {
    let mut paths = Vec::new();
    for path in raw.split(',').filter(|p| !p.is_empty()) {
        let mut out = String::with_capacity(path.len() + 4);
        for (i, segment) in path.split('.').enumerate() {
            let valid = segment
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return None;
            }
            if i > 0 {
                out.push('.');
            }
            for c in segment.chars() {
                if c.is_ascii_uppercase() {
                    out.push('_');
                    out.push(c.to_ascii_lowercase());
                } else {
                    out.push(c);
                }
            }
        }
        paths.push(Value::String(out));
    }
    let mut mask = DynamicMessage::new(desc);
    mask.try_set_field_by_name("paths", Value::List(paths))
        .ok()?;
    Some(mask)
}

fn bind(message: &mut DynamicMessage, path: &[String], raw: &str) -> Result<(), Status> {
    let shown = path.join(".");
    let (target, field) = parent_of(message, path, &shown)?;
    if field.is_map() {
        return Err(invalid_field(
            &shown,
            "map fields cannot be set from the URL",
        ));
    }
    let value = parse_scalar(&field, raw, &shown)?;
    if field.is_list() {
        if let Value::List(list) = target.get_field_mut(&field) {
            list.push(value);
        }
    } else {
        target.set_field(&field, value);
    }
    Ok(())
}

/// The unknown field named in a deserializer error, for the BadRequest detail. Only unknown-field errors are
/// read: the others quote the offending value (`integer `5``, `enum value 'X'`), which is no field name.
fn field_in_error(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("unrecognized field name ")
        .or_else(|| message.strip_prefix("unknown field "))?;
    let quote = rest
        .chars()
        .next()
        .filter(|c| ['\'', '`', '"'].contains(c))?;
    let rest = &rest[quote.len_utf8()..];
    let end = rest.find(quote)?;
    Some(rest[..end].to_string())
}

fn parse_json(
    desc: MessageDescriptor,
    bytes: &[u8],
    shown: &str,
) -> Result<DynamicMessage, Status> {
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        bytes
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let message =
        DynamicMessage::deserialize_with_options(desc, &mut de, &DeserializeOptions::new())
            .and_then(|m| de.end().map(|()| m))
            .map_err(|e| {
                let text = e.to_string();
                let field = field_in_error(&text).unwrap_or_else(|| shown.to_string());
                Status::with_error_details(
                    Code::InvalidArgument,
                    format!("Invalid JSON payload received. {text}"),
                    tonic_types::ErrorDetails::with_bad_request_violation(field, text),
                )
            })?;
    Ok(message)
}

fn build_request(
    route: &Route,
    bindings: &Bindings,
    params: &QueryParams,
    body: &[u8],
) -> Result<DynamicMessage, Status> {
    let input = route.rpc.input();
    let mut message = match route.body.as_deref() {
        Some("*") => parse_json(input.clone(), body, "body")?,
        Some(field_name) => {
            let mut message = DynamicMessage::new(input.clone());
            let field = input
                .get_field_by_name(field_name)
                .ok_or_else(|| Status::internal("body field vanished"))?;
            let Kind::Message(desc) = field.kind() else {
                return Err(Status::unimplemented(
                    "only message body fields are supported",
                ));
            };
            message.set_field(
                &field,
                Value::Message(parse_json(desc, body, field.json_name())?),
            );
            message
        }
        None => DynamicMessage::new(input.clone()),
    };
    let mut bound: HashSet<String> = HashSet::new();
    for (path, value) in bindings {
        bind(&mut message, path, value)?;
        bound.insert(path.join("."));
    }
    for (key, value) in &params.fields {
        if route.body.as_deref() == Some("*") {
            return Err(invalid_field(
                key,
                "unknown query parameter (every field is in the body)",
            ));
        }
        let path: Vec<String> = key.split('.').map(str::to_string).collect();
        if let Some(body_field) = route.body.as_deref()
            && path
                .first()
                .and_then(|first| find_field(&input, first))
                .is_some_and(|f| f.name() == body_field)
        {
            return Err(invalid_field(key, "is in the body, not the query"));
        }
        if bound.contains(key) {
            continue;
        }
        bind(&mut message, &path, value)?;
    }
    Ok(message)
}

fn frame(message: &DynamicMessage) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut buf = BytesMut::with_capacity(encoded.len() + 5);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(encoded.len()).unwrap_or(u32::MAX));
    buf.put_slice(&encoded);
    buf.freeze()
}

async fn call<S>(
    grpc: S,
    route: &Route,
    parts: &http::request::Parts,
    message: DynamicMessage,
) -> Result<DynamicMessage, Status>
where
    S: tower::Service<Request<tonic::body::Body>, Response = Response<tonic::body::Body>>
        + Send
        + 'static,
    S::Error: std::fmt::Display,
    S::Future: Send,
{
    let mut request = Request::new(tonic::body::Body::new(http_body_util::Full::new(frame(
        &message,
    ))));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = route
        .grpc_path
        .parse()
        .map_err(|_| Status::internal("bad method path"))?;
    *request.version_mut() = http::Version::HTTP_2;
    *request.extensions_mut() = parts.extensions.clone();
    let headers = request.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    // Names the method for the services' audit records (the outer request's copy is never forwarded).
    if let Ok(v) = HeaderValue::from_str(route.full_method()) {
        headers.insert(METHOD_HEADER, v);
    }
    for (name, value) in &parts.headers {
        if forwarded(name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    let response = grpc
        .oneshot(request)
        .await
        .map_err(|e| Status::internal(format!("in-process call failed: {e}")))?;
    let (head, body) = response.into_parts();
    let header_status = Status::from_header_map(&head.headers);
    if let Some(status) = &header_status
        && status.code() != Code::Ok
    {
        return Err(status.clone());
    }
    let collected = body
        .collect()
        .await
        .map_err(|e| Status::internal(format!("reading the reply: {e}")))?;
    // A reply must say how the call ended; without a status it is our bug, not the client's.
    match collected
        .trailers()
        .and_then(Status::from_header_map)
        .or(header_status)
    {
        Some(status) if status.code() != Code::Ok => return Err(status),
        Some(_) => {}
        None => {
            return Err(Status::internal(
                "the service's reply carries no grpc-status",
            ));
        }
    }
    let mut data = collected.to_bytes();
    if data.len() < 5 || data[0] != 0 {
        return Err(Status::internal("the service sent no (uncompressed) reply"));
    }
    data.advance(1);
    let len = data.get_u32() as usize;
    if data.len() < len {
        return Err(Status::internal("truncated reply frame"));
    }
    DynamicMessage::decode(route.rpc.output(), &data[..len])
        .map_err(|e| Status::internal(format!("decoding the reply: {e}")))
}

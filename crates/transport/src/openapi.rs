//! An OpenAPI 3 document of the REST surface, generated from the same HTTP rules and message descriptors the
//! gateway transcodes with, so it cannot drift from what is served.

use std::collections::{BTreeMap, BTreeSet};

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use crate::transcode::RestGateway;

fn schema_name(message: &MessageDescriptor) -> String {
    message.full_name().to_string()
}

/// The JSON schema of one field's value (without `repeated`/map wrapping).
fn value_schema(kind: &Kind, todo: &mut Vec<MessageDescriptor>) -> Value {
    match kind {
        Kind::String => json!({"type": "string"}),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({"type": "integer", "format": "int32"})
        }
        Kind::Uint32 | Kind::Fixed32 => json!({"type": "integer", "format": "int64", "minimum": 0}),
        // proto3 JSON writes 64-bit integers as strings (and reads either).
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => {
            json!({"type": "string", "pattern": "^-?[0-9]+$"})
        }
        Kind::Float | Kind::Double => json!({"type": "number"}),
        Kind::Bytes => json!({"type": "string", "format": "byte"}),
        Kind::Enum(e) => {
            json!({"type": "string", "enum": e.values().map(|v| v.name().to_string()).collect::<Vec<_>>()})
        }
        Kind::Message(m) => match m.full_name() {
            "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
            "google.protobuf.Duration" => {
                json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$"})
            }
            "google.protobuf.FieldMask" => json!({"type": "string"}),
            "google.protobuf.Empty" => json!({"type": "object"}),
            "google.protobuf.Any" => {
                json!({"type": "object", "properties": {"@type": {"type": "string"}}, "additionalProperties": true})
            }
            _ => {
                todo.push(m.clone());
                json!({"$ref": format!("#/components/schemas/{}", schema_name(m))})
            }
        },
    }
}

fn field_schema(field: &FieldDescriptor, todo: &mut Vec<MessageDescriptor>) -> Value {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            return json!({"type": "object"});
        };
        let value = entry.map_entry_value_field();
        return json!({"type": "object", "additionalProperties": value_schema(&value.kind(), todo)});
    }
    let item = value_schema(&field.kind(), todo);
    if field.is_list() {
        json!({"type": "array", "items": item})
    } else {
        item
    }
}

fn message_schema(message: &MessageDescriptor, todo: &mut Vec<MessageDescriptor>) -> Value {
    let mut properties = Map::new();
    for field in message.fields() {
        properties.insert(field.json_name().to_string(), field_schema(&field, todo));
    }
    json!({"type": "object", "properties": properties, "additionalProperties": false})
}

/// `projects/*/locations/*` inside `{parent=...}` becomes literal segments and one parameter per `*`.
fn openapi_path(template: &str, params: &mut Vec<(String, String)>) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').map_or(rest.len(), |e| start + e);
        let inner = &rest[start + 1..end];
        let (field, pattern) = inner.split_once('=').unwrap_or((inner, "*"));
        let mut n = 0;
        let segments: Vec<String> = pattern
            .split('/')
            .map(|seg| {
                if seg == "*" || seg == "**" {
                    n += 1;
                    let name = format!("{}_{n}", field.replace('.', "_"));
                    params.push((name.clone(), field.to_string()));
                    format!("{{{name}}}")
                } else {
                    seg.to_string()
                }
            })
            .collect();
        out.push_str(&segments.join("/"));
        rest = rest.get(end + 1..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

impl RestGateway {
    /// The REST surface as OpenAPI 3.0: one path per HTTP rule and mount, the request and response schemas
    /// from the descriptors, Google's error shape for every non-2xx answer, bearer authentication.
    pub fn openapi_document(&self, title: &str, version: &str) -> Value {
        let pool = self.pool();
        let mut todo: Vec<MessageDescriptor> = Vec::new();
        let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
        for route in self.route_table() {
            let mut params = Vec::new();
            let path = format!(
                "/{}{}",
                route.prefix,
                openapi_path(&route.path, &mut params)
            );
            let (Some(input), Some(output)) = (
                pool.get_message_by_name(&route.input),
                pool.get_message_by_name(&route.output),
            ) else {
                continue;
            };
            let bound: BTreeSet<String> = params.iter().map(|(_, f)| f.clone()).collect();
            let mut parameters: Vec<Value> = params
                .iter()
                .map(|(name, _)| {
                    json!({"name": name, "in": "path", "required": true,
                    "schema": {"type": "string", "pattern": "^[^/]+$"}})
                })
                .collect();
            let mut operation = Map::new();
            match route.body.as_deref() {
                Some("*") => {
                    operation.insert(
                        "requestBody".into(),
                        json!({"content": {"application/json": {"schema": value_schema(&Kind::Message(input.clone()), &mut todo)}}}),
                    );
                }
                other => {
                    if let Some(field) = other.and_then(|f| input.get_field_by_name(f)) {
                        operation.insert(
                            "requestBody".into(),
                            json!({"content": {"application/json": {"schema": field_schema(&field, &mut todo)}}}),
                        );
                    }
                    // Top-level scalar fields not in the path or body are query parameters.
                    for field in input.fields() {
                        let scalar = !matches!(field.kind(), Kind::Message(_)) && !field.is_map();
                        if scalar && !bound.contains(field.name()) && Some(field.name()) != other {
                            parameters.push(
                                json!({"name": field.json_name(), "in": "query", "required": false,
                                "schema": field_schema(&field, &mut todo)}),
                            );
                        }
                    }
                }
            }
            if route.rpc.ends_with("/GenerateAttachedClusterAgentToken") {
                // Like Google STS: the subject token is the credential, no bearer token.
                operation.insert("security".into(), json!([]));
            }
            operation.insert(
                "operationId".into(),
                json!(format!("{}:{}:{}", route.prefix, route.rpc, route.method)),
            );
            operation.insert("parameters".into(), Value::Array(parameters));
            operation.insert(
                "responses".into(),
                json!({
                    "200": {"description": "OK", "content": {"application/json": {"schema": value_schema(&Kind::Message(output.clone()), &mut todo)}}},
                    "default": {"description": "A google.rpc error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/GoogleError"}}}},
                }),
            );
            paths.entry(path).or_default().insert(
                route.method.as_str().to_ascii_lowercase(),
                Value::Object(operation),
            );
        }
        let mut schemas = Map::new();
        while let Some(message) = todo.pop() {
            let name = schema_name(&message);
            if schemas.contains_key(&name) {
                continue;
            }
            schemas.insert(name.clone(), Value::Null);
            let schema = message_schema(&message, &mut todo);
            schemas.insert(name, schema);
        }
        schemas.insert(
            "GoogleError".into(),
            json!({"type": "object", "required": ["error"], "properties": {"error": {"type": "object",
                "required": ["code", "message", "status"], "properties": {
                    "code": {"type": "integer"}, "message": {"type": "string"}, "status": {"type": "string"},
                    "details": {"type": "array", "items": {"type": "object"}}}}}}),
        );
        json!({
            "openapi": "3.0.3",
            "info": {"title": title, "version": version},
            "paths": paths,
            "components": {
                "schemas": schemas,
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            },
            "security": [{"bearer": []}],
        })
    }
}

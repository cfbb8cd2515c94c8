//! The compiled descriptors carry what the wire needs: Google's field numbers, the HTTP rules, json names.

use clustercred_proto::FILE_DESCRIPTOR_SET;
use clustercred_proto::google::api::HttpRule;
use clustercred_proto::google::api::http_rule::Pattern;
use prost::Message;
use prost_reflect::{DescriptorPool, Value};

fn pool() -> DescriptorPool {
    DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("descriptor set decodes")
}

fn rule(pool: &DescriptorPool, service: &str, method: &str) -> HttpRule {
    let ext = pool
        .get_extension_by_name("google.api.http")
        .expect("http extension");
    let m = pool
        .get_service_by_name(service)
        .expect(service)
        .methods()
        .find(|m| m.name() == method)
        .expect(method);
    let Value::Message(rule) = m.options().get_extension(&ext).into_owned() else {
        panic!("no rule on {method}")
    };
    HttpRule::decode(rule.encode_to_vec().as_slice()).unwrap()
}

fn field_number(pool: &DescriptorPool, message: &str, field: &str) -> Option<u32> {
    pool.get_message_by_name(message)?
        .get_field_by_name(field)
        .map(|f| f.number())
}

#[test]
fn http_rules_survive_compilation() {
    let pool = pool();
    for v in ["v1", "v1beta", "v1alpha"] {
        let r = rule(
            &pool,
            &format!("google.cloud.alloydb.{v}.AlloyDBAdmin"),
            "GenerateClientCertificate",
        );
        assert_eq!(
            r.pattern,
            Some(Pattern::Post(format!(
                "/{v}/{{parent=projects/*/locations/*/clusters/*}}:generateClientCertificate"
            )))
        );
        assert_eq!(r.body, "*");
    }
    let r = rule(
        &pool,
        "google.cloud.edgecontainer.v1.EdgeContainer",
        "GenerateOfflineCredential",
    );
    assert_eq!(
        r.pattern,
        Some(Pattern::Get(
            "/v1/{cluster=projects/*/locations/*/clusters/*}:generateOfflineCredential".into()
        ))
    );
    assert_eq!(r.body, "");
    let r = rule(
        &pool,
        "google.cloud.gkemulticloud.v1.AttachedClusters",
        "GenerateAttachedClusterAgentToken",
    );
    assert_eq!(r.body, "*");
    let r = rule(&pool, "google.longrunning.Operations", "GetOperation");
    assert_eq!(
        r.pattern,
        Some(Pattern::Get(
            "/v1/{name=projects/*/locations/*/operations/*}".into()
        ))
    );
    assert_eq!(r.additional_bindings.len(), 2);
    let r = rule(
        &pool,
        "google.cloud.alloydb.v1.AlloyDBAdmin",
        "CreateCluster",
    );
    assert_eq!(r.body, "cluster");
}

#[test]
fn field_numbers_and_names_match_google() {
    let pool = pool();
    let cases = [
        ("google.cloud.alloydb.v1.Instance", "public_ip_address", 27),
        (
            "google.cloud.alloydb.v1.GenerateClientCertificateRequest",
            "cert_duration",
            4,
        ),
        (
            "google.cloud.alloydb.v1.GenerateClientCertificateRequest",
            "public_key",
            5,
        ),
        (
            "google.cloud.alloydb.v1.GenerateClientCertificateResponse",
            "ca_cert",
            3,
        ),
        (
            "google.cloud.alloydb.v1beta.GenerateClientCertificateRequest",
            "pem_csr",
            3,
        ),
        (
            "google.cloud.alloydb.v1alpha.GenerateClientCertificateResponse",
            "pem_certificate",
            1,
        ),
        (
            "google.cloud.alloydb.v1beta.ConnectionInfo",
            "psc_dns_name",
            6,
        ),
        (
            "google.cloud.edgecontainer.v1.Cluster",
            "cluster_ca_certificate",
            10,
        ),
        ("google.cloud.edgecontainer.v1.Cluster", "port", 19),
        (
            "google.cloud.gkemulticloud.v1.AttachedCluster",
            "oidc_config",
            3,
        ),
        (
            "google.cloud.gkemulticloud.v1.GenerateAttachedClusterAgentTokenRequest",
            "requested_token_type",
            9,
        ),
        ("google.cloud.gkemulticloud.v1.OperationMetadata", "verb", 7),
        ("google.cloud.alloydb.v1.OperationMetadata", "verb", 4),
        ("google.cloud.alloydb.v1.User", "name", 1),
        ("google.cloud.alloydb.v1.User", "password", 2),
        ("google.cloud.alloydb.v1.User", "database_roles", 4),
        ("google.cloud.alloydb.v1.User", "user_type", 5),
        ("google.cloud.alloydb.v1beta.User", "keep_extra_roles", 6),
        ("google.cloud.alloydb.v1.CreateUserRequest", "user_id", 2),
        ("google.cloud.alloydb.v1.CreateUserRequest", "user", 3),
        ("google.cloud.alloydb.v1.CreateUserRequest", "request_id", 4),
        (
            "google.cloud.alloydb.v1.CreateUserRequest",
            "validate_only",
            5,
        ),
        ("google.cloud.alloydb.v1.ListUsersRequest", "order_by", 5),
        (
            "google.cloud.alloydb.v1.ListUsersResponse",
            "unreachable",
            3,
        ),
        (
            "google.cloud.alloydb.v1.UpdateUserRequest",
            "update_mask",
            1,
        ),
        ("google.cloud.alloydb.v1.UpdateUserRequest", "user", 2),
        (
            "google.cloud.alloydb.v1alpha.UpdateUserRequest",
            "allow_missing",
            5,
        ),
        (
            "google.cloud.alloydb.v1.DeleteUserRequest",
            "validate_only",
            3,
        ),
    ];
    for (message, field, number) in cases {
        assert_eq!(
            field_number(&pool, message, field),
            Some(number),
            "{message}.{field}"
        );
    }
    for v in ["v1", "v1beta", "v1alpha"] {
        let user_type = pool
            .get_enum_by_name(&format!("google.cloud.alloydb.{v}.User.UserType"))
            .expect("UserType");
        let values: Vec<(String, i32)> = user_type
            .values()
            .map(|e| (e.name().to_string(), e.number()))
            .collect();
        assert_eq!(
            values,
            [
                ("USER_TYPE_UNSPECIFIED".to_string(), 0),
                ("ALLOYDB_BUILT_IN".to_string(), 1),
                ("ALLOYDB_IAM_USER".to_string(), 2)
            ],
            "{v}"
        );
    }
    assert_eq!(
        field_number(
            &pool,
            "google.cloud.alloydb.v1.GenerateClientCertificateRequest",
            "pem_csr"
        ),
        None
    );
}

#[test]
fn agent_token_response_uses_documented_json_names() {
    let pool = pool();
    let m = pool
        .get_message_by_name(
            "google.cloud.gkemulticloud.v1.GenerateAttachedClusterAgentTokenResponse",
        )
        .unwrap();
    let names: Vec<_> = m.fields().map(|f| f.json_name().to_string()).collect();
    assert_eq!(names, ["access_token", "expires_in", "token_type"]);
    let req = pool
        .get_message_by_name(
            "google.cloud.gkemulticloud.v1.GenerateAttachedClusterAgentTokenRequest",
        )
        .unwrap();
    assert_eq!(
        req.get_field_by_name("subject_token").unwrap().json_name(),
        "subjectToken"
    );
}

#[test]
fn messages_round_trip() {
    use clustercred_proto::google::cloud::alloydb::{v1, v1beta};
    let req = v1::GenerateClientCertificateRequest {
        parent: "projects/p/locations/l/clusters/c".into(),
        request_id: "r".into(),
        cert_duration: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
        public_key: "PEM".into(),
        use_metadata_exchange: true,
    };
    let bytes = req.encode_to_vec();
    assert_eq!(
        v1::GenerateClientCertificateRequest::decode(bytes.as_slice()).unwrap(),
        req
    );
    // Same numbers across versions: a v1 request reads as v1beta.
    let beta = v1beta::GenerateClientCertificateRequest::decode(bytes.as_slice()).unwrap();
    assert_eq!(beta.public_key, "PEM");
    assert!(beta.use_metadata_exchange);
}

/// (verb, path, body) of a rule, to compare whole bindings at once.
fn binding(r: &HttpRule) -> (&'static str, String, String) {
    let (verb, path) = match &r.pattern {
        Some(Pattern::Get(p)) => ("GET", p.clone()),
        Some(Pattern::Post(p)) => ("POST", p.clone()),
        Some(Pattern::Delete(p)) => ("DELETE", p.clone()),
        Some(Pattern::Put(p)) => ("PUT", p.clone()),
        Some(Pattern::Patch(p)) => ("PATCH", p.clone()),
        other => panic!("unexpected pattern {other:?}"),
    };
    (verb, path, r.body.clone())
}

/// Every served method carries Google's binding (google-apis.md), and no service has a method we do not list.
#[test]
fn every_served_method_has_googles_binding() {
    let pool = pool();
    let alloydb: &[(&str, &str, &str, &str)] = &[
        (
            "ListClusters",
            "GET",
            "{parent=projects/*/locations/*}/clusters",
            "",
        ),
        (
            "GetCluster",
            "GET",
            "{name=projects/*/locations/*/clusters/*}",
            "",
        ),
        (
            "CreateCluster",
            "POST",
            "{parent=projects/*/locations/*}/clusters",
            "cluster",
        ),
        (
            "DeleteCluster",
            "DELETE",
            "{name=projects/*/locations/*/clusters/*}",
            "",
        ),
        (
            "ListInstances",
            "GET",
            "{parent=projects/*/locations/*/clusters/*}/instances",
            "",
        ),
        (
            "GetInstance",
            "GET",
            "{name=projects/*/locations/*/clusters/*/instances/*}",
            "",
        ),
        (
            "CreateInstance",
            "POST",
            "{parent=projects/*/locations/*/clusters/*}/instances",
            "instance",
        ),
        (
            "DeleteInstance",
            "DELETE",
            "{name=projects/*/locations/*/clusters/*/instances/*}",
            "",
        ),
        (
            "GenerateClientCertificate",
            "POST",
            "{parent=projects/*/locations/*/clusters/*}:generateClientCertificate",
            "*",
        ),
        (
            "GetConnectionInfo",
            "GET",
            "{parent=projects/*/locations/*/clusters/*/instances/*}/connectionInfo",
            "",
        ),
        (
            "ListUsers",
            "GET",
            "{parent=projects/*/locations/*/clusters/*}/users",
            "",
        ),
        (
            "GetUser",
            "GET",
            "{name=projects/*/locations/*/clusters/*/users/*}",
            "",
        ),
        (
            "CreateUser",
            "POST",
            "{parent=projects/*/locations/*/clusters/*}/users",
            "user",
        ),
        (
            "UpdateUser",
            "PATCH",
            "{user.name=projects/*/locations/*/clusters/*/users/*}",
            "user",
        ),
        (
            "DeleteUser",
            "DELETE",
            "{name=projects/*/locations/*/clusters/*/users/*}",
            "",
        ),
    ];
    let edge: &[(&str, &str, &str, &str)] = &[
        (
            "ListClusters",
            "GET",
            "{parent=projects/*/locations/*}/clusters",
            "",
        ),
        (
            "GetCluster",
            "GET",
            "{name=projects/*/locations/*/clusters/*}",
            "",
        ),
        (
            "CreateCluster",
            "POST",
            "{parent=projects/*/locations/*}/clusters",
            "cluster",
        ),
        (
            "DeleteCluster",
            "DELETE",
            "{name=projects/*/locations/*/clusters/*}",
            "",
        ),
        (
            "GenerateOfflineCredential",
            "GET",
            "{cluster=projects/*/locations/*/clusters/*}:generateOfflineCredential",
            "",
        ),
    ];
    let attached: &[(&str, &str, &str, &str)] = &[
        (
            "CreateAttachedCluster",
            "POST",
            "{parent=projects/*/locations/*}/attachedClusters",
            "attached_cluster",
        ),
        (
            "GetAttachedCluster",
            "GET",
            "{name=projects/*/locations/*/attachedClusters/*}",
            "",
        ),
        (
            "ListAttachedClusters",
            "GET",
            "{parent=projects/*/locations/*}/attachedClusters",
            "",
        ),
        (
            "DeleteAttachedCluster",
            "DELETE",
            "{name=projects/*/locations/*/attachedClusters/*}",
            "",
        ),
        (
            "GenerateAttachedClusterAgentToken",
            "POST",
            "{attached_cluster=projects/*/locations/*/attachedClusters/*}:generateAttachedClusterAgentToken",
            "*",
        ),
    ];
    let services = [
        ("google.cloud.alloydb.v1.AlloyDBAdmin", "v1", alloydb),
        (
            "google.cloud.alloydb.v1beta.AlloyDBAdmin",
            "v1beta",
            alloydb,
        ),
        (
            "google.cloud.alloydb.v1alpha.AlloyDBAdmin",
            "v1alpha",
            alloydb,
        ),
        ("google.cloud.edgecontainer.v1.EdgeContainer", "v1", edge),
        (
            "google.cloud.gkemulticloud.v1.AttachedClusters",
            "v1",
            attached,
        ),
    ];
    for (service, version, methods) in services {
        let served: Vec<String> = pool
            .get_service_by_name(service)
            .expect(service)
            .methods()
            .map(|m| m.name().to_string())
            .collect();
        assert_eq!(served.len(), methods.len(), "{service}: {served:?}");
        for (method, verb, path, body) in methods {
            let r = rule(&pool, service, method);
            assert_eq!(
                binding(&r),
                (*verb, format!("/{version}/{path}"), body.to_string()),
                "{service}.{method}"
            );
            assert!(r.additional_bindings.is_empty(), "{service}.{method}");
        }
    }

    // Operations: one rule per method, /v1 primary and the /v1beta, /v1alpha forms as additional bindings.
    let operations = [
        (
            "ListOperations",
            "GET",
            "{name=projects/*/locations/*}/operations",
            "",
        ),
        (
            "GetOperation",
            "GET",
            "{name=projects/*/locations/*/operations/*}",
            "",
        ),
        (
            "DeleteOperation",
            "DELETE",
            "{name=projects/*/locations/*/operations/*}",
            "",
        ),
        (
            "CancelOperation",
            "POST",
            "{name=projects/*/locations/*/operations/*}:cancel",
            "*",
        ),
    ];
    for (method, verb, path, body) in operations {
        let r = rule(&pool, "google.longrunning.Operations", method);
        let all: Vec<_> = std::iter::once(binding(&r))
            .chain(r.additional_bindings.iter().map(binding))
            .collect();
        let want: Vec<_> = ["v1", "v1beta", "v1alpha"]
            .iter()
            .map(|v| (verb, format!("/{v}/{path}"), body.to_string()))
            .collect();
        assert_eq!(all, want, "{method}");
    }
}

/// REST renders google.rpc.Status details and code names from the pool, so they must all be in it.
#[test]
fn error_model_is_in_the_pool() {
    let pool = pool();
    for name in [
        "Status",
        "ErrorInfo",
        "RetryInfo",
        "DebugInfo",
        "QuotaFailure",
        "PreconditionFailure",
        "BadRequest",
        "BadRequest.FieldViolation",
        "RequestInfo",
        "ResourceInfo",
        "Help",
        "LocalizedMessage",
    ] {
        assert!(
            pool.get_message_by_name(&format!("google.rpc.{name}"))
                .is_some(),
            "google.rpc.{name}"
        );
    }
    let code = pool
        .get_enum_by_name("google.rpc.Code")
        .expect("google.rpc.Code");
    for (name, number) in [
        ("OK", 0),
        ("NOT_FOUND", 5),
        ("RESOURCE_EXHAUSTED", 8),
        ("UNAUTHENTICATED", 16),
    ] {
        assert_eq!(
            code.get_value_by_name(name).map(|v| v.number()),
            Some(number),
            "{name}"
        );
    }
    assert_eq!(code.values().count(), 17);
    // The generated Rust enum agrees with tonic's numbering, which the transport maps codes through.
    assert_eq!(
        clustercred_proto::google::rpc::Code::Unauthenticated as i32,
        tonic::Code::Unauthenticated as i32
    );
}

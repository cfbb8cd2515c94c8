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
    ];
    for (message, field, number) in cases {
        assert_eq!(
            field_number(&pool, message, field),
            Some(number),
            "{message}.{field}"
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

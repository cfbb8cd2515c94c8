//! Micro-benchmark of REST transcoding: an AlloyDB `generateClientCertificate` JSON body (and its URL) into the
//! encoded `GenerateClientCertificateRequest`, through the gateway built from the descriptor pool that
//! clustercred_proto ships, with the server's mounts. `RestGateway::transcode` is the public entry point of
//! exactly what `RestGateway::handle` does before dispatch: route matching on method and path, query
//! parameters, JSON to a dynamic message, path bindings, protobuf encoding.

use std::hint::black_box;

use clustercred_proto::google::cloud::alloydb::v1::GenerateClientCertificateRequest;
use clustercred_transport::RestGateway;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, Uri};
use prost::Message;
use prost_reflect::DescriptorPool;
use serde_json::json;

const CLUSTER: &str = "projects/p1/locations/us-central1/clusters/c1";

fn transcode(c: &mut Criterion) {
    let pool = DescriptorPool::decode(clustercred_proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    let gateway =
        RestGateway::new(pool, clustercred::server::mounts(), Vec::new()).expect("gateway");
    let uri: Uri = format!("/alloydb/v1/{CLUSTER}:generateClientCertificate")
        .parse()
        .expect("URI");
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::HOST,
        HeaderValue::from_static("clustercred.example.test"),
    );
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        http::header::USER_AGENT,
        HeaderValue::from_static("alloydb-go-connector/1.15.0"),
    );

    let rsa = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .expect("RSA-2048 key");
    let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");

    let mut group = c.benchmark_group("transcode/generate_client_certificate");
    for (name, key) in [("rsa2048_key", &rsa), ("p256_key", &p256)] {
        // What the AlloyDB connectors send.
        let public_key = key.public_key_pem();
        let body = serde_json::to_vec(&json!({
            "requestId": "2f0b7c1e-4a3d-4e5f-9a8b-7c6d5e4f3a2b",
            "certDuration": "3600s",
            "publicKey": public_key,
            "useMetadataExchange": true,
        }))
        .expect("JSON body");
        let (path, encoded) = gateway
            .transcode(&Method::POST, &uri, &headers, &body)
            .expect("transcoded");
        assert_eq!(
            path,
            "/google.cloud.alloydb.v1.AlloyDBAdmin/GenerateClientCertificate"
        );
        let request =
            GenerateClientCertificateRequest::decode(encoded.as_slice()).expect("decodes");
        assert_eq!(request.parent, CLUSTER);
        assert_eq!(request.public_key, public_key);
        assert_eq!(request.cert_duration.map(|d| d.seconds), Some(3600));

        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                gateway
                    .transcode(&Method::POST, black_box(&uri), &headers, black_box(&body))
                    .expect("transcoded")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, transcode);
criterion_main!(benches);

//! The gateway against a made-up API (tests/protos, compiled here with protox) and a fake gRPC service that
//! decodes what it is sent and answers as scripted: routing, query/body mapping, JSON rendering, dispatch
//! framing and metadata, error rendering, and the one-port router served over TCP.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use bytes::{BufMut, Bytes, BytesMut};
use clustercred_transport::{
    ApiMount, RequestPath, RestGateway, Template, http_status, router, serve, status_name,
    status_to_http,
};
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};
use serde_json::{Value, json};
use tonic::Code;

// ---------------------------------------------------------------------------------------------------------
// Descriptors

struct TestProtos;

impl FileResolver for TestProtos {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        let source = match name {
            "google/api/http.proto" => include_str!("protos/http.proto"),
            "google/api/annotations.proto" => include_str!("protos/annotations.proto"),
            "google/rpc/error_details.proto" => include_str!("protos/error_details.proto"),
            "test/v1/library.proto" => include_str!("protos/library.proto"),
            "other/v1/other.proto" => include_str!("protos/other.proto"),
            "shared/ops.proto" => include_str!("protos/ops.proto"),
            "bad/v1/bad.proto" => include_str!("protos/bad.proto"),
            _ => return Err(protox::Error::file_not_found(name)),
        };
        File::from_source(name, source)
    }
}

fn compile(files: &[&str]) -> DescriptorPool {
    let mut resolver = ChainFileResolver::new();
    resolver.add(TestProtos);
    resolver.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true);
    compiler.open_files(files).unwrap();
    compiler.descriptor_pool()
}

fn pool() -> DescriptorPool {
    compile(&[
        "test/v1/library.proto",
        "other/v1/other.proto",
        "shared/ops.proto",
        "google/rpc/error_details.proto",
    ])
}

fn mount(prefix: &str, package: &str) -> ApiMount {
    ApiMount {
        prefix: prefix.into(),
        packages: vec![package.into()],
        host_markers: vec![format!("{prefix}.")],
    }
}

fn gateway() -> RestGateway {
    RestGateway::new(
        pool(),
        vec![mount("library", "test.v1."), mount("other", "other.v1.")],
        vec!["shared.ops.".into()],
    )
    .unwrap()
}

// ---------------------------------------------------------------------------------------------------------
// The fake gRPC service

/// Stands in for the client's peer address, to check request extensions reach the service.
#[derive(Clone, Debug, PartialEq)]
struct Peer(&'static str);

/// What the service received.
#[derive(Clone, Debug)]
struct Call {
    path: String,
    headers: HeaderMap,
    /// The request decoded through the method's input type, as proto3 JSON.
    request: Value,
    peer: Option<Peer>,
}

#[derive(Clone)]
enum Reply {
    /// An empty message of the method's output type.
    Empty,
    /// This message (as JSON of the output type).
    Json(Value),
    /// Headers carrying the status, no body (what tonic sends for an early error).
    TrailersOnly(tonic::Status),
    /// 200 headers, no message, the status in the trailers.
    Trailers(tonic::Status),
    /// These body bytes, then trailers with this grpc-status (none: no trailers at all).
    Raw(Vec<u8>, Option<&'static str>),
    /// Never answers within the test's patience.
    Slow,
}

#[derive(Clone)]
struct Fake {
    pool: DescriptorPool,
    calls: Arc<Mutex<Vec<Call>>>,
    reply: Arc<Mutex<Reply>>,
}

fn grpc_frame(payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_u8(0);
    buf.put_u32(payload.len() as u32);
    buf.put_slice(payload);
    buf.freeze()
}

fn trailers_of(status: tonic::Status) -> HeaderMap {
    let mut headers = status.into_http::<()>().into_parts().0.headers;
    headers.remove(http::header::CONTENT_TYPE);
    headers
}

fn body_of(data: Option<Bytes>, trailers: Option<HeaderMap>) -> Body {
    let mut frames = Vec::new();
    if let Some(data) = data {
        frames.push(Ok::<_, Infallible>(http_body::Frame::data(data)));
    }
    if let Some(trailers) = trailers {
        frames.push(Ok(http_body::Frame::trailers(trailers)));
    }
    Body::new(http_body_util::StreamBody::new(futures::stream::iter(
        frames,
    )))
}

impl Fake {
    fn new(pool: DescriptorPool) -> Fake {
        Fake {
            pool,
            calls: Default::default(),
            reply: Arc::new(Mutex::new(Reply::Empty)),
        }
    }

    fn reply(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn last(&self) -> Call {
        self.calls().pop().expect("the service was called")
    }

    async fn answer(self, req: Request<Body>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let headers = req.headers().clone();
        let peer = req.extensions().get::<Peer>().cloned();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let (service, method) = path[1..].rsplit_once('/').unwrap();
        let method = self
            .pool
            .get_service_by_name(service)
            .unwrap()
            .methods()
            .find(|m| m.name() == method)
            .unwrap();
        // The frame: uncompressed, and its length says exactly how long the message is.
        assert_eq!(body[0], 0, "uncompressed");
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, body.len() - 5, "one whole message");
        let request = DynamicMessage::decode(method.input(), &body[5..]).unwrap();
        self.calls.lock().unwrap().push(Call {
            path,
            headers,
            request: serde_json::to_value(&request).unwrap(),
            peer,
        });
        let ok = || {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", "0".parse().unwrap());
            t
        };
        let reply = self.reply.lock().unwrap().clone();
        let (data, trailers) = match reply {
            Reply::Empty => (
                Some(grpc_frame(
                    &DynamicMessage::new(method.output()).encode_to_vec(),
                )),
                Some(ok()),
            ),
            Reply::Json(v) => {
                let message = DynamicMessage::deserialize(method.output(), v).unwrap();
                (Some(grpc_frame(&message.encode_to_vec())), Some(ok()))
            }
            Reply::TrailersOnly(status) => {
                let (parts, ()) = status.into_http::<()>().into_parts();
                return Response::from_parts(parts, Body::empty());
            }
            Reply::Trailers(status) => (None, Some(trailers_of(status))),
            Reply::Raw(bytes, status) => (
                Some(Bytes::from(bytes)),
                status.map(|s| {
                    let mut t = HeaderMap::new();
                    t.insert("grpc-status", s.parse().unwrap());
                    t
                }),
            ),
            Reply::Slow => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                (None, Some(ok()))
            }
        };
        let mut response = Response::new(body_of(data, trailers));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            "application/grpc".parse().unwrap(),
        );
        response
    }

    /// The fake as tonic `Routes`, as the server hands its services to the gateway and the router.
    fn routes(&self) -> tonic::service::Routes {
        let fake = self.clone();
        let svc = tower::service_fn(move |req: Request<Body>| {
            let fake = fake.clone();
            async move { Ok::<_, Infallible>(fake.answer(req).await) }
        });
        tonic::service::Routes::from(axum::Router::new().fallback_service(svc))
    }
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    json: Value,
}

async fn answer_of(response: Response<Body>) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    Answer {
        status,
        headers,
        json,
    }
}

async fn send_to(gw: &RestGateway, fake: &Fake, req: Request<Body>) -> Answer {
    answer_of(gw.handle(fake.routes(), req).await).await
}

fn req(method: &str, uri: &str, body: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// Sends one request to a fresh gateway and fake; returns the answer and what the service saw.
async fn exchange(reply: Reply, request: Request<Body>) -> (Answer, Vec<Call>) {
    let gw = gateway();
    let fake = Fake::new(gw.pool().clone());
    fake.reply(reply);
    let answer = send_to(&gw, &fake, request).await;
    (answer, fake.calls())
}

async fn get(uri: &str) -> (Answer, Vec<Call>) {
    exchange(Reply::Empty, req("GET", uri, "")).await
}

fn assert_error(a: &Answer, http: u16, status: &str) {
    assert_eq!(a.status, http, "{}", a.json);
    assert_eq!(a.json["error"]["code"], http, "{}", a.json);
    assert_eq!(a.json["error"]["status"], status, "{}", a.json);
    assert!(a.json["error"]["message"].is_string(), "{}", a.json);
    assert_eq!(
        a.headers[http::header::CONTENT_TYPE],
        "application/json; charset=utf-8"
    );
}

/// The `field` of the first BadRequest field violation.
fn violation(a: &Answer) -> &str {
    a.json["error"]["details"]
        .as_array()
        .and_then(|d| {
            d.iter()
                .find(|d| d["@type"] == "type.googleapis.com/google.rpc.BadRequest")
        })
        .and_then(|d| d["fieldViolations"][0]["field"].as_str())
        .unwrap_or_else(|| panic!("no field violation in {}", a.json))
}

// ---------------------------------------------------------------------------------------------------------
// Templates

/// Variable bindings as (dotted field path, value).
type Bound = Option<Vec<(String, String)>>;

fn bindings(template: &str, path: &str) -> Bound {
    let template = Template::parse(template).unwrap();
    let path = RequestPath::parse(path)?;
    template
        .matches(&path)
        .map(|b| b.into_iter().map(|(f, v)| (f.join("."), v)).collect())
}

#[test]
fn template_matching_table() {
    let some = |pairs: &[(&str, &str)]| {
        Some(
            pairs
                .iter()
                .map(|(f, v)| (f.to_string(), v.to_string()))
                .collect::<Vec<_>>(),
        )
    };
    let cases: &[(&str, &str, Bound)] = &[
        ("/v1/shelves", "/v1/shelves", some(&[])),
        ("/v1/shelves", "/v1/shelves/x", None),
        ("/v1/shelves", "/v1/shelve", None),
        ("/v1/*/books", "/v1/anything/books", some(&[])),
        ("/v1/*/books", "/v1//books", None),
        // Verbs: the template's verb must be the request's, and a verb-less template takes no verb.
        (
            "/v1/{name=shelves/*/books/*}:checkout",
            "/v1/shelves/s/books/b:checkout",
            some(&[("name", "shelves/s/books/b")]),
        ),
        (
            "/v1/{name=shelves/*/books/*}:checkout",
            "/v1/shelves/s/books/b:return",
            None,
        ),
        (
            "/v1/{name=shelves/*/books/*}:checkout",
            "/v1/shelves/s/books/b",
            None,
        ),
        (
            "/v1/{name=shelves/*/books/*}",
            "/v1/shelves/s/books/b:checkout",
            None,
        ),
        ("/v1/shelves:batchGet", "/v1/shelves:batchGet", some(&[])),
        // Single-segment variables, nested field paths, several variables.
        ("/v1/racks/{rack}", "/v1/racks/r1", some(&[("rack", "r1")])),
        ("/v1/racks/{rack}", "/v1/racks/r1/x", None),
        (
            "/v1/authors/{author.id}",
            "/v1/authors/a1",
            some(&[("author.id", "a1")]),
        ),
        (
            "/v1/{book.name=shelves/*/books/*}",
            "/v1/shelves/s/books/b",
            some(&[("book.name", "shelves/s/books/b")]),
        ),
        (
            "/v1/{parent=shelves/*}/books/{book_id}",
            "/v1/shelves/s/books/b",
            some(&[("parent", "shelves/s"), ("book_id", "b")]),
        ),
        // `**`: the rest of the path, also before a verb.
        (
            "/v1/{name=archive/**}",
            "/v1/archive/a/b/c",
            some(&[("name", "archive/a/b/c")]),
        ),
        (
            "/v1/{name=archive/**}:restore",
            "/v1/archive/a/b:restore",
            some(&[("name", "archive/a/b")]),
        ),
        ("/v1/{name=archive/**}", "/v1/library/a", None),
        ("/v1/x/**", "/v1/x/a/b", some(&[])),
        // Percent-decoding: one segment decodes fully; `**` keeps %2F so the segments stay apart.
        (
            "/v1/racks/{rack}",
            "/v1/racks/a%2Fb%20c%3Ad",
            some(&[("rack", "a/b c:d")]),
        ),
        (
            "/v1/{name=archive/**}",
            "/v1/archive/x%2Fy/%41%20z",
            some(&[("name", "archive/x%2Fy/A z")]),
        ),
        (
            "/v1/{name=shelves/*}",
            "/v1/shelves/caf%C3%A9",
            some(&[("name", "shelves/café")]),
        ),
        // An encoded colon is data, not a verb.
        (
            "/v1/racks/{rack}",
            "/v1/racks/a%3Averb",
            some(&[("rack", "a:verb")]),
        ),
        // Not UTF-8 after decoding: no match (answered 404), never a panic.
        ("/v1/racks/{rack}", "/v1/racks/%FF", None),
    ];
    for (template, path, expected) in cases {
        assert_eq!(&bindings(template, path), expected, "{template} ~ {path}");
    }
}

#[test]
fn templates_outside_the_grammar_are_refused() {
    for t in [
        "",
        "v1/x",
        "/v1//x",
        "/v1/x/",
        "/v1/{a",
        "/v1/{a}}",
        "/v1/{a=}",
        "/v1/{a.}",
        "/v1/{=x}",
        "/v1/x{a}",
        "/v1/**/x",
        "/v1/{a=**}/x",
        "/v1/x:",
        "/v1/x:a/b",
        "/v1/a b",
    ] {
        assert!(Template::parse(t).is_err(), "{t:?} should be refused");
    }
}

#[test]
fn a_gateway_over_an_unparsable_rule_is_refused() {
    let pool = compile(&["bad/v1/bad.proto"]);
    let err = RestGateway::new(pool, vec![mount("bad", "bad.v1.")], vec![])
        .err()
        .expect("the template /v1/{name=**/x} is refused");
    assert!(err.to_string().contains("**/x"), "{err}");
}

#[test]
fn every_rule_and_additional_binding_becomes_a_route() {
    let gw = gateway();
    let mut routes: Vec<(String, String, String, String)> = gw
        .route_table()
        .into_iter()
        .filter(|r| r.prefix == "library")
        .map(|r| {
            (
                r.method.to_string(),
                r.path,
                r.rpc,
                r.body.unwrap_or_default(),
            )
        })
        .collect();
    routes.sort();
    let s = |a: &str, b: &str, c: &str, d: &str| {
        (a.to_string(), b.to_string(), c.to_string(), d.to_string())
    };
    let mut expected = vec![
        s(
            "GET",
            "/v1/{name=shelves/*/books/*}",
            "test.v1.Library/GetBook",
            "",
        ),
        s(
            "GET",
            "/v1/{name=archive/**}",
            "test.v1.Library/GetBook",
            "",
        ),
        s(
            "GET",
            "/v1/{parent=shelves/*}/books",
            "test.v1.Library/ListBooks",
            "",
        ),
        s(
            "POST",
            "/v1/{parent=shelves/*}/books",
            "test.v1.Library/CreateBook",
            "book",
        ),
        s(
            "PATCH",
            "/v1/{book.name=shelves/*/books/*}",
            "test.v1.Library/UpdateBook",
            "book",
        ),
        s(
            "POST",
            "/v1/{name=shelves/*/books/*}:checkout",
            "test.v1.Library/Checkout",
            "*",
        ),
        s(
            "DELETE",
            "/v1/{name=shelves/*/books/*}",
            "test.v1.Library/DeleteBook",
            "",
        ),
        s("GET", "/v1/racks/{rack}", "test.v1.Library/GetRack", ""),
        s(
            "GET",
            "/v1/authors/{author.id}",
            "test.v1.Library/GetAuthor",
            "",
        ),
        s(
            "GET",
            "/v1/{name=shelves/*/books/*}/cover",
            "test.v1.Library/GetCover",
            "",
        ),
        s(
            "REPORT",
            "/v1/{name=shelves/*}:report",
            "test.v1.Library/Report",
            "",
        ),
        s(
            "GET",
            "/v1/{name=shelves/**}",
            "test.v1.Library/GetAnything",
            "",
        ),
        s(
            "GET",
            "/v1/{name=projects/*/operations/**}",
            "shared.ops.Ops/GetOp",
            "",
        ),
    ];
    expected.sort();
    assert_eq!(routes, expected);
}

// ---------------------------------------------------------------------------------------------------------
// Routing

#[tokio::test]
async fn requests_are_routed_by_prefix_or_host_then_template_and_method() {
    let with_host = |host: &str, path: &str| {
        Request::get(path)
            .header("host", host)
            .body(Body::empty())
            .unwrap()
    };
    let cases: Vec<(Request<Body>, &str, Value)> = vec![
        (
            req("GET", "/library/v1/shelves/s/books/b", ""),
            "/test.v1.Library/GetBook",
            json!({"name": "shelves/s/books/b"}),
        ),
        (
            req("GET", "/other/v1/shelves/s/books/b", ""),
            "/other.v1.Things/GetThing",
            json!({"name": "shelves/s/books/b"}),
        ),
        (
            with_host("library.googleapis.com", "/v1/shelves/s/books/b"),
            "/test.v1.Library/GetBook",
            json!({"name": "shelves/s/books/b"}),
        ),
        (
            with_host("library.localhost:8080", "/v1/shelves/s/books/b"),
            "/test.v1.Library/GetBook",
            json!({"name": "shelves/s/books/b"}),
        ),
        (
            with_host("us-west1-other.googleapis.com", "/v1/shelves/s/books/b"),
            "/other.v1.Things/GetThing",
            json!({"name": "shelves/s/books/b"}),
        ),
        // The prefix wins over a Host that names another API.
        (
            with_host("other.googleapis.com", "/library/v1/shelves/s/books/b"),
            "/test.v1.Library/GetBook",
            json!({"name": "shelves/s/books/b"}),
        ),
        // Additional bindings, custom methods, verbs.
        (
            req("GET", "/library/v1/archive/2020/b%2Fx", ""),
            "/test.v1.Library/GetBook",
            json!({"name": "archive/2020/b%2Fx"}),
        ),
        (
            req("REPORT", "/library/v1/shelves/s:report", ""),
            "/test.v1.Library/Report",
            json!({"name": "shelves/s"}),
        ),
        (
            req("POST", "/library/v1/shelves/s/books/b:checkout", ""),
            "/test.v1.Library/Checkout",
            json!({"name": "shelves/s/books/b"}),
        ),
        // The most literal template wins over `{name=shelves/**}`, which still takes the rest.
        (
            req("GET", "/library/v1/shelves/s/books", ""),
            "/test.v1.Library/ListBooks",
            json!({"parent": "shelves/s"}),
        ),
        (
            req("GET", "/library/v1/shelves/s/books/b/cover", ""),
            "/test.v1.Library/GetCover",
            json!({"name": "shelves/s/books/b"}),
        ),
        (
            req("GET", "/library/v1/shelves/s/books/b/pages/3", ""),
            "/test.v1.Library/GetAnything",
            json!({"name": "shelves/s/books/b/pages/3"}),
        ),
        // Nested path variable.
        (
            req("GET", "/library/v1/authors/a%201", ""),
            "/test.v1.Library/GetAuthor",
            json!({"author": {"id": "a 1"}}),
        ),
        // Shared services under every prefix and Host.
        (
            req("GET", "/other/v1/projects/p/operations/x/y", ""),
            "/shared.ops.Ops/GetOp",
            json!({"name": "projects/p/operations/x/y"}),
        ),
        (
            with_host("library.googleapis.com", "/v1/projects/p/operations/o"),
            "/shared.ops.Ops/GetOp",
            json!({"name": "projects/p/operations/o"}),
        ),
    ];
    for (request, rpc, sent) in cases {
        let shown = format!("{} {}", request.method(), request.uri());
        let (answer, calls) = exchange(Reply::Empty, request).await;
        assert_eq!(answer.status, 200, "{shown}: {}", answer.json);
        assert_eq!(calls.len(), 1, "{shown}");
        assert_eq!(calls[0].path, rpc, "{shown}");
        assert_eq!(calls[0].request, sent, "{shown}");
    }
}

#[tokio::test]
async fn unmatched_requests_get_google_json_404s_and_reach_no_service() {
    let cases: Vec<Request<Body>> = vec![
        req("GET", "/", ""),
        req("GET", "/v1/shelves/s/books/b", ""),
        req("GET", "/nothing/v1/shelves/s/books/b", ""),
        req("GET", "/libraryx/v1/shelves/s/books/b", ""),
        req("GET", "/library", ""),
        req("GET", "/library/v2/shelves/s/books/b", ""),
        req("GET", "/library/v1/shelves/s/books/b:unknownVerb", ""),
        req("POST", "/library/v1/shelves/s/books/b:unknownVerb", "{}"),
        req("GET", "/library/v1/shelves/s/books/b:checkout", ""),
        req("GET", "/library/v1/racks/r/x", ""),
        req("GET", "/library/v1/racks/%FF", ""),
        // Wrong HTTP method on a known path.
        req("PUT", "/library/v1/shelves/s/books/b", "{}"),
        req("POST", "/library/v1/racks/r", "{}"),
        req("DELETE", "/library/v1/shelves/s/books", ""),
        // A Host that names no API.
        Request::get("/v1/shelves/s/books/b")
            .header("host", "example.com")
            .body(Body::empty())
            .unwrap(),
    ];
    for request in cases {
        let shown = format!("{} {}", request.method(), request.uri());
        let (answer, calls) = exchange(Reply::Empty, request).await;
        assert!(
            answer.status == 404 || answer.status == 405,
            "{shown}: {}",
            answer.status
        );
        assert_error(&answer, answer.status, "NOT_FOUND");
        assert!(calls.is_empty(), "{shown}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Query parameters

#[tokio::test]
async fn query_parameters_are_typed_nested_and_repeated() {
    let query = [
        "pageSize=7",
        "page_token=abc",
        "filter.authorId=a%201",
        "filter.range.min_pages=10",
        "filter.range.maxPages=-20",
        "tags=x",
        "tags=y%2Cz",
        "genre=SCIENCE",
        "genres=1",
        "genres=FICTION",
        "genres=2",
        "includeDrafts=True",
        "minId=-9007199254740993",
        "maxId=18446744073709551615",
        "maxAge=3600.5s",
        "since=2024-01-02T03:04:05.5%2B01:00",
        "cursor=-_8",
        "score=1.5",
        "readMask=title,filter.authorId",
        // System parameters: never fields, never errors.
        "%24alt=json%3Benum-encoding%3Dint",
        "fields=books",
        "%24fields=x",
        "prettyPrint=false",
        "key=k",
        "quotaUser=q",
        "callback=c",
        "%24callback=c",
        "upload_protocol=raw",
        "uploadType=media",
        "access_token=not-a-credential",
    ]
    .join("&");
    let (answer, calls) = get(&format!("/library/v1/shelves/s/books?{query}")).await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(
        calls[0].request,
        json!({
            "parent": "shelves/s",
            "pageSize": 7,
            "pageToken": "abc",
            "filter": {"authorId": "a 1", "range": {"minPages": "10", "maxPages": "-20"}},
            "tags": ["x", "y,z"],
            "genre": "SCIENCE",
            "genres": ["FICTION", "FICTION", "SCIENCE"],
            "includeDrafts": true,
            "minId": "-9007199254740993",
            "maxId": "18446744073709551615",
            "maxAge": "3600.500s",
            "since": "2024-01-02T02:04:05.500Z",
            "cursor": "+/8=",
            "score": 1.5,
            "readMask": "title,filter.authorId",
        })
    );
    assert!(
        !calls[0].headers.contains_key("authorization"),
        "access_token in the query is not a credential"
    );
}

#[tokio::test]
async fn booleans_and_bytes_accept_every_spelling_clients_use() {
    for (value, expected) in [
        ("True", json!(true)),
        ("TRUE", json!(true)),
        ("true", json!(true)),
        ("1", json!(true)),
        ("False", json!(null)),
        ("false", json!(null)),
        ("0", json!(null)),
    ] {
        let (answer, calls) = exchange(
            Reply::Empty,
            req(
                "DELETE",
                &format!("/library/v1/shelves/s/books/b?force={value}"),
                "",
            ),
        )
        .await;
        assert_eq!(answer.status, 200, "{value}");
        assert_eq!(calls[0].request["force"], expected, "force={value}");
    }
    // Standard and URL-safe alphabets, padded or not.
    for cursor in ["%2B%2F8%3D", "%2B%2F8", "-_8=", "-_8"] {
        let (answer, calls) = get(&format!("/library/v1/shelves/s/books?cursor={cursor}")).await;
        assert_eq!(answer.status, 200, "{cursor}");
        assert_eq!(calls[0].request["cursor"], "+/8=", "{cursor}");
    }
}

#[tokio::test]
async fn bad_query_parameters_are_400s_naming_the_parameter() {
    for (query, field) in [
        ("nope=1", "nope"),
        ("filter.nope=1", "filter.nope"),
        ("filter.range.minPages=ten", "filter.range.minPages"),
        ("pageSize=1.5", "pageSize"),
        ("pageSize=99999999999", "pageSize"),
        ("maxId=-1", "maxId"),
        ("includeDrafts=yes", "includeDrafts"),
        ("genre=HORROR", "genre"),
        ("maxAge=1h", "maxAge"),
        ("since=yesterday", "since"),
        ("cursor=%25%25", "cursor"),
        ("labels.a=b", "labels.a"),
        ("filter=x", "filter"),
        ("tags.x=1", "tags.x"),
        ("alt=proto", "alt"),
    ] {
        let (answer, calls) = get(&format!("/library/v1/shelves/s/books?{query}")).await;
        assert_error(&answer, 400, "INVALID_ARGUMENT");
        assert_eq!(violation(&answer), field, "{query}: {}", answer.json);
        let message = answer.json["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{query}: {message}");
        assert!(
            calls.is_empty(),
            "{query}: a bad request reaches no service"
        );
    }
}

#[tokio::test]
async fn enum_encoding_follows_the_alt_parameter() {
    let book = json!({"name": "shelves/s/books/b", "genre": "SCIENCE", "pages": "12"});
    for (query, genre) in [
        ("", json!("SCIENCE")),
        ("?alt=json", json!("SCIENCE")),
        ("?%24alt=json%3Benum-encoding%3Dint", json!(2)),
        ("?$alt=json;enum-encoding=int", json!(2)),
        ("?alt=json;enum-encoding=int", json!(2)),
        ("?$alt=json;enum-encoding=string", json!("SCIENCE")),
    ] {
        let (answer, _) = exchange(
            Reply::Json(book.clone()),
            req("GET", &format!("/library/v1/shelves/s/books/b{query}"), ""),
        )
        .await;
        assert_eq!(answer.status, 200, "{query}: {}", answer.json);
        assert_eq!(answer.json["genre"], genre, "{query}");
        assert_eq!(answer.json["pages"], "12", "int64 stays a string");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Bodies

#[tokio::test]
async fn body_star_is_the_whole_message_and_the_path_wins() {
    let body = r#"{"name": "shelves/evil/books/x", "borrower": "bo", "period": "60s",
                   "author": {"display_name": "D", "id": "a"}}"#;
    let (answer, calls) = exchange(
        Reply::Empty,
        req(
            "POST",
            "/library/v1/shelves/s/books/b:checkout?%24alt=json%3Benum-encoding%3Dint",
            body,
        ),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(
        calls[0].request,
        json!({"name": "shelves/s/books/b", "borrower": "bo", "period": "60s",
               "author": {"id": "a", "displayName": "D"}})
    );
    // An empty (or blank) body is an empty message.
    for empty in ["", " \n"] {
        let (answer, calls) = exchange(
            Reply::Empty,
            req("POST", "/library/v1/shelves/s/books/b:checkout", empty),
        )
        .await;
        assert_eq!(answer.status, 200, "{empty:?}");
        assert_eq!(calls[0].request, json!({"name": "shelves/s/books/b"}));
    }
    // Every field is in the body: a field in the query is refused, naming it.
    let (answer, calls) = exchange(
        Reply::Empty,
        req(
            "POST",
            "/library/v1/shelves/s/books/b:checkout?borrower=x",
            "{}",
        ),
    )
    .await;
    assert_error(&answer, 400, "INVALID_ARGUMENT");
    assert_eq!(violation(&answer), "borrower");
    assert!(calls.is_empty());
}

#[tokio::test]
async fn body_field_takes_the_json_and_the_rest_comes_from_the_query() {
    let body = r#"{"title": "T", "genre": "FICTION", "ISBN": "978", "tags": ["a", "b"],
                   "published": "2020-05-01T00:00:00Z", "pages": "300"}"#;
    let (answer, calls) = exchange(
        Reply::Empty,
        req(
            "POST",
            "/library/v1/shelves/s/books?bookId=b1&validate_only=true",
            body,
        ),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(
        calls[0].request,
        json!({"parent": "shelves/s", "bookId": "b1", "validateOnly": true,
               "book": {"title": "T", "genre": "FICTION", "ISBN": "978", "tags": ["a", "b"],
                        "published": "2020-05-01T00:00:00Z", "pages": "300"}})
    );
    // The proto name of a json_name'd field is accepted too.
    let (_, calls) = exchange(
        Reply::Empty,
        req(
            "POST",
            "/library/v1/shelves/s/books",
            r#"{"isbn_code": "1"}"#,
        ),
    )
    .await;
    assert_eq!(calls[0].request["book"]["ISBN"], "1");

    // A nested path variable lands inside the body message; the query carries the mask.
    let (answer, calls) = exchange(
        Reply::Empty,
        req(
            "PATCH",
            "/library/v1/shelves/s/books/b?updateMask=title,genre",
            r#"{"title": "New", "name": "ignored"}"#,
        ),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(
        calls[0].request,
        json!({"book": {"name": "shelves/s/books/b", "title": "New"}, "updateMask": "title,genre"})
    );

    // The body field cannot also come from the query.
    let (answer, calls) = exchange(
        Reply::Empty,
        req("POST", "/library/v1/shelves/s/books?book.title=x", "{}"),
    )
    .await;
    assert_error(&answer, 400, "INVALID_ARGUMENT");
    assert_eq!(violation(&answer), "book.title");
    assert!(calls.is_empty());
}

#[tokio::test]
async fn without_a_body_rule_any_body_is_ignored() {
    let (answer, calls) = exchange(
        Reply::Empty,
        req(
            "GET",
            "/library/v1/shelves/s/books/b",
            r#"{"name": "other", "garbage": true"#,
        ),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(calls[0].request, json!({"name": "shelves/s/books/b"}));
    let (answer, calls) = exchange(
        Reply::Empty,
        req(
            "DELETE",
            "/library/v1/shelves/s/books/b?force=False&etag=e1",
            "{}",
        ),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(
        calls[0].request,
        json!({"name": "shelves/s/books/b", "etag": "e1"})
    );
}

#[tokio::test]
async fn bad_json_bodies_are_400s() {
    let checkout = "/library/v1/shelves/s/books/b:checkout";
    let create = "/library/v1/shelves/s/books";
    // Unknown fields are named; otherwise the violation names the body (or the body field).
    for (uri, body, field) in [
        (checkout, r#"{"nope": 1}"#, "nope"),
        (checkout, r#"{"author": {"nope": 1}}"#, "nope"),
        (create, r#"{"nope": 1}"#, "nope"),
        (checkout, "{", "body"),
        (checkout, r#"{"borrower": "a"} trailing"#, "body"),
        (checkout, "[1]", "body"),
        (checkout, "null", "body"),
        (checkout, r#"{"borrower": 5}"#, "body"),
        (checkout, r#"{"period": "soon"}"#, "body"),
        (create, r#"{"genre": "HORROR"}"#, "book"),
        (create, r#"{"pages": "many"}"#, "book"),
        (create, "\u{feff}{}", "book"),
    ] {
        let (answer, calls) = exchange(Reply::Empty, req("POST", uri, body)).await;
        assert_error(&answer, 400, "INVALID_ARGUMENT");
        assert_eq!(violation(&answer), field, "{body}: {}", answer.json);
        if field == "nope" {
            let message = answer.json["error"]["message"].as_str().unwrap();
            assert!(message.contains(field), "{body}: {message}");
        }
        assert!(calls.is_empty(), "{body}");
    }
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_413() {
    let gw = gateway().with_body_limit(64);
    let fake = Fake::new(gw.pool().clone());
    let small = format!(r#"{{"borrower": "{}"}}"#, "a".repeat(40));
    let answer = send_to(
        &gw,
        &fake,
        req("POST", "/library/v1/shelves/s/books/b:checkout", &small),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    let big = format!(r#"{{"borrower": "{}"}}"#, "a".repeat(100));
    let answer = send_to(
        &gw,
        &fake,
        req("POST", "/library/v1/shelves/s/books/b:checkout", &big),
    )
    .await;
    assert_eq!(answer.status, 413, "{}", answer.json);
    assert_eq!(answer.json["error"]["code"], 413);
    assert!(
        ["RESOURCE_EXHAUSTED", "INVALID_ARGUMENT"]
            .contains(&answer.json["error"]["status"].as_str().unwrap_or("")),
        "{}",
        answer.json
    );
    assert_eq!(fake.calls().len(), 1, "the big one reached no service");
}

// ---------------------------------------------------------------------------------------------------------
// Replies

#[tokio::test]
async fn replies_are_proto3_json() {
    let book = json!({
        "name": "shelves/s/books/b",
        "title": "",
        "genre": "FICTION",
        "pages": "9007199254740993",
        "published": "2020-05-01T02:00:00.250+02:00",
        "ISBN": "978",
        "extra": {"@type": "type.googleapis.com/test.v1.Author", "id": "a1"},
        "author": {"id": "a1", "displayName": "D"},
    });
    let (answer, _) = exchange(
        Reply::Json(book),
        req("GET", "/library/v1/shelves/s/books/b", ""),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.headers[http::header::CONTENT_TYPE],
        "application/json; charset=utf-8"
    );
    assert_eq!(
        answer.json,
        json!({
            "name": "shelves/s/books/b",
            "genre": "FICTION",
            "pages": "9007199254740993",
            "published": "2020-05-01T00:00:00.250Z",
            "ISBN": "978",
            "extra": {"@type": "type.googleapis.com/test.v1.Author", "id": "a1"},
            "author": {"id": "a1", "displayName": "D"},
        }),
        "defaults omitted, int64 as string, json_name, Timestamp in Z, Any resolved"
    );

    // response_body: only that field is the reply.
    let (answer, _) = exchange(
        Reply::Json(json!({"title": "T", "author": {"id": "a1", "displayName": "D"}})),
        req("GET", "/library/v1/shelves/s/books/b/cover", ""),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json, json!({"id": "a1", "displayName": "D"}));

    // An empty message is `{}`.
    let (answer, _) = get("/library/v1/racks/r").await;
    assert_eq!((answer.status, answer.json), (200, json!({})));
}

// ---------------------------------------------------------------------------------------------------------
// Dispatch

#[tokio::test]
async fn dispatch_frames_the_call_and_forwards_metadata_and_extensions() {
    let mut request = Request::get("/library/v1/shelves/s/books/b")
        .header("authorization", "Bearer tok")
        .header("user-agent", "gcloud/1")
        .header("x-goog-api-client", "gl-python/3")
        .header("x-goog-request-params", "name=shelves%2Fs%2Fbooks%2Fb")
        .header("x-goog-user-project", "p")
        .header("x-forwarded-for", "10.0.0.1")
        .header("x-request-id", "r1")
        .header("traceparent", "00-abc-def-01")
        .header("cookie", "secret=1")
        .header("x-clustercred-method", "test.v1.Library/DeleteBook")
        .header("content-type", "application/json")
        .body(Body::empty())
        .unwrap();
    request.extensions_mut().insert(Peer("10.1.2.3:4444"));
    let (answer, calls) = exchange(Reply::Empty, request).await;
    assert_eq!(answer.status, 200);
    let call = &calls[0];
    assert_eq!(call.path, "/test.v1.Library/GetBook");
    assert_eq!(call.peer, Some(Peer("10.1.2.3:4444")));
    let h = &call.headers;
    assert_eq!(h["content-type"], "application/grpc");
    assert_eq!(h["te"], "trailers");
    for (name, value) in [
        ("authorization", "Bearer tok"),
        ("user-agent", "gcloud/1"),
        ("x-goog-api-client", "gl-python/3"),
        ("x-goog-request-params", "name=shelves%2Fs%2Fbooks%2Fb"),
        ("x-goog-user-project", "p"),
        ("x-forwarded-for", "10.0.0.1"),
        ("x-request-id", "r1"),
        ("traceparent", "00-abc-def-01"),
    ] {
        assert_eq!(
            h.get(name).map(|v| v.to_str().unwrap()),
            Some(value),
            "{name}"
        );
    }
    assert!(!h.contains_key("cookie"), "only the listed headers pass");
    assert_eq!(
        h["x-clustercred-method"], "test.v1.Library/GetBook",
        "a client cannot name the method"
    );
}

fn rich_status() -> tonic::Status {
    use tonic_types::pb;
    let pool = pool();
    let encode = |name: &str, v: Value| prost_types::Any {
        type_url: format!("type.googleapis.com/{name}"),
        value: DynamicMessage::deserialize(pool.get_message_by_name(name).unwrap(), v)
            .unwrap()
            .encode_to_vec(),
    };
    let details = pb::Status {
        code: Code::AlreadyExists as i32,
        message: "book exists".into(),
        details: vec![
            encode(
                "google.rpc.BadRequest",
                json!({"fieldViolations": [{"field": "book_id", "description": "taken"}]}),
            ),
            // A type the pool does not know is left out, not fatal.
            prost_types::Any {
                type_url: "type.googleapis.com/unknown.v1.Thing".into(),
                value: vec![8, 1],
            },
            encode(
                "google.rpc.ErrorInfo",
                json!({"reason": "EXISTS", "domain": "test", "metadata": {"k": "v"}}),
            ),
        ],
    };
    tonic::Status::with_details(
        Code::AlreadyExists,
        "book exists",
        details.encode_to_vec().into(),
    )
}

fn rich_json() -> Value {
    json!({"error": {"code": 409, "message": "book exists", "status": "ALREADY_EXISTS", "details": [
        {"@type": "type.googleapis.com/google.rpc.BadRequest",
         "fieldViolations": [{"field": "book_id", "description": "taken"}]},
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo",
         "reason": "EXISTS", "domain": "test", "metadata": {"k": "v"}},
    ]}})
}

#[tokio::test]
async fn service_errors_become_google_errors_from_trailers_or_headers() {
    for reply in [
        Reply::Trailers(rich_status()),
        Reply::TrailersOnly(rich_status()),
    ] {
        let (answer, _) = exchange(reply, req("GET", "/library/v1/shelves/s/books/b", "")).await;
        assert_eq!(answer.status, 409);
        assert_eq!(answer.json, rich_json());
    }
    let (answer, _) = exchange(
        Reply::Trailers(tonic::Status::unauthenticated("no token")),
        req("GET", "/library/v1/shelves/s/books/b", ""),
    )
    .await;
    assert_error(&answer, 401, "UNAUTHENTICATED");
    assert_eq!(answer.headers["www-authenticate"], "Bearer");
    assert_eq!(answer.json["error"]["message"], "no token");
    assert!(answer.json["error"].get("details").is_none());
}

#[tokio::test]
async fn broken_replies_are_internal_errors() {
    let valid = grpc_frame(&[]).to_vec();
    let mut compressed = valid.clone();
    compressed[0] = 1;
    let cases = [
        ("no status at all", Reply::Raw(valid.clone(), None)),
        ("no frame", Reply::Raw(vec![], Some("0"))),
        ("short header", Reply::Raw(vec![0, 0, 0], Some("0"))),
        ("compressed", Reply::Raw(compressed, Some("0"))),
        (
            "truncated",
            Reply::Raw(vec![0, 0, 0, 0, 9, 10, 1], Some("0")),
        ),
        (
            "not the output type",
            Reply::Raw(grpc_frame(&[0xff, 0xff, 0xff]).to_vec(), Some("0")),
        ),
    ];
    for (what, reply) in cases {
        let (answer, _) = exchange(reply, req("GET", "/library/v1/shelves/s/books/b", "")).await;
        assert_error(&answer, 500, "INTERNAL");
        assert!(answer.json["error"]["message"].is_string(), "{what}");
    }
    // A status present but unparsable is not success either.
    let (answer, _) = exchange(
        Reply::Raw(valid, Some("nonsense")),
        req("GET", "/library/v1/shelves/s/books/b", ""),
    )
    .await;
    assert_ne!(answer.status, 200, "{}", answer.json);
}

#[tokio::test]
async fn a_failing_service_is_an_internal_error() {
    let gw = gateway();
    let failing = tower::service_fn(|_: Request<tonic::body::Body>| async {
        Err::<Response<tonic::body::Body>, _>("connection refused")
    });
    let answer = answer_of(
        gw.handle(failing, req("GET", "/library/v1/shelves/s/books/b", ""))
            .await,
    )
    .await;
    assert_error(&answer, 500, "INTERNAL");
}

// ---------------------------------------------------------------------------------------------------------
// Error rendering

#[tokio::test]
async fn every_code_has_googles_http_status_and_name() {
    let pool = pool();
    let table = [
        (Code::Ok, 200, "OK"),
        (Code::Cancelled, 499, "CANCELLED"),
        (Code::Unknown, 500, "UNKNOWN"),
        (Code::InvalidArgument, 400, "INVALID_ARGUMENT"),
        (Code::DeadlineExceeded, 504, "DEADLINE_EXCEEDED"),
        (Code::NotFound, 404, "NOT_FOUND"),
        (Code::AlreadyExists, 409, "ALREADY_EXISTS"),
        (Code::PermissionDenied, 403, "PERMISSION_DENIED"),
        (Code::ResourceExhausted, 429, "RESOURCE_EXHAUSTED"),
        (Code::FailedPrecondition, 400, "FAILED_PRECONDITION"),
        (Code::Aborted, 409, "ABORTED"),
        (Code::OutOfRange, 400, "OUT_OF_RANGE"),
        (Code::Unimplemented, 501, "UNIMPLEMENTED"),
        (Code::Internal, 500, "INTERNAL"),
        (Code::Unavailable, 503, "UNAVAILABLE"),
        (Code::DataLoss, 500, "DATA_LOSS"),
        (Code::Unauthenticated, 401, "UNAUTHENTICATED"),
    ];
    for (code, http, name) in table {
        assert_eq!(http_status(code).as_u16(), http, "{code:?}");
        assert_eq!(status_name(code), name);
        if code == Code::Ok {
            continue;
        }
        let answer = answer_of(status_to_http(&tonic::Status::new(code, "why"), &pool)).await;
        assert_eq!(
            answer.json,
            json!({"error": {"code": http, "message": "why", "status": name}})
        );
        assert_eq!(answer.status, http);
        assert_eq!(
            answer.headers.contains_key("www-authenticate"),
            code == Code::Unauthenticated,
            "{code:?}"
        );
    }
    // Details render through the pool given; a pool without google.rpc types drops them.
    let answer = answer_of(status_to_http(&rich_status(), &pool)).await;
    assert_eq!(answer.json, rich_json());
    let bare = compile(&["other/v1/other.proto"]);
    let answer = answer_of(status_to_http(&rich_status(), &bare)).await;
    assert_eq!(
        answer.json,
        json!({"error": {"code": 409, "message": "book exists", "status": "ALREADY_EXISTS"}})
    );
}

// ---------------------------------------------------------------------------------------------------------
// The one-port router, served

#[tokio::test]
async fn one_port_serves_rest_grpc_and_extra_routes_over_http1_and_h2c() {
    let gw = gateway();
    let fake = Fake::new(gw.pool().clone());
    let extra = axum::Router::new().route(
        "/.well-known/openid-configuration",
        axum::routing::get(|| async { axum::Json(json!({"issuer": "me"})) }),
    );
    let app = router(fake.routes(), gw, extra, Duration::from_millis(500));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, app, async {
        let _ = stopped.await;
    }));

    let h1 = reqwest::Client::builder()
        .http1_only()
        .resolve("library.localhost", addr)
        .build()
        .unwrap();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .resolve("library.localhost", addr)
        .build()
        .unwrap();
    for (client, version) in [
        (&h1, reqwest::Version::HTTP_11),
        (&h2, reqwest::Version::HTTP_2),
    ] {
        let url = |p: &str| format!("http://{addr}{p}");
        let resp = client
            .get(url("/library/v1/shelves/s/books/b?alt=json"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), version);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.json::<Value>().await.unwrap(), json!({}));
        assert_eq!(fake.last().path, "/test.v1.Library/GetBook");

        let resp = client
            .get(url("/.well-known/openid-configuration"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.json::<Value>().await.unwrap(), json!({"issuer": "me"}));

        // The API named by the host, without a prefix (Host in HTTP/1.1, :authority in HTTP/2).
        let resp = client
            .get(format!(
                "http://library.localhost:{}/v1/shelves/s/books/b",
                addr.port()
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{version:?}");
        assert_eq!(fake.last().path, "/test.v1.Library/GetBook");

        let resp = client.get(url("/nowhere")).send().await.unwrap();
        assert_eq!(resp.status(), 404);
        assert_eq!(
            resp.json::<Value>().await.unwrap()["error"]["status"],
            "NOT_FOUND"
        );
    }

    // gRPC goes to the services untouched: the frame we send is the frame they get.
    let message = DynamicMessage::deserialize(
        fake.pool
            .get_message_by_name("test.v1.GetBookRequest")
            .unwrap(),
        json!({"name": "direct"}),
    )
    .unwrap();
    let before = fake.calls().len();
    let resp = h2
        .post(format!("http://{addr}/test.v1.Library/GetBook"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-clustercred-method", "forged")
        .body(grpc_frame(&message.encode_to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    assert_eq!(resp.bytes().await.unwrap(), grpc_frame(&[]));
    assert_eq!(fake.calls().len(), before + 1);
    let call = fake.last();
    assert_eq!(call.request, json!({"name": "direct"}));
    assert_eq!(
        call.headers["x-clustercred-method"],
        "test.v1.Library/GetBook"
    );

    // Past the deadline the REST client gets a 504 in Google's shape.
    fake.reply(Reply::Slow);
    let resp = h1
        .get(format!("http://{addr}/library/v1/shelves/s/books/b"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["status"],
        "DEADLINE_EXCEEDED"
    );

    stop.send(()).unwrap();
    drop((h1, h2));
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops on shutdown")
        .unwrap()
        .unwrap();
}

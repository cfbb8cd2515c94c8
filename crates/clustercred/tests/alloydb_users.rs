//! The AlloyDB Users API against a real backend PostgreSQL: users become roles there (a password user with a
//! SCRAM verifier of its password, an IAM user with no password at all, memberships for `database_roles`),
//! updates and deletes follow, passwords never come back or land in clustercred's records or audit log, the
//! documented errors carry the documented codes, and hostile names stay names.
//! Needs PostgreSQL: `CLUSTERCRED_TEST_POSTGRES` (scripts/test finds or starts one); fails without it. Every
//! role a test makes has a unique name and is dropped when the test ends, passed or not.

mod common;

use std::sync::Mutex;

use base64::Engine;
use clustercred::ServeConfig;
use clustercred_proto::google::cloud::alloydb::v1 as pb;
use clustercred_proto::google::cloud::alloydb::v1::alloy_db_admin_client::AlloyDbAdminClient;
use clustercred_store::{AuditFilter, SqliteStore, Store};
use common::*;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use tonic::Code;
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;
use tonic_types::StatusExt;

const LOC: &str = "projects/users-test/locations/l1";
const CLUSTER: &str = "projects/users-test/locations/l1/clusters/c1";

fn admin_url() -> String {
    std::env::var("CLUSTERCRED_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// The backend database, and the roles this test made there (dropped on drop, even after a failure).
struct Pg {
    url: String,
    prefix: String,
    made: Mutex<Vec<String>>,
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Pg {
    async fn new() -> Pg {
        let url = admin_url();
        PgConnection::connect(&url).await.unwrap_or_else(|e| {
            panic!("PostgreSQL at {url} is needed (scripts/pg-for-tests finds or starts one): {e}")
        });
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        Pg {
            url,
            prefix: format!("cct{}x{}", std::process::id() % 100_000, nanos % 1_000_000),
            made: Mutex::new(Vec::new()),
        }
    }

    /// A unique role name (also dropped at the end).
    fn name(&self, what: &str) -> String {
        let name = format!("{}{what}", self.prefix);
        self.made.lock().unwrap().push(name.clone());
        name
    }

    async fn conn(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.unwrap()
    }

    async fn exec(&self, sql: String) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut self.conn().await)
            .await
            .unwrap();
    }

    /// A plain role (NOLOGIN) to grant.
    async fn make_role(&self, what: &str) -> String {
        let name = self.name(what);
        self.exec(format!("CREATE ROLE {}", quote(&name))).await;
        name
    }

    /// `(rolcanlogin, rolpassword)` from pg_authid, or `None` when there is no such role.
    async fn role(&self, name: &str) -> Option<(bool, Option<String>)> {
        sqlx::query_as("SELECT rolcanlogin, rolpassword FROM pg_authid WHERE rolname = $1")
            .bind(name)
            .fetch_optional(&mut self.conn().await)
            .await
            .unwrap()
    }

    async fn memberships(&self, name: &str) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT r.rolname::text FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid \
             JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = $1 ORDER BY 1",
        )
        .bind(name)
        .fetch_all(&mut self.conn().await)
        .await
        .unwrap()
    }

    /// Whether the stored SCRAM verifier of `name` is one for `password`.
    async fn password_is(&self, name: &str, password: &str) -> bool {
        let (_, verifier) = self.role(name).await.expect("role exists");
        let verifier = verifier.expect("role has a password");
        verifier_is_for(&verifier, password)
    }
}

/// Recomputes a `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>` verifier for `password` with its salt.
fn verifier_is_for(verifier: &str, password: &str) -> bool {
    let rest = verifier
        .strip_prefix("SCRAM-SHA-256$")
        .expect("a SCRAM verifier");
    let (params, _) = rest.split_once('$').unwrap();
    let (iterations, salt) = params.split_once(':').unwrap();
    let salt = base64::engine::general_purpose::STANDARD
        .decode(salt)
        .unwrap();
    let iterations = std::num::NonZeroU32::new(iterations.parse().unwrap()).unwrap();
    clustercred_dataplane::roles::scram_sha256_verifier(password, &salt, iterations) == verifier
}

impl Drop for Pg {
    fn drop(&mut self) {
        let names = std::mem::take(&mut *self.made.lock().unwrap());
        let url = self.url.clone();
        // A runtime of its own: this may run while the test's runtime unwinds.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let Ok(mut conn) = PgConnection::connect(&url).await else {
                    return;
                };
                // Users first (members), then the roles they were granted.
                for name in names.iter().rev() {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP ROLE IF EXISTS {}",
                        quote(name)
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

/// A server on a data directory that outlives it (tests read its database after stopping it).
async fn server_with_backend(backend: Option<&str>) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServeConfig::for_data_dir(dir.path().to_path_buf());
    config.alloydb_backend = backend.map(str::to_string);
    (TestServer::start_with(config).await, dir)
}

async fn setup() -> (Pg, TestServer, tempfile::TempDir) {
    let pg = Pg::new().await;
    let (s, dir) = server_with_backend(Some(&pg.url)).await;
    assert_eq!(
        create_cluster_c1(&format!("http://{}", s.addr), &s.token, LOC).await,
        200
    );
    (pg, s, dir)
}

type Admin = AlloyDbAdminClient<InterceptedService<Channel, Auth>>;

async fn grpc(s: &TestServer) -> Admin {
    AlloyDbAdminClient::with_interceptor(s.channel().await, s.auth())
}

fn built_in(password: &str, roles: &[&str]) -> pb::User {
    pb::User {
        password: password.into(),
        user_type: pb::user::UserType::AlloydbBuiltIn as i32,
        database_roles: roles.iter().map(|r| r.to_string()).collect(),
        ..Default::default()
    }
}

fn iam_user() -> pb::User {
    pb::User {
        user_type: pb::user::UserType::AlloydbIamUser as i32,
        ..Default::default()
    }
}

async fn create(c: &mut Admin, id: &str, user: pb::User) -> Result<pb::User, tonic::Status> {
    c.create_user(pb::CreateUserRequest {
        parent: CLUSTER.into(),
        user_id: id.into(),
        user: Some(user),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

async fn update(
    c: &mut Admin,
    id: &str,
    user: pb::User,
    mask: &[&str],
) -> Result<pb::User, tonic::Status> {
    c.update_user(pb::UpdateUserRequest {
        update_mask: Some(prost_types::FieldMask {
            paths: mask.iter().map(|p| p.to_string()).collect(),
        }),
        user: Some(pb::User {
            name: format!("{CLUSTER}/users/{id}"),
            ..user
        }),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

/// The field a google.rpc.BadRequest names.
fn violated_field(status: &tonic::Status) -> String {
    status
        .get_details_bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
        .unwrap_or_default()
}

fn rest_user_url(s: &TestServer, id: &str) -> String {
    let id: String = url_escape(id);
    s.url(&format!("/alloydb/v1/{CLUSTER}/users/{id}"))
}

fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn built_in_user_is_a_login_role_with_its_password_and_roles() {
    let (pg, s, _dir) = setup().await;
    let reader = pg.make_role("reader").await;
    let writer = pg.make_role("writer").await;
    let user = pg.name("app");
    let password = format!("Pw-{}-first", pg.prefix);

    // Create over REST, as gcloud does (name in the body too).
    let resp = http()
        .post(s.url(&format!("/alloydb/v1/{CLUSTER}/users?userId={user}")))
        .bearer_auth(&s.token)
        .json(
            &json!({"name": format!("{CLUSTER}/users/{user}"), "password": password,
                      "userType": "ALLOYDB_BUILT_IN", "databaseRoles": [reader]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(!text.contains(&password), "the password is never returned");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        body,
        json!({"name": format!("{CLUSTER}/users/{user}"), "userType": "ALLOYDB_BUILT_IN",
               "databaseRoles": [reader]})
    );

    let (can_login, verifier) = pg.role(&user).await.expect("the role exists");
    assert!(can_login);
    let verifier = verifier.expect("a password is set");
    assert!(verifier.starts_with("SCRAM-SHA-256$4096:"), "{verifier}");
    assert!(verifier_is_for(&verifier, &password));
    assert!(!verifier_is_for(&verifier, "something else"));
    assert_eq!(pg.memberships(&user).await, [reader.as_str()]);
    // The role logs in (the test server trusts local connections, so the verifier check above is what
    // proves the password).
    let login_url = {
        let mut u = reqwest::Url::parse(&pg.url).unwrap();
        u.set_username(&user).unwrap();
        u.set_password(Some(&password)).unwrap();
        u.to_string()
    };
    let mut as_user = PgConnection::connect(&login_url).await.unwrap();
    let who: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut as_user)
        .await
        .unwrap();
    assert_eq!(who, user);
    as_user.close().await.unwrap();

    // Get and list over REST and gRPC never carry the password.
    let got = http()
        .get(rest_user_url(&s, &user))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    let got: Value = got.json().await.unwrap();
    assert_eq!(got, body);
    let listed = http()
        .get(s.url(&format!("/alloydb/v1/{CLUSTER}/users")))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!listed.contains(&password));
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["users"], json!([body]));
    let mut c = grpc(&s).await;
    let got = c
        .get_user(pb::GetUserRequest {
            name: format!("{CLUSTER}/users/{user}"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.password, "");
    assert_eq!(got.user_type, pb::user::UserType::AlloydbBuiltIn as i32);

    // New password (update mask `password`, as `gcloud alloydb users set-password` sends over REST).
    let second = format!("Pw-{}-second", pg.prefix);
    let resp = http()
        .patch(format!("{}?updateMask=password", rest_user_url(&s, &user)))
        .bearer_auth(&s.token)
        .json(&json!({"name": format!("{CLUSTER}/users/{user}"), "password": second}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(pg.password_is(&user, &second).await);
    assert!(!pg.password_is(&user, &password).await);
    assert_eq!(
        pg.memberships(&user).await,
        [reader.as_str()],
        "roles untouched"
    );

    // New roles (mask `database_roles`, snake_case in the query as gcloud's set-roles sends it): the old one
    // is revoked ...
    let resp = http()
        .patch(format!(
            "{}?updateMask=database_roles",
            rest_user_url(&s, &user)
        ))
        .bearer_auth(&s.token)
        .json(&json!({"name": format!("{CLUSTER}/users/{user}"), "databaseRoles": [writer]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["databaseRoles"], json!([writer]));
    assert_eq!(pg.memberships(&user).await, [writer.as_str()]);
    assert!(pg.password_is(&user, &second).await, "password untouched");
    // ... unless keep_extra_roles.
    let kept = update(
        &mut c,
        &user,
        pb::User {
            database_roles: vec![reader.clone()],
            keep_extra_roles: true,
            ..Default::default()
        },
        &["database_roles"],
    )
    .await
    .unwrap();
    let mut both = vec![reader.clone(), writer.clone()];
    both.sort();
    assert_eq!(pg.memberships(&user).await, both);
    assert_eq!(kept.database_roles, both);
    assert!(!kept.keep_extra_roles, "input only");

    // Delete: the role is gone, so is the user.
    let resp = http()
        .delete(rest_user_url(&s, &user))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({}));
    assert_eq!(pg.role(&user).await, None);
    let gone = http()
        .get(rest_user_url(&s, &user))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);

    // Audited, and neither password is anywhere in clustercred's database (records, audit, anything).
    let data_dir = s.data_dir.clone();
    s.stop().await;
    let store = SqliteStore::open(&data_dir.join("clustercred.db"))
        .await
        .unwrap();
    let events = store
        .list_audit(&AuditFilter {
            resource_prefix: Some(format!("{CLUSTER}/users/{user}")),
            ..Default::default()
        })
        .await
        .unwrap();
    let methods: Vec<&str> = events
        .iter()
        .map(|e| e.event.method.rsplit('/').next().unwrap_or_default())
        .collect();
    assert_eq!(
        methods,
        [
            "CreateUser",
            "UpdateUser",
            "UpdateUser",
            "UpdateUser",
            "DeleteUser"
        ]
    );
    assert!(events.iter().all(|e| e.event.status == "OK"));
    assert!(events[1].event.detail.contains("password changed"));
    store.close().await;
    for file in ["clustercred.db", "clustercred.db-wal"] {
        let Ok(bytes) = std::fs::read(data_dir.join(file)) else {
            continue;
        };
        for p in [&password, &second] {
            assert!(
                !bytes.windows(p.len()).any(|w| w == p.as_bytes()),
                "{file} holds a password"
            );
        }
    }
}

#[tokio::test]
async fn iam_user_is_a_login_role_without_password() {
    let (pg, s, _dir) = setup().await;
    let mut c = grpc(&s).await;
    let id = format!("{}@users-test.iam", pg.name("sa"));
    // PostgreSQL's name for the role is the whole id.
    pg.made.lock().unwrap().push(id.clone());
    let group = pg.make_role("group").await;
    let created = create(
        &mut c,
        &id,
        pb::User {
            database_roles: vec![group.clone()],
            ..iam_user()
        },
    )
    .await
    .unwrap();
    assert_eq!(created.name, format!("{CLUSTER}/users/{id}"));
    assert_eq!(created.user_type, pb::user::UserType::AlloydbIamUser as i32);
    assert_eq!(pg.role(&id).await, Some((true, None)), "LOGIN, no password");
    assert_eq!(pg.memberships(&id).await, [group.as_str()]);

    // The same through v1beta's REST path, `@` percent-encoded as gcloud sends it.
    let resp = http()
        .get(s.url(&format!(
            "/alloydb/v1beta/{CLUSTER}/users/{}",
            url_escape(&id)
        )))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["userType"],
        "ALLOYDB_IAM_USER"
    );

    // No password for IAM users, on create or update.
    let other = format!("{}@users-test.iam", pg.name("sb"));
    let e = create(
        &mut c,
        &other,
        pb::User {
            password: "nope".into(),
            ..iam_user()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        (e.code(), violated_field(&e).as_str()),
        (Code::InvalidArgument, "user.password")
    );
    let e = update(
        &mut c,
        &id,
        pb::User {
            password: "nope".into(),
            ..Default::default()
        },
        &["password"],
    )
    .await
    .unwrap_err();
    assert_eq!(
        (e.code(), violated_field(&e).as_str()),
        (Code::InvalidArgument, "user.password")
    );
    // The type cannot change.
    let e = update(&mut c, &id, built_in("pw", &[]), &["password"])
        .await
        .unwrap_err();
    assert_eq!(violated_field(&e), "user.user_type");
    // IAM users are named by an email; a service account's full email is pointed to its short form.
    for (bad, hint) in [
        ("plainname", "email"),
        (
            "sa@users-test.iam.gserviceaccount.com",
            "\"sa@users-test.iam\"",
        ),
    ] {
        let e = create(&mut c, bad, iam_user()).await.unwrap_err();
        assert_eq!(
            (e.code(), violated_field(&e).as_str()),
            (Code::InvalidArgument, "user_id"),
            "{bad}"
        );
        assert!(e.message().contains(hint), "{}", e.message());
    }
    assert_eq!(pg.role(&other).await, None);

    c.delete_user(pb::DeleteUserRequest {
        name: format!("{CLUSTER}/users/{id}"),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(pg.role(&id).await, None);
}

#[tokio::test]
async fn documented_errors_have_their_codes_and_change_nothing() {
    let (pg, s, _dir) = setup().await;
    let mut c = grpc(&s).await;
    let group = pg.make_role("group").await;

    // A role of that name exists in PostgreSQL but is no user of ours.
    let foreign = pg.make_role("foreign").await;
    let e = create(&mut c, &foreign, built_in("pw", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{}", e.message());
    assert!(e.message().contains(&foreign));
    assert_eq!(pg.role(&foreign).await, Some((false, None)), "untouched");

    // Unknown roles to grant: INVALID_ARGUMENT naming database_roles, and no role is left behind.
    let user = pg.name("u1");
    let missing = format!("{}nosuchrole", pg.prefix);
    let e = create(&mut c, &user, built_in("pw", &[&group, &missing]))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), violated_field(&e).as_str()),
        (Code::InvalidArgument, "user.database_roles")
    );
    assert!(e.message().contains(&missing), "{}", e.message());
    assert_eq!(pg.role(&user).await, None, "the create was all or nothing");
    // Superuser roles are never granted.
    let e = create(&mut c, &user, built_in("pw", &["postgres"]))
        .await
        .unwrap_err();
    assert_eq!(violated_field(&e), "user.database_roles");
    assert!(e.message().contains("superuser"), "{}", e.message());
    assert_eq!(pg.role(&user).await, None);

    // Field checks.
    let cases: Vec<(String, pb::User, &str)> = vec![
        (user.clone(), pb::User::default(), "user.user_type"),
        (user.clone(), built_in("", &[]), "user.password"),
        (user.clone(), built_in("a\0b", &[]), "user.password"),
        ("x".repeat(64), built_in("pw", &[]), "user_id"),
        (String::new(), built_in("pw", &[]), "user_id"),
        ("pg_mine".into(), built_in("pw", &[]), "user_id"),
        ("a/b".into(), built_in("pw", &[]), "user_id"),
        (user.clone(), built_in("pw", &[""]), "user.database_roles"),
    ];
    for (id, u, field) in cases {
        let e = create(&mut c, &id, u).await.unwrap_err();
        assert_eq!(
            (e.code(), violated_field(&e).as_str()),
            (Code::InvalidArgument, field),
            "{id:?}: {}",
            e.message()
        );
    }
    let e = c
        .create_user(pb::CreateUserRequest {
            parent: CLUSTER.into(),
            user_id: user.clone(),
            user: Some(built_in("pw", &[])),
            request_id: "not-a-uuid".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_field(&e), "request_id");
    // A missing cluster.
    let e = c
        .create_user(pb::CreateUserRequest {
            parent: format!("{LOC}/clusters/nope"),
            user_id: user.clone(),
            user: Some(built_in("pw", &[])),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // validate_only: the answer, and nothing in PostgreSQL or the records.
    let checked = c
        .create_user(pb::CreateUserRequest {
            parent: CLUSTER.into(),
            user_id: user.clone(),
            user: Some(built_in("pw", &[&group])),
            validate_only: true,
            request_id: uuid_like(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checked.database_roles, [group.as_str()]);
    assert_eq!(pg.role(&user).await, None);
    let e = c
        .get_user(pb::GetUserRequest {
            name: format!("{CLUSTER}/users/{user}"),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // Not found for update and delete.
    let e = update(&mut c, &user, built_in("pw", &[]), &["password"])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .delete_user(pb::DeleteUserRequest {
            name: format!("{CLUSTER}/users/{user}"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Created for real (with a request id); a second create is ALREADY_EXISTS.
    c.create_user(pb::CreateUserRequest {
        parent: CLUSTER.into(),
        user_id: user.clone(),
        user: Some(built_in("pw", &[])),
        request_id: uuid_like(),
        ..Default::default()
    })
    .await
    .unwrap();
    let e = create(&mut c, &user, built_in("pw", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let e = update(&mut c, &user, built_in("pw", &[]), &["uid"])
        .await
        .unwrap_err();
    assert_eq!(violated_field(&e), "update_mask");
    // The cluster cannot be deleted from under its users without force.
    let e = http()
        .delete(s.url(&format!("/alloydb/v1/{CLUSTER}")))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(e.status(), 400);
    let e: Value = e.json().await.unwrap();
    assert_eq!(e["error"]["status"], "FAILED_PRECONDITION");

    // A role that owns something is not dropped (nothing of the user's is destroyed): FAILED_PRECONDITION
    // naming the object, and the user stays. validate_only tells the same without trying.
    let table = format!("{}_owned", pg.prefix);
    pg.exec(format!(
        "CREATE TABLE {} (x int); ALTER TABLE {} OWNER TO {}",
        quote(&table),
        quote(&table),
        quote(&user)
    ))
    .await;
    for validate_only in [true, false] {
        let e = c
            .delete_user(pb::DeleteUserRequest {
                name: format!("{CLUSTER}/users/{user}"),
                validate_only,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
        assert!(e.message().contains(&table), "{}", e.message());
    }
    assert!(pg.role(&user).await.is_some());
    pg.exec(format!("DROP TABLE {}", quote(&table))).await;
    c.delete_user(pb::DeleteUserRequest {
        name: format!("{CLUSTER}/users/{user}"),
        validate_only: true,
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(
        pg.role(&user).await.is_some(),
        "validate_only dropped nothing"
    );
    c.delete_user(pb::DeleteUserRequest {
        name: format!("{CLUSTER}/users/{user}"),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(pg.role(&user).await, None);
}

fn uuid_like() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

#[tokio::test]
async fn without_a_backend_or_with_an_unreachable_one() {
    let pg = Pg::new().await;
    let user = pg.name("nobackend");
    // No backend configured: FAILED_PRECONDITION naming the cluster and the flag.
    let (s, _dir) = server_with_backend(None).await;
    assert_eq!(
        create_cluster_c1(&format!("http://{}", s.addr), &s.token, LOC).await,
        200
    );
    let mut c = grpc(&s).await;
    let e = create(&mut c, &user, built_in("pw", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains(CLUSTER) && e.message().contains("--alloydb-backend"));
    // Listing works without a backend: it reads the records.
    let listed = c
        .list_users(pb::ListUsersRequest {
            parent: CLUSTER.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.users.is_empty());
    s.stop().await;

    // A backend nobody listens on: UNAVAILABLE, and no record.
    let (s, _dir2) = server_with_backend(Some("postgres://postgres@127.0.0.1:1/test")).await;
    assert_eq!(
        create_cluster_c1(&format!("http://{}", s.addr), &s.token, LOC).await,
        200
    );
    let mut c = grpc(&s).await;
    let e = create(&mut c, &user, built_in("pw", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{}", e.message());
    assert!(e.message().contains(CLUSTER));
    let e = c
        .get_user(pb::GetUserRequest {
            name: format!("{CLUSTER}/users/{user}"),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(pg.role(&user).await, None);
    s.stop().await;
}

#[tokio::test]
async fn quotes_in_names_and_passwords_stay_data() {
    let (pg, s, _dir) = setup().await;
    let mut c = grpc(&s).await;
    // A role the injections below would drop if they ran as SQL.
    let victim = pg.make_role("victim").await;
    let granted = pg.name("r\"q'");
    pg.exec(format!("CREATE ROLE {}", quote(&granted))).await;
    let password = "it's \\ \"quoted\" $$ ; DROP ROLE x; --'";
    for hostile in [
        format!("{}\"; DROP ROLE {victim}; --", pg.prefix),
        format!("{}'); DROP ROLE {victim}; --", pg.prefix),
    ] {
        pg.made.lock().unwrap().push(hostile.clone());
        let created = create(&mut c, &hostile, built_in(password, &[&granted]))
            .await
            .unwrap();
        assert_eq!(created.name, format!("{CLUSTER}/users/{hostile}"));
        assert_eq!(pg.role(&hostile).await.map(|r| r.0), Some(true));
        assert!(pg.password_is(&hostile, password).await);
        assert_eq!(pg.memberships(&hostile).await, [granted.as_str()]);
        assert!(pg.role(&victim).await.is_some(), "the victim role survives");
        // The REST path takes it percent-encoded.
        let resp = http()
            .get(rest_user_url(&s, &hostile))
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.json::<Value>().await.unwrap()["databaseRoles"],
            json!([granted])
        );
        update(&mut c, &hostile, pb::User::default(), &["database_roles"])
            .await
            .unwrap();
        assert!(pg.memberships(&hostile).await.is_empty());
        c.delete_user(pb::DeleteUserRequest {
            name: format!("{CLUSTER}/users/{hostile}"),
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(pg.role(&hostile).await, None);
    }
    assert!(pg.role(&victim).await.is_some());
}

/// Our verifiers are PostgreSQL's: recomputed with the salt PostgreSQL picked for a password it hashed itself,
/// ours is the same string.
#[tokio::test]
async fn scram_verifiers_match_postgresql() {
    let pg = Pg::new().await;
    for (what, password) in [
        ("ascii", "correct horse battery staple"),
        ("nonascii", "pässwörd\u{a0}mit Leerzeichen"),
    ] {
        let name = pg.name(what);
        pg.exec(format!(
            "SET password_encryption = 'scram-sha-256'; CREATE ROLE {} PASSWORD '{}'",
            quote(&name),
            password.replace('\'', "''")
        ))
        .await;
        let (_, stored) = pg.role(&name).await.unwrap();
        assert!(verifier_is_for(&stored.unwrap(), password), "{what}");
    }
}

/// Who may do what: roles/alloydb.viewer lists and reads users but cannot create or delete them.
#[tokio::test]
async fn viewers_read_users_and_change_nothing() {
    let (pg, s, _dir) = setup().await;
    let mut c = grpc(&s).await;
    let user = pg.name("seen");
    create(&mut c, &user, built_in("pw", &[])).await.unwrap();
    let (account, key) = account_with_key(&s, "users-test", "viewer").await;
    add_binding(
        &s,
        "users-test",
        &format!("serviceAccount:{}", account.email),
        "roles/alloydb.viewer",
    )
    .await
    .unwrap();
    let token = access_token(token_for(&s, &key, json!({})).await);
    let list = http()
        .get(s.url(&format!("/alloydb/v1/{CLUSTER}/users")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 200);
    let list: Value = list.json().await.unwrap();
    assert_eq!(list["users"][0]["name"], format!("{CLUSTER}/users/{user}"));
    let other = pg.name("denied");
    let denied = http()
        .post(s.url(&format!("/alloydb/v1/{CLUSTER}/users?userId={other}")))
        .bearer_auth(&token)
        .json(&json!({"password": "pw", "userType": "ALLOYDB_BUILT_IN"}))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    let denied = http()
        .patch(format!("{}?updateMask=password", rest_user_url(&s, &user)))
        .bearer_auth(&token)
        .json(&json!({"password": "pw2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403, "checked on user.name");
    let denied = http()
        .delete(rest_user_url(&s, &user))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    assert_eq!(pg.role(&other).await, None);
    assert!(pg.role(&user).await.is_some());
    c.delete_user(pb::DeleteUserRequest {
        name: format!("{CLUSTER}/users/{user}"),
        ..Default::default()
    })
    .await
    .unwrap();
}

/// Racing creates of one user: exactly one wins, the others are ALREADY_EXISTS (never INTERNAL), and the role
/// and the record agree.
#[tokio::test]
async fn concurrent_creates_make_one_user() {
    let (pg, s, _dir) = setup().await;
    let user = pg.name("race");
    let c = grpc(&s).await;
    let attempts = (0..6).map(|i| {
        let mut c = c.clone();
        let user = user.clone();
        tokio::spawn(async move { create(&mut c, &user, built_in(&format!("pw{i}"), &[])).await })
    });
    let mut won = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(_) => won += 1,
            Err(e) => assert_eq!(e.code(), Code::AlreadyExists, "{}", e.message()),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(pg.role(&user).await.map(|r| r.0), Some(true));
    let mut c = grpc(&s).await;
    let listed = c
        .list_users(pb::ListUsersRequest {
            parent: CLUSTER.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.users.len(), 1);
    c.delete_user(pb::DeleteUserRequest {
        name: format!("{CLUSTER}/users/{user}"),
        ..Default::default()
    })
    .await
    .unwrap();
}

/// IAM database authentication as an instance endpoint checks it (`authorize_iam_login`): the OAuth2 token's
/// principal needs alloydb.instances.connect (roles/alloydb.client) and alloydb.users.login
/// (roles/alloydb.databaseUser) on the instance, and an ALLOYDB_IAM_USER named after it in the cluster.
#[tokio::test]
async fn iam_login_needs_both_permissions_and_an_iam_user() {
    use clustercred_api::alloydb::authorize_iam_login;

    let pg = Pg::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServeConfig::for_data_dir(dir.path().to_path_buf());
    config.alloydb_backend = Some(pg.url.clone());
    let (s, ctx) = TestServer::start_with_ctx(config).await;
    assert_eq!(
        create_cluster_c1(&format!("http://{}", s.addr), &s.token, LOC).await,
        200
    );
    let instance = format!("{CLUSTER}/instances/i1");

    let account_id = format!("dbuser-{}", &pg.prefix[3..]);
    let (account, key) = account_with_key(&s, "users-test", &account_id).await;
    let db_user = format!("{account_id}@users-test.iam");
    pg.made.lock().unwrap().push(db_user.clone());
    let oauth = access_token(token_for(&s, &key, json!({})).await);
    let member = format!("serviceAccount:{}", account.email);

    let login = |user: String| {
        let (ctx, oauth, instance) = (ctx.clone(), oauth.clone(), instance.clone());
        async move { authorize_iam_login(&ctx, &oauth, &instance, Some(&user)).await }
    };
    let e = login(db_user.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    add_binding(&s, "users-test", &member, "roles/alloydb.client")
        .await
        .unwrap();
    let e = login(db_user.clone()).await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::PermissionDenied,
        "connect alone is not login"
    );
    assert!(
        e.message().contains("alloydb.users.login"),
        "{}",
        e.message()
    );
    add_binding(&s, "users-test", &member, "roles/alloydb.databaseUser")
        .await
        .unwrap();
    let e = login(db_user.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "no IAM user yet: {}", e.message());

    let mut c = grpc(&s).await;
    create(&mut c, &db_user, iam_user()).await.unwrap();
    let ok = login(db_user.clone()).await.unwrap();
    assert_eq!(ok.role, db_user);
    assert_eq!(ok.principal.id, account.email);
    // Only as itself, and only with a good token.
    let e = login("postgres".into()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = authorize_iam_login(&ctx, "not-a-token", &instance, Some(&db_user))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    c.delete_user(pb::DeleteUserRequest {
        name: format!("{CLUSTER}/users/{db_user}"),
        ..Default::default()
    })
    .await
    .unwrap();
    let e = login(db_user.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    s.stop().await;
}

//! The gate every gRPC call (and every transcoded REST call) passes before a handler runs: per-address rate
//! limits before any authentication work, authentication, the permission check the method table names, the
//! per-principal limit, and one audited (aggregated) refusal path. Handlers read the authorized [`Caller`]
//! from the request's extensions (`Ctx::caller`).

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, ReflectMessage};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};
use tower::{Service, ServiceExt};

use crate::context::{Caller, ClientAddress, Ctx, RequestMeta};
use crate::methods::{Access, MethodRule, MethodTable, RateClass, Resource};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the gate needs: the shared context, the access table and the descriptors to read resource fields.
pub struct Gate {
    ctx: Arc<Ctx>,
    table: MethodTable,
    methods: std::collections::HashMap<String, MethodDescriptor>,
    max_message: usize,
}

impl Gate {
    /// Fails when a served method has no rule (see [`MethodTable::check`]).
    pub fn new(
        ctx: Arc<Ctx>,
        table: MethodTable,
        pool: &DescriptorPool,
        max_message: usize,
    ) -> Result<Arc<Gate>, String> {
        table.check(pool)?;
        let methods = pool
            .services()
            .flat_map(|s| s.methods().collect::<Vec<_>>())
            .map(|m| {
                (
                    format!("{}/{}", m.parent_service().full_name(), m.name()),
                    m,
                )
            })
            .collect();
        Ok(Arc::new(Gate {
            ctx,
            table,
            methods,
            max_message,
        }))
    }

    /// Wraps the gRPC services.
    pub fn layer<S>(self: &Arc<Self>, inner: S) -> GateService<S> {
        GateService {
            inner,
            gate: self.clone(),
        }
    }

    /// The REST gateway's check before it reads a body: a minting method is refused at once while every
    /// signing permit is taken, like a gRPC call in [`Gate::admit`], without the body being read or transcoded.
    pub fn rest_admission(
        self: &Arc<Self>,
    ) -> impl Fn(&str, &http::request::Parts) -> Result<(), Status> + Send + Sync + 'static {
        let gate = self.clone();
        move |method: &str, parts: &http::request::Parts| {
            if !gate.table.get(method).is_some_and(|rule| rule.mints) {
                return Ok(());
            }
            gate.refuse_when_saturated(|| {
                let address = parts.extensions.get::<ClientAddress>().map(|a| a.0);
                RequestMeta::from_parts(method, address, &parts.headers)
            })
        }
    }

    /// RESOURCE_EXHAUSTED, recorded, for a minting call while every signing permit is taken; the caller's
    /// metadata is only gathered for a refusal.
    fn refuse_when_saturated(&self, meta: impl FnOnce() -> RequestMeta) -> Result<(), Status> {
        self.ctx.limits.saturated().inspect_err(|status| {
            self.ctx
                .refused_exhausted("anonymous", &meta(), "", "", status);
        })
    }

    fn refuse(status: Status) -> http::Response<tonic::body::Body> {
        status.into_http()
    }

    async fn admit<B>(
        &self,
        req: http::Request<B>,
    ) -> Result<http::Request<tonic::body::Body>, Status>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let method = req.uri().path().trim_start_matches('/').to_string();
        let Some(rule) = self.table.get(&method).copied() else {
            return Err(Status::unimplemented(format!(
                "{method} is not a method of this server"
            )));
        };
        let address = req.extensions().get::<ClientAddress>().map(|a| a.0);
        let meta = RequestMeta::from_parts(&method, address, req.headers());
        let limits = &self.ctx.limits;

        // Before any work: the caller's address, and whether that address keeps failing.
        self.ctx.admit_address(&meta).await?;
        // A minting call when every signing permit is taken: refused before authentication and the body.
        if rule.mints {
            self.refuse_when_saturated(|| meta.clone())?;
        }
        if rule.access == Access::Public {
            return Ok(req.map(tonic::body::Body::new));
        }

        let (mut parts, body) = req.into_parts();
        let permissions = rule.permissions().join("|");
        if !parts.headers.contains_key(http::header::AUTHORIZATION)
            && let Err(status) = limits.anonymous()
        {
            self.ctx
                .refused("anonymous", &meta, &permissions, "", &status)
                .await;
            return Err(status);
        }
        let metadata = MetadataMap::from_headers(parts.headers.clone());
        let principal = match self.ctx.access.authenticate(&metadata).await {
            Ok(p) => p,
            Err(status) => {
                self.ctx
                    .refused("anonymous", &meta, &permissions, "", &status)
                    .await;
                return Err(status);
            }
        };
        if let Err(status) = crate::iam::access::check_scopes(&principal, &method) {
            self.ctx
                .refused(&principal.member(), &meta, &permissions, "", &status)
                .await;
            return Err(status);
        }

        let body = self.read_body(body).await?;
        let resource = match rule.resource() {
            Some(r) => self.resource(&method, r, &body)?,
            None => String::new(),
        };
        let held = match self.check(&rule, &principal, &resource).await {
            Ok(held) => held,
            Err(status) => {
                self.ctx
                    .refused(&principal.member(), &meta, &permissions, &resource, &status)
                    .await;
                return Err(status);
            }
        };
        if rule.rate == RateClass::Principal {
            limits.principal(&principal.member())?;
        }
        tracing::debug!(principal = %principal.member(), method, resource, "authorized");
        parts.extensions.insert(Caller {
            principal,
            meta,
            held,
        });
        Ok(http::Request::from_parts(
            parts,
            tonic::body::Body::new(http_body_util::Full::new(body)),
        ))
    }

    /// The permissions the principal holds: all of them (`All`) or the indexes of those held (`Any`).
    async fn check(
        &self,
        rule: &MethodRule,
        principal: &crate::Principal,
        resource: &str,
    ) -> Result<Vec<usize>, Status> {
        let access = &self.ctx.access;
        match rule.access {
            Access::Public | Access::Authenticated => Ok(Vec::new()),
            Access::All(permissions, _) => {
                for permission in permissions {
                    access.authorize(principal, permission, resource).await?;
                }
                Ok((0..permissions.len()).collect())
            }
            Access::Any(permissions, _) => {
                let mut held = Vec::new();
                let mut refusal = None;
                for (i, permission) in permissions.iter().enumerate() {
                    match access.authorize(principal, permission, resource).await {
                        Ok(()) => held.push(i),
                        Err(status) => refusal = refusal.or(Some(status)),
                    }
                }
                match refusal {
                    Some(status) if held.is_empty() => Err(status),
                    _ => Ok(held),
                }
            }
        }
    }

    /// The whole unary request, within the message size limit.
    async fn read_body<B>(&self, body: B) -> Result<Bytes, Status>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        // The gRPC frame header (5 bytes) comes on top of the message limit.
        let limit = self.max_message.saturating_add(5);
        match http_body_util::Limited::new(body, limit).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Err(Status::resource_exhausted(format!(
                    "the request message is larger than {} bytes",
                    self.max_message
                )))
            }
            Err(e) => Err(Status::cancelled(format!("reading the request: {e}"))),
        }
    }

    /// The resource named by the rule's field in the framed request message.
    fn resource(&self, method: &str, resource: Resource, framed: &Bytes) -> Result<String, Status> {
        let descriptor = self.methods.get(method).ok_or_else(|| {
            Status::unimplemented(format!("{method} is not a method of this server"))
        })?;
        let mut frame = framed.clone();
        if frame.len() < 5 {
            return Err(Status::invalid_argument(
                "the request is not a gRPC message",
            ));
        }
        if frame.get_u8() != 0 {
            return Err(Status::unimplemented(
                "compressed requests are not accepted",
            ));
        }
        let len = frame.get_u32() as usize;
        if frame.len() != len {
            return Err(Status::invalid_argument(
                "the request must be exactly one gRPC message",
            ));
        }
        let message = DynamicMessage::decode(descriptor.input(), frame).map_err(|e| {
            Status::invalid_argument(format!("the request message does not decode: {e}"))
        })?;
        let value = string_at(&message, resource.field()).unwrap_or_default();
        Ok(match resource {
            Resource::Field(_) => value,
            Resource::ProjectId(_) if value.starts_with("projects/") => value,
            Resource::ProjectId(_) => format!("projects/{value}"),
        })
    }
}

/// The string a dotted field path (`user.name`) holds in a decoded request; none when a step is unset.
fn string_at(message: &DynamicMessage, path: &str) -> Option<String> {
    match path.split_once('.') {
        None => message
            .get_field_by_name(path)
            .and_then(|v| v.as_str().map(str::to_string)),
        Some((head, rest)) => {
            let field = message.descriptor().get_field_by_name(head)?;
            if !message.has_field(&field) {
                return None;
            }
            match message.get_field(&field).as_ref() {
                prost_reflect::Value::Message(child) => string_at(child, rest),
                _ => None,
            }
        }
    }
}

/// The tower service that runs the gate in front of the gRPC services.
#[derive(Clone)]
pub struct GateService<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S, B> Service<http::Request<B>> for GateService<S>
where
    S: Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let gate = self.gate.clone();
        let inner = self.inner.clone();
        Box::pin(async move {
            match gate.admit(req).await {
                Ok(req) => inner.oneshot(req).await,
                Err(status) => Ok(Gate::refuse(status)),
            }
        })
    }
}

/// The address a limit is kept for: IPv6 clients by their /64, since one host holds a whole prefix.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Whether a status is a refusal the gate or a handler counts against the caller's address.
pub fn is_refusal(code: Code) -> bool {
    matches!(code, Code::Unauthenticated | Code::PermissionDenied)
}

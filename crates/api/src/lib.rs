//! API adapters: one module per Google API. Each validates the wire request (names, ids, durations, PEM),
//! checks the caller's permission, calls the authority and the store, and shapes the reply. No crypto and no
//! SQL here.

pub mod alloydb;
pub mod common;
pub mod context;
pub mod edgecontainer;
pub mod errors;
pub mod gate;
pub mod gkemulticloud;
pub mod iam;
pub mod limits;
pub mod methods;
pub mod names;
pub mod operations;
pub mod refusals;
pub mod signing;

pub use context::{
    AccessControl, Caller, ClientAddress, Clock, Ctx, Principal, PrincipalKind, RequestMeta,
    Settings, SystemClock,
};

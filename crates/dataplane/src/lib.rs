//! The AlloyDB data path. An AlloyDB instance served by clustercred is an endpoint on the address its
//! ConnectionInfo hands out (port 5433) in front of a backend PostgreSQL database; this crate holds the
//! pieces that talk to clients and to those backends, apart from the admin API.

pub mod backend;
pub mod endpoint;
pub mod mdx;
pub mod pgwire;
pub mod roles;

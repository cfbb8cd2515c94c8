//! The clustercred server: configuration, first-start bootstrap, and the assembly of store, authority, API
//! adapters and transport into one listener.

pub mod bootstrap;
pub mod cli;
pub mod config;
pub mod database;
pub mod database_users;
pub mod proxy;
pub mod server;
pub mod tls;

pub use config::ServeConfig;
pub use server::{Server, run};

//! Load benchmark of issue 14: drives a running clustercred (REST and gRPC) and `cfssl serve` the same way, for a
//! fixed time at a fixed concurrency, and reports throughput, errors, latency percentiles and the server's CPU
//! time and peak RSS. `scripts/bench` runs the whole comparison and calls `report` to write
//! docs/benchmarks/README.md.

mod load;
mod procstat;
mod report;
mod setup;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "clustercred-bench",
    about = "Load benchmark for clustercred, side by side with cfssl"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flow {
    /// AlloyDB GenerateClientCertificate over REST.
    ClientCert,
    /// AlloyDB GenerateClientCertificate over gRPC (h2c).
    ClientCertGrpc,
    /// Edge Container GenerateOfflineCredential over REST.
    OfflineCred,
    /// GKE Multi-Cloud GenerateAttachedClusterAgentToken over REST with an RS256 subject token.
    AgentToken,
    /// cfssl serve's /api/v1/cfssl/sign with a P-256 CSR and the 1 h client-auth profile `client`.
    Cfssl,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Keys {
    P256,
    Rsa2048,
    /// Alternating P-256 and RSA-2048.
    Mixed,
}

#[derive(Subcommand)]
enum Command {
    /// Create the benchmark's clusters through the API with the admin token, and the key, CSR and
    /// subject-token-key pools, into a state file that `run` reads.
    Setup {
        /// Base URL of clustercred, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        url: String,
        /// File holding the admin bearer token (the data directory's admin.token).
        #[arg(long)]
        token_file: PathBuf,
        /// Where to write the state.
        #[arg(long)]
        state: PathBuf,
        /// Distinct client keys of each type (P-256 and RSA-2048) and P-256 CSRs for cfssl.
        #[arg(long, default_value_t = 32)]
        pool: usize,
    },
    /// Drive one flow at one concurrency for a fixed time; print a summary and optionally write JSON.
    Run(load::RunArgs),
    /// Aggregate run results (medians over repeats) into docs/benchmarks/README.md and an SVG plot.
    Report(report::ReportArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup {
            url,
            token_file,
            state,
            pool,
        } => setup::setup(&url, &token_file, &state, pool).await,
        Command::Run(args) => load::run(args).await,
        Command::Report(args) => report::report(&args),
    }
}

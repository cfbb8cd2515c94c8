use clap::{Parser, Subcommand};
use clustercred::config::{LogFormat, ServeConfig};
use tracing_subscriber::EnvFilter;

/// clustercred: a self-hostable credential authority for clusters, wire-compatible with Google Cloud's
/// AlloyDB GenerateClientCertificate, Edge Container GenerateOfflineCredential and GKE Multi-Cloud
/// GenerateAttachedClusterAgentToken.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (gRPC and REST on one port).
    Serve(ServeConfig),
}

fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_env("CLUSTERCRED_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(config) => {
            init_logging(config.log_format);
            clustercred::run(config).await
        }
    }
}

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
    Serve(Box<ServeConfig>),
    /// Read and verify the audit log.
    #[command(subcommand)]
    Audit(clustercred::cli::AuditCommand),
    /// Principals, service accounts and role bindings.
    #[command(subcommand)]
    Iam(clustercred::cli::IamCommand),
    /// Keys at rest: master-key rotation.
    #[command(subcommand)]
    Keys(clustercred::cli::KeysCommand),
    /// AlloyDB instance access: certificate revocation.
    #[command(subcommand)]
    Alloydb(clustercred::cli::AlloydbCommand),
}

fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_env("CLUSTERCRED_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: not in files, journald or a container runtime's log.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(config) => {
            init_logging(config.log_format);
            clustercred::run(*config).await
        }
        Command::Audit(command) => clustercred::cli::audit(command).await,
        Command::Iam(command) => clustercred::cli::iam(command).await,
        Command::Keys(command) => clustercred::cli::keys(command).await,
        Command::Alloydb(command) => {
            init_logging(LogFormat::Text);
            clustercred::cli::alloydb(command).await
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

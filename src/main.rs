//! The `ehr-gateway` command line: parses arguments and hands them to `ehr_gateway::commands`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ehr_gateway::commands;
use ehr_gateway::config::DEFAULT_CONFIG;

#[derive(Parser)]
#[command(
    name = "ehr-gateway",
    version,
    about = "One FHIR R4 Media API in front of EHRs (Canvas and athenahealth today; Elation and Epic next)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gateway (the default config runs sandbox mode with in-process EHR simulators).
    Serve {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Listen address, overriding the config (e.g. 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Record every front-door exchange with its upstream exchanges as redacted cassettes in DIR.
        #[arg(long, value_name = "DIR")]
        record: Option<PathBuf>,
    },
    /// Work with mapping files.
    Mappings {
        #[command(subcommand)]
        command: MappingsCommand,
    },
    /// Replay recorded cassettes through the current mappings (no EHR is called); exit 1 on regressions.
    #[cfg(feature = "sandbox")]
    Replay {
        /// Folder of cassettes (searched recursively), e.g. tests/replay.
        dir: PathBuf,
        #[arg(long, default_value = "mappings")]
        mappings: PathBuf,
        /// Rewrite the cassettes whose outcome changed with what the mappings produce now.
        #[arg(long)]
        accept: bool,
    },
    /// Run an EHR simulator on its own.
    #[cfg(feature = "sandbox")]
    Sim {
        #[command(subcommand)]
        ehr: SimCommand,
    },
}

#[derive(Subcommand)]
enum MappingsCommand {
    /// Load and compile every mapping file, reporting every problem; exit 1 on any error.
    Check {
        #[arg(default_value = "mappings")]
        dir: PathBuf,
    },
    /// Run the golden cases in DIR/<mapping>/tests/*.toml; exit 1 on any failure.
    Test {
        #[arg(default_value = "mappings")]
        dir: PathBuf,
        /// Rewrite the cases whose upstream requests or result differ with what the mappings do now,
        /// and list them (run it on a copy, then review the diff).
        #[arg(long)]
        accept: bool,
    },
    /// Print the JSON Schema of the mapping format (for editors; committed as docs/mapping.schema.json).
    Schema,
}

#[cfg(feature = "sandbox")]
#[derive(Subcommand)]
enum SimCommand {
    /// The Canvas Medical simulator (token host, FHIR host, and a stand-in for S3).
    Canvas {
        #[arg(long, default_value = "127.0.0.1:9101")]
        instance: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9102")]
        fhir: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9103")]
        s3: SocketAddr,
    },
    /// The athenahealth simulator (token endpoint and API on one host).
    Athena {
        #[arg(long, default_value = "127.0.0.1:9111")]
        listen: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve { config, listen, record } => commands::serve::run(&config, listen, record).await,
        Command::Mappings { command: MappingsCommand::Check { dir } } => commands::mappings::check(&dir),
        Command::Mappings { command: MappingsCommand::Test { dir, accept } } => commands::mappings::test(&dir, accept),
        Command::Mappings { command: MappingsCommand::Schema } => commands::mappings::schema(),
        #[cfg(feature = "sandbox")]
        Command::Replay { dir, mappings, accept } => commands::replay::run(&dir, &mappings, accept).await,
        #[cfg(feature = "sandbox")]
        Command::Sim { ehr: SimCommand::Canvas { instance, fhir, s3 } } => {
            commands::sim::canvas(instance, fhir, s3).await
        }
        #[cfg(feature = "sandbox")]
        Command::Sim { ehr: SimCommand::Athena { listen } } => commands::sim::athena(listen).await,
    }
}

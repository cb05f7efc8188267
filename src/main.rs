//! The `ehr-gateway` command line: parses arguments and hands them to `ehr_gateway::commands`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ehr_gateway::commands;

/// How `--help` starts: what the gateway is, then the way in for a first run.
const ABOUT: &str = "One FHIR R4 Media API in front of EHRs (Canvas Medical and athenahealth), driven by \
                     declarative mapping files";
const LONG_ABOUT: &str = "One FHIR R4 Media API in front of EHRs (Canvas Medical and athenahealth), driven by \
declarative mapping files.

First run, from the repository folder: `ehr-gateway serve` starts sandbox mode (config/default.toml: \
in-process EHR simulators, demo token `demo-token`) on http://127.0.0.1:8080.";

#[derive(Parser)]
#[command(name = "ehr-gateway", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gateway (the default config runs sandbox mode with in-process EHR simulators).
    ///
    /// The configuration and the mapping folder it names are checked first; every problem is listed at
    /// once and the exit code is 1. Environment variables prefixed EHRGW_ override keys of the file,
    /// nesting with `__` (EHRGW_SERVER__LISTEN=0.0.0.0:8080).
    Serve {
        /// Configuration file [default: config/default.toml, in the current folder].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Listen address, overriding the config and the environment (e.g. 127.0.0.1:8080; port 0 picks
        /// a free port).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Record every front-door exchange with its upstream exchanges as redacted cassettes in DIR
        /// (overrides `record.dir`).
        #[arg(long, value_name = "DIR")]
        record: Option<PathBuf>,
    },
    /// Check, test or describe mapping files.
    Mappings {
        #[command(subcommand)]
        command: MappingsCommand,
    },
    /// Replay recorded cassettes through the current mappings (no EHR is called); exit 1 on regressions.
    #[cfg(feature = "sandbox")]
    Replay {
        /// Folder of cassettes (*.json, searched recursively), e.g. tests/replay.
        dir: PathBuf,
        /// Folder of mapping files to replay through.
        #[arg(long, value_name = "DIR", default_value = "mappings")]
        mappings: PathBuf,
        /// Rewrite the cassettes whose outcome changed with what the mappings produce now.
        #[arg(long)]
        accept: bool,
    },
    /// Run an EHR simulator on its own, until Ctrl-C (port 0 in an address picks a free port).
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
        /// Folder of mapping files (*.toml).
        #[arg(default_value = "mappings")]
        dir: PathBuf,
    },
    /// Run the golden cases in DIR/<mapping>/tests/*.toml; exit 1 on any failure.
    Test {
        /// Folder of mapping files, with each mapping's golden cases under <mapping>/tests/.
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
        /// Address of the Canvas instance host, which issues OAuth tokens.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9101")]
        instance: SocketAddr,
        /// Address of the FHIR API host.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9102")]
        fhir: SocketAddr,
        /// Address of the stand-in for S3, which serves the media bytes behind presigned links.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9103")]
        s3: SocketAddr,
    },
    /// The athenahealth simulator (token endpoint and API on one host).
    Athena {
        /// Address of the simulator's one host (token endpoint and API).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9111")]
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
        Command::Serve { config, listen, record } => commands::serve::run(config.as_deref(), listen, record).await,
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

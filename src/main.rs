//! The `ehr-gateway` command: serve, check mappings, run a simulator.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ehr_gateway::config::{Config, DEFAULT_CONFIG};
use ehr_gateway::mapping::{MappingSet, Severity, golden};

#[derive(Parser)]
#[command(
    name = "ehr-gateway",
    version,
    about = "One FHIR R4 Media API in front of EHRs (Canvas today; athenahealth, Elation and Epic next)"
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
    },
    /// Print the JSON Schema of the mapping format (for editors; committed as docs/mapping.schema.json).
    Schema,
}

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
        Command::Serve { config, listen, record } => {
            let mut config = match Config::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::FAILURE;
                }
            };
            if let Some(addr) = listen {
                config.server.listen = addr;
            }
            if record.is_some() {
                config.record.dir = record;
            }
            ehr_gateway::logging::init(&config.server.log_format);
            let running = match ehr_gateway::server::start(config).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            eprintln!("ehr-gateway serving on http://{} (Ctrl-C stops)", running.addr);
            let _ = tokio::signal::ctrl_c().await;
            running.shutdown();
            ExitCode::SUCCESS
        }
        Command::Mappings { command: MappingsCommand::Check { dir } } => match MappingSet::load_dir(&dir) {
            Ok(set) => {
                for w in &set.warnings {
                    println!("{w}");
                }
                println!(
                    "{}: {} mapping(s) OK, {} warning(s) (version {})",
                    dir.display(),
                    set.mappings.len(),
                    set.warnings.len(),
                    set.version
                );
                ExitCode::SUCCESS
            }
            Err(diagnostics) => {
                for d in &diagnostics {
                    println!("{d}");
                }
                let errors = diagnostics.iter().filter(|d| d.severity == Severity::Error).count();
                println!("{}: {errors} error(s), {} warning(s)", dir.display(), diagnostics.len() - errors);
                ExitCode::FAILURE
            }
        },
        Command::Mappings { command: MappingsCommand::Test { dir } } => match MappingSet::load_dir(&dir) {
            Ok(set) => {
                let reports = golden::run_dir(&set, &dir);
                print!("{}", golden::render(&reports, &dir));
                let gaps = golden::coverage_gaps(&set, &reports);
                for gap in &gaps {
                    println!("missing: {gap}");
                }
                if reports.iter().all(|r| r.passed()) && gaps.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(diagnostics) => {
                for d in &diagnostics {
                    println!("{d}");
                }
                println!("the mappings do not load; fix them first (ehr-gateway mappings check)");
                ExitCode::FAILURE
            }
        },
        Command::Mappings { command: MappingsCommand::Schema } => {
            println!("{}", ehr_gateway::mapping::editor_schema());
            ExitCode::SUCCESS
        }
        Command::Replay { dir, mappings, accept } => {
            let mut stdout = std::io::stdout();
            let reports = ehr_gateway::replay::replay_dir(&dir, &mappings, accept, &mut stdout).await;
            if reports.is_empty() {
                println!("no cassettes (*.json) under {}", dir.display());
                return ExitCode::FAILURE;
            }
            if reports.iter().all(|r| r.problems.is_empty()) { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Command::Sim { ehr: SimCommand::Canvas { instance, fhir, s3 } } => {
            ehr_gateway::logging::init("pretty");
            let config = ehr_gateway::sim::canvas::CanvasSimConfig::default();
            let (id, secret) = (config.client_id.clone(), config.client_secret.clone());
            match ehr_gateway::sim::canvas::CanvasSim::start_on(config, instance, fhir, s3).await {
                Ok(handle) => {
                    println!("Canvas simulator: FHIR base {} token URL {}", handle.fhir_base(), handle.token_url());
                    println!("demo client credentials: client_id={id} client_secret={secret}");
                    let _ = tokio::signal::ctrl_c().await;
                    handle.shutdown();
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cannot start the Canvas simulator: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

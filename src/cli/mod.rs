//! The command line: `serve`, `init`, `config`, `ca`, `healthcheck` run locally; the noun-verb
//! admin commands (`workspace`, `fleet`, `device`, `telemetry`, `aggregate`, `attributes`,
//! `export`, `tags`, `usage`, `audit`, `job`, `schedule`, `condition`, `integration`, `user`,
//! `backup`) call the REST API; `backup verify` and `restore` work on a backup file;
//! `simulate` runs virtual devices.

mod admin;
mod backup;
mod banner;
mod campaigns;
mod conditions;
mod credentials;
mod data;
mod firmware;
mod integrations;
mod jobs;
mod output;
mod resolve;
mod serve;
mod users;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

pub use crate::client::{self, ClientArgs};
use crate::config::LogFormat;

#[derive(Parser)]
#[command(
    name = "corral",
    version,
    about = "Corral: the whole IoT device manager in one binary"
)]
pub struct Cli {
    /// Log output format (overrides the config file).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the appliance: MQTT, HTTP API, store.
    Serve(ServeArgs),
    /// Create the data directory, CA, server certificate and admin key, then exit.
    Init(ConfigArg),
    /// Print or check configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// The CA devices must trust.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Exit 0 when the local server answers /healthz (container health checks, systemd). Finds
    /// the server's plain HTTP port in the same configuration `serve` reads (file and
    /// `CORRAL_*` environment).
    Healthcheck {
        /// Ask this URL instead.
        #[arg(long)]
        url: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Manage workspaces.
    #[command(subcommand)]
    Workspace(admin::WorkspaceCmd),
    /// Manage fleets.
    #[command(subcommand)]
    Fleet(admin::FleetCmd),
    /// Manage devices.
    #[command(subcommand)]
    Device(admin::DeviceCmd),
    /// Read a device's telemetry.
    Telemetry(admin::TelemetryArgs),
    /// The audit log: credential events and administrative changes, newest first.
    Audit(credentials::AuditArgs),
    /// Aggregated telemetry (avg/min/max/sum/count) of a device or a fleet.
    Aggregate(data::AggregateArgs),
    /// A device's attributes, or a fleet's shared defaults.
    #[command(subcommand)]
    Attributes(data::AttributesCmd),
    /// Export telemetry as CSV or JSON (streamed).
    Export(data::ExportArgs),
    /// The tags (and their keys) of a device or a fleet.
    Tags(data::TagsArgs),
    /// Disk usage of a workspace or the store; `--sweep` runs retention first.
    Usage(data::UsageArgs),
    /// Commands to devices (server-side RPC): send, list, show, cancel, watch.
    #[command(subcommand)]
    Job(jobs::JobCmd),
    /// Users of the web UI and API, their roles and API keys.
    #[command(subcommand)]
    User(users::UserCmd),
    /// Commands at a time or on cron, optionally in a maintenance window.
    #[command(subcommand)]
    Schedule(jobs::ScheduleCmd),
    /// Webhooks fed from durable queues: create, list, show, update, pause, resume, delete,
    /// test, dead-letters, replay.
    #[command(subcommand)]
    Integration(integrations::IntegrationCmd),
    /// Conditions devices reported: list, show, acknowledge, close.
    #[command(subcommand)]
    Condition(conditions::ConditionCmd),
    /// Firmware and software packages: upload, list, show, download, assign to a fleet,
    /// unassign, delete; manifest keys and offline signing.
    #[command(subcommand)]
    Firmware(firmware::FirmwareCmd),
    /// OTA campaigns: create (with a dry run first), approve, start, pause, resume, cancel,
    /// install, follow (`watch`), and the emergency stop of every campaign.
    #[command(subcommand)]
    Campaign(campaigns::CampaignCmd),
    /// Write an online backup of a running server to a file (`backup FILE`), or check one
    /// (`backup verify FILE`).
    Backup(backup::BackupArgs),
    /// Make a new data directory from a backup file.
    Restore(backup::RestoreArgs),
    /// Run virtual devices against an MQTT server (demos, tests, benchmarks).
    Simulate(crate::sim::SimulateArgs),
}

#[derive(Args)]
struct ConfigArg {
    /// Configuration file (optional: defaults apply without one).
    #[arg(long, short, env = "CORRAL_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    /// Configuration file (optional: defaults apply without one).
    #[arg(long, short, env = "CORRAL_CONFIG")]
    config: Option<PathBuf>,
    /// Start even though the store, its write-ahead log or the CA is damaged or missing, keeping
    /// what can still be read. Damaged files are moved or copied aside, never deleted. Without
    /// it, Corral refuses to start on such a data directory and says what is wrong.
    #[arg(long)]
    accept_data_loss: bool,
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the documented default configuration file.
    PrintDefault,
    /// Validate a configuration (file + CORRAL_* environment) and report every problem.
    Check {
        /// Configuration file (optional: defaults apply without one).
        #[arg(env = "CORRAL_CONFIG")]
        file: Option<PathBuf>,
        /// Also print the effective configuration (secrets masked).
        #[arg(long)]
        print: bool,
    },
}

#[derive(Subcommand)]
enum CaCmd {
    /// Print the CA certificate (PEM) from the local data directory.
    Show(ConfigArg),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    crate::pki::install_crypto_provider();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(a) => serve::serve(a.config, cli.log_format, a.accept_data_loss),
        Command::Init(a) => serve::init(a.config),
        Command::Config(ConfigCmd::PrintDefault) => {
            print!("{}", crate::config::DEFAULT_TOML);
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCmd::Check { file, print }) => Ok(serve::check(file, print)),
        Command::Ca(CaCmd::Show(a)) => serve::ca_show(a.config),
        Command::Healthcheck { url, config } => {
            let url = match url {
                Some(url) => url,
                None => serve::healthz_url(config.config)?,
            };
            runtime()?.block_on(serve::healthcheck(&url))
        }
        Command::Workspace(c) => runtime()?.block_on(admin::workspace(c)),
        Command::Fleet(c) => runtime()?.block_on(admin::fleet(c)),
        Command::Device(c) => runtime()?.block_on(admin::device(c)),
        Command::Telemetry(a) => runtime()?.block_on(admin::telemetry(a)),
        Command::Audit(a) => runtime()?.block_on(credentials::audit(a)),
        Command::Aggregate(a) => runtime()?.block_on(data::aggregate(a)),
        Command::Attributes(c) => runtime()?.block_on(data::attributes(c)),
        Command::Export(a) => runtime()?.block_on(data::export(a)),
        Command::Tags(a) => runtime()?.block_on(data::tags(a)),
        Command::Usage(a) => runtime()?.block_on(data::usage(a)),
        Command::Job(c) => runtime()?.block_on(jobs::run(c)),
        Command::Schedule(c) => runtime()?.block_on(jobs::run_schedule(c)),
        Command::User(c) => runtime()?.block_on(users::run(c)),
        Command::Integration(c) => runtime()?.block_on(integrations::run(c)),
        Command::Condition(c) => runtime()?.block_on(conditions::run(c)),
        Command::Firmware(c) => runtime()?.block_on(firmware::run(c)),
        Command::Campaign(c) => runtime()?.block_on(campaigns::run(c)),
        Command::Backup(a) => runtime()?.block_on(backup::run(a)),
        Command::Restore(a) => runtime()?.block_on(backup::restore(a)),
        Command::Simulate(a) => {
            serve::init_logging("info", cli.log_format.unwrap_or(LogFormat::Human))?;
            runtime()?.block_on(crate::sim::run(a))
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command below `corral`, with its path (`corral device create`).
    fn commands() -> Vec<(String, clap::Command)> {
        fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<(String, clap::Command)>) {
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                let name = format!("{path} {}", sub.get_name());
                out.push((name.clone(), sub.clone()));
                walk(sub, &name, out);
            }
        }
        let mut out = Vec::new();
        walk(&super::Cli::command(), "corral", &mut out);
        out
    }

    /// clap's own consistency checks (an optional positional before a required one, clashing
    /// names), which otherwise fire only when the command is run.
    #[test]
    fn the_command_tree_is_well_formed() {
        super::Cli::command().debug_assert();
    }

    /// Every command and subcommand says what it does, in words of its own: none borrows the
    /// description of a flag group, and no two siblings share one.
    #[test]
    fn every_command_has_its_own_description() {
        fn walk(cmd: &clap::Command, path: &str, bad: &mut Vec<String>) {
            let mut seen = std::collections::HashSet::new();
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                let name = format!("{path} {}", sub.get_name());
                match sub.get_about().map(|a| a.to_string()) {
                    None => bad.push(format!("{name}: no description")),
                    Some(a) if !seen.insert(a.clone()) => {
                        bad.push(format!("{name}: the same description as a sibling ({a})"))
                    }
                    Some(_) => {}
                }
                walk(sub, &name, bad);
            }
        }
        let mut bad = Vec::new();
        walk(&super::Cli::command(), "corral", &mut bad);
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }

    /// Every argument a user can see says what it is for.
    #[test]
    fn every_argument_has_help() {
        let mut bad = Vec::new();
        for (path, cmd) in commands() {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if a.is_hide_set() || id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none() {
                    bad.push(format!("{path}: {id} has no help"));
                }
            }
        }
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }

    /// An object is named the same way everywhere: an argument that takes a workspace, fleet,
    /// device, integration, schedule or user says it takes an id or a name, and a device
    /// that is the subject of a command is the positional DEVICE.
    #[test]
    fn object_arguments_take_an_id_or_a_name() {
        let mut bad = Vec::new();
        for (path, cmd) in commands() {
            for a in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
                let id = a.get_id().as_str();
                let named = |n: &str| {
                    a.get_value_names()
                        .is_some_and(|v| v.iter().any(|v| v.as_str() == n))
                };
                let object = [
                    "device",
                    "fleet",
                    "workspace",
                    "integration",
                    "schedule",
                    "user",
                ]
                .into_iter()
                .find(|o| id == *o || named(&o.to_uppercase()));
                let Some(object) = object else { continue };
                if !a.get_action().takes_values() {
                    continue; // a switch such as `--fleet` on `tags`: DEVICE names a fleet
                }
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                let wanted = if object == "user" {
                    "id or username"
                } else {
                    "id or name"
                };
                if !help.contains(wanted) {
                    bad.push(format!("{path}: {id} ({help:?}) does not say \"{wanted}\""));
                }
                if object == "device" && a.is_positional() && !named("DEVICE") {
                    bad.push(format!("{path}: the device positional is not DEVICE"));
                }
            }
        }
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }
}

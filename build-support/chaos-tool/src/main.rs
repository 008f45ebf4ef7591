//! `foodorder-chaos`, the chaos suite of build-support/chaos. `run` is one
//! whole run: it owns the seeded fault schedule, supervises the broker and the
//! service processes, injects the faults, places the load, checks the
//! invariants and prints the table; build-support/chaos only provisions
//! PostgreSQL, the broker's jars and the binaries, then hands over. The other
//! subcommands are its parts on their own, for a platform run by other means:
//! the careful client, the record injectors and the checker.

mod broker;
mod check;
mod dlq;
mod faults;
mod inject;
mod load;
mod netns;
mod observe;
mod postgres;
mod run;
mod schedule;
mod supervise;
mod topics;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "foodorder-chaos",
    about = "The chaos suite of build-support/chaos: a whole run, or its load, injectors and checker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the platform under a seeded fault schedule and checks the invariants; exits 1 on a violation.
    Run(run::RunArgs),
    /// Places orders at a steady rate; retries UNAVAILABLE with the same idempotency key.
    Load(load::LoadArgs),
    /// Produces hostile records to both event topics and records what it sent.
    Inject(inject::InjectArgs),
    /// Produces copies of records already on a topic (same partition, key, value, headers).
    Duplicate(inject::DuplicateArgs),
    /// Waits for quiescence, then checks every invariant; exits 1 on a violation.
    Check(check::CheckArgs),
}

/// Progress on stderr, in the style of build-support/lib.sh's `log`.
pub fn say(message: impl std::fmt::Display) {
    eprintln!("\x1b[1m==>\x1b[0m {message}");
}

/// The subcommands on their own talk to a platform run by other means: their
/// Kafka clients log in as `KAFKA_SASL_USERNAME` (SCRAM-SHA-512) when it is
/// set, as `build-support/run` writes it to `target/run/credentials/admin.env`.
fn log_in_from_env() -> anyhow::Result<()> {
    if let Some(login) = foodorder_runtime::config::SaslLogin::from_env()? {
        anyhow::ensure!(
            login.mechanism == "SCRAM-SHA-512",
            "KAFKA_SASL_MECHANISM {} is not supported by the chaos tool (SCRAM-SHA-512 only)",
            login.mechanism
        );
        foodorder_testkit::kafka::log_in_as(&login.username, login.password.expose())?;
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let command = Cli::parse().command;
    if !matches!(command, Command::Run(_))
        && let Err(error) = log_in_from_env()
    {
        eprintln!("error: {error:#}");
        std::process::exit(2);
    }
    let outcome = match command {
        Command::Run(args) => run::run(args).await,
        Command::Load(args) => load::run(args).await.map(|()| true),
        Command::Inject(args) => inject::run(args).await.map(|()| true),
        Command::Duplicate(args) => inject::run_duplicate(args).await.map(|()| true),
        Command::Check(args) => check::run(args).await,
    };
    match outcome {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::exit(1);
        }
    }
}

//! The Rust half of `build-support/chaos`: the careful client that places the
//! steady load, the injector of duplicated and hostile records, and the
//! checker of the invariants once the platform is quiet. The script owns the
//! processes and the fault schedule; this tool owns everything that speaks
//! gRPC, Kafka or SQL.

mod check;
mod inject;
mod load;
mod topics;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "foodorder-chaos",
    about = "Load, hostile records and invariant checks for build-support/chaos"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Places orders at a steady rate; retries UNAVAILABLE with the same idempotency key.
    Load(load::LoadArgs),
    /// Produces hostile records to both event topics and records what it sent.
    Inject(inject::InjectArgs),
    /// Produces copies of records already on a topic (same partition, key, value, headers).
    Duplicate(inject::DuplicateArgs),
    /// Waits for quiescence, then checks every invariant; exits 1 on a violation.
    Check(check::CheckArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Load(args) => load::run(args).await,
        Command::Inject(args) => inject::run(args).await,
        Command::Duplicate(args) => inject::duplicate(args).await,
        Command::Check(args) => {
            let clean = check::run(args).await?;
            std::process::exit(if clean { 0 } else { 1 });
        }
    }
}

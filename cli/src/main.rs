//! `foodorder`: the platform's admin CLI. Dead-lettered records listed, shown
//! and sent back to their source topics once the cause is fixed; an order's
//! trace as a waterfall in the terminal (the local substitute for Jaeger's
//! UI); quick looks at an order.
//!
//! Settings come from flags or the environment the one-command run writes to
//! `target/run/credentials/admin.env` (`KAFKA_BOOTSTRAP_SERVERS`,
//! `KAFKA_SASL_*`), so `set -a; . target/run/credentials/admin.env` is all the
//! set-up it needs. Every failure a user can cause (a wrong address, a topic
//! that is no dead-letter topic, an offset or a trace that is not there) is
//! one line on stderr and exit status 1; a usage error is status 2.

mod dlq;
mod kafka;
mod order;
mod trace;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "foodorder",
    version,
    about = "The food-ordering platform's admin CLI: dead letters, traces, orders"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Dead-letter topics: list, show and redrive their records.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// An order's trace as a waterfall (service, span, start offset, duration, errors), from Jaeger's query API.
    Trace(trace::TraceArgs),
    /// Quick looks at an order through the gRPC API.
    #[command(subcommand)]
    Order(order::OrderCommand),
}

fn main() {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Dlq(command) => dlq::run(command),
        Command::Trace(args) => runtime().and_then(|rt| rt.block_on(trace::run(args))),
        Command::Order(command) => runtime().and_then(|rt| rt.block_on(order::run(command))),
    };
    if let Err(error) = outcome {
        // One line: the causes joined, no backtrace.
        let message = format!("{error:#}").replace('\n', " ");
        eprintln!("foodorder: {message}");
        std::process::exit(1);
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// A progress bar on stderr for `total` steps, hidden when stderr is not a terminal.
pub fn progress(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

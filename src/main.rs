//! The `rinha` binary: one subcommand per role, so one image serves every container.
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "rinha",
    version,
    about = "Rinha de Backend 2025 payment intermediary on shared memory"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the whole engine natively: balancer, API processes, consumers (and simulators when no processors are given).
    Up(rinha::up::Args),
    /// The load balancer on port 9999.
    Lb(rinha::lb::Args),
    /// An API process: answers the contest's HTTP API from the shared file.
    Api(rinha::api::Args),
    /// A consumer process: sends queued payments to the processors.
    Consumer(rinha::consumer::Args),
    /// The payment-processor simulator.
    Processor(rinha::sim::Args),
    /// Run the contest's load test against the engine (or any --target) and print the score.
    Contest(rinha::contest::Args),
    /// Test and benchmark helper: a worker process on the shared file (used by tests/ and benches/).
    #[command(hide = true)]
    ShmWorker(rinha::shm::worker::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Up(a) => rinha::up::run(a),
        Cmd::Lb(a) => rinha::lb::run(a),
        Cmd::Api(a) => rinha::api::run(a),
        Cmd::Consumer(a) => rinha::consumer::run(a),
        Cmd::Processor(a) => rinha::sim::run(a),
        Cmd::Contest(a) => rinha::contest::run(a),
        Cmd::ShmWorker(a) => rinha::shm::worker::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rinha: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

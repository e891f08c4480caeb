//! The `fleetlm` command line. Only wiring lives here.
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "fleetlm", version, about = "FleetLM: a durable, replicated conversation log for LLM applications")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server (not built yet: exits with an error instead of pretending).
    Serve,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => {
            eprintln!(
                "fleetlm serve: the HTTP server is not implemented yet (only the write-ahead log has landed; \
                 see README.md). Nothing is listening."
            );
            std::process::ExitCode::from(2)
        }
    }
}

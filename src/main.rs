use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = gyro::cli::Cli::parse();
    match gyro::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gyro: error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

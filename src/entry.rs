//! The CLI's process entry point.

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// The taoflow command line: parse, set up logging and the async runtime, run, exit.
/// `src/main.rs` (the default build) and `src/bin/taoflow-torch.rs` (the GPU engine of a
/// build with the `torch` feature) call it.
pub fn cli_main() -> ! {
    let cli = crate::cli::Cli::parse();
    crate::commands::set_cuda_jit_cache(&cli);
    let default = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_env("TAOFLOW_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(crate::ui::color_enabled())
        .without_time()
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(crate::commands::EXIT_STORE);
        }
    };
    let code = rt.block_on(crate::commands::main(cli));
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    std::process::exit(code);
}

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = taoflow::cli::Cli::parse();
    taoflow::commands::set_cuda_jit_cache(&cli);
    let default = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_env("TAOFLOW_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(taoflow::ui::color_enabled())
        .without_time()
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(taoflow::commands::EXIT_STORE);
        }
    };
    let code = rt.block_on(taoflow::commands::main(cli));
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    std::process::exit(code);
}

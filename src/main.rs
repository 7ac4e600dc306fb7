//! `taoflow`. The default build is the CLI itself. A build with the `torch` feature makes
//! this the launcher (crate::runtime::launch: it finds a libtorch of the right release
//! without LD_LIBRARY_PATH and then runs `taoflow-torch`, the CLI with the GPU engine); it
//! links no libtorch, so it starts on any machine and `taoflow doctor` works there.

#[cfg(not(feature = "torch"))]
fn main() {
    taoflow::entry::cli_main()
}

#[cfg(feature = "torch")]
#[path = "runtime.rs"]
#[allow(dead_code)]
mod runtime;

#[cfg(feature = "torch")]
fn main() {
    runtime::launch()
}

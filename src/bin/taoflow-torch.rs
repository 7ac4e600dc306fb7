//! `taoflow-torch`: the CLI with the GPU engine, in a build with the `torch` feature. It
//! links libtorch; users run `taoflow` (src/main.rs), which finds the right libtorch and
//! runs this program with it (crate::runtime).

fn main() {
    taoflow::entry::cli_main()
}

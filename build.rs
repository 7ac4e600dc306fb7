//! With the `torch` feature, compiles the libtorch shim (src/model/torch/shim.cpp) against
//! the headers of $LIBTORCH (scripts/libtorch.sh); without it, does nothing.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "torch")]
    {
        println!("cargo:rerun-if-changed=src/model/torch/shim.cpp");
        println!("cargo:rerun-if-env-changed=LIBTORCH");
        let root = std::env::var("LIBTORCH").unwrap_or_else(|_| format!("{}/.libtorch", env!("CARGO_MANIFEST_DIR")));
        let inc = std::path::Path::new(&root).join("include");
        if !inc.is_dir() {
            panic!("the `torch` feature needs libtorch's headers: `{}` is missing; run scripts/libtorch.sh (or set LIBTORCH)", inc.display());
        }
        cc::Build::new()
            .cpp(true)
            .file("src/model/torch/shim.cpp")
            .include(&inc)
            .include(inc.join("torch/csrc/api/include"))
            .flag("-std=c++17")
            .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
            .flag_if_supported("-Wno-unused-parameter")
            .flag_if_supported("-Wno-deprecated-declarations")
            .warnings(false)
            .compile("taoflow_torch_shim");
    }
}

//! Records the git commit the binary is built from (`taoflow --version` = TAOFLOW_VERSION:
//! `0.1.0 (<commit>)`; the bare version outside a git checkout).
//! With the `torch` feature, compiles the libtorch shim (src/model/torch/shim.cpp) against
//! the headers of $LIBTORCH (scripts/libtorch.sh); without it, does nothing.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    commit();
    #[cfg(feature = "torch")]
    {
        println!("cargo:rerun-if-changed=src/model/torch/shim.cpp");
        println!("cargo:rerun-if-env-changed=LIBTORCH");
        let root = std::env::var("LIBTORCH").unwrap_or_else(|_| format!("{}/.libtorch", env!("CARGO_MANIFEST_DIR")));
        let inc = std::path::Path::new(&root).join("include");
        if !inc.is_dir() {
            panic!("the `torch` feature needs libtorch's headers: `{}` is missing; run scripts/libtorch.sh (or set LIBTORCH)", inc.display());
        }
        // The release the engine is built against, which the `taoflow` launcher checks
        // before anything loads libtorch (src/runtime.rs): `build-version` of a libtorch
        // folder (scripts/libtorch.sh writes one) or `version.py` of a torch package.
        let root_dir = std::fs::canonicalize(&root).unwrap_or_else(|_| std::path::PathBuf::from(&root));
        println!("cargo:rerun-if-changed={}", root_dir.join("build-version").display());
        println!("cargo:rerun-if-changed={}", root_dir.join("version.py").display());
        let version = std::fs::read_to_string(root_dir.join("build-version")).ok().map(|t| t.trim().to_string()).or_else(|| {
            let text = std::fs::read_to_string(root_dir.join("version.py")).ok()?;
            text.lines().find(|l| l.starts_with("__version__")).and_then(|l| l.split_once('=')).map(|(_, v)| v.trim().trim_matches(|c| c == '\'' || c == '"').to_string())
        });
        let Some(version) = version.filter(|v| !v.is_empty()) else {
            panic!("the `torch` feature needs to know libtorch's version: neither `{0}/build-version` nor `{0}/version.py` is there (scripts/libtorch.sh writes build-version)", root_dir.display());
        };
        println!("cargo:rustc-env=TAOFLOW_LIBTORCH_VERSION={version}");
        println!("cargo:rustc-env=TAOFLOW_BUILD_LIBTORCH={}", root_dir.display());
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

fn commit() {
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let git = |args: &[&str]| std::process::Command::new("git").args(args).output().ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) else {
        println!("cargo:rustc-env=TAOFLOW_VERSION={version}");
        return;
    };
    // Rebuild when HEAD moves: HEAD itself, the branch it names, packed refs.
    println!("cargo:rerun-if-changed={dir}/HEAD");
    println!("cargo:rerun-if-changed={dir}/packed-refs");
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        println!("cargo:rerun-if-changed={dir}/{r}");
    }
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(c) => println!("cargo:rustc-env=TAOFLOW_VERSION={version} ({c})"),
        None => println!("cargo:rustc-env=TAOFLOW_VERSION={version}"),
    }
}

//! `taoflow doctor`, and in a build with the `torch` feature the launcher (src/runtime.rs):
//! the binary starts and runs CPU stages with no LD_LIBRARY_PATH, a libtorch of another
//! release is a clear error before anything loads it (never the dynamic loader's "symbol
//! lookup error"), `doctor` answers even where no libtorch does, and it reports a machine
//! without a GPU as one. scripts/test.sh runs this file in both builds.

mod common;

use std::path::Path;

use common::fixtures::learnable;
use common::{Project, text};

fn has_nvidia_gpu() -> bool {
    Path::new("/proc/driver/nvidia/version").exists() || Path::new("/dev/nvidia0").exists()
}

fn doctor_json(p: &Project, env: &[(&str, &str)]) -> serde_json::Value {
    let mut c = p.cmd(&["doctor", "--json"]);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "doctor failed: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("doctor --json is not JSON ({e}): {}", text(&out)))
}

#[test]
fn doctor_reports_a_machine_without_a_gpu() {
    if has_nvidia_gpu() {
        eprintln!("skipping: this machine has an NVIDIA GPU");
        return;
    }
    let p = Project::new();
    let r = doctor_json(&p, &[]);
    assert_eq!(r["gpus"], serde_json::json!([]), "{r:#}");
    assert_eq!(r["driver"]["found"], false, "{r:#}");
    assert_eq!(r["ready"]["cpu"], true);
    assert_eq!(r["ready"]["gpu"], false);
    assert_eq!((&r["ready"]["gpu_kernels"], &r["ready"]["gpu_kernels_blocker"]), (&serde_json::json!(false), &serde_json::json!("no GPU")));
    let blockers = r["ready"]["gpu_blockers"].as_array().unwrap();
    assert!(blockers.iter().any(|b| b.as_str().unwrap().contains("no NVIDIA driver")), "{r:#}");
    assert!(r["fixes"].as_array().unwrap().iter().any(|f| f.as_str().unwrap().contains("nvidia-smi")), "{r:#}");
    assert_eq!(r["taoflow"]["gpu_engine"], cfg!(feature = "torch"));
    if cfg!(feature = "torch") {
        // The build's libtorch (scripts/libtorch.sh: 2.11, CPU half) or a better one.
        let lt = &r["libtorch"];
        assert!(lt["chosen"]["version"].as_str().unwrap().starts_with("2.11."), "{r:#}");
        assert_eq!(lt["built_against"].as_str().unwrap().split('.').take(2).collect::<Vec<_>>(), ["2", "11"]);
        // The engine itself ran `doctor`: its own look at libtorch is there, and it sees no
        // CUDA device.
        assert_eq!(r["torch"]["devices"], 0, "{r:#}");
    } else {
        assert!(r["libtorch"].is_null());
        assert!(blockers.iter().any(|b| b.as_str().unwrap().contains("no GPU engine")), "{r:#}");
        assert!(r["fixes"].as_array().unwrap().iter().any(|f| f.as_str().unwrap().contains("scripts/gpu-setup.sh")), "{r:#}");
    }
    assert_eq!(r["cpu"]["cores"], std::thread::available_parallelism().unwrap().get());
    assert_eq!(r["store"]["path"], p.store.display().to_string());
    assert_eq!(r["store"]["exists"], false);
    // onnxruntime and NVRTC as scripts/test.sh installs them (independent: pip's own answer).
    if std::env::var_os("TAOFLOW_REQUIRE_PYTHON").is_some() {
        let v = std::process::Command::new("python3").args(["-c", "import onnxruntime; print(onnxruntime.__version__)"]).output().unwrap();
        assert_eq!(r["onnxruntime"]["version"], String::from_utf8_lossy(&v.stdout).trim(), "{r:#}");
    }
    if std::env::var_os("TAOFLOW_REQUIRE_NVRTC").is_some() {
        assert_eq!(r["nvrtc"]["found"], true, "{r:#}");
        assert!(r["nvrtc"]["version"].as_str().unwrap().starts_with("13."), "{r:#}");
    }
    // The text form says the same.
    let out = p.run(&["doctor"]);
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    assert!(s.contains("gpus         none") && s.contains("GPU (--device cuda): no") && s.contains("CPU: yes"), "{s}");
    assert!(!s.contains("panicked"), "{s}");
}

/// A folder that looks like a torch package of `version`, whose libraries are not ELF files:
/// if anything tried to load them, the dynamic loader would fail loudly.
#[cfg(feature = "torch")]
fn fake_torch(dir: &Path, version: &str) {
    std::fs::create_dir_all(dir.join("lib")).unwrap();
    for lib in ["libtorch_cpu.so", "libtorch_cuda.so", "libc10.so", "libtorch.so"] {
        std::fs::write(dir.join("lib").join(lib), b"not a library").unwrap();
    }
    std::fs::write(dir.join("version.py"), format!("from typing import Optional\n__version__ = '{version}'\ncuda: Optional[str] = '13.0'\n")).unwrap();
}

#[cfg(feature = "torch")]
fn no_loader_error(s: &str) {
    for bad in ["symbol lookup error", "error while loading shared libraries", "undefined symbol", "panicked"] {
        assert!(!s.contains(bad), "{bad}: {s}");
    }
}

#[cfg(feature = "torch")]
#[test]
fn starts_and_runs_cpu_stages_with_no_library_path() {
    let p = Project::new();
    learnable(&p.path("imgs"), 4);
    p.write(
        "p.toml",
        "[pipeline]\nname = \"t\"\nseed = 3\n\
         [stages.convert]\nkind = \"convert\"\nformat = \"image_folder\"\nsource = \"imgs\"\nval_fraction = 0.25\n\
         [stages.train]\nkind = \"train\"\ndataset = \"convert\"\narch = \"resnet18\"\nwidth = 0.125\ninput_size = 16\nbatch_size = 8\nepochs = 1\n\
         [stages.probe]\nkind = \"exec\"\ncmd = \"echo \\\"lib=$LD_LIBRARY_PATH bin=$TAOFLOW_BIN launcher=$TAOFLOW_LAUNCHER\\\" > env.txt\"\nouts = [\"env.txt\"]\n",
    );
    // Nothing on LD_LIBRARY_PATH and no GPU runtime folder: the launcher finds the libtorch
    // the binary was built against on its own.
    let run = |extra: &[(&str, &str)]| {
        let mut c = p.cmd(&["run", "p.toml"]);
        c.env_remove("LD_LIBRARY_PATH").env_remove("TAOFLOW_LIBTORCH").env("TAOFLOW_RUNTIME", p.path("no-runtime"));
        for (k, v) in extra {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let out = run(&[]);
    let s = text(&out);
    no_loader_error(&s);
    assert!(out.status.success(), "{s}");
    assert!(p.path("outputs/t/train/model/metrics.json").exists(), "{s}");
    // An exec stage sees the user's environment, not the engine's: no libtorch folder on
    // its LD_LIBRARY_PATH, and TAOFLOW_BIN is the launcher a user would run.
    let env = p.read("env.txt");
    assert!(env.starts_with("lib= bin=") && env.contains("/taoflow launcher=\n"), "{env}");
    assert!(!env.contains("taoflow-torch"), "{env}");
    // A PyTorch of another release first on LD_LIBRARY_PATH (the failure) is passed
    // over for the right one, and `doctor` says why.
    let other = p.path("torch-2.15/torch");
    fake_torch(&other, "2.15.0+cu130");
    let lib = other.join("lib").display().to_string();
    let out = run(&[("LD_LIBRARY_PATH", &lib)]);
    no_loader_error(&text(&out));
    assert!(out.status.success(), "{}", text(&out));
    let r = doctor_json(&p, &[("LD_LIBRARY_PATH", &lib), ("TAOFLOW_RUNTIME", &p.path("no-runtime").display().to_string())]);
    assert!(r["libtorch"]["chosen"]["version"].as_str().unwrap().starts_with("2.11."), "{r:#}");
    let rejected = r["libtorch"]["rejected"].as_array().unwrap();
    assert!(rejected.iter().any(|x| x["version"] == "2.15.0+cu130" && x["from"] == "LD_LIBRARY_PATH" && x["reason"].as_str().unwrap().contains("2.11")), "{r:#}");
    // The same for a GPU runtime folder of the wrong release.
    let rt = p.path("runtime-2.15");
    fake_torch(&rt.join("torch"), "2.15.0+cu130");
    let r = doctor_json(&p, &[("TAOFLOW_RUNTIME", &rt.display().to_string())]);
    assert!(r["libtorch"]["rejected"].as_array().unwrap().iter().any(|x| x["from"] == "the GPU runtime folder"), "{r:#}");
    let out = p.cmd(&["--version"]).env_remove("LD_LIBRARY_PATH").output().unwrap();
    assert!(out.status.success() && text(&out).starts_with("taoflow "), "{}", text(&out));
}

#[cfg(feature = "torch")]
#[test]
fn another_libtorch_release_is_a_clear_error() {
    let p = Project::new();
    let other = p.path("site/torch");
    fake_torch(&other, "2.15.0+cu130");
    p.write("p.toml", "[pipeline]\nname = \"t\"\n[stages.a]\nkind = \"exec\"\ncmd = \"echo a > a.txt\"\nouts = [\"a.txt\"]\n");
    let out = p.cmd(&["run", "p.toml"]).env_remove("LD_LIBRARY_PATH").env("TAOFLOW_LIBTORCH", &other).output().unwrap();
    let s = text(&out);
    no_loader_error(&s);
    assert_eq!(out.status.code(), Some(4), "{s}");
    // Which release was found, which is needed, and the one command that fixes it.
    assert!(s.contains("2.15.0+cu130") && s.contains("needs 2.11.x") && s.contains("pip install --target") && s.contains("'torch==2.11.0'"), "{s}");
    assert!(!p.path("outputs").exists() && !p.store.exists(), "nothing may run: {s}");
    // A folder with no libtorch at all says so.
    let out = p.cmd(&["run", "p.toml"]).env("TAOFLOW_LIBTORCH", p.path("nothing")).output().unwrap();
    let s = text(&out);
    assert_eq!(out.status.code(), Some(4), "{s}");
    assert!(s.contains("no libtorch there") && s.contains("pip install --target"), "{s}");
    // `doctor` still answers (the launcher's own report) and names the fix.
    let r = doctor_json(&p, &[("TAOFLOW_LIBTORCH", &other.display().to_string())]);
    assert!(r["libtorch"]["chosen"].is_null(), "{r:#}");
    assert!(r["libtorch"]["error"].as_str().unwrap().contains("2.15.0"), "{r:#}");
    assert!(r["torch"].is_null(), "the engine cannot have run: {r:#}");
    assert_eq!(r["ready"]["gpu"], false);
    assert!(r["fixes"].as_array().unwrap().iter().any(|f| f.as_str().unwrap().contains("pip install --target")), "{r:#}");
    let out = p.cmd(&["--version"]).env("TAOFLOW_LIBTORCH", &other).output().unwrap();
    assert!(out.status.success() && text(&out).starts_with("taoflow 0."), "{}", text(&out));
}

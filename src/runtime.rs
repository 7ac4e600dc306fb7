//! Where the libraries taoflow loads at run time come from — libtorch (the GPU engine),
//! onnxruntime (CPU inference), NVIDIA's driver, NVRTC and cuDNN — and `taoflow doctor`,
//! which reports them.
//!
//! **libtorch.** A build with the `torch` feature is two programs: `taoflow`, a launcher that
//! links no libtorch ([`launch`]), and `taoflow-torch` beside it, the real CLI with the GPU
//! engine. The launcher finds a libtorch of the release the engine was built against,
//! checks its version *before* anything loads it, and `exec`s the engine with that
//! libtorch first on `LD_LIBRARY_PATH`; so no `LD_LIBRARY_PATH` is needed, a PyTorch of
//! another version is never loaded (a clear error instead of the dynamic loader's "symbol
//! lookup error"), and `doctor` works where no libtorch does. It looks, in order, at:
//!
//! 1. `TAOFLOW_LIBTORCH` (a `torch` package folder or a libtorch folder): the only place
//!    looked at when set;
//! 2. the GPU runtime the set-up installs ([`runtime_dir`]: `TAOFLOW_RUNTIME`, else
//!    `$XDG_DATA_HOME/taoflow/torch-<version>`, i.e. `~/.local/share/...`): PyPI's torch
//!    wheel and the NVIDIA wheels it pins (cuDNN, cuBLAS, NCCL, NVRTC …) in one folder;
//! 3. folders on `LD_LIBRARY_PATH` that hold `libtorch_cpu.so`;
//! 4. the `torch` package of the machine's Python (`TAOFLOW_PYTHON`, `$VIRTUAL_ENV`'s,
//!    `python3`), when it is the same release;
//! 5. the libtorch the binary was built against (scripts/libtorch.sh's `.libtorch`: the CPU
//!    half only).
//!
//! The first of the right release that has the CUDA half (`libtorch_cuda.so`) wins; else the
//! first of the right release (CPU stages run; `--device cuda` says what is missing).
//! "The right release" is the same major.minor as the build's (libtorch's C++ ABI changes
//! between minor releases; tch's generated bindings with it).
//!
//! This file uses std, libc, cudarc and serde_json, and nothing else of the crate: the
//! launcher (src/main.rs) compiles it too, and must start where libtorch cannot be loaded.

use std::ffi::{CString, OsStr, OsString};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The version string of the libtorch the GPU engine was built against (build.rs reads it
/// from `$LIBTORCH`), e.g. `2.11.0+cu130`; `None` in a build without the `torch` feature.
pub const BUILT_LIBTORCH: Option<&str> = option_env!("TAOFLOW_LIBTORCH_VERSION");
/// Where that libtorch was at build time (scripts/libtorch.sh's `.libtorch`, or the set-up's
/// runtime).
const BUILT_LIBTORCH_DIR: Option<&str> = option_env!("TAOFLOW_BUILD_LIBTORCH");
/// The PyTorch release the set-up installs when the build names none.
pub const TORCH_RELEASE: &str = "2.11.0";
/// The exit status when the engine cannot start because no usable libtorch was found.
pub const EXIT_NO_LIBTORCH: i32 = 4;
/// The GPU engine's program, beside the launcher.
pub const ENGINE_BIN: &str = "taoflow-torch";

/// The PyTorch release the engine needs: `2.11.0` (the build's, without its `+cu130`).
pub fn needed_release() -> String {
    BUILT_LIBTORCH.map(|v| base_version(v).to_string()).unwrap_or_else(|| TORCH_RELEASE.to_string())
}

fn base_version(v: &str) -> &str {
    v.split('+').next().unwrap_or(v).trim()
}

/// `2.11` of `2.11.0+cu130`.
fn major_minor(v: &str) -> String {
    base_version(v).split('.').take(2).collect::<Vec<_>>().join(".")
}

/// Where the set-up puts the GPU runtime: `TAOFLOW_RUNTIME`, else
/// `$XDG_DATA_HOME/taoflow/torch-<release>` (`~/.local/share/taoflow/torch-2.11.0`).
pub fn runtime_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TAOFLOW_RUNTIME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let data = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()).map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share"))).unwrap_or_else(|| PathBuf::from(".local/share"));
    data.join("taoflow").join(format!("torch-{}", needed_release()))
}

/// The one command that installs the GPU runtime (what scripts/gpu-setup.sh runs).
pub fn setup_command() -> String {
    let dir = runtime_dir();
    let shown = match std::env::var_os("HOME").map(PathBuf::from) {
        Some(h) if dir.starts_with(&h) && std::env::var_os("TAOFLOW_RUNTIME").is_none() => format!("~/{}", dir.strip_prefix(&h).unwrap_or(&dir).display()),
        _ => shell_quote(&dir.display().to_string()),
    };
    format!("python3 -m pip install --target {shown} 'torch=={}'", needed_release())
}

fn shell_quote(s: &str) -> String {
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+=:~".contains(c)) { s.to_string() } else { format!("'{}'", s.replace('\'', "'\\''")) }
}

/// How a libtorch was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Env,
    Runtime,
    LdLibraryPath,
    Python(String),
    Build,
}

impl Origin {
    pub fn describe(&self) -> String {
        match self {
            Origin::Env => "TAOFLOW_LIBTORCH".into(),
            Origin::Runtime => "the GPU runtime folder".into(),
            Origin::LdLibraryPath => "LD_LIBRARY_PATH".into(),
            Origin::Python(py) => format!("the torch package of `{py}`"),
            Origin::Build => "the libtorch this binary was built against".into(),
        }
    }
}

/// A libtorch on disk: its `lib/` folder, version and whether it has the CUDA half.
#[derive(Clone, Debug)]
pub struct Libtorch {
    /// The folder holding `lib/` (a `torch` package folder or a libtorch folder).
    pub root: PathBuf,
    pub lib: PathBuf,
    /// `2.11.0+cu130`, from `version.py` (a torch package) or `build-version` (libtorch).
    pub version: Option<String>,
    /// The CUDA release it was built for (`13.0`), if any.
    pub cuda: Option<String>,
    /// `lib/libtorch_cuda.so` is there.
    pub has_cuda: bool,
    pub origin: Origin,
}

impl Libtorch {
    /// The libtorch at `path` (its root, or its `lib/` folder), if `libtorch_cpu.so` is there.
    pub fn inspect(path: &Path, origin: Origin) -> Option<Libtorch> {
        let (root, lib) = if path.join("lib").join("libtorch_cpu.so").is_file() {
            (path.to_path_buf(), path.join("lib"))
        } else if path.join("libtorch_cpu.so").is_file() {
            (path.parent().map(Path::to_path_buf).unwrap_or_else(|| path.to_path_buf()), path.to_path_buf())
        } else {
            return None;
        };
        let (mut version, mut cuda) = (None, None);
        if let Ok(text) = std::fs::read_to_string(root.join("version.py")) {
            for line in text.lines() {
                let value = || line.split_once('=').map(|(_, v)| v.trim().trim_matches(|c| c == '\'' || c == '"').to_string());
                if line.starts_with("__version__") {
                    version = value();
                } else if line.starts_with("cuda") {
                    cuda = value().filter(|v| v != "None");
                }
            }
        } else if let Ok(text) = std::fs::read_to_string(root.join("build-version")) {
            let v = text.trim().to_string();
            cuda = v.split_once("+cu").map(|(_, c)| c.trim()).filter(|c| c.len() >= 2 && c.chars().all(|ch| ch.is_ascii_digit())).map(|c| format!("{}.{}", &c[..c.len() - 1], &c[c.len() - 1..]));
            version = Some(v).filter(|v| !v.is_empty());
        }
        let has_cuda = lib.join("libtorch_cuda.so").is_file();
        Some(Libtorch { root, lib, version, cuda, has_cuda, origin })
    }

    /// Same major.minor release as `need`.
    pub fn matches(&self, need: &str) -> bool {
        self.version.as_deref().is_some_and(|v| major_minor(v) == major_minor(need))
    }

    /// `nvidia/cu13/lib` (NVRTC, cuBLAS …) of a site-packages layout, where there is one.
    fn nvidia_lib_dirs(&self) -> Vec<PathBuf> {
        let Some(site) = self.root.parent() else { return Vec::new() };
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(site.join("nvidia")).into_iter().flatten().flatten().map(|e| e.path().join("lib")).filter(|p| p.join("libnvrtc.so.13").exists() || p.join("libnvrtc.so.12").exists()).collect();
        dirs.sort();
        dirs
    }
}

/// What the search found: the libtorch to use, and every other one seen with why it was not.
#[derive(Debug, Default)]
pub struct Search {
    pub chosen: Option<Libtorch>,
    pub rejected: Vec<(PathBuf, Origin, Option<String>, String)>,
    /// Why the search failed outright (a bad `TAOFLOW_LIBTORCH`).
    pub error: Option<String>,
    pub python: Vec<String>,
}

impl Search {
    /// The error to print when the engine cannot start, with the command that fixes it.
    pub fn failure(&self) -> String {
        let need = needed_release();
        let mut msg = match &self.error {
            Some(e) => e.clone(),
            None => format!("this taoflow's GPU engine needs libtorch {} (PyTorch {need}) and none was found", major_minor(&need)),
        };
        for (path, origin, version, why) in &self.rejected {
            msg.push_str(&format!("\n    {} ({}): {} — {why}", path.display(), origin.describe(), version.as_deref().unwrap_or("version unknown")));
        }
        msg.push_str(&format!(
            "\n  = hint: install the GPU runtime taoflow looks for ({}):\n      {}\n    (scripts/gpu-setup.sh in a taoflow checkout does the same), or point TAOFLOW_LIBTORCH at a PyTorch {need} installation's `torch` folder; `taoflow doctor` shows what was found",
            runtime_dir().display(),
            setup_command()
        ));
        msg
    }
}

/// The interpreters whose `torch` package is looked at, in order.
fn pythons() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(p) = std::env::var("TAOFLOW_PYTHON")
        && !p.is_empty()
    {
        out.push(p);
    }
    if let Some(v) = std::env::var_os("VIRTUAL_ENV").filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(v).join("bin").join("python").display().to_string());
    }
    out.push("python3".into());
    out.dedup();
    out
}

/// The folder of Python package `name` in interpreter `py`'s environment (without importing
/// it: `importlib.util.find_spec`, tens of milliseconds).
pub fn python_package(py: &str, name: &str) -> Option<PathBuf> {
    let code = format!("import importlib.util as u; s = u.find_spec('{name}'); print(s.submodule_search_locations[0] if s and s.submodule_search_locations else '')");
    let out = std::process::Command::new(py).args(["-c", &code]).stdin(std::process::Stdio::null()).stderr(std::process::Stdio::null()).output().ok()?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !dir.is_empty()).then(|| PathBuf::from(dir))
}

/// The user's value of `name` (`TAOFLOW_LIBTORCH`, `LD_LIBRARY_PATH`): in a process the
/// launcher started, what the launcher saw, not what it set.
fn user_env(name: &str) -> Option<OsString> {
    if std::env::var_os("TAOFLOW_LAUNCHER").is_some() {
        return std::env::var_os(format!("TAOFLOW_USER_{name}")).filter(|v| !v.is_empty());
    }
    std::env::var_os(name).filter(|v| !v.is_empty())
}

/// Find the libtorch the engine will load (see the module docs for the order).
pub fn find_libtorch() -> Search {
    let need = needed_release();
    let mut search = Search::default();
    if let Some(dir) = user_env("TAOFLOW_LIBTORCH") {
        let dir = PathBuf::from(dir);
        match Libtorch::inspect(&dir, Origin::Env) {
            None => search.error = Some(format!("TAOFLOW_LIBTORCH={}: no libtorch there (neither lib/libtorch_cpu.so nor libtorch_cpu.so)", dir.display())),
            Some(lt) if lt.version.is_some() && !lt.matches(&need) => {
                search.error = Some(format!("TAOFLOW_LIBTORCH={} is libtorch {}, but this taoflow was built against {} and needs {}.x", dir.display(), lt.version.as_deref().unwrap_or("?"), BUILT_LIBTORCH.unwrap_or(&need), major_minor(&need)))
            }
            Some(lt) => search.chosen = Some(lt),
        }
        return search;
    }
    let mut fallback: Option<Libtorch> = None;
    let mut consider = |search: &mut Search, lt: Libtorch| -> bool {
        if search.chosen.iter().chain(fallback.iter()).any(|c| same_dir(&c.lib, &lt.lib)) {
            return false;
        }
        if lt.version.is_none() {
            search.rejected.push((lt.root.clone(), lt.origin.clone(), None, "no version.py or build-version beside it to check".into()));
        } else if !lt.matches(&need) {
            search.rejected.push((lt.root.clone(), lt.origin.clone(), lt.version.clone(), format!("taoflow needs {}.x", major_minor(&need))));
        } else if lt.has_cuda {
            search.chosen = Some(lt);
            return true;
        } else if fallback.is_none() {
            fallback = Some(lt);
        }
        false
    };
    let runtime = runtime_dir().join("torch");
    if let Some(lt) = Libtorch::inspect(&runtime, Origin::Runtime)
        && consider(&mut search, lt)
    {
        return search;
    }
    for dir in user_env("LD_LIBRARY_PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default() {
        if let Some(lt) = Libtorch::inspect(&dir, Origin::LdLibraryPath)
            && consider(&mut search, lt)
        {
            return search;
        }
    }
    for py in pythons() {
        search.python.push(py.clone());
        if let Some(dir) = python_package(&py, "torch")
            && let Some(lt) = Libtorch::inspect(&dir, Origin::Python(py.clone()))
            && consider(&mut search, lt)
        {
            return search;
        }
    }
    if let Some(dir) = BUILT_LIBTORCH_DIR
        && let Some(lt) = Libtorch::inspect(Path::new(dir), Origin::Build)
        && consider(&mut search, lt)
    {
        return search;
    }
    search.chosen = fallback;
    search
}

fn same_dir(a: &Path, b: &Path) -> bool {
    a == b || matches!((std::fs::canonicalize(a), std::fs::canonicalize(b)), (Ok(x), Ok(y)) if x == y)
}

/// `LD_LIBRARY_PATH` for the engine: the chosen libtorch's `lib/` and its NVIDIA libraries
/// first, then what was there minus other libtorch folders (so nothing of another release
/// is found by name).
pub fn engine_library_path(lt: &Libtorch) -> OsString {
    let mut dirs = vec![lt.lib.clone()];
    dirs.extend(lt.nvidia_lib_dirs());
    if let Some(old) = user_env("LD_LIBRARY_PATH") {
        for d in std::env::split_paths(&old) {
            if !d.as_os_str().is_empty() && !d.join("libtorch_cpu.so").exists() && !dirs.contains(&d) {
                dirs.push(d);
            }
        }
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// For a command taoflow runs (an `exec` stage): `TAOFLOW_BIN` is the `taoflow` a user
/// would run, and, in a process the launcher started, the environment is the user's again
/// (their `LD_LIBRARY_PATH` and `TAOFLOW_LIBTORCH`, not the engine's), so a Python with its
/// own PyTorch in the command finds nothing of ours first.
pub fn prepare_child(cmd: &mut std::process::Command) {
    let exe = std::env::current_exe().unwrap_or_else(|_| "taoflow".into());
    if std::env::var_os("TAOFLOW_LAUNCHER").is_none() {
        cmd.env("TAOFLOW_BIN", exe);
        return;
    }
    let launcher = exe.parent().map(|d| d.join("taoflow")).filter(|p| p.is_file()).unwrap_or(exe);
    cmd.env("TAOFLOW_BIN", launcher);
    for name in ["LD_LIBRARY_PATH", "TAOFLOW_LIBTORCH"] {
        match user_env(name) {
            Some(v) => cmd.env(name, v),
            None => cmd.env_remove(name),
        };
        cmd.env_remove(format!("TAOFLOW_USER_{name}"));
    }
    cmd.env_remove("TAOFLOW_LAUNCHER").env_remove("TAOFLOW_LIBTORCH_ORIGIN");
}

/// The `taoflow` launcher of a build with the `torch` feature: find libtorch, then run the
/// engine (`taoflow-torch` beside it) with it; without one, `doctor` and `--version` still
/// answer and everything else fails with [`Search::failure`].
pub fn launch() -> ! {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let search = find_libtorch();
    let exe = std::env::current_exe().ok();
    let engine = exe.as_ref().and_then(|e| e.parent()).map(|d| d.join(ENGINE_BIN));
    let head = if std::env::var_os("NO_COLOR").is_none() && unsafe { libc::isatty(2) } == 1 { "\x1b[1;31merror\x1b[0m" } else { "error" };
    if let (Some(lt), Some(engine)) = (&search.chosen, &engine)
        && engine.is_file()
    {
        use std::os::unix::process::CommandExt;
        let user = |n: &str| user_env(n).unwrap_or_default();
        let err = std::process::Command::new(engine)
            .arg0("taoflow")
            .args(&args)
            .env("TAOFLOW_USER_TAOFLOW_LIBTORCH", user("TAOFLOW_LIBTORCH"))
            .env("TAOFLOW_USER_LD_LIBRARY_PATH", user("LD_LIBRARY_PATH"))
            .env("TAOFLOW_LAUNCHER", "1")
            .env("LD_LIBRARY_PATH", engine_library_path(lt))
            .env("TAOFLOW_LIBTORCH", &lt.root)
            .env("TAOFLOW_LIBTORCH_ORIGIN", lt.origin.describe())
            .exec();
        eprintln!("{head}: cannot run the GPU engine `{}`: {err}", engine.display());
        std::process::exit(EXIT_NO_LIBTORCH);
    }
    // The engine cannot run: answer what needs no engine.
    let words: Vec<&str> = args.iter().filter_map(|a| a.to_str()).collect();
    if words.iter().any(|a| *a == "--version" || *a == "-V") && subcommand(&args).is_none() {
        println!("taoflow {}", option_env!("TAOFLOW_VERSION").unwrap_or("?"));
        std::process::exit(0);
    }
    if subcommand(&args).as_deref() == Some("doctor") {
        let json = words.contains(&"--json");
        let store = flag_value(&args, "--store").map(PathBuf::from).or_else(|| std::env::var_os("TAOFLOW_STORE").map(PathBuf::from));
        let pipeline = positional_after(&args, "doctor").map(PathBuf::from);
        let report = doctor(DoctorInput { store, pipeline, search: Some(search), torch: None, engine_missing: engine.filter(|e| !e.is_file()) });
        print!("{}", if json { format!("{}\n", serde_json::to_string_pretty(&report).unwrap_or_default()) } else { render(&report) });
        std::process::exit(0);
    }
    match engine {
        Some(e) if !e.is_file() => eprintln!("{head}: the GPU engine `{}` is missing beside the `taoflow` launcher\n  = hint: install both programs of a build with the `torch` feature (cargo build --release --features torch builds taoflow and taoflow-torch)", e.display()),
        _ => eprintln!("{head}: {}", search.failure()),
    }
    std::process::exit(EXIT_NO_LIBTORCH);
}

/// The first word of `args` that is not an option (the global `--store DIR` takes a value).
fn first_positional(args: &[OsString]) -> Option<&OsString> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--store" {
            it.next();
        } else if !s.starts_with('-') {
            return Some(a);
        }
    }
    None
}

/// The subcommand of a taoflow command line.
fn subcommand(args: &[OsString]) -> Option<String> {
    first_positional(args).map(|a| a.to_string_lossy().into_owned())
}

fn flag_value(args: &[OsString], flag: &str) -> Option<OsString> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == flag {
            return it.next().cloned();
        }
        if let Some(v) = s.strip_prefix(&format!("{flag}=")) {
            return Some(v.into());
        }
    }
    None
}

/// The first positional word after `word` (`doctor`'s pipeline).
fn positional_after(args: &[OsString], word: &str) -> Option<OsString> {
    let at = args.iter().position(|a| a.as_os_str() == OsStr::new(word))?;
    first_positional(&args[at + 1..]).cloned()
}

/// Where the store is: `--store`/`TAOFLOW_STORE`, else `cache/` in the nearest folder
/// above the pipeline that has a `cache/` folder or is a git checkout, else beside it.
pub fn store_root(flag: Option<&Path>, pipeline_dir: &Path) -> PathBuf {
    match flag {
        Some(s) => s.to_path_buf(),
        None => project_root(pipeline_dir).join("cache"),
    }
}

/// The nearest folder above `pipeline_dir` that has a `cache/` folder or is a git checkout
/// (relative paths of the store and the lock file are resolved from it), else itself.
pub fn project_root(pipeline_dir: &Path) -> PathBuf {
    for anc in pipeline_dir.ancestors() {
        if anc.join("cache").is_dir() || anc.join(".git").exists() {
            return anc.to_path_buf();
        }
    }
    pipeline_dir.to_path_buf()
}

/// The CPU engine's threads: `TAOFLOW_TRAIN_THREADS`, else the cores (at most 8). They only
/// run a batch's chunks; what is computed does not depend on them.
pub fn cpu_engine_threads() -> usize {
    std::env::var("TAOFLOW_TRAIN_THREADS").ok().and_then(|v| v.parse::<usize>().ok()).filter(|n| *n > 0).unwrap_or_else(|| cores().min(8))
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The environment variable that points at (or switches off) onnxruntime.
pub const ONNXRUNTIME_ENV: &str = "TAOFLOW_ONNXRUNTIME";

/// Where `libonnxruntime.so*` is, or why none is used: `TAOFLOW_ONNXRUNTIME` (a path to the
/// library or a folder holding it, or `off`), else beside the taoflow binary or in its
/// `lib/` folder, else the `onnxruntime` PyPI wheel of the machine's `python3`.
pub fn onnxruntime() -> Result<PathBuf, String> {
    let env = ONNXRUNTIME_ENV;
    if let Ok(v) = std::env::var(env) {
        let v = v.trim();
        if matches!(v.to_ascii_lowercase().as_str(), "off" | "0" | "no" | "false" | "none" | "tract") {
            return Err(format!("switched off by {env}={v}"));
        }
        if !v.is_empty() {
            let p = PathBuf::from(v);
            if p.is_file() {
                return Ok(p);
            }
            return onnxruntime_in(&p).or_else(|| onnxruntime_in(&p.join("capi"))).ok_or_else(|| format!("{env}={v}: no libonnxruntime.so* there\n  = hint: point it at the library file, the folder holding it, or the `onnxruntime` package folder of a pip install"));
        }
    }
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf))
        && let Some(p) = onnxruntime_in(&dir).or_else(|| onnxruntime_in(&dir.join("lib")))
    {
        return Ok(p);
    }
    for py in ["python3", "python"] {
        if let Some(dir) = python_package(py, "onnxruntime")
            && let Some(p) = onnxruntime_in(&dir.join("capi"))
        {
            return Ok(p);
        }
    }
    Err(format!("no onnxruntime found (pip install onnxruntime, or set {env})"))
}

/// The newest `libonnxruntime.so.<version>` (or plain `libonnxruntime.so`) in `dir`.
fn onnxruntime_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let rest = name.strip_prefix("libonnxruntime.so")?;
            let version: Option<Vec<u32>> = if rest.is_empty() { Some(Vec::new()) } else { rest.strip_prefix('.')?.split('.').map(|p| p.parse().ok()).collect() };
            Some((version?, e.path()))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

/// The version in an onnxruntime library's file name (`libonnxruntime.so.1.32.0`).
pub fn onnxruntime_version(path: &Path) -> Option<String> {
    path.file_name().and_then(|n| n.to_str()).and_then(|n| n.split_once(".so.").map(|(_, v)| v.to_string()))
}

/// What the engine itself saw of libtorch (only the engine can load it): the CUDA half
/// loaded or why not, the CUDA devices it sees, cuDNN.
#[derive(Debug, Clone)]
pub struct TorchProbe {
    pub cuda: Result<(), String>,
    pub devices: i64,
    pub cudnn: bool,
}

/// `doctor`'s inputs: where it runs from and what it already knows.
pub struct DoctorInput {
    pub store: Option<PathBuf>,
    pub pipeline: Option<PathBuf>,
    /// The libtorch search (a build with the `torch` feature), `None` without the engine.
    pub search: Option<Search>,
    /// The engine's own probe (when it runs `doctor`).
    pub torch: Option<TorchProbe>,
    /// The launcher found no engine program beside it.
    pub engine_missing: Option<PathBuf>,
}

/// The full path of a loaded shared library whose file name starts with `prefix`, from
/// /proc/self/maps.
fn loaded_path(prefix: &str) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| Path::new(p).file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix))).map(str::to_string)
}

/// NVIDIA's driver as taoflow loads it (cudarc: libcuda.so.1): its CUDA version and GPUs.
fn probe_driver() -> Value {
    let module = std::fs::read_to_string("/proc/driver/nvidia/version").ok().and_then(|t| {
        let line = t.lines().next()?.to_string();
        line.split_whitespace().find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains('.')).map(str::to_string)
    });
    // SAFETY: cudarc's dynamic loader: `is_culib_present` only tries to open the library.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return json!({"found": false, "kernel_module": module, "error": "libcuda.so.1 (NVIDIA's driver library) was not found", "gpus": []});
    }
    use cudarc::driver::sys;
    // SAFETY: the library is present (checked above); plain driver API calls with valid
    // out-pointers.
    unsafe {
        let path = loaded_path("libcuda.so");
        let init = sys::cuInit(0);
        let mut version = 0i32;
        sys::cuDriverGetVersion(&mut version);
        let cuda = (version > 0).then(|| format!("{}.{}", version / 1000, (version % 1000) / 10));
        if init != sys::CUresult::CUDA_SUCCESS {
            return json!({"found": true, "path": path, "kernel_module": module, "cuda": cuda, "error": format!("cuInit failed: {init:?}"), "gpus": []});
        }
        let mut count = 0i32;
        sys::cuDeviceGetCount(&mut count);
        let mut gpus = Vec::new();
        for i in 0..count {
            let mut dev = 0;
            if sys::cuDeviceGet(&mut dev, i) != sys::CUresult::CUDA_SUCCESS {
                continue;
            }
            let mut name = [0 as std::ffi::c_char; 256];
            sys::cuDeviceGetName(name.as_mut_ptr(), 255, dev);
            let name = std::ffi::CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned();
            let mut mem = 0usize;
            sys::cuDeviceTotalMem_v2(&mut mem, dev);
            let (mut major, mut minor) = (0, 0);
            sys::cuDeviceGetAttribute(&mut major, sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev);
            sys::cuDeviceGetAttribute(&mut minor, sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev);
            gpus.push(json!({"index": i, "name": name, "memory_mib": mem / (1 << 20), "compute_capability": format!("{major}.{minor}")}));
        }
        json!({"found": true, "path": path, "kernel_module": module, "cuda": cuda, "error": Value::Null, "gpus": gpus})
    }
}

/// NVRTC as taoflow loads it (cudarc), for our CUDA kernels.
fn probe_nvrtc() -> Value {
    // SAFETY: cudarc's dynamic loader; nvrtcVersion writes two ints.
    unsafe {
        if !cudarc::nvrtc::sys::is_culib_present() {
            return json!({"found": false});
        }
        let (mut major, mut minor) = (0, 0);
        cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor);
        json!({"found": true, "version": format!("{major}.{minor}"), "path": loaded_path("libnvrtc.so")})
    }
}

/// cuDNN: the one beside the chosen libtorch (a pip layout's nvidia/cudnn/lib), else by name.
fn probe_cudnn(lt: Option<&Libtorch>) -> Value {
    let mut names: Vec<String> = Vec::new();
    if let Some(site) = lt.and_then(|l| l.root.parent()) {
        names.push(site.join("nvidia/cudnn/lib/libcudnn.so.9").display().to_string());
    }
    names.push("libcudnn.so.9".into());
    for n in names {
        let Ok(c) = CString::new(n.clone()) else { continue };
        // SAFETY: dlopen/dlsym with valid C strings; cudnnGetVersion takes no arguments.
        unsafe {
            let h = libc::dlopen(c.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
            if h.is_null() {
                continue;
            }
            let sym = libc::dlsym(h, c"cudnnGetVersion".as_ptr());
            if sym.is_null() {
                continue;
            }
            let f: extern "C" fn() -> usize = std::mem::transmute(sym);
            let v = f();
            let version = if v >= 90000 { format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100) } else { format!("{}.{}.{}", v / 1000, (v % 1000) / 100, v % 100) };
            return json!({"found": true, "version": version, "path": loaded_path("libcudnn.so").unwrap_or(n)});
        }
    }
    json!({"found": false})
}

fn probe_store(store: &Path) -> Value {
    let exists = store.is_dir();
    let writable = exists && tempfile_probe(store);
    let mut at = store;
    while !at.exists() {
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => break,
        }
    }
    let free = CString::new(at.as_os_str().as_encoded_bytes()).ok().and_then(|c| {
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid C string and an out-struct.
        (unsafe { libc::statvfs(c.as_ptr(), &mut s) } == 0).then(|| s.f_bavail as u64 * s.f_frsize as u64)
    });
    json!({"path": store.display().to_string(), "exists": exists, "writable": writable, "free_bytes": free})
}

fn tempfile_probe(dir: &Path) -> bool {
    let p = dir.join(format!(".doctor-{}", std::process::id()));
    let ok = std::fs::write(&p, b"").is_ok();
    let _ = std::fs::remove_file(&p);
    ok
}

/// Can our NVRTC kernels (GPU augment, the engine's depthwise convolutions) run: a GPU,
/// NVRTC, and NVRTC not newer than the driver's CUDA (the driver refuses PTX of a newer
/// ISA)? Else why, and the fix where there is one beyond "no GPU".
fn kernel_check(gpus: usize, nvrtc: &Value, driver: &Value) -> Result<(), (String, Option<String>)> {
    let pair = |v: &Value| v.as_str().and_then(|v| Some((v.split('.').next()?.parse::<u32>().ok()?, v.split('.').nth(1).unwrap_or("0").parse::<u32>().ok()?)));
    if gpus == 0 {
        return Err(("no GPU".into(), None));
    }
    if nvrtc["found"] != json!(true) {
        return Err(("NVRTC not found".into(), Some("NVRTC (libnvrtc.so.13) was not found: GPU augment and our depthwise kernels need it; it comes with the GPU runtime (nvidia/cu13/lib), or put /usr/local/cuda/lib64 on LD_LIBRARY_PATH".into())));
    }
    let (n, d) = (nvrtc["version"].as_str().unwrap_or("?"), driver["cuda"].as_str().unwrap_or("?"));
    match (pair(&nvrtc["version"]), pair(&driver["cuda"])) {
        (Some(nv), Some(dv)) if nv > dv => Err((
            format!("NVRTC {n} is newer than the driver's CUDA {d}"),
            Some(format!("NVRTC {n} is newer than the driver's CUDA {d}, which refuses its PTX: put an NVRTC of CUDA {d} or older first on LD_LIBRARY_PATH (the GPU runtime's nvidia/cu13/lib), or update the driver")),
        )),
        _ => Ok(()),
    }
}

/// `taoflow doctor`: what this machine offers and what taoflow will use, with the fix for
/// each missing piece, as JSON (`--json` prints it; [`render`] is the text form).
pub fn doctor(input: DoctorInput) -> Value {
    let DoctorInput { store, pipeline, search, torch, engine_missing } = input;
    let mut fixes: Vec<String> = Vec::new();
    let gpu_engine = search.is_some();
    let need = needed_release();
    // The store, as `run` would find it for this pipeline (or the current folder).
    let dir = pipeline.as_deref().map(|p| p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf()).unwrap_or_else(|| PathBuf::from("."));
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let store = probe_store(&store_root(store.as_deref(), &dir));
    let ort = match onnxruntime() {
        Ok(p) => json!({"found": true, "path": p.display().to_string(), "version": onnxruntime_version(&p)}),
        Err(e) => {
            fixes.push("CPU inference runs on tract (slower) without onnxruntime: `python3 -m pip install onnxruntime`, or set TAOFLOW_ONNXRUNTIME to libonnxruntime.so".into());
            json!({"found": false, "error": e})
        }
    };
    let driver = probe_driver();
    let gpus = driver["gpus"].as_array().map(Vec::len).unwrap_or(0);
    let lt = search.as_ref().and_then(|s| s.chosen.as_ref());
    let cudnn = probe_cudnn(lt);
    let nvrtc = probe_nvrtc();
    let libtorch = search.as_ref().map(|s| {
        json!({
            "needed": format!("{}.x", major_minor(&need)),
            "built_against": BUILT_LIBTORCH,
            "chosen": s.chosen.as_ref().map(|l| json!({"path": l.root.display().to_string(), "version": l.version, "cuda": l.cuda, "cuda_half": l.has_cuda, "from": l.origin.describe()})),
            "rejected": s.rejected.iter().map(|(p, o, v, why)| json!({"path": p.display().to_string(), "from": o.describe(), "version": v, "reason": why})).collect::<Vec<_>>(),
            "error": s.error,
            "pythons_asked": s.python,
        })
    });
    // Can `--device cuda` work here? The first blocker, with its fix.
    let mut blockers: Vec<(String, String)> = Vec::new();
    let mut block = |what: String, fix: String| blockers.push((what, fix));
    if !gpu_engine {
        block("this build has no GPU engine (built without the `torch` feature)".into(), "bash scripts/gpu-setup.sh (the GPU runtime, then a build with `--features torch`); README \"On a GPU\"".into());
    }
    if let Some(e) = &engine_missing {
        block(format!("the GPU engine `{}` is missing beside the launcher", e.display()), "install taoflow-torch beside taoflow (cargo build/install with `--features torch` makes both)".into());
    }
    if driver["found"] != json!(true) {
        block("no NVIDIA driver (libcuda.so.1)".into(), "install NVIDIA's driver (R580 or newer for CUDA 13) and check with `nvidia-smi`".into());
    } else if gpus == 0 {
        block(format!("the driver sees no GPU ({})", driver["error"].as_str().unwrap_or("0 devices")), "check `nvidia-smi` and CUDA_VISIBLE_DEVICES".into());
    }
    if let Some(s) = &search {
        match &s.chosen {
            None => block("no libtorch of the right release".into(), setup_command()),
            Some(l) if !l.has_cuda => block(format!("the libtorch found ({}) has no CUDA half", l.root.display()), setup_command()),
            Some(l) => {
                let (drv, want) = (driver["cuda"].as_str().and_then(|v| v.split('.').next()?.parse::<u32>().ok()), l.cuda.as_deref().and_then(|v| v.split('.').next()?.parse::<u32>().ok()));
                if let (Some(d), Some(w)) = (drv, want)
                    && d < w
                {
                    block(format!("the driver supports CUDA {} but libtorch is built for CUDA {}", driver["cuda"].as_str().unwrap_or("?"), l.cuda.as_deref().unwrap_or("?")), format!("update NVIDIA's driver to one for CUDA {w}"));
                }
            }
        }
        if s.chosen.as_ref().is_some_and(|l| l.has_cuda) && cudnn["found"] != json!(true) {
            block("cuDNN (libcudnn.so.9) was not found".into(), setup_command());
        }
    }
    if let Some(t) = &torch {
        match &t.cuda {
            Err(e) => block(format!("libtorch's CUDA half did not load: {}", e.lines().next().unwrap_or(e)), setup_command()),
            Ok(()) if t.devices == 0 && gpus > 0 => block("libtorch sees no CUDA device".into(), "check `nvidia-smi` and CUDA_VISIBLE_DEVICES".into()),
            Ok(()) => {}
        }
    }
    let gpu_blocker = blockers.first().cloned();
    let mut first: Vec<String> = Vec::new();
    for (_, fix) in &blockers {
        if !first.contains(fix) {
            first.push(fix.clone());
        }
    }
    fixes.splice(0..0, first);
    let kernels = kernel_check(gpus, &nvrtc, &driver);
    if let Err((_, Some(fix))) = &kernels {
        fixes.push(fix.clone());
    }
    let kernels = kernels.map_err(|(why, _)| why);
    if store["exists"] == json!(true) && store["writable"] != json!(true) {
        fixes.push(format!("the store `{}` is not writable: pass --store DIR or set TAOFLOW_STORE", store["path"].as_str().unwrap_or("")));
    }
    fixes.dedup();
    json!({
        "taoflow": {"version": option_env!("TAOFLOW_VERSION"), "gpu_engine": gpu_engine},
        "cpu": {"cores": cores(), "engine_threads": cpu_engine_threads(), "threads_set_by": if std::env::var("TAOFLOW_TRAIN_THREADS").is_ok() { "TAOFLOW_TRAIN_THREADS" } else { "the cores (at most 8)" }},
        "onnxruntime": ort,
        "driver": {"found": driver["found"], "path": driver["path"], "kernel_module": driver["kernel_module"], "cuda": driver["cuda"], "error": driver["error"]},
        "gpus": driver["gpus"],
        "libtorch": libtorch,
        "torch": torch.as_ref().map(|t| json!({"cuda_loaded": t.cuda.is_ok(), "cuda_error": t.cuda.as_ref().err(), "devices": t.devices, "cudnn": t.cudnn})),
        "cudnn": cudnn,
        "nvrtc": nvrtc,
        "store": store,
        "ready": {
            "cpu": true,
            "gpu": gpu_blocker.is_none() && (torch.is_some() || search.as_ref().is_some_and(|s| s.chosen.is_some())),
            "gpu_blocker": gpu_blocker.as_ref().map(|(w, _)| w.clone()),
            "gpu_blockers": blockers.iter().map(|(w, _)| w.clone()).collect::<Vec<_>>(),
            // GPU augment (`gpus = 1` on augment, any build) and the engine's depthwise kernels.
            "gpu_kernels": kernels.is_ok(),
            "gpu_kernels_blocker": kernels.err(),
        },
        "fixes": fixes,
    })
}

/// The text form of [`doctor`]'s report.
pub fn render(r: &Value) -> String {
    let s = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| if v.is_null() { "-".into() } else { v.to_string() });
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<12} {v}\n"));
    line("taoflow", format!("{} ({})", s(&r["taoflow"]["version"]), if r["taoflow"]["gpu_engine"] == json!(true) { "with the GPU engine" } else { "CPU build, no GPU engine" }));
    line("cpu", format!("{} cores; CPU engine threads {} (set by {})", r["cpu"]["cores"], r["cpu"]["engine_threads"], s(&r["cpu"]["threads_set_by"])));
    line("onnxruntime", if r["onnxruntime"]["found"] == json!(true) { format!("{} ({})", s(&r["onnxruntime"]["version"]), s(&r["onnxruntime"]["path"])) } else { format!("not found: {} — CPU inference runs on tract", s(&r["onnxruntime"]["error"])) });
    let d = &r["driver"];
    line("driver", if d["found"] == json!(true) { format!("CUDA {} (kernel module {}, {})", s(&d["cuda"]), s(&d["kernel_module"]), s(&d["path"])) } else { format!("not found ({})", s(&d["error"])) });
    match r["gpus"].as_array() {
        Some(g) if !g.is_empty() => {
            for gpu in g {
                line("gpu", format!("{}: {} ({} MiB, compute {})", gpu["index"], s(&gpu["name"]), gpu["memory_mib"], s(&gpu["compute_capability"])));
            }
        }
        _ => line("gpus", "none".into()),
    }
    let lt = &r["libtorch"];
    if lt.is_null() {
        line("libtorch", "not used by this build".into());
    } else {
        let c = &lt["chosen"];
        line(
            "libtorch",
            if c.is_null() {
                format!("none usable (needs {}){}", s(&lt["needed"]), lt["error"].as_str().map(|e| format!(": {e}")).unwrap_or_default())
            } else {
                format!("{} at {} (from {}){}", s(&c["version"]), s(&c["path"]), s(&c["from"]), if c["cuda_half"] == json!(true) { format!(", CUDA {}", s(&c["cuda"])) } else { ", CPU only".into() })
            },
        );
        for rej in lt["rejected"].as_array().into_iter().flatten() {
            line("", format!("not used: {} ({}): {} — {}", s(&rej["path"]), s(&rej["from"]), s(&rej["version"]), s(&rej["reason"])));
        }
    }
    if !r["torch"].is_null() {
        let t = &r["torch"];
        line("torch", if t["cuda_loaded"] == json!(true) { format!("CUDA half loaded; {} CUDA device(s); cuDNN {}", t["devices"], if t["cudnn"] == json!(true) { "available" } else { "not available" }) } else { format!("CUDA half not loaded: {}", s(&t["cuda_error"]).lines().next().unwrap_or("")) });
    }
    line("cudnn", if r["cudnn"]["found"] == json!(true) { format!("{} ({})", s(&r["cudnn"]["version"]), s(&r["cudnn"]["path"])) } else { "not found".into() });
    line("nvrtc", if r["nvrtc"]["found"] == json!(true) { format!("{} ({})", s(&r["nvrtc"]["version"]), s(&r["nvrtc"]["path"])) } else { "not found".into() });
    let st = &r["store"];
    let free = st["free_bytes"].as_u64().map(|b| format!(", {:.1} GB free", b as f64 / 1e9)).unwrap_or_default();
    line("store", format!("{} ({}{free})", s(&st["path"]), if st["exists"] != json!(true) { "not created yet" } else if st["writable"] == json!(true) { "writable" } else { "NOT writable" }));
    line("ready", format!("CPU: yes; GPU (--device cuda): {}", if r["ready"]["gpu"] == json!(true) { "yes".to_string() } else { format!("no — {}", s(&r["ready"]["gpu_blocker"])) }));
    line("", format!("our CUDA kernels (GPU augment, depthwise): {}", if r["ready"]["gpu_kernels"] == json!(true) { "yes".to_string() } else { format!("no — {}", s(&r["ready"]["gpu_kernels_blocker"])) }));
    for f in r["fixes"].as_array().into_iter().flatten() {
        line("fix", s(f));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(dir: &Path, version_py: Option<&str>, build_version: Option<&str>, cuda: bool) {
        std::fs::create_dir_all(dir.join("lib")).unwrap();
        std::fs::write(dir.join("lib/libtorch_cpu.so"), b"").unwrap();
        if cuda {
            std::fs::write(dir.join("lib/libtorch_cuda.so"), b"").unwrap();
        }
        if let Some(v) = version_py {
            std::fs::write(dir.join("version.py"), format!("from typing import Optional\n__version__ = '{v}'\ncuda: Optional[str] = '13.0'\n")).unwrap();
        }
        if let Some(v) = build_version {
            std::fs::write(dir.join("build-version"), format!("{v}\n")).unwrap();
        }
    }

    #[test]
    fn versions_come_from_the_package_or_the_libtorch_files() {
        let t = tempfile::tempdir().unwrap();
        fake(&t.path().join("a"), Some("2.11.0+cu130"), None, true);
        let a = Libtorch::inspect(&t.path().join("a"), Origin::Env).unwrap();
        assert_eq!((a.version.as_deref(), a.cuda.as_deref(), a.has_cuda), (Some("2.11.0+cu130"), Some("13.0"), true));
        assert!(a.matches("2.11.0") && a.matches("2.11.1") && !a.matches("2.1.0") && !a.matches("2.15.0"));
        // The lib folder itself works as well as the root.
        let a2 = Libtorch::inspect(&t.path().join("a/lib"), Origin::LdLibraryPath).unwrap();
        assert_eq!(a2.root, t.path().join("a"));
        fake(&t.path().join("b"), None, Some("2.15.0+cu126"), false);
        let b = Libtorch::inspect(&t.path().join("b"), Origin::Env).unwrap();
        assert_eq!((b.version.as_deref(), b.cuda.as_deref(), b.has_cuda), (Some("2.15.0+cu126"), Some("12.6"), false));
        assert!(Libtorch::inspect(t.path(), Origin::Env).is_none());
        assert_eq!(major_minor("2.11.0+cu130"), "2.11");
    }

    #[test]
    fn command_line_words() {
        let a = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(subcommand(&a(&["--store", "doctor", "run", "p.toml"])).as_deref(), Some("run"));
        assert_eq!(subcommand(&a(&["-v", "doctor", "--json"])).as_deref(), Some("doctor"));
        assert_eq!(subcommand(&a(&["--version"])), None);
        assert_eq!(flag_value(&a(&["doctor", "--store=/x"]), "--store"), Some("/x".into()));
        assert_eq!(positional_after(&a(&["doctor", "--store", "s", "p/q.toml"]), "doctor"), Some("p/q.toml".into()));
    }

    #[test]
    fn our_kernels_need_a_gpu_nvrtc_and_a_driver_as_new() {
        let drv = |c: &str| json!({"cuda": c});
        let nv = |v: &str| json!({"found": true, "version": v});
        assert_eq!(kernel_check(0, &nv("13.0"), &drv("13.0")).unwrap_err().0, "no GPU");
        assert!(kernel_check(1, &json!({"found": false}), &drv("13.0")).unwrap_err().1.unwrap().contains("libnvrtc"));
        assert!(kernel_check(1, &nv("13.0"), &drv("13.0")).is_ok());
        assert!(kernel_check(1, &nv("12.8"), &drv("13.0")).is_ok());
        let (why, fix) = kernel_check(1, &nv("13.2"), &drv("13.0")).unwrap_err();
        assert!(why.contains("13.2") && fix.unwrap().contains("CUDA 13.0 or older"));
        assert!(kernel_check(1, &nv("13.10"), &drv("13.2")).is_err(), "minor versions compare as numbers");
    }

    #[test]
    fn store_and_threads_rules() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("proj/cache")).unwrap();
        std::fs::create_dir_all(t.path().join("proj/pipes/sub")).unwrap();
        assert_eq!(store_root(None, &t.path().join("proj/pipes/sub")), t.path().join("proj/cache"));
        assert_eq!(store_root(Some(Path::new("/s")), t.path()), PathBuf::from("/s"));
        assert!(cpu_engine_threads() >= 1);
    }
}

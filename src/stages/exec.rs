//! `exec`: the escape hatch, DVC-style. Runs `cmd` with `sh -c` in the pipeline's folder.
//!
//! ```toml
//! [stages.prepare]
//! kind = "exec"
//! cmd = "python prepare.py --n ${n} --out data/"
//! params = { n = 1000 }
//! deps = ["prepare.py", "raw/"]      # paths, or references to other stages
//! outs = ["data/"]                   # or { data = "data/" } to name them
//! metrics = "metrics.json"           # optional; `taoflow show` reads it
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::os::unix::process::CommandExt as _;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use crate::schema::{Key, Ty, key};
use crate::config::{normalize_rel, Fields};
use crate::diag::{Diag, Span};
use crate::stages::{InputDecl, OutputDecl, RunCtx, StageDef, StageError, StageKind};
use crate::value::{PVal, V};

#[derive(Debug)]
pub struct Exec;

/// The parsed stage, for `run`.
#[derive(Debug)]
struct ExecStage {
    /// The command with `${…}` substituted.
    cmd: String,
}

const SPEC: &[Key] = &[
    key("cmd", Ty::Str, "The command, run with sh -c in the pipeline's folder; ${name} is the stage's parameter `name`.").required(),
    key("params", Ty::Free, "Parameters of the command: part of the stage key, set from the CLI with -S STAGE.NAME=VALUE."),
    key("deps", Ty::StrList, "Inputs the command reads: paths, or other stages' outputs (`train.model`)."),
    key("outs", Ty::Paths, "Outputs the command writes: a path, a list of paths, or { name = \"path\" }."),
    key("metrics", Ty::Str, "A JSON file the command writes with its metrics (an output)."),
];

impl StageKind for Exec {
    fn name(&self) -> &'static str {
        "exec"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "run a command of your own with declared inputs and outputs"
    }
    fn spec(&self) -> Vec<Key> {
        SPEC.to_vec()
    }
    fn free_params_key(&self) -> Option<&'static str> {
        Some("params")
    }

    fn parse(&self, f: &mut Fields<'_>, stage: &str) -> Option<StageDef> {
        let cmd = f.required_str("cmd", "cmd = \"python train.py\"");
        let params = f.pval_table("params").map(|(m, _)| m).unwrap_or_default();
        let deps = f.str_list("deps").unwrap_or_default();
        let mut outputs: Vec<OutputDecl> = Vec::new();
        let mut ok = true;
        if let Some(n) = f.get("outs") {
            let mut entries: Vec<(Option<String>, String, Span, Span)> = Vec::new();
            match &n.v {
                V::Str(s) => entries.push((None, s.clone(), n.span.clone(), n.span.clone())),
                V::Array(a) => {
                    for x in a {
                        match &x.v {
                            V::Str(s) => entries.push((None, s.clone(), x.span.clone(), x.span.clone())),
                            _ => {
                                f.diags.push(crate::config::type_error(&format!("each entry of `outs` in stage `{stage}`"), "a path string", x));
                                ok = false;
                            }
                        }
                    }
                }
                V::Table(t) => {
                    for (k, x) in &t.entries {
                        match &x.v {
                            V::Str(s) => entries.push((Some(k.name.clone()), s.clone(), x.span.clone(), k.span.clone())),
                            _ => {
                                f.diags.push(crate::config::type_error(&format!("`outs.{}` in stage `{stage}`", k.name), "a path string", x));
                                ok = false;
                            }
                        }
                    }
                }
                _ => {
                    f.diags.push(crate::config::type_error(&format!("`outs` in stage `{stage}`"), "an array of paths or a table of name = path", n));
                    ok = false;
                }
            }
            for (name, path, span, name_span) in entries {
                match out_path(&path) {
                    Err(why) => {
                        f.diags.push(Diag::error(format!("invalid output path `{path}` in stage `{stage}`")).at(&span, why).hint(
                            "outputs are paths relative to the pipeline's folder, such as `data/train.csv` or `model/`",
                        ));
                        ok = false;
                    }
                    Ok(p) => {
                        let name = name.unwrap_or_else(|| default_out_name(&p));
                        if !crate::config::valid_name(&name) {
                            f.diags.push(
                                Diag::error(format!("invalid output name `{name}` in stage `{stage}`"))
                                    .at(&name_span, "letters, digits, `_` and `-` only")
                                    .hint(format!("name it explicitly: outs = {{ out = \"{path}\" }}")),
                            );
                            ok = false;
                            continue;
                        }
                        if let Some(prev) = outputs.iter().find(|o| o.name == name) {
                            f.diags.push(
                                Diag::error(format!("stage `{stage}` has two outputs named `{name}`"))
                                    .at(&span, "second output with this name")
                                    .note(&prev.span, "first one")
                                    .hint(format!(
                                        "output names come from the file name without extension; name them explicitly: outs = {{ {name} = \"{}\", other = \"{path}\" }}",
                                        prev.path.display()
                                    )),
                            );
                            ok = false;
                            continue;
                        }
                        outputs.push(OutputDecl { name, path: p, span, owned: false });
                    }
                }
            }
        }
        let mut metrics = None;
        if let Some((m, node)) = f.str("metrics") {
            match out_path(&m) {
                Err(why) => {
                    f.diags.push(Diag::error(format!("invalid metrics path `{m}` in stage `{stage}`")).at(&node.span, why));
                    ok = false;
                }
                Ok(p) => {
                    if let Some(o) = outputs.iter().find(|o| o.path == p) {
                        metrics = Some(o.name.clone());
                    } else if outputs.iter().any(|o| o.name == "metrics") {
                        f.diags.push(
                            Diag::error(format!("stage `{stage}` already has an output named `metrics`"))
                                .at(&node.span, "the metrics file becomes an output named `metrics`")
                                .hint("list the metrics file in `outs` as well, or rename the other output"),
                        );
                        ok = false;
                    } else {
                        outputs.push(OutputDecl { name: "metrics".into(), path: p, span: node.span.clone(), owned: false });
                        metrics = Some("metrics".into());
                    }
                }
            }
        }
        let (cmd, cmd_node) = cmd?;
        let expanded = match substitute(&cmd, &params) {
            Ok(c) => c,
            Err((range, msg, hint)) => {
                let span = inner_span(&cmd_node.span, &cmd, range);
                f.diags.push(Diag::error(format!("in `cmd` of stage `{stage}`: {msg}")).at(&span, "here").hint(hint));
                return None;
            }
        };
        if cmd.trim().is_empty() {
            f.diags.push(Diag::error(format!("`cmd` of stage `{stage}` is empty")).at(&cmd_node.span, "empty command").hint("give the shell command to run"));
            return None;
        }
        if !ok {
            return None;
        }
        let inputs = deps
            .into_iter()
            .map(|(raw, span)| InputDecl { label: raw.clone(), raw, span })
            .collect();
        let mut canon: BTreeMap<String, PVal> = BTreeMap::new();
        canon.insert("cmd".into(), PVal::Str(cmd.clone()));
        canon.insert("params".into(), PVal::Table(params));
        canon.insert(
            "outs".into(),
            PVal::Table(outputs.iter().map(|o| (o.name.clone(), PVal::Str(o.path.to_string_lossy().into()))).collect()),
        );
        if let Some(m) = &metrics {
            canon.insert("metrics".into(), PVal::Str(m.clone()));
        }
        Some(StageDef { params: canon, inputs, outputs, metrics, gpus: 0, description: None, typed: Arc::new(ExecStage { cmd: expanded }) })
    }

    fn run<'a>(&'a self, ctx: &'a RunCtx) -> Pin<Box<dyn Future<Output = Result<Vec<String>, StageError>> + Send + 'a>> {
        Box::pin(async move { run(ctx).await.map(|()| Vec::new()) })
    }
}

/// `data/train.csv` -> `train`; `model/` -> `model`.
fn default_out_name(p: &std::path::Path) -> String {
    let file = p.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    let stem = match file.find('.') {
        Some(0) | None => file.as_str(),
        Some(i) => &file[..i],
    };
    stem.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

fn out_path(p: &str) -> Result<std::path::PathBuf, &'static str> {
    if p.trim().is_empty() {
        return Err("empty path");
    }
    if p.starts_with('/') {
        return Err("absolute path: outputs must be inside the pipeline's folder");
    }
    match normalize_rel(p) {
        None => Err("this is the pipeline's folder itself"),
        Some(n) if n.starts_with("..") => Err("outside the pipeline's folder"),
        Some(n) => Ok(n),
    }
}

/// The span of `range` (byte offsets into the string's value) inside the TOML source, when
/// the string is written plainly; the whole string otherwise.
fn inner_span(node: &Span, value: &str, range: std::ops::Range<usize>) -> Span {
    let raw = &node.src.text[node.range.clone()];
    for q in ["\"", "'"] {
        if raw.len() >= 2 && raw.starts_with(q) && raw.ends_with(q) && &raw[1..raw.len() - 1] == value {
            let s = node.range.start + 1;
            return Span::new(&node.src, s + range.start..s + range.end);
        }
    }
    node.clone()
}

/// Replace `${name}` (dotted paths into nested tables allowed) by parameter values;
/// `$${` is a literal `${`.
pub fn substitute(cmd: &str, params: &BTreeMap<String, PVal>) -> Result<String, (std::ops::Range<usize>, String, String)> {
    let mut out = String::new();
    let b = cmd.as_bytes();
    let mut i = 0;
    while i < cmd.len() {
        if cmd[i..].starts_with("$${") {
            out.push_str("${");
            i += 3;
        } else if cmd[i..].starts_with("${") {
            let Some(end) = cmd[i + 2..].find('}') else {
                return Err((i..cmd.len(), "`${` is never closed".into(), "write `${name}`, or `$${` for a literal `${`".into()));
            };
            let name = &cmd[i + 2..i + 2 + end];
            let range = i..i + 3 + end;
            let mut cur: Option<&PVal> = None;
            let mut table = Some(params);
            for part in name.split('.') {
                cur = table.and_then(|t| t.get(part.trim()));
                table = match cur {
                    Some(PVal::Table(t)) => Some(t),
                    _ => None,
                };
            }
            match cur {
                Some(v) => out.push_str(&v.to_arg()),
                None => {
                    let known: Vec<&str> = params.keys().map(String::as_str).collect();
                    let hint = match crate::diag::did_you_mean(name, known.iter().copied()) {
                        Some(s) => format!("did you mean `${{{s}}}`?"),
                        None if known.is_empty() => format!("declare it: params = {{ {name} = … }}"),
                        None => format!("parameters of this stage: {}", known.join(", ")),
                    };
                    return Err((range, format!("unknown parameter `{name}`"), hint));
                }
            }
            i = range.end;
        } else {
            let ch = cmd[i..].chars().next().unwrap_or(b[i] as char);
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    Ok(out)
}

async fn run(ctx: &RunCtx) -> Result<(), StageError> {
    let stage = ctx.def.typed.downcast_ref::<ExecStage>().ok_or_else(|| StageError::Failed("internal: exec stage data missing".into()))?;
    // Outputs are removed first, so that a stale file never passes for a new one.
    for p in ctx.outputs.values() {
        remove_path(p).map_err(|e| StageError::Failed(format!("cannot remove old output `{}`: {e}", p.display())))?;
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StageError::Failed(format!("cannot create `{}`: {e}", parent.display())))?;
        }
    }
    let log = std::fs::File::create(&ctx.log).map_err(|e| StageError::Failed(format!("cannot create log `{}`: {e}", ctx.log.display())))?;
    let log2 = log.try_clone().map_err(|e| StageError::Failed(e.to_string()))?;
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(&stage.cmd)
        .current_dir(&ctx.pipeline_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .env("TAOFLOW_STAGE", &ctx.stage)
        .env("TAOFLOW_SEED", ctx.seed.to_string())
        .env("TAOFLOW_SCRATCH", &ctx.scratch)
        .process_group(0);
    crate::runtime::prepare_child(&mut cmd);
    if !ctx.gpus.is_empty() {
        let ids: Vec<String> = ctx.gpus.iter().map(|g| g.to_string()).collect();
        cmd.env("CUDA_VISIBLE_DEVICES", ids.join(","));
    }
    // SAFETY: prctl is async-signal-safe; the child dies with us instead of running on as
    // an orphan that keeps writing outputs after taoflow was killed.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| StageError::Failed(format!("cannot start `sh`: {e}")))?;
    let pid = child.id().map(|p| p as i32);
    let mut cancel = ctx.cancel.clone();
    let status = tokio::select! {
        s = child.wait() => s.map_err(|e| StageError::Failed(format!("waiting for the command failed: {e}")))?,
        _ = async { while !*cancel.borrow() { if cancel.changed().await.is_err() { std::future::pending::<()>().await; } } } => {
            if let Some(pid) = pid {
                // SAFETY: signalling our own child's process group.
                unsafe { libc::kill(-pid, libc::SIGTERM); }
                if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
                    unsafe { libc::kill(-pid, libc::SIGKILL); }
                    let _ = child.wait().await;
                }
            }
            return Err(StageError::Interrupted);
        }
    };
    if !status.success() {
        let code = match status.code() {
            Some(c) => format!("exit status {c}"),
            None => "a signal".to_string(),
        };
        return Err(StageError::Failed(format!("command failed with {code}: {}{}", stage.cmd, log_tail(&ctx.log))));
    }
    let mut missing = Vec::new();
    for o in &ctx.def.outputs {
        let p = &ctx.outputs[&o.name];
        if std::fs::symlink_metadata(p).is_err() {
            let (l, c) = o.span.line_col();
            missing.push(format!("`{}` (declared at {}:{l}:{c})", o.path.display(), o.span.src.name));
        }
    }
    if !missing.is_empty() {
        return Err(StageError::Failed(format!(
            "the command succeeded but did not create {}\nhint: the command must write every path listed in `outs`; paths are relative to {}",
            missing.join(", "),
            ctx.pipeline_dir.display()
        )));
    }
    Ok(())
}

pub(crate) fn remove_path(p: &std::path::Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The last lines of a log file, indented, for failure messages.
pub fn log_tail(path: &std::path::Path) -> String {
    let Ok(text) = std::fs::read(path) else { return String::new() };
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return String::new();
    }
    let start = lines.len().saturating_sub(15);
    let mut out = format!("\n  last {} line(s) of the log ({}):", lines.len() - start, path.display());
    for l in &lines[start..] {
        out.push_str("\n  | ");
        out.push_str(l);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution() {
        let mut p = BTreeMap::new();
        p.insert("n".to_string(), PVal::Int(3));
        p.insert("opt".to_string(), PVal::Table([("lr".to_string(), PVal::Str("0.1".into()))].into()));
        assert_eq!(substitute("run ${n} ${opt.lr} $${HOME} $X", &p).unwrap(), "run 3 0.1 ${HOME} $X");
        let e = substitute("run ${m}", &p).unwrap_err();
        assert_eq!(e.0, 4..8);
        assert!(substitute("run ${n", &p).is_err());
    }

    #[test]
    fn out_names() {
        assert_eq!(default_out_name(std::path::Path::new("data/train.csv")), "train");
        assert_eq!(default_out_name(std::path::Path::new("model")), "model");
        assert_eq!(default_out_name(std::path::Path::new(".hidden")), "_hidden");
    }
}

//! The stage DAG: references resolved to edges, duplicate outputs and cycles rejected.

use std::path::{Path, PathBuf};

use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};

use crate::config::{normalize_rel, Pipeline};
use crate::diag::{did_you_mean, Diag, Diags, Span};

/// Where an input comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum InputSource {
    /// An artifact of another stage (`train.model`), or a path inside one (`sub`).
    Artifact { stage: usize, output: String, sub: Option<PathBuf> },
    /// A file or folder outside the pipeline's stages. `upstream` lists stages whose outputs
    /// lie inside it (it is hashed after they ran).
    Path { path: PathBuf, upstream: Vec<usize> },
}

#[derive(Debug, Clone)]
pub struct ResolvedInput {
    pub label: String,
    pub source: InputSource,
    pub span: Span,
}

#[derive(Debug)]
pub struct Graph {
    pub dag: DiGraph<usize, ()>,
    /// Per stage, its inputs resolved.
    pub inputs: Vec<Vec<ResolvedInput>>,
    /// Per stage, the stages it depends on directly (sorted, unique).
    pub upstream: Vec<Vec<usize>>,
    /// Per stage, the stages that depend on it directly.
    pub downstream: Vec<Vec<usize>>,
    /// Stages in an order where every stage comes after its inputs.
    pub order: Vec<usize>,
}

impl Graph {
    /// `start` and every stage that depends on it, transitively.
    pub fn downstream_closure(&self, start: usize) -> Vec<usize> {
        let mut seen = vec![false; self.inputs.len()];
        let mut stack = vec![start];
        while let Some(s) = stack.pop() {
            if std::mem::replace(&mut seen[s], true) {
                continue;
            }
            stack.extend(self.downstream[s].iter().copied());
        }
        (0..seen.len()).filter(|i| seen[*i]).collect()
    }
}

fn nested(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

pub fn build(p: &Pipeline) -> Result<Graph, Diags> {
    let mut diags = Diags::default();
    let n = p.stages.len();

    // Outputs must not collide or nest.
    let mut outs: Vec<(usize, &crate::stages::OutputDecl)> = Vec::new();
    for (i, s) in p.stages.iter().enumerate() {
        for o in &s.def.outputs {
            if let Some((j, prev)) = outs.iter().find(|(_, prev)| nested(&prev.path, &o.path)) {
                let same = prev.path == o.path;
                let msg = if same {
                    format!("output `{}` of stage `{}` is also an output of stage `{}`", o.path.display(), s.name, p.stages[*j].name)
                } else {
                    format!(
                        "output `{}` of stage `{}` overlaps output `{}` of stage `{}`",
                        o.path.display(),
                        s.name,
                        prev.path.display(),
                        p.stages[*j].name
                    )
                };
                diags.push(
                    Diag::error(msg)
                        .at(&o.span, if same { "duplicate output" } else { "overlapping output" })
                        .note(&prev.span, "already declared here")
                        .hint("each path may be written by one stage only; give the stages different output paths"),
                );
            }
            outs.push((i, o));
        }
    }

    let mut inputs: Vec<Vec<ResolvedInput>> = vec![Vec::new(); n];
    for (i, s) in p.stages.iter().enumerate() {
        let mut labels: Vec<&str> = Vec::new();
        for d in &s.def.inputs {
            if labels.contains(&d.label.as_str()) {
                diags.push(Diag::error(format!("stage `{}` lists input `{}` twice", s.name, d.raw)).at(&d.span, "duplicate").hint("remove one of them"));
                continue;
            }
            labels.push(&d.label);
            match resolve(p, &outs, &d.raw, i) {
                Ok(source) => {
                    let self_dep = match &source {
                        InputSource::Artifact { stage, .. } => *stage == i,
                        InputSource::Path { upstream, .. } => upstream.contains(&i),
                    };
                    if self_dep {
                        diags.push(
                            Diag::error(format!("stage `{}` depends on its own output `{}`", s.name, d.raw))
                                .at(&d.span, "cycle: a stage cannot read what it writes")
                                .hint("remove it from the stage's inputs, or move the step that makes it into its own stage"),
                        );
                        continue;
                    }
                    inputs[i].push(ResolvedInput { label: d.label.clone(), source, span: d.span.clone() });
                }
                Err((msg, label, hint)) => diags.push(Diag::error(format!("in stage `{}`: {msg}", s.name)).at(&d.span, label).hint(hint)),
            }
        }
    }
    if !diags.is_empty() {
        return Err(diags);
    }

    let mut dag: DiGraph<usize, ()> = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..n).map(|i| dag.add_node(i)).collect();
    let mut upstream: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, ins) in inputs.iter().enumerate() {
        for r in ins {
            let ups: Vec<usize> = match &r.source {
                InputSource::Artifact { stage, .. } => vec![*stage],
                InputSource::Path { upstream, .. } => upstream.clone(),
            };
            for u in ups {
                if !upstream[i].contains(&u) {
                    upstream[i].push(u);
                    dag.add_edge(nodes[u], nodes[i], ());
                }
            }
        }
        upstream[i].sort_unstable();
    }
    let order = match toposort(&dag, None) {
        Ok(o) => o.into_iter().map(|x| dag[x]).collect(),
        Err(_) => return Err(cycle_diag(p, &dag, &inputs)),
    };
    let mut downstream = vec![Vec::new(); n];
    for (i, ups) in upstream.iter().enumerate() {
        for u in ups {
            downstream[*u].push(i);
        }
    }
    Ok(Graph { dag, inputs, upstream, downstream, order })
}

type ResolveErr = (String, String, String);

fn resolve(p: &Pipeline, outs: &[(usize, &crate::stages::OutputDecl)], raw: &str, me: usize) -> Result<InputSource, ResolveErr> {
    let stage_names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
    if raw.trim().is_empty() {
        return Err(("empty input".into(), "empty".into(), "write a path or a reference such as `train.model`".into()));
    }
    // `stage`: its single output. A stage's own name is never a reference to itself: it
    // is a path (`source = "seg"` in a stage named `seg`).
    if let Some(si) = p.stage_index(raw).filter(|si| *si != me) {
        let s = &p.stages[si];
        return match s.def.outputs.as_slice() {
            [one] => Ok(InputSource::Artifact { stage: si, output: one.name.clone(), sub: None }),
            [] => Err((
                format!("stage `{raw}` has no outputs to depend on"),
                "refers to a stage without outputs".into(),
                format!("give stage `{raw}` an output, or write `./{raw}` to mean a path"),
            )),
            many => Err((
                format!("`{raw}` is ambiguous: stage `{raw}` has {} outputs", many.len()),
                "which output?".into(),
                format!("name one: {}", many.iter().map(|o| format!("`{raw}.{}`", o.name)).collect::<Vec<_>>().join(", ")),
            )),
        };
    }
    // `stage.output`
    if let Some((st, rest)) = raw.split_once('.')
        && let Some(si) = p.stage_index(st)
        && !rest.contains('/')
    {
        let s = &p.stages[si];
        if let Some(o) = s.def.outputs.iter().find(|o| o.name == rest) {
            return Ok(InputSource::Artifact { stage: si, output: o.name.clone(), sub: None });
        }
        let as_path = normalize_rel(raw);
        let is_output_path = as_path.as_ref().is_some_and(|ap| outs.iter().any(|(_, o)| ap.starts_with(&o.path)));
        if !is_output_path && !p.dir.join(raw).exists() {
            let names: Vec<&str> = s.def.outputs.iter().map(|o| o.name.as_str()).collect();
            return Err((
                format!("stage `{st}` has no output named `{rest}`"),
                "unknown output".into(),
                match did_you_mean(rest, names.iter().copied()) {
                    Some(m) => format!("did you mean `{st}.{m}`?"),
                    None if names.is_empty() => format!("stage `{st}` has no outputs"),
                    None => format!("outputs of `{st}`: {}", names.join(", ")),
                },
            ));
        }
    }
    // A path: relative to the pipeline's folder.
    let abs = if raw.starts_with('/') {
        PathBuf::from(raw)
    } else {
        match normalize_rel(raw) {
            Some(r) => r,
            None => PathBuf::from("."),
        }
    };
    if !raw.starts_with('/') {
        for (si, o) in outs {
            if abs.starts_with(&o.path) {
                let sub = abs.strip_prefix(&o.path).ok().filter(|s| !s.as_os_str().is_empty()).map(Path::to_path_buf);
                return Ok(InputSource::Artifact { stage: *si, output: o.name.clone(), sub });
            }
        }
        let upstream: Vec<usize> = outs.iter().filter(|(_, o)| o.path.starts_with(&abs) || abs == Path::new(".")).map(|(s, _)| *s).collect();
        let mut up = upstream;
        up.dedup();
        let full = normalize_abs(&p.dir.join(&abs));
        if up.is_empty() && !full.exists() && raw.split('.').next().is_some_and(|s| did_you_mean(s, stage_names.iter().copied()).is_some()) && !raw.contains('/') {
            let guess = did_you_mean(raw.split('.').next().unwrap_or(raw), stage_names.iter().copied()).unwrap_or("");
            return Err((
                format!("`{raw}` is neither a stage nor an existing path"),
                "not found".into(),
                format!("did you mean stage `{guess}`?"),
            ));
        }
        return Ok(InputSource::Path { path: full, upstream: up });
    }
    Ok(InputSource::Path { path: abs, upstream: Vec::new() })
}

fn normalize_abs(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn cycle_diag(p: &Pipeline, dag: &DiGraph<usize, ()>, inputs: &[Vec<ResolvedInput>]) -> Diags {
    let sccs = tarjan_scc(dag);
    let scc: Vec<usize> = sccs.into_iter().find(|c| c.len() > 1).map(|c| c.into_iter().map(|x| dag[x]).collect()).unwrap_or_default();
    // Walk the cycle from its first stage, following edges inside the component.
    let mut path = vec![*scc.iter().min().unwrap_or(&0)];
    let mut spans: Vec<(Span, String)> = Vec::new();
    loop {
        let cur = *path.last().unwrap_or(&0);
        let next = scc.iter().copied().find(|cand| {
            inputs[*cand].iter().any(|r| match &r.source {
                InputSource::Artifact { stage, .. } => *stage == cur,
                InputSource::Path { upstream, .. } => upstream.contains(&cur),
            }) && (!path.contains(cand) || *cand == path[0])
        });
        let Some(next) = next else { break };
        if let Some(r) = inputs[next].iter().find(|r| match &r.source {
            InputSource::Artifact { stage, .. } => *stage == cur,
            InputSource::Path { upstream, .. } => upstream.contains(&cur),
        }) {
            spans.push((r.span.clone(), format!("`{}` reads from `{}`", p.stages[next].name, p.stages[cur].name)));
        }
        if next == path[0] || path.len() > scc.len() {
            path.push(next);
            break;
        }
        path.push(next);
    }
    let names: Vec<&str> = path.iter().map(|i| p.stages[*i].name.as_str()).collect();
    let mut d = Diag::error(format!("the pipeline has a cycle: {}", names.join(" -> ")));
    let mut it = spans.into_iter();
    if let Some((s, l)) = it.next() {
        d = d.at(&s, l);
    }
    for (s, l) in it {
        d = d.note(&s, l);
    }
    d.hint("a stage cannot depend, directly or through others, on its own outputs; remove one of these inputs").into()
}

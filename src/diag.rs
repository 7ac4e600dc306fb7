//! Diagnostics: errors that point into a source text (the pipeline file, or a `-S`
//! override on the command line) with a line, a column, a caret and a hint.
//!
//! Rendered in the style of rustc and uv:
//!
//! ```text
//! error: unknown key `lrr` in stage `train`
//!  --> pipelines/x.toml:5:1
//!   |
//! 5 | lrr = 0.1
//!   | ^^^ not a key of `exec` stages
//!   |
//!   = hint: did you mean `lr`?
//! ```

use std::fmt::Write as _;
use std::ops::Range;
use std::sync::Arc;

/// A source text that diagnostics can point into.
#[derive(Debug)]
pub struct Source {
    /// Name shown after `-->`: a path, or `command line`.
    pub name: String,
    pub text: String,
}

/// A location in a [`Source`].
#[derive(Debug, Clone)]
pub struct Span {
    pub src: Arc<Source>,
    pub range: Range<usize>,
}

impl Span {
    pub fn new(src: &Arc<Source>, range: Range<usize>) -> Self {
        Span { src: Arc::clone(src), range }
    }

    /// 1-based line and column (in characters) of the start of the span.
    pub fn line_col(&self) -> (usize, usize) {
        line_col(&self.src.text, self.range.start)
    }
}

pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..floor_char(text, offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

fn floor_char(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// A secondary location, e.g. the first definition of a duplicated output.
#[derive(Debug, Clone)]
pub struct Note {
    pub span: Span,
    pub label: String,
}

/// One error (or warning) with an optional location and hint.
#[derive(Debug, Clone)]
pub struct Diag {
    pub message: String,
    pub span: Option<Span>,
    pub label: String,
    pub notes: Vec<Note>,
    pub hint: Option<String>,
    pub warning: bool,
}

impl Diag {
    pub fn error(message: impl Into<String>) -> Self {
        Diag {
            message: message.into(),
            span: None,
            label: String::new(),
            notes: Vec::new(),
            hint: None,
            warning: false,
        }
    }

    pub fn at(mut self, span: &Span, label: impl Into<String>) -> Self {
        self.span = Some(span.clone());
        self.label = label.into();
        self
    }

    pub fn note(mut self, span: &Span, label: impl Into<String>) -> Self {
        self.notes.push(Note { span: span.clone(), label: label.into() });
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn maybe_hint(mut self, hint: Option<String>) -> Self {
        if hint.is_some() {
            self.hint = hint;
        }
        self
    }

    /// Render the diagnostic as text. `color` adds ANSI colours.
    pub fn render(&self, color: bool) -> String {
        let (red, blue, yellow, bold, reset) = if color {
            ("\x1b[1;31m", "\x1b[1;34m", "\x1b[1;33m", "\x1b[1m", "\x1b[0m")
        } else {
            ("", "", "", "", "")
        };
        let mut out = String::new();
        let head = if self.warning { format!("{yellow}warning{reset}") } else { format!("{red}error{reset}") };
        let _ = writeln!(out, "{head}{bold}: {}{reset}", self.message);
        let mut snippets: Vec<(&Span, &str, bool)> = Vec::new();
        if let Some(s) = &self.span {
            snippets.push((s, &self.label, true));
        }
        for n in &self.notes {
            snippets.push((&n.span, &n.label, false));
        }
        let gutter = snippets
            .iter()
            .map(|(s, _, _)| s.line_col().0.to_string().len())
            .max()
            .unwrap_or(1);
        let pad = " ".repeat(gutter);
        for (span, label, primary) in &snippets {
            let (line, col) = span.line_col();
            let _ = writeln!(out, "{pad}{blue}-->{reset} {}:{line}:{col}", span.src.name);
            let text = &span.src.text;
            let start = floor_char(text, span.range.start.min(text.len()));
            let line_start = text[..start].rfind('\n').map(|i| i + 1).unwrap_or(0);
            let line_end = text[start..].find('\n').map(|i| start + i).unwrap_or(text.len());
            let line_text = text[line_start..line_end].trim_end_matches('\r');
            let end = floor_char(text, span.range.end.min(line_end).max(start));
            let width = text[start..end].chars().count().max(1);
            let lead: String = text[line_start..start]
                .chars()
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            let mark = if *primary { '^' } else { '-' };
            let color_mark = if *primary { red } else { blue };
            let _ = writeln!(out, "{pad} {blue}|{reset}");
            let _ = writeln!(out, "{blue}{line:>gutter$} |{reset} {line_text}");
            let marks: String = std::iter::repeat_n(mark, width).collect();
            let sep = if label.is_empty() { "" } else { " " };
            let _ = writeln!(out, "{pad} {blue}|{reset} {lead}{color_mark}{marks}{sep}{label}{reset}");
        }
        if let Some(h) = &self.hint {
            if !snippets.is_empty() {
                let _ = writeln!(out, "{pad} {blue}|{reset}");
            }
            let _ = writeln!(out, "{pad} {blue}={reset} {bold}hint{reset}: {h}");
        }
        out
    }
}

/// Several diagnostics at once (a pipeline file with three mistakes reports all three).
#[derive(Debug, Clone, Default)]
pub struct Diags(pub Vec<Diag>);

impl Diags {
    pub fn push(&mut self, d: Diag) {
        self.0.push(d);
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn render(&self, color: bool) -> String {
        let mut out = String::new();
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&d.render(color));
        }
        let errors = self.0.iter().filter(|d| !d.warning).count();
        if errors > 1 {
            let _ = writeln!(out, "\n{errors} errors in total");
        }
        out
    }
}

impl std::fmt::Display for Diags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render(false))
    }
}

impl std::error::Error for Diags {}

impl From<Diag> for Diags {
    fn from(d: Diag) -> Self {
        Diags(vec![d])
    }
}

/// The closest candidate to `word` (edit distance), for "did you mean" hints.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(&str, f64)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(&word.to_lowercase(), &c.to_lowercase());
        if score > 0.8 && best.is_none_or(|(_, s)| score > s) {
            best = Some((c, score));
        }
    }
    best.map(|(c, _)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_chars() {
        let t = "a = 1\nbé = 2\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 6), (2, 1));
        assert_eq!(line_col(t, 9), (2, 3));
    }

    #[test]
    fn renders_caret_and_hint() {
        let src = Arc::new(Source { name: "p.toml".into(), text: "[stages.a]\nlrr = 1\n".into() });
        let d = Diag::error("unknown key `lrr`")
            .at(&Span::new(&src, 11..14), "not a key of exec stages")
            .hint("did you mean `lr`?");
        let r = d.render(false);
        assert!(r.contains("--> p.toml:2:1"), "{r}");
        assert!(r.contains("2 | lrr = 1"), "{r}");
        assert!(r.contains("  | ^^^ not a key"), "{r}");
        assert!(r.contains("= hint: did you mean `lr`?"), "{r}");
    }

    #[test]
    fn suggestions() {
        assert_eq!(did_you_mean("lrr", ["lr", "cmd", "deps"]), Some("lr"));
        assert_eq!(did_you_mean("zzz", ["lr", "cmd", "deps"]), None);
    }
}

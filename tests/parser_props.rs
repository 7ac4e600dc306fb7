//! Property tests of the pipeline parser: whatever the bytes, it returns a pipeline or
//! diagnostics whose locations lie inside the text — never a panic.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use taoflow::config;

const VALID: &str = r#"[pipeline]
name = "p"
seed = 3

[pipeline.defaults.exec]
params = { k = 1 }

[stages.prepare]
kind = "exec"
cmd = "echo ${n} > data.txt"
params = { n = 10, nested = { a = [1, 2.5, "x"] } }
deps = ["raw/"]
outs = ["data.txt"]

[stages.train]
kind = "exec"
cmd = "cat data.txt > model.bin; echo '{}' > m.json"
deps = ["prepare.data", "prepare"]
outs = { model = "model.bin" }
metrics = "m.json"
gpus = 0
"#;

fn check(text: &str, overrides: &[String]) {
    let r = config::parse(Path::new("p.toml"), PathBuf::from("/nonexistent"), text.to_string(), overrides);
    match r {
        Ok(p) => {
            // A valid pipeline also builds a graph or says why not, without panicking.
            if let Err(d) = taoflow::graph::build(&p) {
                assert!(!d.is_empty());
                let _ = d.render(false);
            }
        }
        Err(d) => {
            assert!(!d.is_empty(), "an error must carry at least one diagnostic");
            for diag in &d.0 {
                if let Some(s) = &diag.span {
                    assert!(s.range.start <= s.src.text.len() && s.range.end <= s.src.text.len(), "span out of bounds");
                }
            }
            let r = d.render(false);
            assert!(r.starts_with("error: "), "{r}");
        }
    }
}

fn fragments() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "[stages.a]\n", "[stages.b]\n", "[pipeline]\n", "kind = \"exec\"\n", "kind = \"train\"\n", "cmd = \"echo ${n}\"\n",
        "cmd = 3\n", "params = { n = 1 }\n", "deps = [\"a\"]\n", "deps = [\"a.x\", \"b\"]\n", "outs = [\"x.txt\"]\n",
        "outs = { x = \"x.txt\" }\n", "metrics = \"m.json\"\n", "gpus = -2\n", "seed = 1\n", "name = \"\"\n", "[[stages]]\n",
        "= \n", "\"\n", "[\n", "}\n", "a.b.c = 1\n", "\u{e9}\u{301} = 1\n", "\t\n", "# comment\n", "stages = 1\n",
    ])
    .prop_map(|s| s.to_string())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    #[test]
    fn random_fragments_never_panic(parts in prop::collection::vec(fragments(), 0..12)) {
        check(&parts.concat(), &[]);
    }

    #[test]
    fn mutations_of_a_valid_pipeline_never_panic(pos in 0usize..VALID.len(), del in 0usize..20, ins in "[ -~\n]{0,6}") {
        let mut t = VALID.to_string();
        let mut p = pos.min(t.len());
        while !t.is_char_boundary(p) { p -= 1; }
        let mut end = (p + del).min(t.len());
        while !t.is_char_boundary(end) { end -= 1; }
        t.replace_range(p..end, &ins);
        check(&t, &[]);
    }

    #[test]
    fn arbitrary_text_never_panics(t in "\\PC{0,200}") {
        check(&t, &[]);
    }

    #[test]
    fn arbitrary_overrides_never_panic(o in "[a-z.=\\[\\]\"0-9 ]{0,20}") {
        check(VALID, &[o]);
    }
}

#[test]
fn the_valid_pipeline_is_valid() {
    let p = config::parse(Path::new("p.toml"), PathBuf::from("/nonexistent"), VALID.to_string(), &[]).unwrap();
    assert_eq!(p.stages.len(), 2);
    let g = taoflow::graph::build(&p).unwrap();
    assert_eq!(g.upstream[1], vec![0]);
}

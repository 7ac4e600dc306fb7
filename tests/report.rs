//! `taoflow report` on a real (small) pipeline — convert, train, evaluate, prune, quantize —
//! then the report in headless Chromium: it loads with no console message (an injected
//! error is caught, so the check can fail) and its screenshot is not blank.

mod common;

use std::path::Path;
use std::process::Command;

use common::fixtures::learnable;
use common::{text, Project};

const PIPELINE: &str = r#"
[pipeline]
name = "rep"
seed = 3

[stages.convert]
kind = "convert"
format = "image_folder"
source = "imgs"
val_fraction = 0.25

[stages.train]
kind = "train"
description = "a tiny ResNet"
dataset = "convert"
arch = "resnet18"
width = 0.125
input_size = 16
batch_size = 8
epochs = 2

[stages.evaluate]
kind = "evaluate"
model = "train.model"
dataset = "convert"

[stages.prune]
kind = "prune"
model = "train.model"
threshold = 0.5
min_channels = 2

[stages.quantize]
kind = "quantize"
model = "train.model"
dataset = "convert"
calibration_batches = 2
batch_size = 8
"#;

/// Chromium's binary, or None (then the browser part is skipped unless required).
fn chromium() -> Option<String> {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return Some(c.to_string());
        }
    }
    assert!(std::env::var_os("TAOFLOW_REQUIRE_CHROMIUM").is_none(), "TAOFLOW_REQUIRE_CHROMIUM is set but no chromium was found");
    None
}

/// Load `html` headless: the console lines it printed, and the screenshot.
fn load(browser: &str, html: &Path, shot: &Path) -> Vec<String> {
    let out = Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr", "--log-level=0", "--window-size=1280,2000"])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("chromium runs");
    assert!(shot.exists(), "no screenshot: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).lines().filter(|l| l.contains(":CONSOLE")).map(str::to_string).collect()
}

#[test]
fn report_of_a_real_pipeline_in_a_browser() {
    let p = Project::new();
    learnable(&p.path("imgs"), 16);
    p.write("p.toml", PIPELINE);
    let out = p.run(&["run", "p.toml"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = p.run(&["report", "p.toml", "-o", "r.html"]);
    assert!(out.status.success(), "{}", text(&out));
    let html = p.read("r.html");

    // Self-contained: nothing fetched from a network.
    for bad in ["src=\"http", "href=\"http", "url(http", "@import"] {
        assert!(!html.contains(bad), "{bad} in the report");
    }
    // What it shows.
    for want in [
        "<svg role=\"img\" aria-label=\"stage graph\"",
        "aria-label=\"timeline\"",
        "Training curves (per epoch)",
        "train_loss",
        "Confusion matrix",
        "Channels per layer",
        "INT8 vs FP32",
        "Dataset",
        "data:image/png;base64,",
        "a tiny ResNet",
        "up to date",
        "prefers-color-scheme: dark",
        "@media print",
    ] {
        assert!(html.contains(want), "the report lacks {want}");
    }
    assert_eq!(html.matches("<section class=\"stage\"").count(), 5);

    // A stale stage is shown as such.
    p.write("p.toml", &PIPELINE.replace("threshold = 0.5", "threshold = 0.6"));
    assert!(p.run(&["report", "p.toml", "-o", "stale.html"]).status.success());
    let stale = p.read("stale.html");
    assert!(stale.contains("<span class=\"pill stale\">stale</span>") && stale.contains("threshold"), "prune should be stale");

    let Some(browser) = chromium() else {
        eprintln!("skipped the browser part: no chromium (the test command installs Debian's)");
        return;
    };
    let shot = p.path("shot.png");
    let console = load(&browser, &p.path("r.html"), &shot);
    assert!(console.is_empty(), "console output: {console:?}");
    let img = image::open(&shot).unwrap().to_rgb8();
    let mut colours = std::collections::HashSet::new();
    let mut dark = 0usize;
    for px in img.pixels() {
        colours.insert(px.0);
        if px.0.iter().map(|&c| c as u32).sum::<u32>() < 300 {
            dark += 1;
        }
    }
    assert!(colours.len() > 100, "screenshot looks blank: {} colours", colours.len());
    assert!(dark > 2000, "hardly any text drawn: {dark} dark pixels");

    // The console check can fail: the same report with a script error is caught.
    let broken = html.replace("</body>", "<script>undefinedFunction();</script></body>");
    p.write("broken.html", &broken);
    let console = load(&browser, &p.path("broken.html"), &p.path("broken.png"));
    assert!(console.iter().any(|l| l.contains("undefinedFunction")), "{console:?}");
}

#[test]
fn report_before_any_run_and_bad_input() {
    let p = Project::new();
    learnable(&p.path("imgs"), 4);
    p.write("p.toml", PIPELINE);
    let out = p.run(&["report", "p.toml"]);
    assert!(out.status.success(), "{}", text(&out));
    let html = p.read("outputs/rep/report.html");
    assert!(html.contains("not run") && html.contains("No stage has a stored result yet"), "default place, nothing run");
    let out = p.run(&["report", "p.toml", "--compare", "nosuchthing"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("`nosuchthing` is no variant of this pipeline"), "{}", text(&out));
}

#!/usr/bin/env bash
# The project's test command (README, and what .ci/run calls). It installs what the tests
# need, so it passes on a fresh machine, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

# Python packages used by tests and reference checks go here (pinned), e.g.
#   python3 -m pip install -q --disable-pip-version-check 'webdataset==1.0.2'
# The engine's tests need none: only a POSIX shell, awk and cargo.
command -v awk >/dev/null || { apt-get update -qq && apt-get install -y -qq mawk; }

export CARGO_TERM_COLOR=never
# Insta must never write snapshots in CI: a missing or changed snapshot fails the test.
export INSTA_UPDATE=no
cargo test --locked --all-targets 2>&1
# The README's first command must work too.
cargo run --locked --quiet --bin taoflow -- run pipelines/quickstart.toml
cargo run --locked --quiet --bin taoflow -- run pipelines/quickstart.toml --json | grep -q '"status":"cached"'
echo "quickstart: ok"

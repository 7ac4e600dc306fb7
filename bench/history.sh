#!/usr/bin/env bash
# Issue #26: `taoflow exp show` over 100 recorded variants and `taoflow diff` on a 20-stage
# pipeline, beside `dvc exp show` / `dvc params diff` / `dvc metrics diff` on the same
# history (the same 20 exec stages, the same 100 values of the last stage's parameter).
#
#   DVC=/path/to/venv/bin/dvc TAOFLOW=target/release/taoflow bash bench/history.sh
#
# Prints one line per measurement: tool, command, median seconds of REPS runs.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TAOFLOW=$(realpath "${TAOFLOW:-$ROOT/target/release/taoflow}")
DVC=${DVC:-dvc}
REPS=${REPS:-5}
N=${N:-100}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
export GIT_AUTHOR_NAME=b GIT_AUTHOR_EMAIL=b@b GIT_COMMITTER_NAME=b GIT_COMMITTER_EMAIL=b@b

median() { # command... -> median wall seconds of REPS runs
  python3 - "$REPS" "$@" <<'PY'
import statistics, subprocess, sys, time
reps, cmd = int(sys.argv[1]), sys.argv[2:]
ts = []
for _ in range(reps):
    t = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    ts.append(time.perf_counter() - t)
print(f"{statistics.median(ts):.3f}")
PY
}

# --- taoflow: 20 exec stages in a chain, the last one writes metrics ---
T=$W/taoflow && mkdir -p "$T" && cd "$T" && git init -q -b main
python3 - <<'PY'
stages = ['[pipeline]\nname = "h"\nseed = 1\n']
for i in range(1, 21):
    cmd = "echo ${x} > o1.txt" if i == 1 else f"cat o{i-1}.txt > o{i}.txt && echo ${{x}} >> o{i}.txt"
    deps = "" if i == 1 else f'deps = ["s{i-1}.o"]\n'
    stages.append(f'[stages.s{i}]\nkind = "exec"\ncmd = "{cmd}"\n{deps}params = {{ x = {i} }}\nouts = {{ o = "o{i}.txt" }}\n')
stages.append('[stages.score]\nkind = "exec"\n'
              'cmd = "printf \'{\\"score\\": %s, \\"lines\\": %s}\' ${x} $(wc -l < o20.txt) > metrics.json"\n'
              'deps = ["s20.o"]\nparams = { x = 0 }\nmetrics = "metrics.json"\n')
open("p.toml", "w").write("\n".join(stages))
PY
"$TAOFLOW" run p.toml -q >/dev/null 2>&1
git add p.toml p.lock && git commit -qm base
sed -i 's/params = { x = 5 }/params = { x = 50 }/; s/params = { x = 0 }/params = { x = 7 }/' p.toml
"$TAOFLOW" run p.toml -q >/dev/null 2>&1
git add p.toml p.lock && git commit -qm change
VALUES=$(seq -s, 1 "$N")
t0=$(python3 -c 'import time; print(time.time())')
"$TAOFLOW" run p.toml -q -S "score.x=$VALUES" >/dev/null 2>&1
echo "taoflow  sweep of $N variants took $(python3 -c "import time; print(round(time.time() - $t0, 1))") s"
ROWS=$("$TAOFLOW" exp show p.toml --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
echo "taoflow  exp show ($ROWS rows)          $(median "$TAOFLOW" exp show p.toml)"
echo "taoflow  exp show --json ($ROWS rows)   $(median "$TAOFLOW" exp show p.toml --json)"
echo "taoflow  diff HEAD~1 HEAD (21 stages)   $(median "$TAOFLOW" diff p.toml HEAD~1 HEAD)"
echo "taoflow  diff HEAD~1 --params           $(median "$TAOFLOW" diff p.toml HEAD~1 --params)"

# --- DVC: the same 20 stages and parameters ---
D=$W/dvc && mkdir -p "$D" && cd "$D" && git init -q -b main && "$DVC" init -q
{
  for i in $(seq 1 20); do echo "s$i:"; echo "  x: $i"; done
  echo "score:"; echo "  x: 0"
} > params.yaml
{
  echo 'stages:'
  for i in $(seq 1 20); do
    echo "  s$i:"
    if [ "$i" = 1 ]; then echo "    cmd: echo \${s1.x} > o1.txt"; else echo "    cmd: cat o$((i-1)).txt > o$i.txt && echo \${s$i.x} >> o$i.txt"; echo "    deps: [o$((i-1)).txt]"; fi
    echo "    params: [s$i.x]"; echo "    outs: [o$i.txt]"
  done
  echo '  score:'
  echo "    cmd: 'printf \"{\\\"score\\\": %s, \\\"lines\\\": %s}\" \${score.x} \$(wc -l < o20.txt) > metrics.json'"
  echo '    deps: [o20.txt]'; echo '    params: [score.x]'
  echo '    metrics: [{metrics.json: {cache: false}}]'
} > dvc.yaml
"$DVC" repro -q >/dev/null 2>&1
git add -A && git commit -qm base
sed -i 's/^  x: 5$/  x: 50/' params.yaml && python3 - <<'PY'
import re
t = open("params.yaml").read()
t = re.sub(r"score:\n  x: 0", "score:\n  x: 7", t)
open("params.yaml", "w").write(t)
PY
"$DVC" repro -q >/dev/null 2>&1
git add -A && git commit -qm change
t0=$(date +%s)
for v in $(seq 1 "$N"); do "$DVC" exp run -q -S "score.x=$v" >/dev/null 2>&1; done
echo "dvc      $N x exp run took $(( $(date +%s) - t0 )) s"
DROWS=$("$DVC" exp show --json 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(1 + len(c.get("experiments") or []) for c in d))')
echo "dvc      exp show ($DROWS rows)          $(median "$DVC" exp show --no-pager --csv)"
echo "dvc      exp show --json ($DROWS rows)   $(median "$DVC" exp show --json)"
echo "dvc      params diff HEAD~1 HEAD        $(median "$DVC" params diff HEAD~1 HEAD)"
echo "dvc      metrics diff HEAD~1 HEAD       $(median "$DVC" metrics diff HEAD~1 HEAD)"

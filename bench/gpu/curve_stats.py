"""Loss after 50 steps, each engine against the CPU path (#8), over several seeds.

Reads the JSON lines of `train_bench curve ARCH SIZE BATCH STEPS SEEDS ENGINES [PTH]` (any
number of files, any mix of engines and seeds) and prints, per model (arch, pretrained or
not), for each engine: the mean loss of steps 41-50 averaged over the seeds that the engine
and Burn on the CPU (the reference) both ran, its relative difference from Burn's, the
paired per-seed differences (mean, 95 % interval of that mean, largest), the same for the
loss of step 50 alone, and the "1 % horizon": per seed, the first step whose loss differs from
the reference's by more than 1 % (median and range over the seeds). Two runs of one algorithm
that differ only in f32 rounding part ways at that horizon too (noise_floor.sh), so a
horizon like theirs means no difference beyond rounding. Writes the table as JSON too when --json FILE is given.

--ref ENGINE compares against another engine than `burn` (noise floors: `--ref fp32` for the
second fp32 run, `fp32#2`, and `fp32+ulp`; `--ref torch64` for f32 against f64). A run of an
engine and seed seen before in the same model is named ENGINE#2, #3, ...

Runs that carry `held_out` (the trained model judged on held-out images, see held_out.sh)
get a second table: per engine, the paired per-seed relative difference of that held-out
loss from the reference's (mean, 95 % interval, largest) and how many seeds lie within 1 %,
for the judge's loss with running statistics and with each batch's own statistics.

usage: curve_stats.py FILE... [--json OUT.json] [--ref ENGINE]
"""
import json
import math
import sys
from collections import defaultdict

args = sys.argv[1:]
out_json = None
if "--json" in args:
    i = args.index("--json")
    out_json = args[i + 1]
    del args[i : i + 2]
ref_engine = "burn"
if "--ref" in args:
    i = args.index("--ref")
    ref_engine = args[i + 1]
    del args[i : i + 2]
runs = defaultdict(dict)  # (arch, pretrained) -> {(engine, seed): losses}
held = defaultdict(dict)  # (arch, pretrained) -> {(engine, seed): held_out}
meta = {}
for f in args:
    for line in open(f):
        line = line.strip()
        if not line.startswith("{"):
            continue
        d = json.loads(line)
        if "engine" not in d:
            continue
        key = (d["arch"], d.get("pretrained") or "scratch")
        e, k = d["engine"], 1
        while (e, d["seed"]) in runs[key]:
            k += 1
            e = f'{d["engine"]}#{k}'
        runs[key][(e, d["seed"])] = d["losses"]
        if "held_out" in d:
            held[key][(e, d["seed"])] = d["held_out"]
        meta[key] = {k: d[k] for k in ("size", "batch", "steps", "lr", "optimizer")}


def t95(n):  # two-sided 95 % Student t quantile, n-1 degrees of freedom
    table = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23, 15: 2.13, 20: 2.09, 30: 2.04}
    k = n - 1
    return table.get(k) or table[min(table, key=lambda x: abs(x - k))]


order = ["torch_cpu", "fp32", "tf32", "bf16"]
report = []
for key in sorted(runs):
    r = runs[key]
    ref = {s: l for (e, s), l in r.items() if e == ref_engine}
    engines = sorted({e for (e, _) in r if e != ref_engine}, key=lambda e: (order.index(e) if e in order else 99, e))
    print(f"\n{key[0]} ({key[1]}), {meta[key]['size']}px batch {meta[key]['batch']}, {meta[key]['steps']} steps, {meta[key]['optimizer']} lr {meta[key]['lr']}")
    print(f"  {'engine':13} {'seeds':>5} {'last-10 mean':>12} {ref_engine[:8]:>8} {'rel diff':>9} {'paired mean (95% CI)':>24} {'max |seed|':>10} {'step-50 rel diff':>16} {'1% horizon':>14}")
    for e in engines:
        seeds = sorted(s for (ee, s) in r if ee == e and s in ref)
        if not seeds:
            continue
        tail = lambda l: sum(l[-10:]) / 10
        a = [tail(r[(e, s)]) for s in seeds]
        b = [tail(ref[s]) for s in seeds]
        ma, mb = sum(a) / len(a), sum(b) / len(b)
        rel = (ma - mb) / mb
        d = [(x - y) / mb for x, y in zip(a, b)]
        md = sum(d) / len(d)
        sd = math.sqrt(sum((x - md) ** 2 for x in d) / (len(d) - 1)) if len(d) > 1 else float("nan")
        half = t95(len(d)) * sd / math.sqrt(len(d)) if len(d) > 1 else float("nan")
        mx = max(abs(x) for x in d)
        l50a = sum(r[(e, s)][-1] for s in seeds) / len(seeds)
        l50b = sum(ref[s][-1] for s in seeds) / len(seeds)
        rel50 = (l50a - l50b) / l50b
        hz = sorted(next((i for i, (x, y) in enumerate(zip(r[(e, s)], ref[s])) if abs(x - y) / y > 0.01), len(ref[s])) for s in seeds)
        med = hz[len(hz) // 2] if len(hz) % 2 else (hz[len(hz) // 2 - 1] + hz[len(hz) // 2]) / 2
        print(f"  {e:13} {len(seeds):5} {ma:12.4f} {mb:8.4f} {rel*100:+8.2f}% {md*100:+7.2f}% ({(md-half)*100:+.2f}..{(md+half)*100:+.2f}%) {mx*100:9.2f}% {rel50*100:+15.2f}% {med:5} ({hz[0]}-{hz[-1]})")
        report.append({"arch": key[0], "pretrained": key[1], "engine": e, "reference": ref_engine, "seeds": seeds, "last10_mean": ma, "ref_last10_mean": mb, "rel_diff": rel,
                       "paired_mean": md, "paired_ci95": [md - half, md + half], "max_abs_seed_rel_diff": mx, "step50_rel_diff": rel50, "horizon_1pct": hz})
for key in sorted(held):
    h = held[key]
    ref = {s: v for (e, s), v in h.items() if e == ref_engine}
    engines = sorted({e for (e, _) in h if e != ref_engine}, key=lambda e: (order.index(e) if e in order else 99, e))
    if not ref or not engines:
        continue
    print(f"\n{key[0]} ({key[1]}): held-out loss after {meta[key]['steps']} steps (judge: libtorch CPU f64), paired per seed against {ref_engine}")
    print(f"  {'engine':13} {'metric':12} {'seeds':>5} {'ref mean':>9} {'paired mean (95% CI)':>24} {'max |seed|':>10} {'within 1%':>9}")
    for e in engines:
        for metric, field in (("running", "judge_f64_loss"), ("batch stats", "judge_f64_batch_stats_loss")):
            seeds = sorted(s for (ee, s) in h if ee == e and s in ref and field in h[(e, s)] and field in ref[s])
            if not seeds:
                continue
            d = [(h[(e, s)][field] - ref[s][field]) / ref[s][field] for s in seeds]
            md = sum(d) / len(d)
            sd = math.sqrt(sum((x - md) ** 2 for x in d) / (len(d) - 1)) if len(d) > 1 else float("nan")
            half = t95(len(d)) * sd / math.sqrt(len(d)) if len(d) > 1 else float("nan")
            within = sum(abs(x) <= 0.01 for x in d)
            mref = sum(ref[s][field] for s in seeds) / len(seeds)
            print(f"  {e:13} {metric:12} {len(seeds):5} {mref:9.4f} {md*100:+7.2f}% ({(md-half)*100:+.2f}..{(md+half)*100:+.2f}%) {max(abs(x) for x in d)*100:9.2f}% {within:5}/{len(d)}")
            report.append({"arch": key[0], "pretrained": key[1], "engine": e, "reference": ref_engine, "held_out_metric": field, "seeds": seeds,
                           "ref_mean": mref, "paired_mean": md, "paired_ci95": [md - half, md + half], "max_abs_seed_rel_diff": max(abs(x) for x in d), "within_1pct": within})
if out_json:
    json.dump(report, open(out_json, "w"), indent=1)

#!/usr/bin/env python3
"""Engine benchmark: a 20-stage pipeline over ~2 GB of generated files.

Measures (a) cold hashing throughput of taoflow against `cat` of the same files,
(b) the no-op re-run time of `taoflow run`, (c) the same pipeline under `dvc repro`.
Usage: bench/engine.sh [SIZE_MB]   (default 2000; writes into bench/work/, git-ignored)
"""
import json, os, platform, shutil, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "bench", "work")
BIN = os.path.join(ROOT, "target", "release", "taoflow")
STAGES = 20
FILES_PER_STAGE = 10


def sh(cmd, cwd, env=None, check=True):
    return subprocess.run(cmd, cwd=cwd, shell=True, env=env, check=check, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def timed(cmd, cwd, env=None):
    t0 = time.perf_counter()
    sh(cmd, cwd, env)
    return time.perf_counter() - t0


def drop_caches():
    try:
        subprocess.run("sync", shell=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def median_time(cmd, cwd, n, env=None):
    ts = [timed(cmd, cwd, env) for _ in range(n)]
    return statistics.median(ts), min(ts)


def main():
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    file_mb = max(1, size_mb // (STAGES * FILES_PER_STAGE))
    total = file_mb * STAGES * FILES_PER_STAGE
    proj = os.path.join(WORK, "proj")
    data = os.path.join(proj, "inputs")
    if not os.path.exists(os.path.join(data, f"d{STAGES-1}", f"f{FILES_PER_STAGE-1}.bin")) or \
            os.path.getsize(os.path.join(data, "d0", "f0.bin")) != file_mb << 20:
        shutil.rmtree(WORK, ignore_errors=True)
        print(f"generating {total} MB in {STAGES * FILES_PER_STAGE} files ...", file=sys.stderr)
        for s in range(STAGES):
            d = os.path.join(data, f"d{s}")
            os.makedirs(d)
            for f in range(FILES_PER_STAGE):
                with open(os.path.join(d, f"f{f}.bin"), "wb") as fh:
                    fh.write(os.urandom(file_mb << 20))
        # Settle mtimes (the stat cache ignores files changed in the last 2 s).
        time.sleep(2.5)
    # Pipeline: stage i reads inputs/d{i} and the previous stage's output.
    lines = ['[pipeline]\nname = "bench"\n']
    for s in range(STAGES):
        deps = [f'"inputs/d{s}"'] + ([f'"s{s-1}"'] if s else [])
        lines.append(f'[stages.s{s}]\nkind = "exec"\ncmd = "ls -l inputs/d{s} | wc -l > out/s{s}.txt"\n'
                     f'deps = [{", ".join(deps)}]\nouts = ["out/s{s}.txt"]\n')
    with open(os.path.join(proj, "p.toml"), "w") as f:
        f.write("\n".join(lines))
    os.makedirs(os.path.join(proj, "out"), exist_ok=True)
    env = dict(os.environ, TAOFLOW_STORE=os.path.join(WORK, "store"), NO_COLOR="1")
    results = {"machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores", "size_mb": total}

    def clean():
        shutil.rmtree(os.path.join(WORK, "store"), ignore_errors=True)
        for f in os.listdir(os.path.join(proj, "out")):
            os.remove(os.path.join(proj, "out", f))
        if os.path.exists(os.path.join(proj, "p.lock")):
            os.remove(os.path.join(proj, "p.lock"))

    for cold in (True, False):
        label = "cold" if cold else "warm"
        dropped = drop_caches() if cold else False
        t_cat = timed("cat inputs/*/* > /dev/null", proj)
        if cold:
            drop_caches()
        t_hash = timed(f"{BIN} hash inputs/d*", proj, env)
        clean()
        if cold:
            drop_caches()
        # A first run on an empty store hashes every input (no stat cache yet), runs 20
        # small commands one after the other and stores their outputs.
        t_run = timed(f"{BIN} run p.toml", proj, env)
        results[f"{label}_page_cache_dropped"] = dropped
        results[f"{label}_cat_MBps"] = round(total / t_cat)
        results[f"{label}_hash_MBps"] = round(total / t_hash)
        results[f"{label}_hash_vs_cat"] = round(t_cat / t_hash, 2)
        results[f"{label}_first_run_s"] = round(t_run, 3)

    # No-op re-runs (after the warm first run above).
    timed(f"{BIN} run p.toml", proj, env)  # settles the stat cache for outputs
    time.sleep(2.5)
    timed(f"{BIN} run p.toml", proj, env)
    med, best = median_time(f"{BIN} run p.toml", proj, 21, env)
    out = sh(f"{BIN} run p.toml --json", proj, env).stdout
    assert all(json.loads(l)["status"] == "cached" for l in out.splitlines()), out
    results["taoflow_noop_median_ms"] = round(med * 1000, 1)
    results["taoflow_noop_min_ms"] = round(best * 1000, 1)

    # DVC on the same stages.
    if shutil.which("dvc"):
        dproj = os.path.join(WORK, "dvc")
        if not os.path.exists(dproj):
            os.makedirs(dproj)
            os.symlink(data, os.path.join(dproj, "inputs"))
            sh("git init -q && dvc init -q && dvc config core.analytics false", dproj)
        stages = {}
        for s in range(STAGES):
            deps = [f"inputs/d{s}"] + ([f"out/s{s-1}.txt"] if s else [])
            stages[f"s{s}"] = {"cmd": f"mkdir -p out && ls -l inputs/d{s} | wc -l > out/s{s}.txt", "deps": deps, "outs": [f"out/s{s}.txt"]}
        import_yaml = json.dumps({"stages": stages}, indent=1)  # JSON is valid YAML
        with open(os.path.join(dproj, "dvc.yaml"), "w") as f:
            f.write(import_yaml)
        for junk in ("dvc.lock", "out"):
            p = os.path.join(dproj, junk)
            shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else (os.path.exists(p) and os.remove(p))
        shutil.rmtree(os.path.join(dproj, ".dvc", "cache"), ignore_errors=True)
        shutil.rmtree(os.path.join(dproj, ".dvc", "tmp"), ignore_errors=True)
        drop_caches()
        results["dvc_first_run_s"] = round(timed("dvc repro -q", dproj), 2)
        timed("dvc repro -q", dproj)
        dmed, dbest = median_time("dvc repro -q", dproj, 5)
        results["dvc_version"] = sh("dvc --version", dproj).stdout.strip()
        results["dvc_noop_median_ms"] = round(dmed * 1000, 1)
        results["dvc_noop_min_ms"] = round(dbest * 1000, 1)
        results["noop_speedup_vs_dvc"] = round(dmed / med, 1)
    many_files(results, env)
    print(json.dumps(results, indent=1))


def many_files(results, env):
    """One stage over a folder of 100,000 small files: the no-op re-run."""
    proj = os.path.join(WORK, "many")
    data = os.path.join(proj, "data")
    if not os.path.exists(os.path.join(data, "99", "999.txt")):
        shutil.rmtree(proj, ignore_errors=True)
        for d in range(100):
            os.makedirs(os.path.join(data, str(d)))
            for f in range(1000):
                with open(os.path.join(data, str(d), f"{f}.txt"), "w") as fh:
                    fh.write(str(d * 1000 + f) * 10)
        time.sleep(2.5)
    with open(os.path.join(proj, "p.toml"), "w") as f:
        f.write('[stages.count]\nkind = "exec"\ncmd = "find data -type f | wc -l > count.txt"\ndeps = ["data"]\nouts = ["count.txt"]\n')
    env = dict(env, TAOFLOW_STORE=os.path.join(WORK, "many-store"))
    shutil.rmtree(env["TAOFLOW_STORE"], ignore_errors=True)
    results["many_files"] = 100000
    results["many_taoflow_first_run_s"] = round(timed(f"{BIN} run p.toml", proj, env), 2)
    time.sleep(2.5)
    timed(f"{BIN} run p.toml", proj, env)
    med, _ = median_time(f"{BIN} run p.toml", proj, 11, env)
    results["many_taoflow_noop_median_ms"] = round(med * 1000, 1)
    t0 = time.perf_counter()
    sh("find data -type f | wc -l", proj)
    results["many_find_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    if shutil.which("dvc"):
        dproj = os.path.join(WORK, "many-dvc")
        if not os.path.exists(dproj):
            os.makedirs(dproj)
            os.symlink(data, os.path.join(dproj, "data"))
            sh("git init -q && dvc init -q && dvc config core.analytics false", dproj)
            with open(os.path.join(dproj, "dvc.yaml"), "w") as f:
                f.write(json.dumps({"stages": {"count": {"cmd": "find -L data -type f | wc -l > count.txt", "deps": ["data"], "outs": ["count.txt"]}}}))
        for junk in ("dvc.lock", "count.txt"):
            if os.path.exists(os.path.join(dproj, junk)):
                os.remove(os.path.join(dproj, junk))
        results["many_dvc_first_run_s"] = round(timed("dvc repro -q", dproj), 2)
        timed("dvc repro -q", dproj)
        dmed, _ = median_time("dvc repro -q", dproj, 3)
        results["many_dvc_noop_median_ms"] = round(dmed * 1000, 1)
        results["many_noop_speedup_vs_dvc"] = round(dmed / med, 1)


if __name__ == "__main__":
    main()

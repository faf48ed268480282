"""Run a benchmark command, sample the RSS of its whole process tree, print ONE JSON line.

usage: python measure.py RESULT_JSON LOG_FILE -- cmd args...

The child must write its timing result to RESULT_JSON (passed to it as $BENCH_RESULT). Peak RSS is
the maximum over time of the summed RSS of the child and all its descendants (psutil, sampled
every 50 ms); getrusage's max single-process RSS is reported next to it as a cross-check.
The child's stdout/stderr go to LOG_FILE. The result JSON gains the memory figures, wall time and
contention indicators (cores used, 1-minute load average at start and end); the printed line holds
the headline fields (real_tokens_per_s, peak_rss_gb, ...), $BENCH_NOTES and the result's path.
Needs psutil (both peer venvs have it).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time

import psutil


def main() -> None:
    result_path, log_path = sys.argv[1], sys.argv[2]
    cmd = sys.argv[sys.argv.index("--") + 1 :]
    if os.path.exists(result_path):
        os.remove(result_path)
    env = dict(os.environ, BENCH_RESULT=result_path)
    peak = {"tree": 0, "procs": 0}
    done = threading.Event()
    t0 = time.time()
    load_start = os.getloadavg()[0]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        root = psutil.Process(proc.pid)

        def sample() -> None:
            while not done.is_set():
                try:
                    procs = [root, *root.children(recursive=True)]
                    total = 0
                    for p in procs:
                        try:
                            total += p.memory_info().rss
                        except (psutil.NoSuchProcess, psutil.AccessDenied):
                            pass
                    if total > peak["tree"]:
                        peak["tree"] = total
                    peak["procs"] = max(peak["procs"], len(procs))
                except psutil.NoSuchProcess:
                    pass
                done.wait(0.05)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        rc = proc.wait()
        done.set()
        th.join()
    wall = time.time() - t0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    maxrss_single_kb = ru.ru_maxrss
    if rc != 0 or not os.path.exists(result_path):
        tail = open(log_path, errors="replace").read()[-4000:]
        sys.stderr.write(tail + "\n")
        print(json.dumps({"error": f"benchmark exited with {rc} and no result", "log": log_path}))
        sys.exit(rc or 1)
    res = json.load(open(result_path))
    res["peak_rss_gb"] = round(peak["tree"] / 2**30, 3)
    res["peak_rss_single_process_gb"] = round(maxrss_single_kb / 2**20, 3)
    res["processes_max"] = peak["procs"]
    res["wall_s"] = round(wall, 1)
    # contention indicators: on an idle host the run uses about host_cpus cores
    res["avg_cores_used"] = round((ru.ru_utime + ru.ru_stime) / wall, 2)
    res["loadavg_1m_start"] = round(load_start, 2)
    res["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    res["host_cpus"] = os.cpu_count()
    res["log"] = log_path
    json.dump(res, open(result_path, "w"), indent=1)
    keys = [
        "trainer",
        "version",
        "mode",
        "steps",
        "real_tokens",
        "seconds",
        "real_tokens_per_s",
        "peak_rss_gb",
        "dtype",
    ]
    line = {k: res.get(k) for k in keys}
    line["notes"] = os.environ.get("BENCH_NOTES", "")
    for k in (
        "median_step_real_tokens_per_s",
        "warmup_steps",
        "mean_real_tokens_per_step",
        "startup_plus_warmup_s",
        "peak_rss_single_process_gb",
        "threads",
        "attn",
        "batch_size",
        "total_seq_len",
        "loss_impl",
        "trainable_params",
        "frozen_params",
        "wall_s",
        "timed_cores_used",
        "avg_cores_used",
        "loadavg_1m_start",
        "loadavg_1m_end",
    ):
        if k in res:
            line[k] = res[k]
    line["details"] = result_path
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()

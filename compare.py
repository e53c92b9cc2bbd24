"""RLSD against its baselines on a built-in task: several seeds each, on CPU, one table and one picture.

    python compare.py                      # --task pairs --algos rlsd grpo opsd --seeds 0 1 2 --steps 150
    python compare.py --task largest --steps 300 --eval_every 25
    python compare.py --seeds 0 -- --lam_decay_steps 0     # more train.py flags after --

Each run is `torchrun --nproc_per_node=2 train.py --algo A --seed S --task T` into OUT/A-sS (finished: skipped,
stopped: resumed), all with --init_from one cold start per seed (a 0-step run into OUT/cold-sS: the run's own cold
start). Writes OUT/table.md (per algorithm: final and best held-out accuracy, mean +- std over seeds; the first step
whose seed mean reaches GRPO's final one; the leak rate) and OUT/curves.png (seed means against step)."""
import argparse
import os
import statistics
import subprocess
import sys

import plot
from cli import entry_point, fail


def torchrun(args, out, *flags):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc}", "train.py", "--task",
           args.task, "--out", out, *flags, *args.extra]
    print(" ".join(cmd[2:]), flush=True)
    res = subprocess.run(cmd, cwd=os.path.dirname(os.path.abspath(__file__)), stdout=subprocess.DEVNULL)
    if res.returncode:
        fail(f"{out} failed (exit {res.returncode}); see its output above")


def run(algo, seed, args):
    out, cold = os.path.join(args.out, f"{algo}-s{seed}"), os.path.join(args.out, f"cold-s{seed}")
    if os.path.isdir(os.path.join(out, "final")):
        return out
    if not os.path.isdir(os.path.join(cold, "final")):
        torchrun(args, cold, "--seed", str(seed), "--steps", "0", "--overwrite")
    resume = ["--resume"] if os.path.isdir(out) and any(n.startswith("checkpoint-") for n in os.listdir(out)) else []
    torchrun(args, out, "--algo", algo, "--seed", str(seed), "--init_from", os.path.join(cold, "final"), "--steps",
             str(args.steps), "--eval_every", str(args.eval_every), "--save_every", "50", "--keep_last", "1",
             *(["--overwrite"] if os.path.isdir(out) and not resume else []), *resume)
    return out


def mean_curve(runs, key):
    """{step: mean over runs} of a metric, at the steps every run has."""
    per_step = {}
    for r in (r for recs in runs for r in recs if r.get(key) is not None):
        per_step.setdefault(r["step"], []).append(r[key])
    return {s: statistics.mean(v) for s, v in sorted(per_step.items()) if len(v) == len(runs)}


def mean_std(values):
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values) if len(values) > 1 else 0:.3f}"


@entry_point
def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="pairs")
    p.add_argument("--algos", nargs="+", default=["rlsd", "grpo", "opsd"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    for flag, default in (("--steps", 150), ("--eval_every", 10), ("--nproc", 2)):
        p.add_argument(flag, type=int, default=default)
    p.add_argument("--out", default=None, help="default: compare-TASK")
    p.add_argument("extra", nargs="*", help="more train.py flags, after --")
    args = p.parse_args()
    args.out = args.out or f"compare-{args.task}"
    runs = {a: [plot.read_metrics(run(a, s, args)) for s in args.seeds] for a in args.algos}

    # GRPO's final accuracy, seed mean: how soon does each method get there?
    target = statistics.mean(recs[-1]["eval/accuracy"] for recs in runs["grpo"]) if "grpo" in runs else float("inf")
    rows = ["| algo | final eval/accuracy | best eval/accuracy | first step at GRPO's final (seed mean) | leak/rate |",
            "| --- | --- | --- | --- | --- |"]
    for algo, seeds in runs.items():
        final = [recs[-1]["eval/accuracy"] for recs in seeds]
        best = [max(r["eval/accuracy"] for r in recs if r.get("eval/accuracy") is not None) for recs in seeds]
        reach = next((s for s, v in mean_curve(seeds, "eval/accuracy").items() if v >= target - 1e-9), "never")
        leak = statistics.mean(r["leak/rate"] for recs in seeds for r in recs if "leak/rate" in r)
        rows.append(f"| {algo} | {mean_std(final)} | {mean_std(best)} | {reach} | {leak:.4f} |")
    header = (f"{args.task}: {len(args.seeds)} seeds ({' '.join(map(str, args.seeds))}) x {args.steps} steps, "
              f"{args.nproc} processes, held-out greedy accuracy every {args.eval_every} steps")
    table = header + "\n\n" + "\n".join(rows) + "\n"
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table)
    keys = ["eval/accuracy", "train/reward"]
    means = {a: [{"step": s, k: v} for k in keys for s, v in mean_curve(seeds, k).items()] for a, seeds in runs.items()}
    print(table + "curves: " + plot.draw_curves(means, keys, os.path.join(args.out, "curves.png")))


if __name__ == "__main__":
    main()

"""RLSD against its baselines on a built-in task: several seeds each, on CPU, one table and one
picture.

    python compare.py             # --task pairs --algos rlsd grpo opsd --seeds 0 1 2 --steps 150
    python compare.py --task largest --steps 300 --eval_every 25
    python compare.py --seeds 0 -- --lam_decay_steps 0     # more train.py flags after --

Each run is `torchrun --nproc_per_node=2 train.py --algo A --seed S --task T` into OUT/A-sS
(finished: skipped, stopped: resumed), all with --init_from one cold start per seed (a 0-step run
into OUT/cold-sS: the run's own cold start). Writes OUT/table.md (per algorithm: final and best
held-out accuracy, mean +- std over seeds; the first step whose seed mean reaches GRPO's final one;
the leak rate) and OUT/curves.png (seed means against step)."""
import argparse
import os
import statistics
import subprocess
import sys

import flags
import plot
from cli import ArgumentParser, UserError, entry_point, fail

ACCURACY = "eval/accuracy"
TABLE_HEAD = [
    "| algo | final eval/accuracy | best eval/accuracy | first step at GRPO's final (seed mean) "
    "| leak/rate |",
    "| --- | --- | --- | --- | --- |"]


def torchrun(args, out, *flags):
    """train.py on args.nproc processes into `out` with `flags` (and the task and extra flags);
    its output goes to /dev/null, the command line to stdout; exits with a message if it fails."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc}",
           "train.py", "--task", args.task, "--out", out, *flags, *args.extra]
    print(" ".join(cmd[2:]), flush=True)
    here = os.path.dirname(os.path.abspath(__file__))
    res = subprocess.run(cmd, cwd=here, stdout=subprocess.DEVNULL)
    if res.returncode:
        fail(f"{out} failed (exit {res.returncode}); see its output above")


def run(algo, seed, args):
    """The run directory of `algo` with `seed`, trained first unless finished (and its seed's cold
    start first unless there): resumed from a checkpoint if it has one, else started over."""
    out = os.path.join(args.out, f"{algo}-s{seed}")
    cold = os.path.join(args.out, f"cold-s{seed}")
    if os.path.isdir(os.path.join(out, "final")):
        return out
    if not os.path.isdir(os.path.join(cold, "final")):
        torchrun(args, cold, "--seed", str(seed), "--steps", "0", "--overwrite")
    if not os.path.isdir(out):
        restart = []
    elif any(n.startswith("checkpoint-") for n in os.listdir(out)):
        restart = ["--resume"]
    else:
        restart = ["--overwrite"]
    torchrun(args, out, "--algo", algo, "--seed", str(seed),
             "--init_from", os.path.join(cold, "final"), "--steps", str(args.steps),
             "--eval_every", str(args.eval_every), "--save_every", "50", "--keep_last", "1",
             *restart)
    return out


def mean_curve(runs, key):
    """{step: mean over runs} of a metric, at the steps every run has."""
    per_step = {}
    for records in runs:
        for r in records:
            if r.get(key) is not None:
                per_step.setdefault(r["step"], []).append(r[key])
    return {s: statistics.mean(v) for s, v in sorted(per_step.items()) if len(v) == len(runs)}


def mean_std(values):
    """'mean +- std' of the values (std 0 for one value)."""
    std = statistics.stdev(values) if len(values) > 1 else 0
    return f"{statistics.mean(values):.3f} +- {std:.3f}"


def table_row(algo, seeds, target):
    """One algorithm's table row from its runs' records (one list per seed); target: the accuracy
    whose first step the row shows."""
    final = [records[-1][ACCURACY] for records in seeds]
    best = [max(r[ACCURACY] for r in records if r.get(ACCURACY) is not None) for records in seeds]
    curve = mean_curve(seeds, ACCURACY)
    reach = next((step for step, acc in curve.items() if acc >= target - 1e-9), "never")
    leak = statistics.mean(r["leak/rate"] for records in seeds for r in records if "leak/rate" in r)
    return f"| {algo} | {mean_std(final)} | {mean_std(best)} | {reach} | {leak:.4f} |"


def seed_means(runs, keys):
    """{algo: records} of the seed-mean curves of `keys`, one record per key and step."""
    means = {}
    for algo, seeds in runs.items():
        means[algo] = [{"step": s, k: v} for k in keys for s, v in mean_curve(seeds, k).items()]
    return means


def parse_args():
    """The command line; --out defaults to compare-TASK."""
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="pairs")
    p.add_argument("--algos", nargs="+", default=["rlsd", "grpo", "opsd"],
                   choices=["rlsd", "grpo", "opsd", "grpo+opsd"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--eval_every", type=int, default=10)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--out", default=None, help="default: compare-TASK")
    p.add_argument("extra", nargs="*", help="more train.py flags, after --")
    args = p.parse_args()
    args.out = args.out or f"compare-{args.task}"
    for flag in ("steps", "eval_every", "nproc"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    # the train.py flags after --, checked as train.py checks them, before any run starts
    train_args = flags.parse_args(["--task", args.task, "--steps", str(args.steps), *args.extra])
    flags.check_args(train_args, args.nproc)
    if train_args.eval_size < 1:
        raise UserError("the table needs held-out accuracy: --eval_size must be at least 1")
    return args


@entry_point
def main():
    args = parse_args()
    runs = {a: [plot.read_metrics(run(a, s, args)) for s in args.seeds] for a in args.algos}

    # GRPO's final accuracy, seed mean: how soon does each method get there?
    if "grpo" in runs:
        target = statistics.mean(records[-1][ACCURACY] for records in runs["grpo"])
    else:
        target = float("inf")
    rows = TABLE_HEAD + [table_row(algo, seeds, target) for algo, seeds in runs.items()]
    seeds = " ".join(map(str, args.seeds))
    header = (f"{args.task}: {len(args.seeds)} seeds ({seeds}) x {args.steps} steps, "
              f"{args.nproc} processes, held-out greedy accuracy every {args.eval_every} steps")
    table = header + "\n\n" + "\n".join(rows) + "\n"
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table)
    keys = [ACCURACY, "train/reward"]
    curves = plot.draw_curves(seed_means(runs, keys), keys, os.path.join(args.out, "curves.png"))
    print(table + "curves: " + curves)


if __name__ == "__main__":
    main()

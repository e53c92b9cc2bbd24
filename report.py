"""The study's result (compare.py), from its runs' metrics.jsonl and leaks.jsonl: a table per
algorithm, curves over seeds, what the figures say about the paper's two claims, and sampled
responses that leak. Writes OUT/table.md and OUT/curves.png, and with --report PATH the dated
report PATH with its picture beside it."""
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys

from PIL import Image, ImageDraw

import plot
from cli import read_jsonl

ACCURACY = "eval/accuracy"
TITLES = {  # the curves' panels, in order
    ACCURACY: "eval/accuracy: held-out, greedy",
    "train/reward": "train/reward: mean over the step's samples",
    "leak/rate": "leak/rate: responses that cite the reference",
    "train/response_len": "train/response_len (tokens)",
    "policy/entropy": "policy/entropy (nats per token)",
    "rlsd/delta_mean": "rlsd/delta_mean: teacher - student log-prob",
    "rlsd/clip_low": "rlsd/clip_low: share of tokens with w cut to 1 - eps_w",
    "rlsd/clip_high": "rlsd/clip_high: share of tokens with w cut to 1 + eps_w"}
CURVE_KEYS = list(TITLES)
SMOOTH = 5  # dense curves (one value a step) are drawn as the mean of the last 5 steps
LAST = 10  # the leak rate of the table: over the last 10 steps
LEAK_SAMPLES = 6  # leaked responses shown per algorithm


# ---- curves over seeds

def pale(rgb, amount=0.55):
    """rgb mixed with white: amount 0 is rgb, 1 is white."""
    return tuple(round(c + amount * (255 - c)) for c in rgb)


def mean_series(seeds, key, smooth=0):
    """(steps, values) of the mean over seeds of `key`, at the steps every seed has."""
    per_step = {}
    for records in seeds:
        for step, value in zip(*plot.series(records, key, smooth)):
            per_step.setdefault(step, []).append(value)
    steps = [step for step, values in sorted(per_step.items()) if len(values) == len(seeds)]
    return steps, [statistics.fmean(per_step[step]) for step in steps]


def seed_lines(groups, key, colours, smooth):
    """One key's panel lines for groups = {label: [records of each seed]}: a thin pale line per
    seed, then (on top) the seed mean in bold. A sparse key gets markers and no smoothing."""
    thin = []
    bold = []
    for label, seeds in groups.items():
        dense = [records for records in seeds if plot.series(records, key)[0]]
        if not dense:
            continue
        sparse = all(2 * len(plot.series(r, key)[0]) <= len(r) for r in dense)
        window = 0 if sparse else smooth
        for records in dense:
            steps, values = plot.series(records, key, window)
            thin.append((pale(colours[label]), steps, values, sparse, 1))
        steps, values = mean_series(dense, key, window)
        if steps:
            bold.append((colours[label], steps, values, sparse, 3))
    return thin + bold


def draw_seed_curves(groups, keys, path, smooth=0, note="", titles=None):
    """PNG at `path` of groups = {label: [records of each seed]}: one panel per key (two columns),
    a thin line per seed and the seed mean bold, one colour per label; dense keys (one value a
    step) as the trailing mean of `smooth` steps. `note` is drawn under the legend; titles: {key:
    panel title} (default: the key). Returns path."""
    titles = titles or {}
    colours = {label: plot.PALETTE[i % len(plot.PALETTE)] for i, label in enumerate(groups)}
    cols = min(2, len(keys))
    rows = math.ceil(len(keys) / cols)
    anchors, legend_h = plot.legend_layout(groups, cols * plot.PANEL_W)
    note_h = plot.LEGEND_ROW if note else 0
    img = Image.new("RGB", (cols * plot.PANEL_W, legend_h + note_h + rows * plot.PANEL_H), "white")
    draw = ImageDraw.Draw(img)
    plot.draw_legend(draw, anchors, colours)
    if note:
        small = plot.font(13)
        where = (plot.LEGEND_X, legend_h + plot.LEGEND_ROW / 2)
        draw.text(where, plot.drawable(note, small), font=small, fill=plot.AXES, anchor="lm")
    for i, key in enumerate(keys):
        x0 = (i % cols) * plot.PANEL_W
        y0 = legend_h + note_h + (i // cols) * plot.PANEL_H
        title = titles.get(key, key)
        plot.draw_panel(draw, x0, y0, title, seed_lines(groups, key, colours, smooth))
    img.save(path, format="PNG")
    return path


# ---- figures of one run, then of an algorithm's seeds

def accuracies(records):
    """[(step, held-out accuracy)] of a run, by step."""
    return [(r["step"], r[ACCURACY]) for r in records if plot.is_number(r.get(ACCURACY))]


def step_values(records, key):
    """A dense metric's values, one per training step, by step."""
    return [r[key] for r in sorted(records, key=lambda r: r["step"])
            if r["step"] > 0 and plot.is_number(r.get(key))]


def mean_accuracy_curve(seeds):
    """[(step, mean accuracy over seeds)] at the steps every seed evaluated."""
    steps, values = mean_series(seeds, ACCURACY)
    return list(zip(steps, values))


def spread(values):
    """'mean (v1 / v2 / ...)' of per-seed values."""
    each = " / ".join(f"{v:.3f}" for v in values)
    return f"{statistics.fmean(values):.3f} ({each})"


def std(values):
    """The seeds' standard deviation (0 for one seed)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summary(seeds):
    """The figures of one algorithm's table row, from its runs' records (one list per seed)."""
    final = [accuracies(records)[-1][1] for records in seeds]
    best = [max(acc for _, acc in accuracies(records)) for records in seeds]
    leak_last = [statistics.fmean(step_values(records, "leak/rate")[-LAST:]) for records in seeds]
    leak_first = [statistics.fmean(step_values(records, "leak/rate")[:LAST]) for records in seeds]
    step_s = [statistics.fmean(step_values(records, "time/step_s")) for records in seeds]
    return {"final": final, "best": best, "drop": [b - f for b, f in zip(best, final)],
            "curve": mean_accuracy_curve(seeds), "leak_last": leak_last,
            "leak_first": leak_first, "step_s": step_s}


def first_step_at(curve, target):
    """The first step whose seed-mean accuracy reaches target, or 'never'."""
    return next((step for step, acc in curve if acc >= target - 1e-9), "never")


# ---- the table, the claims, the leaked responses

def table(figures, target):
    """Markdown table, a row per algorithm: held-out accuracy final and best (seed mean, then each
    seed), the first step the seed mean reaches GRPO's final mean, best - final, the leak rate over
    the last LAST steps and the mean step time."""
    lines = ["| algo | final accuracy | best accuracy | first step at GRPO's final mean "
             f"| drop best to final | leak rate, last {LAST} steps | step time (s) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for algo, f in figures.items():
        lines.append(f"| {algo} | {spread(f['final'])} | {spread(f['best'])} "
                     f"| {first_step_at(f['curve'], target)} | {spread(f['drop'])} "
                     f"| {statistics.fmean(f['leak_last']):.4f} "
                     f"| {statistics.fmean(f['step_s']):.1f} |")
    return "\n".join(lines)


def opsd_claim(f):
    """Claim 1 (OPSD alone peaks early, then falls, while leakage grows), against the figures."""
    peak_step, peak = max(f["curve"], key=lambda point: point[1])
    final = f["curve"][-1][1]
    spread_final = std(f["final"])
    if peak - final > spread_final and peak_step < f["curve"][-1][0]:
        falls = "falls after its peak by more than the seeds' spread"
    else:
        falls = "does not fall after its peak by more than the seeds' spread"
    first = statistics.fmean(f["leak_first"])
    last = statistics.fmean(f["leak_last"])
    grows = "grows" if last > first else "does not grow"
    return (f"- Claim 1, OPSD alone: its seed-mean held-out accuracy peaks at step {peak_step} "
            f"({peak:.3f}) and ends at {final:.3f} (final std over seeds {spread_final:.3f}): it "
            f"{falls}. Its leak rate {grows}: {first:.4f} over the first {LAST} steps, {last:.4f} "
            f"over the last {LAST}.")


def rlsd_claim(rlsd, grpo):
    """Claim 2 (RLSD ends higher than GRPO, without leakage), against the figures."""
    rlsd_final = statistics.fmean(rlsd["final"])
    grpo_final = statistics.fmean(grpo["final"])
    gap = rlsd_final - grpo_final
    seed_spread = max(std(rlsd["final"]), std(grpo["final"]))
    if abs(gap) <= seed_spread:
        verdict = "within the seeds' spread"
    elif gap > 0:
        verdict = "higher, by more than the seeds' spread"
    else:
        verdict = "lower, by more than the seeds' spread"
    leak = statistics.fmean(rlsd["leak_last"])
    return (f"- Claim 2, RLSD against GRPO: final held-out accuracy {rlsd_final:.3f} against "
            f"{grpo_final:.3f}, a difference of {gap:+.3f} "
            f"(the larger std over seeds: {seed_spread:.3f}): {verdict}. RLSD's leak rate over the "
            f"last {LAST} steps: {leak:.4f}.")


def leak_samples(out, names):
    """Up to LEAK_SAMPLES leaked responses of the runs `names`, spread over their steps, and how
    many there are."""
    rows = []
    for name in names:
        path = os.path.join(out, name, "leaks.jsonl")
        if os.path.exists(path):
            rows += [dict(row, run=name) for _, row in read_jsonl(path)]
    if len(rows) <= LEAK_SAMPLES:
        return rows, len(rows)
    rows.sort(key=lambda row: (row["step"], row["run"]))
    every = len(rows) / LEAK_SAMPLES
    return [rows[int(i * every)] for i in range(LEAK_SAMPLES)], len(rows)


def leak_section(out, runs):
    """Markdown: per algorithm, sampled responses that leak (rlsd.leaked's phrases)."""
    lines = []
    for algo in dict.fromkeys(a for _, a, _ in runs):
        names = [name for name, a, _ in runs if a == algo]
        shown, total = leak_samples(out, names)
        lines.append(f"- {algo}: {total} leaked responses in all, over {len(names)} runs.")
        for row in shown:
            response = " ".join(row["response"].split())
            lines.append(f"  - {row['run']}, step {row['step']}, \"{row['question']}\" "
                         f"(reference {row['answer']}): `{response}`")
    return "\n".join(lines)


# ---- where and how it ran

def commit():
    """HEAD's short hash, with ' (uncommitted changes)' when the tracked files differ from it."""
    here = os.path.dirname(os.path.abspath(__file__))

    def git(*args):
        res = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True)
        return res.stdout.strip() if res.returncode == 0 else ""
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return head + (" (uncommitted changes)" if dirty else "")


def machine():
    """The CPU's name, the cores and the torch version."""
    name = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    import torch
    return f"{name}, {os.cpu_count()} cores, {platform.system()}, torch {torch.__version__}"


def cpu_hours(out):
    """Total CPU seconds of every run, over every invocation (OUT/cpu.json)."""
    path = os.path.join(out, "cpu.json")
    if not os.path.exists(path):
        return 0.0
    return sum(json.load(open(path)).values())


def hours(seconds):
    """'H h MM min'."""
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


def write(args, runs, train_flags, wall_s):
    """OUT/table.md, OUT/curves.png and, with args.report, the report; prints the table and the CPU
    time. runs: [(name, algo, seed)] in the study's order; train_flags: a run's train.py flags, the
    algorithm, seed and --out aside."""
    records = {name: plot.read_metrics(os.path.join(args.out, name)) for name, _, _ in runs}
    groups = {}
    for name, algo, _ in runs:
        groups.setdefault(algo, []).append(records[name])
    figures = {algo: summary(seeds) for algo, seeds in groups.items()}
    target = statistics.fmean(figures["grpo"]["final"]) if "grpo" in figures else float("inf")
    rows = table(figures, target)
    seeds = sorted({s for _, _, s in runs})
    setting = (f"--task {args.task}, --model {args.model}, seeds {' '.join(map(str, seeds))}, "
               f"{args.steps} steps, held-out greedy accuracy every {args.eval_every} steps")
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(f"{setting}\n\n{rows}\n")
    note = (f"{len(seeds)} seeds: thin lines, their mean bold; dense curves as the mean of the "
            f"last {SMOOTH} steps")
    curves = draw_seed_curves(groups, CURVE_KEYS, os.path.join(args.out, "curves.png"),
                                   smooth=SMOOTH, note=note, titles=TITLES)
    cpu_s = cpu_hours(args.out)
    print(f"{setting}\n\n{rows}\n\ncurves: {curves}")
    print(f"CPU time of all runs: {hours(cpu_s)} (user + system, every invocation); "
          f"this invocation took {hours(wall_s)}")
    if not args.report:
        return
    png = args.report[:-len(".md")] + ".png"
    draw_seed_curves(groups, CURVE_KEYS, png, smooth=SMOOTH, note=note, titles=TITLES)
    claims = []
    if "opsd" in figures:
        claims.append(opsd_claim(figures["opsd"]))
    if "rlsd" in figures and "grpo" in figures:
        claims.append(rlsd_claim(figures["rlsd"], figures["grpo"]))
    command = "python " + " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])
    text = [
        f"# Results: {', '.join(groups)} on --task {args.task}",
        "",
        f"Written by `{command}` on {datetime.date.today().isoformat()}, commit {commit()}, on "
        f"{machine()}. CPU time of all runs: {hours(cpu_s)} (user + system).",
        "",
        f"Setting: {setting}; {args.jobs} runs at a time, {args.nproc} process(es) each. Every "
        f"run: `train.py {' '.join(train_flags)}`.",
        "",
        f"![curves]({os.path.basename(png)})",
        "",
        rows,
        "",
        "Accuracy: greedy, on the held-out questions. Seed mean first, then each seed. Step time: "
        "the mean wall-clock seconds of a training step (held-out evaluation aside).",
        "",
        "## The paper's claims, against these figures",
        "",
        *claims,
        "",
        "## Responses that leak",
        "",
        "A response leaks when it mentions the teacher's privileged reference (`leak/rate` counts "
        "the phrases of `rlsd.LEAK_PHRASES`).",
        "",
        leak_section(args.out, runs),
        ""]
    with open(args.report, "w") as f:
        f.write("\n".join(text))
    print(f"report: {args.report}, {png}")

"""train.py's flags: the paper's and the toy presets, parsing (with --resume's saved settings),
and the range checks that turn a bad value into a one-line error before anything is loaded."""
import argparse
import os

import torch

import hf
import rundir
import toy
from cli import ArgumentParser, UserError, gen_batch_arg, json_object

# ----------------------------------------------------------------------------- arguments
# Flags left at None take the paper's value with --model, the toy value without it (or tiny-vl).
PAPER = dict(
    lr=1e-6,
    prompts_per_step=256,
    max_prompt_len=4096,
    max_new_tokens=4096,
    micro_batch=4,
    gen_batch="auto",
    eval_size=256,
    gradient_checkpointing=True,
    save_every=50,
    steps=300,
    warmup_steps=0,
)
TOY = dict(
    lr=2e-4,
    prompts_per_step=64,
    max_prompt_len=256,
    max_new_tokens=16,
    micro_batch=256,
    gen_batch="auto",
    eval_size=256,
    gradient_checkpointing=False,
    save_every=0,
    steps=300,
    warmup_steps=600,
)
TINY_VL = dict(TOY, lr=5e-4, prompts_per_step=32, eval_size=128, steps=150, warmup_steps=200)


def parse_args(argv=None, description=None):
    """The flags of argv (default: sys.argv); description: what --help prints above them."""
    p = ArgumentParser(description=description,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--model", default=None,
      help="local dir or org/name hub id (a VLM if its config has a vision config); default: a "
           "tiny Qwen2 built in code; tiny-vl: a tiny Qwen3-VL built in code")
    a("--data", default=None,
      help="JSONL of {question, answer[, images]}; default: the built-in toy task")
    a("--eval_data", default=None,
      help="held-out JSONL; default: hold out --eval_size rows of --data")
    a("--out", default="out", help="output dir: metrics.jsonl, checkpoints")
    a("--task", default=None, choices=sorted({**toy.TASKS, **toy.VL_TASKS}),
      help="built-in task without --data (default: largest, with tiny-vl: color)")
    a("--algo", default="rlsd", choices=["rlsd", "grpo", "opsd", "grpo+opsd"],
      help="grpo: w = 1, no teacher; opsd: the distillation baseline (JSD to the frozen initial "
           "policy given the reference); grpo+opsd: GRPO loss + --distill_coef x the OPSD loss")
    a("--steps", type=int, default=None,
      help="optimizer steps, one rollout each (300; tiny-vl 150)")
    a("--prompts_per_step", type=int, default=None,
      help="global prompts per step (paper 256, toy 64)")
    a("--group_size", type=int, default=8, help="G responses per prompt")
    a("--temperature", type=float, default=1.0)
    a("--top_p", type=float, default=1.0)
    a("--max_prompt_len", type=int, default=None, help="longer prompts are dropped (paper 4096)")
    a("--max_new_tokens", type=int, default=None, help="response budget (paper 4096)")
    a("--lr", type=float, default=None, help="AdamW lr (paper 1e-6, toy 2e-4)")
    a("--weight_decay", type=float, default=0.01)
    a("--grad_clip", type=float, default=1.0)
    a("--eps_w", type=float, default=0.2,
      help="evidence-weight clip: w in [1 - eps_w, 1 + eps_w], 0 < eps_w < 1")
    a("--lam0", type=float, default=0.5, help="initial teacher-weight mix, in [0, 1]")
    a("--lam_decay_steps", type=int, default=50,
      help="lam goes linearly to 0 over N steps; 0 = constant lam0")
    a("--teacher_sync", type=int, default=10,
      help="copy policy -> teacher every N steps; 0 = a frozen teacher")
    a("--jsd_beta", type=float, default=0.5, help="OPSD: beta of the generalized JSD, in (0, 1)")
    a("--distill_coef", type=float, default=1.0, help="grpo+opsd: weight of the OPSD loss")
    a("--clip_low", type=float, default=0.2)
    a("--clip_high", type=float, default=0.28)
    a("--micro_batch", type=int, default=None, help="rows per forward/backward")
    a("--gen_batch", type=gen_batch_arg, default=None,
      help="rows decoded at once, whole groups (finished ones refilled): N, 0 = all, "
           "auto = what fits in GPU memory")
    a("--gen_mem_gb", type=float, default=None,
      help="--gen_batch auto: GB the rollout may fill per process "
           "(default: the GPU's free memory; on CPU without it: all rows)")
    a("--dtype", choices=["bf16", "fp32"], default=None,
      help="compute dtype of the policy (fp32 master weights) and the teacher "
           "(default: bf16 on GPU, fp32 on CPU)")
    a("--gradient_checkpointing", type=int, default=None, help="1/0 (paper preset 1)")
    a("--keep_gathered", action="store_true",
      help="update: weights stay gathered and gradients unsharded over the micro-batches (one "
           "all-gather and reduce-scatter per step, not per micro-batch; memory: bench.py --plan)")
    a("--eval_every", type=int, default=50,
      help="held-out accuracy every N steps (0 = start/end only)")
    a("--eval_size", type=int, default=None)
    a("--save_every", type=int, default=None,
      help="resumable checkpoint every N steps; 0 = only the final model (paper preset 50)")
    a("--save_every_min", type=float, default=0, metavar="M",
      help="also save when M minutes passed since the last")
    a("--keep_last", type=int, default=0, help="keep the K newest checkpoints; 0 = all")
    a("--resume", nargs="?", const="latest", default=None, metavar="PATH",
      help="continue a stopped run: its latest complete checkpoint in --out, "
           "or the checkpoint PATH")
    a("--overwrite", action="store_true", help="replace the run already in --out")
    a("--init_from", default=None, metavar="DIR",
      help="start a new run (step 0) from the weights of a saved model dir")
    a("--dump_credit", type=int, default=0, metavar="N",
      help="write Delta_t and w_t of the first N responses of each step (while the teacher runs) "
           "to OUT/credit.jsonl")
    a("--max_bad_steps", type=int, default=5, help="stop after this many non-finite steps in a row")
    a("--warmup_steps", type=int, default=None,
      help="format cold start of the built-in model on a built-in task (600; tiny-vl 200)")
    a("--seed", type=int, default=0)
    a("--max_pixels", type=int, default=None,
      help="VLM: images larger than this many pixels are scaled down")
    a("--freeze_vision", action="store_true",
      help="VLM: train the language model only (default: the vision tower too)")
    a("--chat_template_kwargs", type=json_object, default={},
      help="JSON passed to the chat template of student and teacher prompts, "
           "e.g. '{\"enable_thinking\": false}'")
    a("--allow_abs_paths", action="store_true",
      help="allow data images outside the data file's directory")
    a("--timeout_min", type=float, default=60,
      help="process-group timeout: how long a rank waits for the others")
    a("--trust_remote_code", action="store_true")
    args = p.parse_args(argv)

    for action in p._actions:
        action.default = argparse.SUPPRESS
    explicit = set(vars(p.parse_args(argv)))  # the flags given on the command line
    if args.resume and args.overwrite:
        raise UserError("--resume continues the run in --out, --overwrite replaces it: give one")
    if args.resume:  # the stopped run's settings, with the flags given now on top
        path = rundir.find_checkpoint(args.resume, args.out)
        settings = resumed_settings(path, args, explicit)
        settings["resume"] = path
        args = argparse.Namespace(**settings)

    presets = {None: TOY, "tiny-vl": TINY_VL}
    for k, v in presets.get(args.model, PAPER).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.task is None:
        args.task = "color" if args.model == "tiny-vl" else "largest"
    if args.dtype is None:
        args.dtype = "bf16" if torch.cuda.is_available() else "fp32"
    return args


def resumed_settings(path, args, explicit):
    """The settings of the run that saved checkpoint `path`, with the `explicit` flags of `args`
    on top; UserError for a flag the checkpoint predates or a change the checkpoint cannot take."""
    saved = rundir.saved_state(path)["args"]
    if "algo" in explicit and args.algo != saved.get("algo"):
        raise UserError(f"--resume: --algo {args.algo}, but {path} was saved by an --algo "
                        f"{saved.get('algo')} run (its teacher and optimizer state are that "
                        f"run's): start a new run with --init_from {path}")
    if not os.path.isfile(os.path.join(args.out, "metrics.jsonl")):
        run_dir = os.path.dirname(os.path.abspath(path))
        raise UserError(f"--resume {path}: --out {args.out} holds no metrics.jsonl; give the run's "
                        f"directory, --out {run_dir}")
    settings = {}
    for flag, value in vars(args).items():
        if flag in explicit:
            settings[flag] = value
        elif flag in saved:
            settings[flag] = saved[flag]
        else:  # a flag added after the checkpoint was saved: its default may not be that run's
            raise UserError(f"--resume: {path} was saved before --{flag} existed: give --{flag} "
                            f"(default: {value}) to resume it")
    return settings


FLAG_RANGES = {  # flag: the interval its value must lie in ("[" and "]" include the bound)
    "steps": "[0, inf)",
    "prompts_per_step": "[1, inf)",
    "temperature": "(0, inf)",
    "top_p": "(0, 1]",
    "max_prompt_len": "[1, inf)",
    "max_new_tokens": "[1, inf)",
    "lr": "(0, inf)",
    "weight_decay": "[0, inf)",
    "grad_clip": "(0, inf)",
    "eps_w": "(0, 1)",
    "lam0": "[0, 1]",
    "lam_decay_steps": "[0, inf)",
    "teacher_sync": "[0, inf)",
    "jsd_beta": "(0, 1)",
    "distill_coef": "[0, inf)",
    "clip_low": "[0, 1)",
    "clip_high": "[0, inf)",
    "micro_batch": "[1, inf)",
    "eval_every": "[0, inf)",
    "eval_size": "[0, inf)",
    "save_every": "[0, inf)",
    "save_every_min": "[0, inf)",
    "keep_last": "[0, inf)",
    "dump_credit": "[0, inf)",
    "max_bad_steps": "[1, inf)",
    "warmup_steps": "[0, inf)",
    "timeout_min": "(0, inf)",
    "max_pixels": "[1, inf)",
    "gen_mem_gb": "(0, inf)",
}


def in_interval(value, interval):
    """Is value in an interval written as in maths, e.g. "(0, 1]"? (NaN is in none.)"""
    low, high = (float(bound) for bound in interval[1:-1].split(","))
    if interval[0] == "[":
        above_low = value >= low
    else:
        above_low = value > low
    if interval[-1] == "]":
        below_high = value <= high
    else:
        below_high = value < high
    return above_low and below_high


def check_args(args, world):
    image_task = args.task in toy.VL_TASKS
    if not args.data and image_task != (args.model == "tiny-vl"):
        needs = "--model tiny-vl" if image_task else "a text model"
        raise UserError(f"--task {args.task} needs {needs} (image tasks: {', '.join(toy.VL_TASKS)};"
                        f" text tasks: {', '.join(toy.TASKS)})")
    if args.group_size < 2:
        raise UserError("--group_size must be >= 2 (the group advantage needs an unbiased std), "
                        f"got {args.group_size}")
    for flag, interval in FLAG_RANGES.items():
        value = getattr(args, flag)
        if value is not None and not in_interval(value, interval):
            raise UserError(f"--{flag} must be in {interval}, got {value}")
    reserved = sorted(set(args.chat_template_kwargs) & set(hf.TEMPLATE_ARGUMENTS))
    if reserved:
        raise UserError(f"--chat_template_kwargs: {reserved[0]} is set by the trainer (prompts are "
                        "formatted as text ending in the assistant's turn); give only the "
                        "template's own variables, e.g. {\"enable_thinking\": false}")
    if args.prompts_per_step < world:
        raise UserError(f"{world} processes but only {args.prompts_per_step} prompts per step: "
                        "each process needs one")
    if args.prompts_per_step % world:
        raise UserError(f"--prompts_per_step {args.prompts_per_step} is not divisible by "
                        f"{world} processes")

"""RLSD training: torchrun entry, the loop, the update.

    torchrun --nproc_per_node=2 train.py                     # built-in tiny model + toy task, CPU
    torchrun --nproc_per_node=8 train.py --model Qwen/Qwen3-8B --data train.jsonl   # paper preset

One step, as the loop below reads: sample G responses per prompt (sample.py), score them 0/1
(verify.py), group advantages, the teacher's log-probs of the same tokens under no_grad while lam > 0,
RLSD token advantages and one clipped policy update whose own forward gives pi_old (rlsd.py), a teacher
refresh every --teacher_sync steps, then metrics and checkpoints. What the loop stands on lives below
this file: parallel.py (process group, FSDP2), rundir.py (checkpoints, resume, stop), data.py (JSONL,
held-out split, prompt ids), hf.py (model classes, processors, positions), logprobs.py (chunked
log-prob / entropy / JSD passes), memory.py (generate batch size), toy.py (the built-in model and tasks).
"""
import argparse
import contextlib
import math
import os
import sys
import time
from functools import partial

import torch
from tqdm import tqdm

import data
import hf
import parallel
import rundir
import toy
from cli import UserError, entry_point, gen_batch_arg, json_object
from logprobs import in_chunks, response_hidden, response_logprobs, token_scores, unflatten
from memory import gen_batch_size
from parallel import all_reduce_sum, gathered
from rlsd import group_advantages, lam_schedule, leaked, policy_loss, rlsd_token_advantages
from sample import generate, left_pad
from verify import reward

# ----------------------------------------------------------------------------- arguments
# Flags left at None take the paper's value with --model, the toy value without it (or with tiny-vl).
PAPER = dict(lr=1e-6, prompts_per_step=256, max_prompt_len=4096, max_new_tokens=4096,
             micro_batch=4, gen_batch="auto", eval_size=256, gradient_checkpointing=True, save_every=50, steps=300,
             warmup_steps=0)
TOY = dict(lr=2e-4, prompts_per_step=64, max_prompt_len=256, max_new_tokens=16, micro_batch=256,
           gen_batch="auto", eval_size=256, gradient_checkpointing=False, save_every=0, steps=300, warmup_steps=600)
TINY_VL = dict(TOY, lr=5e-4, prompts_per_step=32, eval_size=128, steps=150, warmup_steps=200)  # --model tiny-vl


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--model", default=None, help="hub id or local dir (a VLM if its config has a vision config); default: a tiny "
                                   "Qwen2 built in code; tiny-vl: a tiny Qwen3-VL built in code")
    a("--data", default=None, help="JSONL of {question, answer[, images]}; default: the built-in toy task")
    a("--eval_data", default=None, help="held-out JSONL; default: hold out --eval_size rows of --data")
    a("--out", default="out", help="output dir: metrics.jsonl, checkpoints")
    a("--task", default=None, choices=sorted({**toy.TASKS, **toy.VL_TASKS}),
      help="built-in task without --data (default: largest, with tiny-vl: color)")
    a("--algo", default="rlsd", choices=["rlsd", "grpo", "opsd", "grpo+opsd"],
      help="grpo: w = 1, no teacher; opsd: the distillation baseline (JSD to the frozen initial policy given the "
           "reference); grpo+opsd: GRPO loss + --distill_coef x the OPSD loss")
    a("--steps", type=int, default=None, help="optimizer steps, one rollout each (300; tiny-vl 150)")
    a("--prompts_per_step", type=int, default=None, help="global prompts per step (paper 256, toy 64)")
    a("--group_size", type=int, default=8, help="G responses per prompt")
    a("--temperature", type=float, default=1.0)
    a("--top_p", type=float, default=1.0)
    a("--max_prompt_len", type=int, default=None, help="longer prompts are dropped (paper 4096)")
    a("--max_new_tokens", type=int, default=None, help="response budget (paper 4096)")
    a("--lr", type=float, default=None, help="AdamW lr (paper 1e-6, toy 2e-4)")
    a("--weight_decay", type=float, default=0.01)
    a("--grad_clip", type=float, default=1.0)
    a("--eps_w", type=float, default=0.2, help="evidence-weight clip: w in [1 - eps_w, 1 + eps_w], 0 < eps_w < 1")
    a("--lam0", type=float, default=0.5, help="initial teacher-weight mix, in [0, 1]")
    a("--lam_decay_steps", type=int, default=50, help="lam goes linearly to 0 over N steps; 0 = constant lam0")
    a("--teacher_sync", type=int, default=10, help="copy policy -> teacher every N steps; 0 = a frozen teacher")
    a("--jsd_beta", type=float, default=0.5, help="OPSD: beta of the generalized JSD, in (0, 1)")
    a("--distill_coef", type=float, default=1.0, help="grpo+opsd: weight of the OPSD loss")
    a("--clip_low", type=float, default=0.2)
    a("--clip_high", type=float, default=0.28)
    a("--micro_batch", type=int, default=None, help="rows per forward/backward")
    a("--gen_batch", type=gen_batch_arg, default=None,
      help="rows decoded at once, whole groups (finished ones refilled): N, 0 = all, auto = what fits in GPU memory")
    a("--gen_mem_gb", type=float, default=None, help="--gen_batch auto: GB the rollout may fill per process "
                                                     "(default: the GPU's free memory; on CPU without it: all rows)")
    a("--dtype", choices=["bf16", "fp32"], default=None,
      help="compute dtype of the policy (fp32 master weights) and the teacher (default: bf16 on GPU, fp32 on CPU)")
    a("--gradient_checkpointing", type=int, default=None, help="1/0 (paper preset 1)")
    a("--keep_gathered", action="store_true", help="update: weights stay gathered and gradients unsharded over the "
      "micro-batches (one all-gather and reduce-scatter per step, not per micro-batch; memory: bench.py --plan)")
    a("--eval_every", type=int, default=50, help="held-out accuracy every N steps (0 = start/end only)")
    a("--eval_size", type=int, default=None)
    a("--save_every", type=int, default=None,
      help="resumable checkpoint every N steps; 0 = only the final model (paper preset 50)")
    a("--save_every_min", type=float, default=0, metavar="M", help="also save when M minutes passed since the last")
    a("--keep_last", type=int, default=0, help="keep the K newest checkpoints; 0 = all")
    a("--resume", nargs="?", const="latest", default=None, metavar="PATH",
      help="continue a stopped run: its latest complete checkpoint in --out, or the checkpoint PATH")
    a("--overwrite", action="store_true", help="replace the run already in --out")
    a("--init_from", default=None, metavar="DIR", help="start a new run (step 0) from the weights of a saved model dir")
    a("--dump_credit", type=int, default=0, metavar="N",
      help="write Delta_t and w_t of the first N responses of each step (while the teacher runs) to OUT/credit.jsonl")
    a("--max_bad_steps", type=int, default=5, help="stop after this many non-finite steps in a row")
    a("--warmup_steps", type=int, default=None,
      help="format cold start of the built-in model on a built-in task (600; tiny-vl 200)")
    a("--seed", type=int, default=0)
    a("--max_pixels", type=int, default=None, help="VLM: images larger than this many pixels are scaled down")
    a("--freeze_vision", action="store_true", help="VLM: train the language model only (default: the vision tower too)")
    a("--chat_template_kwargs", type=json_object, default={},
      help='JSON passed to the chat template of student and teacher prompts, e.g. \'{"enable_thinking": false}\'')
    a("--allow_abs_paths", action="store_true", help="allow data images outside the data file's directory")
    a("--timeout_min", type=float, default=60, help="process-group timeout: how long a rank waits for the others")
    a("--trust_remote_code", action="store_true")
    args = p.parse_args(argv)
    for action in p._actions:
        action.default = argparse.SUPPRESS
    explicit = set(vars(p.parse_args(argv)))  # the flags given on the command line
    if args.resume and args.overwrite:
        raise UserError("--resume continues the run in --out, --overwrite replaces it: give one")
    if args.resume:  # the stopped run's settings, with the flags given now on top
        path = rundir.find_checkpoint(args.resume, args.out)
        saved = rundir.saved_state(path)["args"]
        args = argparse.Namespace(**{**saved, **{k: getattr(args, k) for k in explicit}, "resume": path})
    for k, v in {None: TOY, "tiny-vl": TINY_VL}.get(args.model, PAPER).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.task = args.task or ("color" if args.model == "tiny-vl" else "largest")
    args.dtype = args.dtype or ("bf16" if torch.cuda.is_available() else "fp32")
    return args


def check_args(args, world):
    if not args.data and (args.task in toy.VL_TASKS) != (args.model == "tiny-vl"):
        raise UserError(f"--task {args.task} needs {'--model tiny-vl' if args.task in toy.VL_TASKS else 'a text model'}"
                        f" (image tasks: {', '.join(toy.VL_TASKS)}; text tasks: {', '.join(toy.TASKS)})")
    if args.group_size < 2:
        raise UserError(f"--group_size must be >= 2 (the group advantage needs an unbiased std), got {args.group_size}")
    ranges = {  # flag: (lowest, highest, are the bounds allowed)
        "steps": (0, None, True), "prompts_per_step": (1, None, True), "temperature": (0, None, False),
        "top_p": (0, 1, (False, True)), "max_prompt_len": (1, None, True), "max_new_tokens": (1, None, True),
        "lr": (0, None, False), "weight_decay": (0, None, True), "grad_clip": (0, None, False),
        "eps_w": (0, 1, False), "lam0": (0, 1, True), "lam_decay_steps": (0, None, True),
        "teacher_sync": (0, None, True), "jsd_beta": (0, 1, False), "distill_coef": (0, None, True),
        "clip_low": (0, 1, (True, False)), "clip_high": (0, None, True), "micro_batch": (1, None, True),
        "eval_every": (0, None, True), "eval_size": (0, None, True), "save_every": (0, None, True),
        "save_every_min": (0, None, True), "keep_last": (0, None, True), "dump_credit": (0, None, True),
        "max_bad_steps": (1, None, True), "warmup_steps": (0, None, True), "timeout_min": (0, None, False),
        "max_pixels": (1, None, True), "gen_mem_gb": (0, None, False)}
    for k, (lo, hi, closed) in ranges.items():
        v, (lo_ok, hi_ok) = getattr(args, k), closed if isinstance(closed, tuple) else (closed, closed)
        if v is not None and ((v < lo if lo_ok else v <= lo) or (hi is not None and (v > hi if hi_ok else v >= hi))):
            raise UserError(f"--{k} must be in {'[' if lo_ok else '('}{lo}, {hi if hi is not None else 'inf'}"
                            f"{']' if hi_ok and hi is not None else ')'}, got {v}")
    if args.prompts_per_step < world:
        raise UserError(f"{world} processes but only {args.prompts_per_step} prompts per step: each process needs one")
    if args.prompts_per_step % world:
        raise UserError(f"--prompts_per_step {args.prompts_per_step} is not divisible by {world} processes")


# ----------------------------------------------------------------------------- the phases of a step

def rollout(model, proc, rows, images, G, *, max_new_tokens, temperature, top_p, gen_batch, eos, generator=None,
            poll=None, gen_mem=None):
    """Step 1: G responses to each of the rows (row i's G consecutive: a group stays together); images[i]
    holds the image inputs of rows[i]. Each prompt is prefilled once for its G responses; at most gen_batch
    rows decode at once, a waiting prompt's G rows taking the slots of finished ones. Call with the
    parameters gathered; poll() runs at each host sync of the decode. Returns a dict:
    resp [N, T], resp_mask [N, T], logp (the sampler's token log-probs) [N, T], texts, gen_batch (N = G x rows)."""
    tok, device = hf.tokenizer_of(proc), next(model.parameters()).device
    prompts, pad = [r["student_ids"] for r in rows], tok.pad_token_id
    batch = gen_batch_size(model.config, len(prompts) * G, max(map(len, prompts)), gen_batch, max_new_tokens,
                           device, gen_mem, next(model.parameters()).element_size(), G)  # (compute dtype)
    ids, mask = left_pad(prompts, pad)
    resp, resp_mask, logp = generate(model, ids.to(device), mask.to(device), max_new_tokens, eos, pad, temperature,
                                     top_p, generator, n=G, batch=batch, poll=poll, **hf.cat_images(images))
    texts = tok.batch_decode([r[m.bool()] for r, m in zip(resp, resp_mask)], skip_special_tokens=True)
    ended = (torch.isin(resp, torch.tensor(sorted(eos), device=device)) & resp_mask.bool()).any(1)  # [N]
    return dict(resp=resp, resp_mask=resp_mask, logp=logp, texts=texts, ended=ended,
                gen_batch=max(G, batch // G * G))


def rewards_of(roll, refs):
    """Step 2: r_i = 1 if response i ended (EOS within --max_new_tokens) and its final answer equals the
    reference, else 0. [N] A response cut off at the budget has not given its final answer: crediting
    the last answer it happened to write would reward responses that never stop."""
    texts, ended = roll["texts"], roll["ended"]
    return ended * torch.tensor([reward(t, r["answer"], r.get("options")) for t, r in zip(texts, refs)],
                                device=ended.device)


@torch.no_grad()
def teacher_logprobs(teacher, ids, mask, resp, resp_mask, images, G, micro_batch, temperature, poll=lambda: None):
    """Step 4: logp_T = log pi_teacher(y_t | x, a, y_<t) of the student's responses resp [N, T], G per
    teacher prompt (ids/mask [N / G, P'], images[i] of prompt i), read at the response columns. Each
    teacher prompt runs once and its G responses are scored on top of its keys and values; micro-batches
    of max(1, micro_batch // G) groups (poll() before each), parameters gathered once for the pass."""
    k, out = max(1, micro_batch // G), []
    with gathered(teacher):
        for i in range(0, ids.shape[0], k):
            poll()
            rows = slice(i * G, (i + k) * G)
            out.append(response_logprobs(teacher, ids[i:i + k], mask[i:i + k], resp[rows], resp_mask[rows],
                                         temperature, n=G, **hf.cat_images(images[i:i + k])))
    return torch.cat(out)


def train_step(model, opt, batch, *, algo="rlsd", lam=0.5, eps_w=0.2, clip_low=0.2, clip_high=0.28, grad_clip=1.0,
               temperature=1.0, micro_batch=4, jsd_beta=0.5, distill_coef=1.0, world=1, teacher=None,
               keep_gathered=False, poll=lambda: None):
    """Steps 5-9 on this rank's share of the step's batch, then one optimizer step.

    batch: prompt_ids/prompt_mask [N, P], resp/resp_mask [N, T], adv [N], logp_teacher [N, T] (None
    for GRPO or once lam = 0: every token then carries A_i, exactly), images (N per-row image inputs),
    and for OPSD teacher_ids/teacher_mask [N, P'] (the `teacher`'s prompt, scored here chunk by chunk).
    There is one update per rollout, so pi_old is the policy of this very forward: logp_old =
    logp.detach() (rho = 1) and no separate old-policy pass is needed. Each micro-batch's loss is its
    summed token loss / the global token count, so adding the micro-batches of all ranks gives the
    global token mean; FSDP averages gradients over ranks, so the loss is multiplied by world to turn
    that average back into the sum. poll() runs before each micro-batch (it may raise: never after the
    optimizer step). Returns named diagnostics, token-weighted over all ranks."""
    dev = batch["resp"].device
    num_tokens = max(all_reduce_sum([batch["resp_mask"].sum().item()], dev)[0], 1.0)
    distill = algo in ("opsd", "grpo+opsd")
    model.train()
    opt.zero_grad(set_to_none=True)
    # sums over tokens (n: all, nw: of responses with A != 0, whose weights can differ from 1)
    sums = dict.fromkeys(["loss", "clip", "entropy", "delta", "w", "low", "high", "jsd", "n", "nw"], 0.0)
    with gathered(teacher) if distill else contextlib.nullcontext(), \
            gathered(model) if keep_gathered else contextlib.nullcontext():
        for i in range(0, batch["resp"].shape[0], micro_batch):
            poll()
            if keep_gathered:  # gradients summed unsharded, reduced and the weights resharded after the last only
                last = i + micro_batch >= batch["resp"].shape[0]
                model.set_requires_gradient_sync(last)
                model.set_reshard_after_backward(last)
            mb = {k: v[i:i + micro_batch] if v is not None else None for k, v in batch.items()}
            mask = mb["resp_mask"]
            with hf.vision_once([model, teacher] if distill else [model], mb["images"] or []) as images:
                hidden = response_hidden(model, mb["prompt_ids"], mb["prompt_mask"], mb["resp"], mask, **images)
                teacher_hidden = ()  # OPSD: the teacher's states for the same response tokens, no gradient
                if distill:
                    with torch.no_grad():
                        teacher_hidden = (response_hidden(teacher, mb["teacher_ids"], mb["teacher_mask"], mb["resp"],
                                                          mask, **images),)
            score = partial(token_scores, weight=model.get_output_embeddings().weight, temperature=temperature,
                            teacher_weight=teacher.get_output_embeddings().weight if distill else None, beta=jsd_beta)
            logp, entropy, jsd = (unflatten(x, mask) for x in in_chunks(score, hidden, mb["resp"][mask.bool()],
                                                                         *teacher_hidden))  # [n, T] each
            logp_old = logp.detach()
            if mb["logp_teacher"] is not None:  # steps 5-8 (the loop skips the teacher pass once lam = 0)
                token_adv, w = rlsd_token_advantages(mb["adv"], mb["logp_teacher"], logp_old, mask, lam, eps_w)
            else:  # GRPO: every token carries A_i
                token_adv, w = mb["adv"][:, None] * mask, {}
            loss, st = policy_loss(logp, logp_old, token_adv, mask, clip_low, clip_high, num_tokens)  # step 9
            if distill:  # OPSD: token mean of the divergence (+ the GRPO loss for grpo+opsd)
                jsd_loss = (jsd * mask).sum() / num_tokens
                loss = jsd_loss if algo == "opsd" else loss + distill_coef * jsd_loss
            (loss * world).backward()
            n, nw = mask.sum().item(), (mask * (mb["adv"] != 0)[:, None]).sum().item()
            for k, x in zip(sums, [loss.item(), st["ratio_clip_frac"] * n, (entropy * mask).sum().item(),
                                   w.get("delta_mean", 0.0) * n, w.get("w_mean", 0.0) * n,
                                   w.get("w_clip_low_frac", 0.0) * nw, w.get("w_clip_high_frac", 0.0) * nw,
                                   (jsd * mask).sum().item(), n, nw]):
                sums[k] += x
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    grad_norm = grad_norm.full_tensor().item() if hasattr(grad_norm, "full_tensor") else grad_norm.item()
    s = dict(zip(sums, all_reduce_sum(list(sums.values()), dev)))
    ok = math.isfinite(s["loss"]) and math.isfinite(grad_norm)
    if ok:  # a non-finite loss or grad norm skips the update
        opt.step()
    opt.zero_grad(set_to_none=True)
    n, nw = max(s["n"], 1.0), max(s["nw"], 1.0)
    stats = {"loss": s["loss"], "ppo/clip_frac": s["clip"] / n, "policy/entropy": s["entropy"] / n,
             "grad_norm": grad_norm, "skipped": int(not ok)}
    if batch["logp_teacher"] is not None:
        stats.update({"rlsd/delta_mean": s["delta"] / n, "rlsd/weight_mean": s["w"] / n,
                      "rlsd/clip_low": s["low"] / nw, "rlsd/clip_high": s["high"] / nw})
    if distill:
        stats["opsd/jsd"] = s["jsd"] / n
    return stats


@torch.no_grad()
def sync_teacher(teacher, model):
    """teacher <- policy (both sharded alike: each rank copies its shards)."""
    for pt, ps in zip(teacher.parameters(), model.parameters()):
        pt.copy_(ps)


def row_images(proc, rows, device):
    """Each row's image inputs ({} for a text row), computed once per step and shared by its G samples."""
    return [hf.image_inputs(proc, [hf.open_image(i) for i in r.get("images", [])], device) for r in rows]


def evaluate(model, proc, rows, rank, world, device, **sampling):
    """Greedy accuracy on held-out rows, split over ranks (None when there are none)."""
    if not rows:
        return None
    mine, correct = rows[rank::world], 0.0
    model.eval()
    with rundir.stoppable(device), gathered(model):  # collective: every rank enters, even one with no rows
        if mine:
            roll = rollout(model, proc, mine, row_images(proc, mine, device), 1, temperature=0.0, poll=rundir.poll,
                           **sampling)
            correct = rewards_of(roll, mine).sum().item()
    c, n = all_reduce_sum([correct, len(mine)], device)
    return c / max(n, 1)


def step_metrics(step, roll, rewards, lam, stats, algo, device, t0, t_rollout, t_teacher, t_update):
    """The step's line of metrics.jsonl: means over all ranks, and the phases' seconds."""
    resp_mask, texts = roll["resp_mask"], roll["texts"]
    sums = all_reduce_sum([rewards.sum().item(), len(texts), resp_mask.sum().item(), (~roll["ended"]).sum().item(),
                           sum(map(leaked, texts)), sum("</answer>" in t for t in texts)], device)
    n, dt = sums[1], time.time() - t0
    return {"step": step, "train/reward": sums[0] / n, "train/response_len": sums[2] / n,
            "train/truncated": sums[3] / n, **({"rlsd/lam": lam} if algo == "rlsd" else {}), **stats,
            "leak/rate": sums[4] / n, "train/answer_tag": sums[5] / n, "rollout/gen_batch": roll["gen_batch"],
            "time/step_s": dt, "time/rollout_s": t_rollout - t0, "time/teacher_s": t_teacher - t_rollout,
            "time/update_s": t_update - t_teacher, "time/tokens_per_s": sums[2] / dt}


def initial_weights(args, proc, config, save_dtype, train_rows):
    """Rank 0's full state dict: --init_from or --model from disk or the hub, else the built-in model
    (given its format cold start on a built-in task)."""
    if args.init_from or (args.model and args.model != "tiny-vl"):
        source = hf.model_class(config).from_pretrained(args.init_from or args.model, dtype=save_dtype,
                                                        trust_remote_code=args.trust_remote_code)
    else:
        source = toy.vl_model(proc) if hf.is_vision_model(config) else toy.text_model(proc)
        if not args.data and not args.resume:  # the cold start knows the built-in tasks only
            toy.warmup(source, proc, train_rows, {**toy.TASKS, **toy.VL_TASKS}[args.task][1], steps=args.warmup_steps)
    return source.state_dict()


def prompt_rows(args, proc, config, train_rows, eval_rows):
    """The rows with their student/teacher prompt ids; rows whose prompt is longer than --max_prompt_len
    dropped (and counted). Sets the processor's pixel cap and a pad token if it has none."""
    if not hf.is_vision_model(config) and (r := next((r for r in train_rows + eval_rows if r.get("images")), None)):
        name = args.model or "the built-in model"
        raise UserError(f"{r['where']}: a row with images, but {name} is a text-only model")
    if hf.is_vision_model(config) and args.max_pixels:
        proc.image_processor.size = {"shortest_edge": min(proc.image_processor.size["shortest_edge"], args.max_pixels),
                                     "longest_edge": args.max_pixels}
    tok = hf.tokenizer_of(proc)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    train_rows, dropped = data.tokenize(train_rows, proc, args.max_prompt_len, args.chat_template_kwargs)
    eval_rows, dropped_eval = data.tokenize(eval_rows, proc, args.max_prompt_len, args.chat_template_kwargs)
    if len(train_rows) < args.prompts_per_step:
        raise UserError(f"{len(train_rows)} usable training prompts (<= {args.max_prompt_len} tokens), "
                        f"fewer than --prompts_per_step {args.prompts_per_step}")
    return train_rows, eval_rows, (dropped, dropped_eval)


def build_models(args, config, full_state, device, world):
    """The policy (fp32 master weights, --dtype compute) and the teacher, a copy of it in --dtype (rlsd:
    refreshed every --teacher_sync steps; opsd: frozen; grpo: none), both sharded."""
    bf16, vision = args.dtype == "bf16", hf.is_vision_model(config)
    make = lambda: hf.model_class(config).from_config(config, trust_remote_code=args.trust_remote_code)
    model = parallel.build_sharded(make, full_state, device, torch.float32, bf16, bool(args.gradient_checkpointing))
    teacher = None
    if args.algo != "grpo":
        teacher = parallel.build_sharded(make, full_state, device, torch.bfloat16 if bf16 else torch.float32, False)
        teacher.eval().requires_grad_(False)
    if vision and args.freeze_vision:
        model.model.visual.requires_grad_(False)
    if vision and world > 1:
        parallel.keep_vision_in_step(model)
    return model, teacher


# ----------------------------------------------------------------------------- main
@entry_point
def main(argv=None):
    rundir.catch_stop_signals()  # a stop request abandons the step in progress: see the loop
    args = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    check_args(args, world)
    rundir.check_out(args.out, args.resume, args.overwrite)
    hf.check_model(args.model, "--model")
    hf.check_model(args.init_from, "--init_from")
    train_rows, eval_rows = (data.load_split(args.data, args.eval_data, args.eval_size, args.seed, args.allow_abs_paths)
                             if args.data else toy.task_data(args.task, 20000, args.eval_size, args.seed))  # checked
    run_id = rundir.run_id(args.model, args.data, args.eval_data, world)
    if args.resume:  # the same run, or a one-line error saying what differs
        rundir.check_same_run(args.resume, run_id)

    # ---- processor, config and prompt ids (no weights yet)
    proc, config, save_dtype = toy.spec(args.model, args.task) or hf.load_spec(args.model, args.trust_remote_code)
    train_rows, eval_rows, dropped = prompt_rows(args, proc, config, train_rows, eval_rows)
    rank, world, device = parallel.setup_distributed(args.timeout_min)
    if rank == 0:
        print("settings: " + "  ".join(f"{k}={v}" for k, v in vars(args).items()
                                       if v not in (None, False, {}) and k != "overwrite"))
        if sum(dropped):
            print(f"{dropped[0]} training and {dropped[1]} held-out rows dropped: prompt longer than "
                  f"--max_prompt_len {args.max_prompt_len} tokens")

    # ---- model and teacher: rank 0 reads the weights once, every rank builds a sharded skeleton and receives them
    torch.manual_seed(args.seed)
    full_state = initial_weights(args, proc, config, save_dtype, train_rows) if rank == 0 else {}
    model, teacher = build_models(args, config, full_state, device, world)
    del full_state
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                            weight_decay=args.weight_decay)
    torch.manual_seed(args.seed * 1000 + rank + 1)  # per-rank sampling
    gen = torch.Generator(device=device).manual_seed(args.seed * 1000 + rank + 1)
    arch = config.architectures[0] if config.architectures else type(model).__name__
    run = rundir.Run(args, run_id, model, teacher, opt, gen, proc, arch, save_dtype, rank, world)  # or resumed
    eos = hf.eos_token_ids(model, proc)
    sampling = dict(max_new_tokens=args.max_new_tokens, top_p=args.top_p, gen_batch=args.gen_batch, eos=eos,
                    gen_mem=args.gen_mem_gb)
    update = dict(algo=args.algo, eps_w=args.eps_w, clip_low=args.clip_low, clip_high=args.clip_high,
                  grad_clip=args.grad_clip, temperature=args.temperature, micro_batch=args.micro_batch,
                  jsd_beta=args.jsd_beta, distill_coef=args.distill_coef, world=world, keep_gathered=args.keep_gathered)
    order, bad, G, per_rank = run.order, run.bad, args.group_size, args.prompts_per_step // world
    tok, rec, step, acc0 = hf.tokenizer_of(proc), {}, run.start - 1, None
    agree = partial(rundir.agree, device)  # a safe point to abandon the step (collective)
    bar = tqdm(range(run.start, args.steps + 1), disable=rank != 0, desc=args.algo, dynamic_ncols=True,
               initial=run.start - 1, total=args.steps)
    try:  # a stop request raises Stopped on every rank at the next safe point: see rundir.Run.abandon
        agree()  # one during the model load or the cold start
        if run.pending is not None:  # step 0's held-out accuracy, or one that a stop cut short
            rec = run.pending
            rec = {**rec, "eval/accuracy": evaluate(model, proc, eval_rows, rank, world, device, **sampling)}
            acc0 = rec["eval/accuracy"] if step == 0 else None
            run.write(rec)
        for step in bar:
            t0 = time.time()
            run.begin_step(step, order, bad)  # what a stop during this step saves
            idx, order = data.take_prompts(order, len(train_rows), args.prompts_per_step, args.seed, step)
            rows = [train_rows[i] for i in idx[rank * per_rank:(rank + 1) * per_rank]]  # this rank's share
            refs = [r for r in rows for _ in range(G)]  # [N]: each prompt G times, a group consecutive
            row_imgs = row_images(proc, rows, device)  # image inputs of each prompt
            images = [per_row for per_row in row_imgs for _ in range(G)]  # ... of each response

            # ---- 1. group sampling (parameters stay gathered for the whole rollout)
            model.eval()
            with rundir.stoppable(device), gathered(model):
                roll = rollout(model, proc, rows, row_imgs, G, temperature=args.temperature, generator=gen,
                               poll=rundir.poll, **sampling)
            resp, resp_mask = roll["resp"], roll["resp_mask"]
            t_rollout = time.time()

            # ---- 2-3. binary rewards, group advantages
            rewards = rewards_of(roll, refs)  # [N]
            adv = group_advantages(rewards, G)  # [N]

            # ---- 4. teacher pass: teacher prompt + the same response tokens (skipped once lam = 0)
            lam = lam_schedule(step - 1, args.lam0, args.lam_decay_steps) if args.algo == "rlsd" else 0.0
            t_ids, t_mask = (t.to(device) for t in left_pad([r["teacher_ids"] for r in rows], tok.pad_token_id))
            logp_teacher = (teacher_logprobs(teacher, t_ids, t_mask, resp, resp_mask, row_imgs, G, args.micro_batch,
                                             args.temperature, agree) if lam > 0 else None)  # [N, T]
            if args.dump_credit and logp_teacher is not None and rank == 0:
                rundir.write_credit(os.path.join(args.out, "credit.jsonl"), step, tok, refs, resp, resp_mask, rewards,
                                    adv, logp_teacher - roll["logp"], args.dump_credit)
            t_teacher = time.time()

            # ---- 5-9. token advantages and the policy update; then the teacher refresh
            s_ids, s_mask = (t.to(device) for t in left_pad([r["student_ids"] for r in refs], tok.pad_token_id))
            batch = dict(prompt_ids=s_ids, prompt_mask=s_mask, resp=resp, resp_mask=resp_mask, adv=adv,
                         logp_teacher=logp_teacher, images=images, teacher_ids=t_ids.repeat_interleave(G, 0),
                         teacher_mask=t_mask.repeat_interleave(G, 0))
            stats = train_step(model, opt, batch, lam=lam, teacher=teacher, poll=agree, **update)
            if args.algo == "rlsd" and args.teacher_sync and step % args.teacher_sync == 0:
                sync_teacher(teacher, model)
            t_update = time.time()

            # ---- metrics, held-out accuracy, checkpoint / stop
            rec = step_metrics(step, roll, rewards, lam, stats, args.algo, device, t0, t_rollout, t_teacher, t_update)
            if args.gen_batch == "auto" and step == run.start and rank == 0:
                tqdm.write(f"--gen_batch auto: {roll['gen_batch']} rows decoded at once, per process")
            bad = bad + 1 if stats["skipped"] else 0
            if stats["skipped"] and rank == 0:
                tqdm.write(f"step {step}: non-finite loss or grad norm, update skipped ({bad} in a row)")
            if bad >= args.max_bad_steps:
                raise UserError(f"{bad} non-finite steps in a row (--max_bad_steps): lower --lr or check the data")
            if (args.eval_every and step % args.eval_every == 0) or step == args.steps:
                rec["eval/accuracy"] = evaluate(model, proc, eval_rows, rank, world, device, **sampling)
            bar.set_postfix(reward=f"{rec['train/reward']:.3f}", s_step=f"{rec['time/step_s']:.2f}",
                            **({"eval": f"{rec['eval/accuracy']:.3f}"} if rec.get("eval/accuracy") is not None else {}))
            if run.end_step(step, rec, order, bad):  # a stop request: every rank saved this step
                break
    except rundir.Stopped:
        run.abandon(step, rec, order, bad)
    bar.close()
    code = run.finish()  # the final model, or the line that says how to resume
    if rank == 0 and not run.stopped:
        print(f"eval/accuracy {acc0} -> {rec.get('eval/accuracy', acc0)}; model in {os.path.join(args.out, 'final')}")
    torch.distributed.destroy_process_group()
    return code


if __name__ == "__main__":
    code = main()
    # Leave without finalizing the interpreter. A gloo worker thread (ProcessGroupGloo::runLoop) can
    # outlive destroy_process_group and drop the last reference to a Python-made tensor while the
    # interpreter finalizes: taking the GIL then ends that thread with pthread_exit, and the process
    # aborts ("terminate called without an active exception") after a complete run. Rare, load-dependent.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

"""RLSD training: torchrun entry, the loop, the update.

    torchrun --nproc_per_node=2 train.py          # built-in tiny model + toy task, CPU
    torchrun --nproc_per_node=8 train.py --model Qwen/Qwen3-8B --data train.jsonl   # paper preset

One step, as the loop below reads:
  1. rollout            G responses per prompt (sample.py)
  2. rewards_of         0/1 per response (verify.py)
  3. group_advantages   A_i per response (rlsd.py)
  4. teacher_logprobs   the teacher's log-probs of the same tokens, under no_grad, while lam > 0
  5-9. train_step       RLSD token advantages and one clipped policy update whose own forward
                        gives pi_old (rlsd.py)
  then a teacher refresh every --teacher_sync steps, metrics, held-out accuracy and checkpoints.

What the loop stands on lives below this file: parallel.py (process group, FSDP2), rundir.py (the
run directory: checkpoints, resume, stop), data.py (JSONL, held-out split, prompt ids), hf.py (model
classes, processors, positions), logprobs.py (chunked log-prob / entropy / JSD passes), memory.py
(generate batch size), toy.py (the built-in model and tasks).
"""
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
import stop
import toy
from cli import UserError, entry_point
from flags import check_args, parse_args
from logprobs import in_chunks, response_hidden, response_logprobs, token_scores, unflatten
from memory import gen_batch_size
from parallel import all_reduce_sum, gathered, local_shard
from rlsd import group_advantages, lam_schedule, leaked, policy_loss, rlsd_token_advantages
from sample import generate, left_pad
from verify import reward

# ----------------------------------------------------------------------------- the phases of a step

def padded_prompts(prompts, pad_id, device):
    """Token-id lists -> (ids [B, P] left-padded, mask [B, P]) on device."""
    ids, mask = left_pad(prompts, pad_id)
    return ids.to(device), mask.to(device)


def rollout(model, proc, rows, images, G, *, max_new_tokens, temperature, top_p, gen_batch, eos,
            generator=None, poll=None, gen_mem=None):
    """Step 1: G responses to each of the rows (row i's G consecutive: a group stays together);
    images[i] holds the image inputs of rows[i]. Each prompt is prefilled once for its G responses;
    at most gen_batch rows decode at once, a waiting prompt's G rows taking the slots of finished
    ones. Call with the parameters gathered; poll() runs at each host sync of the decode.

    Returns a dict: prompt_ids, prompt_mask [B, P] (the left-padded prompts, B = len(rows)),
    resp [N, T], resp_mask [N, T], logp (the sampler's token log-probs) [N, T], texts (N strings),
    ended [N] (an EOS within the budget), gen_batch (rows decoded at once); N = G x B."""
    tok = hf.tokenizer_of(proc)
    first_param = next(model.parameters())
    device = first_param.device
    prompts = [r["student_ids"] for r in rows]
    longest = max(map(len, prompts))
    batch = gen_batch_size(model.config, len(prompts) * G, longest, gen_batch, max_new_tokens,
                           device, gen_mem, first_param.element_size(), G)  # (compute dtype)
    ids, mask = padded_prompts(prompts, tok.pad_token_id, device)
    resp, resp_mask, logp = generate(model, ids, mask, max_new_tokens, eos, tok.pad_token_id,
                                     temperature, top_p, generator, n=G, batch=batch, poll=poll,
                                     **hf.cat_images(images))
    kept = [r[m.bool()] for r, m in zip(resp, resp_mask)]
    texts = tok.batch_decode(kept, skip_special_tokens=True)
    eos_ids = torch.tensor(sorted(eos), device=device)
    ended = (torch.isin(resp, eos_ids) & resp_mask.bool()).any(1)  # [N]
    return dict(prompt_ids=ids, prompt_mask=mask, resp=resp, resp_mask=resp_mask, logp=logp,
                texts=texts, ended=ended, gen_batch=max(G, batch // G * G))


def rewards_of(roll, refs):
    """Step 2: r_i = 1 if response i ended (EOS within --max_new_tokens) and its final answer
    equals the reference, else 0. [N] A response cut off at the budget has not given its final
    answer: crediting the last answer it happened to write would reward responses that never
    stop."""
    scores = [reward(text, ref["answer"], ref.get("options"))
              for text, ref in zip(roll["texts"], refs)]
    ended = roll["ended"]
    return ended * torch.tensor(scores, device=ended.device)


@torch.no_grad()
def teacher_logprobs(teacher, ids, mask, resp, resp_mask, images, G, micro_batch, temperature,
                     poll=lambda: None):
    """Step 4: logp_T = log pi_teacher(y_t | x, a, y_<t) of the student's responses resp [N, T],
    G per teacher prompt (ids/mask [N / G, P'], images[i] of prompt i), read at the response
    columns. Each teacher prompt runs once and its G responses are scored on top of its keys and
    values; micro-batches of max(1, micro_batch // G) groups (poll() before each), parameters
    gathered once for the pass. Returns [N, T]."""
    prompts_per_chunk = max(1, micro_batch // G)
    out = []
    with gathered(teacher):
        for i in range(0, ids.shape[0], prompts_per_chunk):
            poll()
            prompts = slice(i, i + prompts_per_chunk)
            rows = slice(i * G, (i + prompts_per_chunk) * G)
            logp = response_logprobs(teacher, ids[prompts], mask[prompts], resp[rows],
                                     resp_mask[rows], temperature, n=G,
                                     **hf.cat_images(images[prompts]))
            out.append(logp)
    return torch.cat(out)


# sums over the step's response tokens, added over micro-batches and ranks (train_step)
UPDATE_SUMS = ["loss", "tokens", "ratio_clipped_tokens", "entropy", "jsd",
               "delta", "w", "weighted_tokens", "clip_low_tokens", "clip_high_tokens"]


def train_step(model, opt, batch, *, algo="rlsd", lam=0.5, logp_teacher=None, teacher=None,
               eps_w=0.2, clip_low=0.2, clip_high=0.28, grad_clip=1.0, temperature=1.0,
               micro_batch=4, jsd_beta=0.5, distill_coef=1.0, world=1, keep_gathered=False,
               poll=lambda: None):
    """Steps 5-9 on this rank's share of the step's batch, then one optimizer step.

    batch: prompt_ids/prompt_mask [N, P], resp/resp_mask [N, T], adv [N], images (N per-row image
    inputs, or None); for OPSD also teacher_ids/teacher_mask [N, P'] (the `teacher`'s prompt,
    scored here chunk by chunk). logp_teacher [N, T] (step 4) is read while lam > 0; lam = 0 (GRPO,
    or RLSD after the decay) gives every token A_i, exactly.

    There is one update per rollout, so pi_old is the policy of this very forward: logp_old =
    logp.detach() (rho = 1) and no separate old-policy pass is needed. Each micro-batch's loss is
    its summed token loss / the global token count, so adding the micro-batches of all ranks gives
    the global token mean; FSDP averages gradients over ranks, so the loss is multiplied by world to
    turn that average back into the sum. poll() runs before each micro-batch (it may raise: never
    after the optimizer step). Returns named diagnostics, token-weighted over all ranks."""
    device = batch["resp"].device
    local_tokens = batch["resp_mask"].sum().item()
    num_tokens = max(all_reduce_sum([local_tokens], device)[0], 1.0)
    distill = algo in ("opsd", "grpo+opsd")
    sums = {k: torch.zeros((), dtype=torch.float64, device=device) for k in UPDATE_SUMS}
    vision_models = [model, teacher] if distill else [model]
    num_rows = batch["resp"].shape[0]
    model.train()
    opt.zero_grad(set_to_none=True)

    teacher_gathered = gathered(teacher) if distill else contextlib.nullcontext()
    model_gathered = gathered(model) if keep_gathered else contextlib.nullcontext()
    with teacher_gathered, model_gathered:
        for i in range(0, num_rows, micro_batch):
            poll()
            if keep_gathered:  # gradients summed unsharded, reduced (and weights resharded)
                # after the last micro-batch only
                last = i + micro_batch >= num_rows
                model.set_requires_gradient_sync(last)
                model.set_reshard_after_backward(last)
            rows = slice(i, i + micro_batch)
            mask = batch["resp_mask"][rows]  # [n, T]
            resp = batch["resp"][rows]
            adv = batch["adv"][rows]  # [n]

            # ---- forward: hidden states that predict the response tokens (and the teacher's, OPSD)
            with hf.vision_once(vision_models, (batch["images"] or [])[rows]) as images:
                hidden = response_hidden(model, batch["prompt_ids"][rows],
                                         batch["prompt_mask"][rows], resp, mask, **images)
                teacher_hidden = ()  # OPSD: the teacher's states for the same tokens, no gradient
                if distill:
                    with torch.no_grad():
                        teacher_hidden = (response_hidden(teacher, batch["teacher_ids"][rows],
                                                          batch["teacher_mask"][rows], resp, mask,
                                                          **images),)
            # the output layers' weights as the forward left them (gathered; sharded before it)
            teacher_weight = None
            if distill:
                teacher_weight = teacher.get_output_embeddings().weight
            score = partial(token_scores, weight=model.get_output_embeddings().weight,
                            temperature=temperature, teacher_weight=teacher_weight, beta=jsd_beta)
            scores = in_chunks(score, hidden, resp[mask.bool()], *teacher_hidden)
            logp, entropy, jsd = (unflatten(x, mask) for x in scores)  # [n, T] each
            logp_old = logp.detach()

            # ---- steps 5-8: token advantages (lam = 0: A_i on every token)
            if lam > 0:
                token_adv, w = rlsd_token_advantages(adv, logp_teacher[rows], logp_old, mask,
                                                     lam, eps_w)
                sums["delta"] += w["delta_sum"]
                sums["w"] += w["w_sum"]
                sums["weighted_tokens"] += w["weighted_tokens"]
                sums["clip_low_tokens"] += w["clip_low_tokens"]
                sums["clip_high_tokens"] += w["clip_high_tokens"]
            else:
                token_adv = adv[:, None] * mask

            # ---- step 9: the clipped surrogate (OPSD: the divergence's token mean instead or too)
            loss, st = policy_loss(logp, logp_old, token_adv, mask, clip_low, clip_high,
                                   num_tokens)
            if distill:
                jsd_loss = (jsd * mask).sum() / num_tokens
                if algo == "opsd":
                    loss = jsd_loss
                else:
                    loss = loss + distill_coef * jsd_loss
            (loss * world).backward()
            sums["loss"] += loss.detach()
            sums["tokens"] += st["tokens"]
            sums["ratio_clipped_tokens"] += st["ratio_clipped_tokens"]
            sums["entropy"] += (entropy * mask).sum()
            sums["jsd"] += (jsd * mask).sum()

    # ---- one optimizer step, unless the loss or the gradient norm is not finite
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
        grad_norm = grad_norm.full_tensor()
    grad_norm = grad_norm.item()
    summed = all_reduce_sum(torch.stack(list(sums.values())).tolist(), device)  # one host sync
    totals = dict(zip(sums, summed))
    ok = math.isfinite(totals["loss"]) and math.isfinite(grad_norm)
    if ok:
        opt.step()
        check_weights_finite(model, device)
    opt.zero_grad(set_to_none=True)

    tokens = max(totals["tokens"], 1.0)
    weighted_tokens = max(totals["weighted_tokens"], 1.0)
    stats = {"loss": totals["loss"],
             "ppo/clip_frac": totals["ratio_clipped_tokens"] / tokens,
             "policy/entropy": totals["entropy"] / tokens,
             "grad_norm": grad_norm,
             "skipped": int(not ok)}
    if lam > 0:
        stats["rlsd/delta_mean"] = totals["delta"] / tokens
        stats["rlsd/weight_mean"] = totals["w"] / tokens
        stats["rlsd/clip_low"] = totals["clip_low_tokens"] / weighted_tokens
        stats["rlsd/clip_high"] = totals["clip_high_tokens"] / weighted_tokens
    if distill:
        stats["opsd/jsd"] = totals["jsd"] / tokens
    return stats


@torch.no_grad()
def check_weights_finite(model, device):
    """UserError on every rank if any weight is NaN or inf after the optimizer step: the next
    rollout would sample from NaN probabilities. A finite loss and gradient do not rule it out
    (AdamW's decoupled weight decay alone blows the weights up at --lr 1e30)."""
    shards = [local_shard(p) for p in model.parameters()]
    finite = torch.stack([torch.isfinite(shard).all() for shard in shards]).all()
    bad_ranks = all_reduce_sum([float(not finite.item())], device)[0]
    if bad_ranks:
        raise UserError("the weights became NaN or inf in this step's optimizer update: lower "
                        "--lr (or --weight_decay); the earlier checkpoints are as they were")


@torch.no_grad()
def update_batch(roll, adv, images, G, teacher_prompts=None):
    """The update's rows: each prompt repeated for its G responses, with their advantages [N].
    teacher_prompts (ids, mask) [B, P'], for OPSD, which scores each response under its teacher
    prompt in the update, are repeated the same way."""
    batch = dict(prompt_ids=roll["prompt_ids"].repeat_interleave(G, 0),  # [N, P]
                 prompt_mask=roll["prompt_mask"].repeat_interleave(G, 0),
                 resp=roll["resp"], resp_mask=roll["resp_mask"], adv=adv,
                 images=[per_prompt for per_prompt in images for _ in range(G)])
    if teacher_prompts is not None:
        t_ids, t_mask = teacher_prompts
        batch["teacher_ids"] = t_ids.repeat_interleave(G, 0)  # [N, P']
        batch["teacher_mask"] = t_mask.repeat_interleave(G, 0)
    return batch


def sync_teacher(teacher, model):
    """teacher <- policy (both sharded alike: each rank copies its shards)."""
    for pt, ps in zip(teacher.parameters(), model.parameters()):
        pt.copy_(ps)


def row_images(proc, rows, device):
    """Each row's image inputs ({} for a text row), computed once per step and shared by its G
    samples."""
    return [hf.image_inputs(proc, [hf.open_image(i) for i in r.get("images", [])], device)
            for r in rows]


def evaluate(model, proc, rows, rank, world, device, stoppable, **sampling):
    """Greedy accuracy on held-out rows, split over ranks (None when there are none). stoppable:
    the run's context for a phase whose ranks may stop apart (rundir.Run.stoppable)."""
    if not rows:
        return None
    mine = rows[rank::world]
    correct = 0.0
    model.eval()
    # collective: every rank enters, even one with no rows
    with stoppable() as poll, gathered(model):
        if mine:
            images = row_images(proc, mine, device)
            roll = rollout(model, proc, mine, images, 1, temperature=0.0, poll=poll, **sampling)
            correct = rewards_of(roll, mine).sum().item()
    total_correct, total_rows = all_reduce_sum([correct, len(mine)], device)
    return total_correct / max(total_rows, 1)


def step_metrics(step, roll, rewards, lam, stats, algo, device, times):
    """The step's line of metrics.jsonl: means over all ranks, and the phases' seconds.
    times: wall-clock time at the step's start and at the end of rollout, teacher pass, update."""
    texts = roll["texts"]
    local = {"reward": rewards.sum().item(),
             "responses": len(texts),
             "tokens": roll["resp_mask"].sum().item(),
             "truncated": (~roll["ended"]).sum().item(),
             "leaked": sum(map(leaked, texts)),
             "answer_tag": sum("</answer>" in t for t in texts)}
    total = dict(zip(local, all_reduce_sum(list(local.values()), device)))
    n = total["responses"]
    step_s = time.time() - times["start"]
    rec = {"step": step,
           "train/reward": total["reward"] / n,
           "train/response_len": total["tokens"] / n,
           "train/truncated": total["truncated"] / n}
    if algo == "rlsd":
        rec["rlsd/lam"] = lam
    rec.update(stats)
    rec.update({"leak/rate": total["leaked"] / n,
                "train/answer_tag": total["answer_tag"] / n,
                "rollout/gen_batch": roll["gen_batch"],
                "time/step_s": step_s,
                "time/rollout_s": times["rollout"] - times["start"],
                "time/teacher_s": times["teacher"] - times["rollout"],
                "time/update_s": times["update"] - times["teacher"],
                "time/tokens_per_s": total["tokens"] / step_s})
    return rec


# ----------------------------------------------------------------------------- building the run

def initial_weights(args, proc, config, save_dtype, train_rows):
    """Rank 0's full state dict: --init_from or --model from disk or the hub, else the built-in
    model (given its format cold start on a built-in task)."""
    source_dir = args.init_from or args.model
    if source_dir and source_dir != "tiny-vl":
        source = hf.load_weights(config, source_dir, dtype=save_dtype,
                                 trust_remote_code=args.trust_remote_code)
        return source.state_dict()
    if hf.is_vision_model(config):
        source = toy.vl_model(proc)
    else:
        source = toy.text_model(proc)
    if not args.data and not args.resume:  # the cold start knows the built-in tasks only
        task_prompts = {**toy.TASKS, **toy.VL_TASKS}[args.task][1]
        toy.warmup(source, proc, train_rows, task_prompts, steps=args.warmup_steps)
    return source.state_dict()


def prompt_rows(args, proc, config, train_rows, eval_rows):
    """The rows with their student/teacher prompt ids; rows whose prompt is longer than
    --max_prompt_len dropped (and counted). Sets the processor's pixel cap and a pad token if it
    has none. Returns (train rows, eval rows, (training rows dropped, held-out rows dropped))."""
    vision = hf.is_vision_model(config)
    if not vision:
        with_images = [r for r in train_rows + eval_rows if r.get("images")]
        if with_images:
            name = args.model or "the built-in model"
            raise UserError(f"{with_images[0]['where']}: a row with images, but {name} is a "
                            "text-only model")
    if vision and args.max_pixels:
        shortest = min(proc.image_processor.size["shortest_edge"], args.max_pixels)
        proc.image_processor.size = {"shortest_edge": shortest, "longest_edge": args.max_pixels}
    tok = hf.tokenizer_of(proc)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    template_kwargs = args.chat_template_kwargs
    train_rows, dropped = data.tokenize(train_rows, proc, args.max_prompt_len, template_kwargs)
    eval_rows, dropped_eval = data.tokenize(eval_rows, proc, args.max_prompt_len, template_kwargs)
    if len(train_rows) < args.prompts_per_step:
        raise UserError(f"{len(train_rows)} usable training prompts (<= {args.max_prompt_len} "
                        f"tokens), fewer than --prompts_per_step {args.prompts_per_step}")
    return train_rows, eval_rows, (dropped, dropped_eval)


def build_models(args, proc, config, save_dtype, train_rows, rank, world, device):
    """The policy (fp32 master weights, --dtype compute) and the teacher, a copy of it in --dtype
    (rlsd: refreshed every --teacher_sync steps; opsd: frozen; grpo: none), both sharded. Rank 0
    reads the weights once (initial_weights); every rank builds a sharded skeleton and receives
    them."""
    full_state = {}
    if rank == 0:
        full_state = initial_weights(args, proc, config, save_dtype, train_rows)
    bf16 = args.dtype == "bf16"
    vision = hf.is_vision_model(config)

    def make():
        return hf.model_class(config).from_config(config, trust_remote_code=args.trust_remote_code)

    model = parallel.build_sharded(make, full_state, device, torch.float32, bf16,
                                   bool(args.gradient_checkpointing))
    teacher = None
    if args.algo != "grpo":
        teacher_dtype = torch.bfloat16 if bf16 else torch.float32
        teacher = parallel.build_sharded(make, full_state, device, teacher_dtype, False)
        teacher.eval().requires_grad_(False)
    if vision and args.freeze_vision:
        model.model.visual.requires_grad_(False)
    if vision and world > 1:
        parallel.keep_vision_in_step(model)
    return model, teacher


def load_rows(args):
    """(training rows, held-out rows): --data (and --eval_data), each row checked, or the
    built-in task."""
    if args.data:
        return data.load_split(args.data, args.eval_data, args.eval_size, args.seed,
                               args.allow_abs_paths)
    return toy.task_data(args.task, 20000, args.eval_size, args.seed)


def sampling_settings(args, eos):
    """The keyword arguments of rollout() that stay fixed for the run (not the temperature:
    training samples at --temperature, evaluation greedily)."""
    return dict(max_new_tokens=args.max_new_tokens, top_p=args.top_p, gen_batch=args.gen_batch,
                eos=eos, gen_mem=args.gen_mem_gb)


def update_settings(args, world):
    """The keyword arguments of train_step() that stay fixed for the run."""
    return dict(algo=args.algo, eps_w=args.eps_w, clip_low=args.clip_low,
                clip_high=args.clip_high, grad_clip=args.grad_clip,
                temperature=args.temperature, micro_batch=args.micro_batch,
                jsd_beta=args.jsd_beta, distill_coef=args.distill_coef, world=world,
                keep_gathered=args.keep_gathered)


def print_settings(args, dropped):
    """Every setting of the run (the defaults it took included), and the rows it dropped."""
    settings = {k: v for k, v in vars(args).items() if v is not None and k != "overwrite"}
    print("settings: " + "  ".join(f"{k}={v}" for k, v in settings.items()))
    dropped_train, dropped_eval = dropped
    if dropped_train or dropped_eval:
        print(f"{dropped_train} training and {dropped_eval} held-out rows dropped: prompt longer "
              f"than --max_prompt_len {args.max_prompt_len} tokens")


# ----------------------------------------------------------------------------- main
@entry_point
def main(argv=None):
    stop.catch_stop_signals()  # a stop request abandons the step in progress: see stop.py
    args = parse_args(argv, description=__doc__)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    check_args(args, world)
    rundir.check_out(args.out, args.resume, args.overwrite)
    hf.check_model(args.model, "--model")
    hf.check_model(args.init_from, "--init_from")
    train_rows, eval_rows = load_rows(args)  # every row checked, before any model is loaded
    run_id = rundir.run_id(args.model, args.data, args.eval_data, world)
    if args.resume:  # the same run, or a one-line error saying what differs
        rundir.check_same_run(args.resume, run_id)

    # ---- processor, config and prompt ids (no weights yet)
    spec = toy.spec(args.model, args.task) or hf.load_spec(args.model, args.trust_remote_code)
    proc, config, save_dtype = spec
    train_rows, eval_rows, dropped = prompt_rows(args, proc, config, train_rows, eval_rows)
    rank, world, device = parallel.setup_distributed(args.timeout_min)
    if rank == 0:
        print_settings(args, dropped)

    # ---- model and teacher (sharded), optimizer, sampling generator, the run directory
    torch.manual_seed(args.seed)
    model, teacher = build_models(args, proc, config, save_dtype, train_rows, rank, world, device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay)
    sampling_seed = args.seed * 1000 + rank + 1  # per-rank sampling
    torch.manual_seed(sampling_seed)
    gen = torch.Generator(device=device).manual_seed(sampling_seed)
    run = rundir.Run(args, run_id, model, teacher, opt, gen, proc, save_dtype, rank, world)
    sampling = sampling_settings(args, hf.eos_token_ids(model, proc))
    update = update_settings(args, world)
    held_out = partial(evaluate, model, proc, eval_rows, rank, world, device, run.stoppable,
                       **sampling)  # the held-out accuracy, when due
    pad_id = hf.tokenizer_of(proc).pad_token_id
    G = args.group_size
    per_rank = args.prompts_per_step // world
    distill = args.algo in ("opsd", "grpo+opsd")
    bar = tqdm(range(run.start, args.steps + 1), disable=rank != 0, desc=args.algo,
               dynamic_ncols=True, initial=run.start - 1, total=args.steps)

    # ---- the loop. A stop request raises Stopped on every rank at the next safe point
    # (run.safe_point between micro-batches, run.stoppable around decoding); run.abandon saves.
    try:
        run.safe_point()  # a stop during the model load or the cold start
        run.evaluate_pending(held_out)  # step 0's held-out accuracy, or one a stop cut short
        for step in bar:
            times = {"start": time.time()}
            run.begin_step(step)  # what a stop during this step saves
            idx = run.take_prompts(step, len(train_rows))[rank * per_rank:(rank + 1) * per_rank]
            rows = [train_rows[i] for i in idx]  # this rank's prompts
            refs = [r for r in rows for _ in range(G)]  # [N]: each prompt G times, a group together
            images = row_images(proc, rows, device)  # image inputs of each prompt

            # ---- 1. group sampling (parameters stay gathered for the whole rollout)
            model.eval()
            with run.stoppable() as poll, gathered(model):
                roll = rollout(model, proc, rows, images, G, temperature=args.temperature,
                               generator=gen, poll=poll, **sampling)
            times["rollout"] = time.time()

            # ---- 2-3. binary rewards, group advantages
            rewards = rewards_of(roll, refs)  # [N]
            adv = group_advantages(rewards, G)  # [N]

            # ---- 4. teacher pass: teacher prompt + the same response tokens (while lam > 0)
            lam = 0.0
            if args.algo == "rlsd":
                lam = lam_schedule(step - 1, args.lam0, args.lam_decay_steps)
            t_ids, t_mask = padded_prompts([r["teacher_ids"] for r in rows], pad_id, device)
            logp_teacher = None
            if lam > 0:
                logp_teacher = teacher_logprobs(teacher, t_ids, t_mask, roll["resp"],
                                                roll["resp_mask"], images, G, args.micro_batch,
                                                args.temperature, run.safe_point)  # [N, T]
                run.dump_credit(step, refs, roll, rewards, adv, logp_teacher)
            times["teacher"] = time.time()

            # ---- 5-9. token advantages and the policy update; then the teacher refresh
            teacher_prompts = (t_ids, t_mask) if distill else None
            batch = update_batch(roll, adv, images, G, teacher_prompts)
            stats = train_step(model, opt, batch, lam=lam, logp_teacher=logp_teacher,
                               teacher=teacher, poll=run.safe_point, **update)
            if args.algo == "rlsd" and args.teacher_sync and step % args.teacher_sync == 0:
                sync_teacher(teacher, model)
            times["update"] = time.time()

            # ---- metrics, held-out accuracy when due, checkpoint / stop
            rec = step_metrics(step, roll, rewards, lam, stats, args.algo, device, times)
            run.write_leaks(step, refs, roll["texts"])
            if run.end_step(rec, held_out):  # a stop request: every rank saved this step
                break
            show_progress(bar, rec, args.gen_batch == "auto" and step == run.start)
    except stop.Stopped:
        run.abandon()
    bar.close()
    code = run.finish()  # the final model, or the line that says how to resume
    if rank == 0 and not run.stopped:
        final_dir = os.path.join(args.out, "final")
        print(f"eval/accuracy {run.first_accuracy} -> {run.last_accuracy}; model in {final_dir}")
    torch.distributed.destroy_process_group()
    return code


def show_progress(bar, rec, first_auto_batch):
    """The bar's reward, seconds per step and held-out accuracy; once, the auto generate batch."""
    if first_auto_batch:
        tqdm.write(f"--gen_batch auto: {rec['rollout/gen_batch']} rows decoded at once, "
                   "per process")
    shown = {"reward": f"{rec['train/reward']:.3f}", "s_step": f"{rec['time/step_s']:.2f}"}
    if rec.get("eval/accuracy") is not None:
        shown["eval"] = f"{rec['eval/accuracy']:.3f}"
    bar.set_postfix(**shown)


if __name__ == "__main__":
    code = main()
    # Leave without finalizing the interpreter. A gloo worker thread (ProcessGroupGloo::runLoop)
    # can outlive destroy_process_group and drop the last reference to a Python-made tensor while
    # the interpreter finalizes: taking the GIL then ends that thread with pthread_exit, and the
    # process aborts ("terminate called without an active exception") after a complete run.
    # Rare, load-dependent.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

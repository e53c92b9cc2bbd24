"""RLSD training: torchrun entry, FSDP2, the loop.

    torchrun --nproc_per_node=2 train.py                     # built-in tiny model + toy task, CPU
    torchrun --nproc_per_node=8 train.py --model Qwen/Qwen3-8B --data train.jsonl   # paper preset

Each step: sample G responses per prompt (sample.py), score them (verify.py), group advantages,
teacher + old-policy log-probs under no_grad, RLSD token advantages, one clipped policy update
(rlsd.py). Metrics go to <out>/metrics.jsonl, checkpoints are Hugging Face model directories.
"""
import argparse
import contextlib
import copy
import json
import math
import os
import random
import shutil
import socket
import sys
import time

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from tqdm import tqdm

from rlsd import group_advantages, lam_schedule, policy_loss, rlsd_token_advantages, token_logprobs
from sample import eos_token_ids, format_prompt, generate, left_pad, position_ids
from verify import extract_answer, reward

# ----------------------------------------------------------------------------- prompts
INSTRUCTION = "Give the final answer as <answer>...</answer>."
LEAK_MARKER = "reference solution"  # a student response that says this leaked the teacher's block


def student_prompt(question):
    return f"{question}\n{INSTRUCTION}"


def teacher_prompt(question, answer):
    """Privileged context: the question plus the reference answer, same answer format asked."""
    return (f"{question}\nHere is a reference solution: {answer}\n"
            f"Solve the problem in your own way and reach the same answer. {INSTRUCTION}")


# ----------------------------------------------------------------------------- arguments
# Flags left at None take the paper's value with --model, the toy value without it.
PAPER = dict(lr=1e-6, prompts_per_step=256, max_prompt_len=4096, max_new_tokens=4096,
             micro_batch=4, gen_batch=64, eval_size=256, gradient_checkpointing=True, save_every=50)
TOY = dict(lr=2e-4, prompts_per_step=64, max_prompt_len=256, max_new_tokens=16,
           micro_batch=256, gen_batch=0, eval_size=256, gradient_checkpointing=False, save_every=0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--model", default=None, help="hub id or local dir; default: a tiny Qwen2 built in code + toy task")
    a("--data", default=None, help="JSONL of {question, answer[, images]}; default: the built-in toy task")
    a("--eval_data", default=None, help="held-out JSONL; default: hold out --eval_size rows of --data")
    a("--out", default="out", help="output dir: metrics.jsonl, checkpoints")
    a("--algo", default="rlsd", choices=["rlsd", "grpo"], help="grpo: w = 1, no teacher pass")
    a("--steps", type=int, default=300)
    a("--prompts_per_step", type=int, default=None, help="global prompts per step (paper 256, toy 64)")
    a("--group_size", type=int, default=8, help="G responses per prompt")
    a("--temperature", type=float, default=1.0)
    a("--top_p", type=float, default=1.0)
    a("--max_prompt_len", type=int, default=None, help="longer prompts are dropped (paper 4096)")
    a("--max_new_tokens", type=int, default=None, help="response budget (paper 4096)")
    a("--lr", type=float, default=None, help="AdamW lr (paper 1e-6, toy 2e-4)")
    a("--weight_decay", type=float, default=0.01)
    a("--grad_clip", type=float, default=1.0)
    a("--eps_w", type=float, default=0.2, help="evidence-weight clip")
    a("--lam0", type=float, default=0.5, help="initial teacher-weight mix")
    a("--lam_decay_steps", type=int, default=50)
    a("--teacher_sync", type=int, default=10, help="copy policy -> teacher every N steps")
    a("--clip_low", type=float, default=0.2)
    a("--clip_high", type=float, default=0.28)
    a("--micro_batch", type=int, default=None, help="rows per forward/backward")
    a("--gen_batch", type=int, default=None, help="rows per generate call (0 = all)")
    a("--gradient_checkpointing", type=int, default=None, help="1/0 (paper preset 1)")
    a("--eval_every", type=int, default=50, help="held-out accuracy every N steps (0 = start/end only)")
    a("--eval_size", type=int, default=None)
    a("--save_every", type=int, default=None, help="checkpoint every N steps, 0 = only at the end (paper preset 50)")
    a("--max_bad_steps", type=int, default=5, help="stop after this many non-finite steps in a row")
    a("--warmup_steps", type=int, default=600, help="format cold start of the built-in model (toy only)")
    a("--seed", type=int, default=0)
    a("--trust_remote_code", action="store_true")
    args = p.parse_args(argv)
    for k, v in (PAPER if args.model else TOY).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def fail(msg):
    """One-line error, printed once (by rank 0), before any model is loaded."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def check_args(args, world):
    if args.group_size < 2:
        fail(f"--group_size must be >= 2 (the group advantage needs an unbiased std), got {args.group_size}")
    if args.prompts_per_step < world:
        fail(f"{world} processes but only {args.prompts_per_step} prompts per step: each process needs one")
    if args.prompts_per_step % world:
        fail(f"--prompts_per_step {args.prompts_per_step} is not divisible by {world} processes")


# ----------------------------------------------------------------------------- data
def load_jsonl(path):
    """[{question, answer, images}] from a JSONL file; errors name the file and line."""
    rows = []
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as e:
        fail(f"cannot read data file {path}: {e.strerror}")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            fail(f"{path}:{n}: not valid JSON ({e.msg})")
        if not isinstance(row, dict):
            fail(f"{path}:{n}: expected a JSON object")
        q = next((row[k] for k in ("question", "problem", "prompt") if k in row), None)
        a = next((row[k] for k in ("answer", "solution") if k in row), None)
        if not isinstance(q, str) or not q.strip():
            fail(f"{path}:{n}: missing question (a non-empty 'question', 'problem' or 'prompt' field)")
        if not isinstance(a, (str, int, float)) or not str(a).strip():
            fail(f"{path}:{n}: missing answer (a non-empty 'answer' or 'solution' field)")
        a = str(a)
        images = row.get("images", row.get("image")) or []
        if images:
            fail(f"{path}:{n}: image prompts are not supported yet (text-only models)")
        options = row.get("options", row.get("choices"))
        if options is not None and (not isinstance(options, list) or not all(isinstance(o, str) for o in options)):
            fail(f"{path}:{n}: 'options' must be a list of strings (the choices in order A, B, ...)")
        rows.append({"question": q, "answer": extract_answer(a) or a, **({"options": options} if options else {})})
    if not rows:
        fail(f"{path}: no examples")
    return rows


def toy_example(rng):
    """Which of four distinct digits is largest? The answer is verifiable and one token long."""
    digits = rng.sample(range(10), 4)
    return {"question": f"Which number is largest: {', '.join(map(str, digits))}?", "answer": str(max(digits))}


def toy_data(n_train, n_eval, seed):
    """Held-out questions never appear in training."""
    rng = random.Random(seed)
    held = {}
    while len(held) < n_eval:
        ex = toy_example(rng)
        held[ex["question"]] = ex
    train = []
    while len(train) < n_train:
        ex = toy_example(rng)
        if ex["question"] not in held:
            train.append(ex)
    return train, list(held.values())


def tokenize(rows, tok, max_len):
    """Add student/teacher prompt ids; drop rows whose teacher prompt exceeds max_len tokens."""
    out = []
    for r in rows:
        s = tok(format_prompt(tok, student_prompt(r["question"])), add_special_tokens=False)["input_ids"]
        t = tok(format_prompt(tok, teacher_prompt(r["question"], r["answer"])), add_special_tokens=False)["input_ids"]
        if max(len(s), len(t)) <= max_len:
            out.append({**r, "student_ids": s, "teacher_ids": t})
    return out


# ----------------------------------------------------------------------------- the built-in model
def toy_tokenizer():
    """A Qwen2 tokenizer with one token per byte (no merges) and pad == EOS, as many real tokenizers,
    plus one token for each fixed phrase of the prompt templates and for the answer tags, so that
    sequences stay short. Being a Qwen2Tokenizer, it reloads identically with AutoTokenizer."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    vocab = {"<|endoftext|>": 0, **{c: i + 1 for i, c in enumerate(bytes_to_unicode().values())}}
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    phrases = "\n".join([student_prompt("\0"), teacher_prompt("\0", "\0"), toy_example(random.Random(0))["question"].split(":")[0]])
    tok.add_tokens(sorted({p.strip() for p in phrases.replace("\0", "\n").split("\n") if len(p.strip()) > 1})
                   + ["<answer>", "</answer>"])
    return tok


def toy_model(tok):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return Qwen2ForCausalLM(cfg)


def toy_warmup(model, tok, rows, steps=600, batch=64, lr=3e-3):
    """Format cold start, standing in for an instruct model. Supervised, with d a random one of the
    four listed digits (never the largest on purpose, so no task skill is taught):
        student prompt                 -> <answer>d</answer>   (the format, a 1-in-4 guess)
        teacher prompt with reference d -> <answer>d</answer>   (reads a given reference)
    RL then starts near chance, with a teacher that the privileged answer actually helps."""
    rng = random.Random(1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    eos = tok.eos_token_id
    for k in range(steps):
        opt.param_groups[0]["lr"] = lr * (1 - k / steps)  # decay to 0: settle on the 1-in-4 guess
        seqs, starts = [], []
        for r in rng.sample(rows, batch):
            d = rng.choice(r["question"].split(":")[1].strip(" ?").split(", "))
            text = teacher_prompt(r["question"], d) if rng.random() < 0.5 else student_prompt(r["question"])
            prompt = tok(format_prompt(tok, text), add_special_tokens=False)["input_ids"]
            seqs.append(prompt + tok(f"<answer>{d}</answer>", add_special_tokens=False)["input_ids"] + [eos])
            starts.append(len(prompt))
        ids, mask = left_pad(seqs, eos)
        labels = ids.clone()
        for i, (s, n) in enumerate(zip(seqs, starts)):
            labels[i, : ids.shape[1] - len(s) + n] = -100  # loss on the response only
        loss = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


# ----------------------------------------------------------------------------- distributed
def setup_distributed():
    """Process group from torchrun's env (or a 1-process group for plain `python train.py`)."""
    if "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def shard(model, device, mixed_precision):
    """FSDP2: fully_shard every transformer block (model._no_split_modules) and then the root."""
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision else None
    kw = {"mesh": mesh, **({"mp_policy": mp} if mp else {})}
    block_names = set(getattr(model, "_no_split_modules", None) or [])
    for m in list(model.modules()):
        if type(m).__name__ in block_names:
            fully_shard(m, **kw)
    fully_shard(model, **kw)
    return model


@contextlib.contextmanager
def gathered(model):
    """Keep every FSDP parameter gathered (rollout, no_grad passes): the decode loop then runs no
    collective, so ranks may stop decoding at different steps. Resharded on exit."""
    mods = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in mods:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for m in mods:
            m.set_reshard_after_forward(True, recurse=False)
        reshard(model)


def reshard(model):
    """Free gathered parameters. FSDP keeps the root's parameters gathered after a forward (it
    expects a backward); a no-grad-only module like the teacher must be resharded by hand."""
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def all_reduce_sum(values, device):
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# ----------------------------------------------------------------------------- forward passes
def response_logprobs(model, prompt_ids, prompt_mask, resp, resp_mask, temperature, with_entropy=False):
    """log p(resp_t | prompt, resp_<t) for every response column: [N, T] (and entropy [N, T]).

    Sequence = left-padded prompt [N, P] + right-padded response [N, T]; the logits at columns
    P-1 .. P+T-2 predict the response, i.e. the last T+1 positions minus the final one."""
    width = int(prompt_mask.sum(1).max())  # drop columns that are padding in every row
    ids = torch.cat([prompt_ids[:, -width:], resp], dim=1)  # [N, P + T]
    mask = torch.cat([prompt_mask[:, -width:], resp_mask], dim=1)
    T = resp.shape[1]
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                   logits_to_keep=T + 1).logits[:, :T]  # [N, T, V]
    if not with_entropy:
        return token_logprobs(logits, resp, temperature)  # [N, T]
    scaled = logits.float() / temperature  # cast once; the same values token_logprobs would build
    z = torch.log_softmax(scaled, -1)
    return token_logprobs(scaled, resp), -(z.exp() * z).sum(-1)  # logp, entropy [N, T]


def batched_logprobs(model, prompt_ids, prompt_mask, resp, resp_mask, args, with_entropy=False):
    """response_logprobs over micro-batches of args.micro_batch rows, under no_grad."""
    outs = []
    with torch.no_grad():
        for i in range(0, resp.shape[0], args.micro_batch):
            s = slice(i, i + args.micro_batch)
            outs.append(response_logprobs(model, prompt_ids[s], prompt_mask[s], resp[s], resp_mask[s],
                                          args.temperature, with_entropy))
    if with_entropy:
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
    return torch.cat(outs)


# ----------------------------------------------------------------------------- rollout and eval
def rollout(model, tok, rows, repeat, args, eos, device, temperature, generator):
    """Sample `repeat` responses per row (a group stays consecutive). Returns responses [N, T],
    mask [N, T] and decoded texts."""
    pad = tok.pad_token_id
    prompts = [r["student_ids"] for r in rows for _ in range(repeat)]
    step = args.gen_batch or len(prompts)
    resps, masks = [], []
    for i in range(0, len(prompts), step):
        ids, mask = left_pad(prompts[i:i + step], pad)
        r, m, _ = generate(model, ids.to(device), mask.to(device), args.max_new_tokens, eos, pad,
                           temperature, args.top_p, generator)
        resps.append(r)
        masks.append(m)
    T = max(r.shape[1] for r in resps)
    resp = torch.cat([torch.nn.functional.pad(r, (0, T - r.shape[1]), value=pad) for r in resps])
    mask = torch.cat([torch.nn.functional.pad(m, (0, T - m.shape[1])) for m in masks])
    texts = tok.batch_decode([r[m.bool()] for r, m in zip(resp, mask)], skip_special_tokens=True)
    return resp, mask, texts


def evaluate(model, tok, rows, args, eos, device, rank, world):
    """Greedy accuracy on held-out rows, split over ranks."""
    mine = rows[rank::world]
    correct = 0.0
    model.eval()
    with gathered(model):  # collective: every rank enters, even one with no rows
        if mine:
            _, _, texts = rollout(model, tok, mine, 1, args, eos, device, 0.0, None)
            correct = sum(reward(t, r["answer"], r.get("options")) for t, r in zip(texts, mine))
    c, n = all_reduce_sum([correct, len(mine)], device)
    return c / max(n, 1)


# ----------------------------------------------------------------------------- the update
def train_step(model, opt, batch, args, world):
    """One clipped policy-gradient update on this rank's share of the step's batch.

    batch: prompt_ids/prompt_mask [N, P], resp/resp_mask [N, T], logp_old/token_adv [N, T].
    The loss of each micro-batch is its summed token loss / the global token count, so adding the
    micro-batches of all ranks gives the global token mean; FSDP averages gradients over ranks, so
    the loss is multiplied by world to turn that average back into the sum."""
    num_tokens = all_reduce_sum([batch["resp_mask"].sum().item()], batch["resp"].device)[0]
    model.train()
    opt.zero_grad(set_to_none=True)
    loss_sum, clip_sum, N = 0.0, 0.0, batch["resp"].shape[0]
    for i in range(0, N, args.micro_batch):
        mb = {k: v[i:i + args.micro_batch] for k, v in batch.items()}
        logp = response_logprobs(model, mb["prompt_ids"], mb["prompt_mask"], mb["resp"], mb["resp_mask"],
                                 args.temperature)
        loss, st = policy_loss(logp, mb["logp_old"], mb["token_adv"], mb["resp_mask"],
                               args.clip_low, args.clip_high, num_tokens=max(num_tokens, 1.0))
        (loss * world).backward()
        loss_sum += loss.item()
        clip_sum += st["ratio_clip_frac"] * mb["resp_mask"].sum().item()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    grad_norm = grad_norm.full_tensor().item() if hasattr(grad_norm, "full_tensor") else grad_norm.item()
    loss, clip = all_reduce_sum([loss_sum, clip_sum], batch["resp"].device)
    ok = math.isfinite(loss) and math.isfinite(grad_norm)
    if ok:
        opt.step()
    opt.zero_grad(set_to_none=True)
    return {"loss": loss, "grad_norm": grad_norm, "ratio_clip_frac": clip / max(num_tokens, 1.0),
            "skipped": int(not ok)}


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(model, tok, path, arch, dtype, rank):
    """Hugging Face model dir (config.json + model.safetensors + tokenizer), written to path.tmp and
    renamed when complete. Every rank gathers; rank 0 writes."""
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        tmp = path + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        if getattr(model.config, "tie_word_embeddings", False):
            sd.pop("lm_head.weight", None)  # tied to the input embedding; from_pretrained re-ties it
        save_file({k: v.to(dtype).contiguous() for k, v in sd.items()}, os.path.join(tmp, "model.safetensors"),
                  metadata={"format": "pt"})
        config = copy.deepcopy(model.config)
        config.architectures = [arch]  # the original class, not the FSDP wrapper
        config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    dist.barrier()


# ----------------------------------------------------------------------------- main
def main(argv=None):
    args = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    check_args(args, world)
    if args.data:  # every data error surfaces before a model is loaded
        train_rows = load_jsonl(args.data)
        eval_rows = load_jsonl(args.eval_data) if args.eval_data else []
        if not args.eval_data:
            random.Random(args.seed).shuffle(train_rows)
            n_eval = min(args.eval_size, len(train_rows) // 10)
            train_rows, eval_rows = train_rows[n_eval:], train_rows[:n_eval]
    else:
        train_rows, eval_rows = toy_data(20000, args.eval_size, args.seed)

    rank, world, device = setup_distributed()
    torch.manual_seed(args.seed)  # identical initial weights on every rank
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    if args.model:
        tok = AutoTokenizer.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
        save_dtype = AutoConfig.from_pretrained(args.model, trust_remote_code=args.trust_remote_code).dtype
        save_dtype = (getattr(torch, save_dtype) if isinstance(save_dtype, str) else save_dtype) or torch.float32
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32,  # fp32 master weights
                                                     trust_remote_code=args.trust_remote_code)
    else:
        tok, save_dtype = toy_tokenizer(), torch.float32
        model = toy_model(tok)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    train_rows = tokenize(train_rows, tok, args.max_prompt_len)
    eval_rows = tokenize(eval_rows, tok, args.max_prompt_len)
    if len(train_rows) < args.prompts_per_step:
        fail(f"{len(train_rows)} usable training prompts (<= {args.max_prompt_len} tokens), "
             f"fewer than --prompts_per_step {args.prompts_per_step}")
    if not args.model:
        toy_warmup(model, tok, train_rows, steps=args.warmup_steps)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    arch, eos = type(model).__name__, eos_token_ids(model, tok)
    teacher = None
    if args.algo == "rlsd":  # a sharded module cannot be deep-copied: copy before fully_shard
        teacher = copy.deepcopy(model).eval().requires_grad_(False)
        shard(teacher, device, device.type == "cuda")
    shard(model, device, device.type == "cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    torch.manual_seed(args.seed * 1000 + rank + 1)  # per-rank sampling
    gen = torch.Generator(device=device).manual_seed(args.seed * 1000 + rank + 1)

    os.makedirs(args.out, exist_ok=True)
    log = open(os.path.join(args.out, "metrics.jsonl"), "w") if rank == 0 else None

    def write(rec):
        if log:
            log.write(json.dumps(rec) + "\n")
            log.flush()

    acc0 = evaluate(model, tok, eval_rows, args, eos, device, rank, world) if eval_rows else None
    write({"step": 0, "eval/accuracy": acc0})
    per_rank, G = args.prompts_per_step // world, args.group_size
    order, bad = [], 0
    bar = tqdm(range(1, args.steps + 1), disable=rank != 0, desc=args.algo, dynamic_ncols=True)
    for step in bar:
        t0 = time.time()
        if len(order) < args.prompts_per_step:  # same permutation on every rank
            perm = list(range(len(train_rows)))
            random.Random(args.seed + step).shuffle(perm)
            order += perm
        batch_idx, order = order[:args.prompts_per_step], order[args.prompts_per_step:]
        rows = [train_rows[i] for i in batch_idx[rank * per_rank:(rank + 1) * per_rank]]

        # 1. group sampling (parameters stay gathered for the rollout and the old-policy pass)
        model.eval()
        s_ids, s_mask = left_pad([r["student_ids"] for r in rows for _ in range(G)], tok.pad_token_id)
        s_ids, s_mask = s_ids.to(device), s_mask.to(device)
        with gathered(model):
            resp, resp_mask, texts = rollout(model, tok, rows, G, args, eos, device, args.temperature, gen)
            # 4a. logp_S = log pi_old(y_t | x, y_<t)
            logp_old, entropy = batched_logprobs(model, s_ids, s_mask, resp, resp_mask, args, with_entropy=True)
        # 2-3. binary rewards, group advantages
        refs = [r for r in rows for _ in range(G)]
        rewards = torch.tensor([reward(t, r["answer"], r.get("options")) for t, r in zip(texts, refs)],
                               device=device)  # [N]
        adv = group_advantages(rewards, G)  # [N]
        # 4b-8. teacher log-probs on teacher prompt + the same response tokens, token advantages
        lam = lam_schedule(step - 1, args.lam0, args.lam_decay_steps) if teacher is not None else 0.0
        if teacher is not None:
            t_ids, t_mask = left_pad([r["teacher_ids"] for r in rows for _ in range(G)], tok.pad_token_id)
            logp_t = batched_logprobs(teacher, t_ids.to(device), t_mask.to(device), resp, resp_mask, args)
            reshard(teacher)
            token_adv, wst = rlsd_token_advantages(adv, logp_t, logp_old, resp_mask, lam, args.eps_w)
        else:  # GRPO: every token carries A_i
            token_adv, wst = adv[:, None] * resp_mask, {}
        # 9. policy update
        batch = dict(prompt_ids=s_ids, prompt_mask=s_mask, resp=resp, resp_mask=resp_mask,
                     logp_old=logp_old, token_adv=token_adv)
        st = train_step(model, opt, batch, args, world)
        if teacher is not None and step % args.teacher_sync == 0:  # teacher <- policy (same shards)
            with torch.no_grad():
                for pt, ps in zip(teacher.parameters(), model.parameters()):
                    pt.copy_(ps)

        # logging: token-weighted means over all ranks
        ntok = resp_mask.sum().item()
        truncated = ~(torch.isin(resp, torch.tensor(sorted(eos), device=device)) & resp_mask.bool()).any(1)
        keys = ["delta_mean", "w_mean", "w_clip_low_frac", "w_clip_high_frac"]
        sums = all_reduce_sum([rewards.sum().item(), len(texts), ntok, truncated.sum().item(),
                               (entropy * resp_mask).sum().item(),
                               sum(LEAK_MARKER in t.lower() for t in texts)] +
                              [wst.get(k, 0.0) * ntok for k in keys], device)
        n_rows, n_tok = sums[1], max(sums[2], 1.0)
        dt = time.time() - t0
        rec = {"step": step, "reward": sums[0] / n_rows, "response_len": sums[2] / n_rows,
               "truncated_frac": sums[3] / n_rows, "lam": lam, "entropy": sums[4] / n_tok,
               "leak_rate": sums[5] / n_rows, **{k: sums[6 + i] / n_tok for i, k in enumerate(keys) if wst},
               **st, "step_time": dt, "tokens_per_s": sums[2] / dt}
        bad = bad + 1 if st["skipped"] else 0
        if st["skipped"] and rank == 0:
            tqdm.write(f"step {step}: non-finite loss or grad norm, update skipped ({bad} in a row)")
        if bad >= args.max_bad_steps:
            raise RuntimeError(f"{bad} non-finite steps in a row; lower --lr or check the data")
        if (args.eval_every and step % args.eval_every == 0) or step == args.steps:
            rec["eval/accuracy"] = evaluate(model, tok, eval_rows, args, eos, device, rank, world) if eval_rows else None
        if args.save_every and step % args.save_every == 0 and step != args.steps:
            save_checkpoint(model, tok, os.path.join(args.out, f"checkpoint-{step}"), arch, save_dtype, rank)
        write(rec)
        bar.set_postfix(reward=f"{rec['reward']:.3f}", s_step=f"{dt:.2f}",
                        **({"eval": f"{rec['eval/accuracy']:.3f}"} if rec.get("eval/accuracy") is not None else {}))

    save_checkpoint(model, tok, os.path.join(args.out, "final"), arch, save_dtype, rank)
    if rank == 0:
        final = rec.get("eval/accuracy") if args.steps else acc0
        print(f"eval/accuracy {acc0} -> {final}; checkpoint in {os.path.join(args.out, 'final')}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

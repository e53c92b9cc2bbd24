"""RLSD training: torchrun entry, FSDP2, the loop.

    torchrun --nproc_per_node=2 train.py                     # built-in tiny model + toy task, CPU
    torchrun --nproc_per_node=8 train.py --model Qwen/Qwen3-8B --data train.jsonl   # paper preset

Each step: sample G responses per prompt (sample.py), score them (verify.py), group advantages, the
teacher's log-probs under no_grad (while lam > 0), RLSD token advantages, one clipped policy update
whose own forward gives pi_old (rlsd.py). Metrics go to <out>/metrics.jsonl; checkpoints are Hugging
Face model directories plus, for --resume, the training state.
"""
import argparse
import contextlib
import copy
import datetime
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import sys
import time
from functools import partial

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from tqdm import tqdm

from rlsd import group_advantages, lam_schedule, policy_loss, rlsd_token_advantages
from sample import (auto_gen_batch, cat_images, eos_token_ids, format_prompt, generate, image_inputs, in_chunks,
                    is_vision_model, left_pad, load_processor, model_class, open_image, prompt_ids, response_hidden,
                    response_logprobs, student_prompt, teacher_prompt, token_scores, tokenizer_of, unflatten, leaked,
                    write_video_config)
import toy
from verify import extract_answer, reward

# ----------------------------------------------------------------------------- arguments
# Flags left at None take the paper's value with --model, the toy value without it (or with tiny-vl).
PAPER = dict(lr=1e-6, prompts_per_step=256, max_prompt_len=4096, max_new_tokens=4096, micro_batch=4, gen_batch="auto",
             eval_size=256, gradient_checkpointing=True, save_every=50, steps=300, warmup_steps=0)
TOY = dict(lr=2e-4, prompts_per_step=64, max_prompt_len=256, max_new_tokens=16, micro_batch=256, gen_batch="auto",
           eval_size=256, gradient_checkpointing=False, save_every=0, steps=300, warmup_steps=600)
TINY_VL = dict(TOY, lr=5e-4, prompts_per_step=32, eval_size=128, steps=150, warmup_steps=200)  # --model tiny-vl


def gen_batch_arg(v):
    if v == "auto":
        return v
    if not v.isdigit():
        raise argparse.ArgumentTypeError(f"expected a number of rows or 'auto', got {v!r}")
    return int(v)


def json_object(v):
    try:
        obj = json.loads(v)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg})")
    if not isinstance(obj, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return obj


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
      help="rows per generate call: N, 0 = all, or auto = what fits in free GPU memory (GPU default)")
    a("--gradient_checkpointing", type=int, default=None, help="1/0 (paper preset 1)")
    a("--eval_every", type=int, default=50, help="held-out accuracy every N steps (0 = start/end only)")
    a("--eval_size", type=int, default=None)
    a("--save_every", type=int, default=None,
      help="resumable checkpoint every N steps; 0 = only the final model (paper preset 50)")
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
        fail("--resume continues the run in --out, --overwrite replaces it: give one")
    if args.resume:  # the stopped run's settings, with the flags given now on top
        path = find_checkpoint(args.resume, args.out)
        with open(os.path.join(path, "trainer", "state.json")) as f:
            saved = json.load(f)["args"]
        args = argparse.Namespace(**{**saved, **{k: getattr(args, k) for k in explicit}, "resume": path})
    for k, v in {None: TOY, "tiny-vl": TINY_VL}.get(args.model, PAPER).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.task = args.task or ("color" if args.model == "tiny-vl" else "largest")
    return args


def fail(msg):
    """One-line error, printed once (by rank 0), exit code 2. Under torchrun the same line goes to its
    error file, so torchrun's failure summary shows it."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"error: {msg}", file=sys.stderr)
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):
        with open(os.environ["TORCHELASTIC_ERROR_FILE"], "w") as f:
            json.dump({"message": {"message": f"error: {msg}", "extraInfo": {"py_callstack": f"error: {msg}",
                                                                             "timestamp": str(int(time.time()))}}}, f)
    sys.exit(2)


def check_args(args, world):
    if not args.data and (args.task in toy.VL_TASKS) != (args.model == "tiny-vl"):
        fail(f"--task {args.task} needs {'--model tiny-vl' if args.task in toy.VL_TASKS else 'a text model'}"
             f" (image tasks: {', '.join(toy.VL_TASKS)}; text tasks: {', '.join(toy.TASKS)})")
    if args.group_size < 2:
        fail(f"--group_size must be >= 2 (the group advantage needs an unbiased std), got {args.group_size}")
    ranges = {  # flag: (lowest, highest, are the bounds allowed)
        "steps": (0, None, True), "prompts_per_step": (1, None, True), "temperature": (0, None, False),
        "top_p": (0, 1, (False, True)), "max_prompt_len": (1, None, True), "max_new_tokens": (1, None, True),
        "lr": (0, None, False), "weight_decay": (0, None, True), "grad_clip": (0, None, False),
        "eps_w": (0, 1, False), "lam0": (0, 1, True), "lam_decay_steps": (0, None, True),
        "teacher_sync": (0, None, True), "jsd_beta": (0, 1, False), "distill_coef": (0, None, True),
        "clip_low": (0, 1, (True, False)), "clip_high": (0, None, True), "micro_batch": (1, None, True),
        "eval_every": (0, None, True), "eval_size": (0, None, True), "save_every": (0, None, True),
        "keep_last": (0, None, True), "dump_credit": (0, None, True), "max_bad_steps": (1, None, True),
        "warmup_steps": (0, None, True), "timeout_min": (0, None, False), "max_pixels": (1, None, True)}
    for k, (lo, hi, closed) in ranges.items():
        v, (lo_ok, hi_ok) = getattr(args, k), closed if isinstance(closed, tuple) else (closed, closed)
        if v is not None and ((v < lo if lo_ok else v <= lo) or (hi is not None and (v > hi if hi_ok else v >= hi))):
            fail(f"--{k} must be in {'[' if lo_ok else '('}{lo}, {hi if hi is not None else 'inf'}"
                 f"{']' if hi_ok and hi is not None else ')'}, got {v}")
    if args.prompts_per_step < world:
        fail(f"{world} processes but only {args.prompts_per_step} prompts per step: each process needs one")
    if args.prompts_per_step % world:
        fail(f"--prompts_per_step {args.prompts_per_step} is not divisible by {world} processes")


# ----------------------------------------------------------------------------- data
def load_jsonl(path, allow_abs_paths=False):
    """[{question, answer, images, image_sizes, options, where}] from a JSONL file. Every error names the
    file and line and is found here, before any model is loaded; each image is opened to check it."""
    try:
        lines = open(path, "rb").read().split(b"\n")
    except OSError as e:
        fail(f"cannot read data file {path}: {e.strerror}")
    root, rows = os.path.dirname(os.path.abspath(path)), []
    for n, raw in enumerate(lines, 1):
        try:
            line = raw.decode("utf-8-sig" if n == 1 else "utf-8")  # a byte-order mark is fine
        except UnicodeDecodeError as e:
            fail(f"{path}:{n}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})")
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            fail(f"{path}:{n}: not valid JSON ({e.msg})")
        if not isinstance(row, dict):
            fail(f"{path}:{n}: expected a JSON object")
        q = next((row[k] for k in ("question", "problem", "prompt") if k in row), None)
        key = next((k for k in ("answer", "solution") if k in row), None)
        a = row.get(key)
        if not isinstance(q, str) or not q.strip():
            fail(f"{path}:{n}: missing question (a non-empty 'question', 'problem' or 'prompt' field)")
        if not isinstance(a, (str, int, float)) or not str(a).strip():
            fail(f"{path}:{n}: missing answer (a non-empty 'answer' or 'solution' field)")
        images = row.get("images", row.get("image")) or []
        images = [images] if isinstance(images, str) else images
        if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            fail(f"{path}:{n}: 'images' must be a path or a list of paths")
        if q.count("<image>") not in (0, len(images)):
            fail(f"{path}:{n}: {q.count('<image>')} <image> markers for {len(images)} images")
        checked = [check_image(f"{path}:{n}", root, i, allow_abs_paths) for i in images]
        options = row.get("options", row.get("choices"))
        if options is not None and (not isinstance(options, list) or not all(isinstance(o, str) for o in options)):
            fail(f"{path}:{n}: 'options' must be a list of strings (the choices in order A, B, ...)")
        if key == "solution" and extract_answer(str(a)) is None:
            fail(f"{path}:{n}: no final answer found in 'solution' (end it with \\boxed{{...}} or give an 'answer')")
        rows.append({"question": q, "answer": extract_answer(str(a)) or str(a), "where": f"{path}:{n}",
                     "images": [c[0] for c in checked], "image_sizes": [c[1] for c in checked],
                     **({"options": options} if options else {})})
    if not rows:
        fail(f"{path}: no examples")
    return rows


def check_image(where, root, item, allow_abs_paths):
    """(path, (width, height)) of a data row's image, relative to the data file's directory."""
    from PIL import Image
    path = os.path.realpath(os.path.join(root, item))
    if not allow_abs_paths and (os.path.isabs(item) or os.path.commonpath([path, root]) != root):
        fail(f"{where}: image {item} is outside the data file's directory (--allow_abs_paths allows it)")
    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()
    except Exception as e:  # missing, unreadable, or not an image
        fail(f"{where}: cannot read image {item}: {getattr(e, 'strerror', None) or e}")
    return path, size


def tokenize(rows, proc, max_len, template_kwargs):
    """Add student/teacher prompt ids (image placeholders expanded); rows whose prompt exceeds max_len
    tokens are dropped. Returns (rows, number dropped)."""
    out = []
    for r in rows:
        sizes = r.get("image_sizes") or [im.size for im in r.get("images", [])]
        s, t = (prompt_ids(proc, format_prompt(proc, text, len(sizes), **template_kwargs), sizes)
                for text in (student_prompt(r["question"]), teacher_prompt(r["question"], r["answer"])))
        if max(len(s), len(t)) <= max_len:
            out.append({**r, "student_ids": s, "teacher_ids": t})
    return out, len(rows) - len(out)


# ----------------------------------------------------------------------------- the built-in model
def toy_phrases(task):
    """The fixed phrases of the prompt templates and of the task's question: one token each."""
    question = {**toy.TASKS, **toy.VL_TASKS}[task][0](random.Random(0))["question"]
    text = "\n".join([student_prompt("\0"), teacher_prompt("\0", "\0"), question.split(":")[0]])
    return text.replace("\0", "\n").split("\n")


def toy_tokenizer(task="largest"):
    """The built-in text model's tokenizer: bytes plus one token per fixed phrase."""
    return toy.tokenizer(toy_phrases(task))


# ----------------------------------------------------------------------------- distributed
def setup_distributed(timeout_min=60):
    """Process group from torchrun's env (or a 1-process group for plain `python train.py`). The timeout
    bounds how long a rank waits at a collective, e.g. for a slower rank's rollout."""
    if "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=timeout_min))
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


@contextlib.contextmanager
def params_on_meta():
    """Build modules with their parameters on the meta device (no memory) and their buffers for real,
    so that buffers computed at construction (rotary inv_freq, not in any checkpoint) stay right."""
    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        if param is not None and param.device.type != "meta":  # a tied parameter is already meta
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def build_sharded(make_model, full_state, device, dtype, mixed_precision, grad_ckpt=False):
    """The model every rank trains: built on the meta device, sharded, then filled from rank 0's
    full state dict (`full_state`, {} on the other ranks), one tensor at a time, by broadcast. Host
    memory holds one full copy (rank 0's), whatever the number of processes."""
    with params_on_meta():
        model = make_model().to(dtype)
    buffers = dict(model.named_buffers())  # real tensors, computed at construction
    if grad_ckpt:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    shard(model, device, mixed_precision)
    model.to_empty(device=device)
    with torch.no_grad():
        for name, b in buffers.items():
            model.get_buffer(name).copy_(b)
    set_model_state_dict(model, dict(full_state),  # (it edits the dict it is given)
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    return model


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


def keep_vision_in_step(model):
    """FSDP all-gathers each vision block as it runs: a rank whose micro-batch has no image would skip
    those collectives and leave the others waiting. So in training mode a forward without images runs
    the vision tower on a blank 2x2-patch image, adding 0 x its output to the result: every rank runs
    the tower once per forward. (Rollout and teacher pass keep all weights gathered: no collectives.)"""
    inner, vc = model.model, model.config.vision_config
    size, merge = vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2, vc.spatial_merge_size

    def tensors(x):
        if torch.is_tensor(x):
            yield x
        elif isinstance(x, (dict, list, tuple)):
            for v in (x.values() if isinstance(x, dict) else x):
                yield from tensors(v)

    def run_blank(module, args, kwargs):
        if module.training and kwargs.get("pixel_values") is None:
            device = kwargs["input_ids"].device
            out = module.visual(torch.zeros(merge * merge, size, device=device),
                                grid_thw=torch.tensor([[1, merge, merge]], device=device))
            module.blank_vision = sum(t.float().sum() for t in tensors(out)) * 0

    def add_zero(module, args, kwargs, out):
        if getattr(module, "blank_vision", None) is not None:
            out.last_hidden_state = out.last_hidden_state + module.blank_vision
            module.blank_vision = None
        return out

    inner.register_forward_pre_hook(run_blank, with_kwargs=True)
    inner.register_forward_hook(add_zero, with_kwargs=True)


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
        for m in mods:  # as fully_shard set them: the root keeps its parameters from forward to backward
            m.set_reshard_after_forward(m is not model, recurse=False)
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


# ----------------------------------------------------------------------------- rollout, teacher pass, eval
def gen_batch_size(model, prompts, args, device):
    """Rows per generate call: --gen_batch, or with `auto` what fits in free device memory for the
    longest prompt + the response budget (all rows on CPU)."""
    if args.gen_batch != "auto":
        return args.gen_batch or len(prompts)
    if device.type != "cuda":
        return len(prompts)
    free = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    longest = max(len(p) for p in prompts)
    return min(len(prompts), auto_gen_batch(model.config, longest, args.max_new_tokens, free, dtype_bytes=2))


def row_images(proc, rows, device):
    """Each row's image inputs ({} for a text row), computed once per step and shared by its G samples."""
    return [image_inputs(proc, [open_image(i) for i in r.get("images", [])], device) for r in rows]


def rollout(model, proc, refs, images, args, eos, device, temperature, generator):
    """Sample one response per entry of refs (a row repeated G times: a group stays consecutive);
    images[i] holds the image inputs of refs[i]. Returns responses [N, T], mask [N, T], decoded texts
    the rows per generate call it used, and the sampler's token log-probs [N, T]."""
    tok = tokenizer_of(proc)
    pad = tok.pad_token_id
    prompts = [r["student_ids"] for r in refs]
    step = gen_batch_size(model, prompts, args, device)
    outs = []
    for i in range(0, len(prompts), step):
        ids, mask = left_pad(prompts[i:i + step], pad)
        outs.append(generate(model, ids.to(device), mask.to(device), args.max_new_tokens, eos, pad,
                             temperature, args.top_p, generator, **cat_images(images[i:i + step])))
    T = max(o[0].shape[1] for o in outs)
    resp, mask, logp = (torch.cat([torch.nn.functional.pad(o[k], (0, T - o[k].shape[1]), value=pad if k == 0 else 0)
                                   for o in outs]) for k in range(3))
    texts = tok.batch_decode([r[m.bool()] for r, m in zip(resp, mask)], skip_special_tokens=True)
    return resp, mask, texts, step, logp


@torch.no_grad()
def teacher_logprobs(teacher, ids, mask, resp, resp_mask, images, args):
    """logp_T = log pi_teacher(y_t | x, a, y_<t) on the teacher prompt [N, P'] + the student's response
    [N, T], read at the response columns; micro-batched, parameters gathered once for the pass."""
    mb = args.micro_batch
    with gathered(teacher):
        return torch.cat([response_logprobs(teacher, ids[i:i + mb], mask[i:i + mb], resp[i:i + mb],
                                            resp_mask[i:i + mb], args.temperature, **cat_images(images[i:i + mb]))
                          for i in range(0, resp.shape[0], mb)])


def evaluate(model, proc, rows, args, eos, device, rank, world):
    """Greedy accuracy on held-out rows, split over ranks."""
    mine = rows[rank::world]
    correct = 0.0
    model.eval()
    with gathered(model):  # collective: every rank enters, even one with no rows
        if mine:
            _, _, texts, _, _ = rollout(model, proc, mine, row_images(proc, mine, device), args, eos, device, 0.0, None)
            correct = sum(reward(t, r["answer"], r.get("options")) for t, r in zip(texts, mine))
    c, n = all_reduce_sum([correct, len(mine)], device)
    return c / max(n, 1)


def dump_credit(path, step, tok, refs, resp, resp_mask, rewards, adv, delta, n):
    """Append the per-token Delta_t and w_t = exp(sign(A) Delta_t) of the first n responses to path."""
    with open(path, "a", encoding="utf-8") as f:
        for i in range(min(n, len(refs))):
            m = resp_mask[i].bool()
            d = delta[i][m]
            f.write(json.dumps({"step": step, "question": refs[i]["question"], "answer": refs[i]["answer"],
                                "reward": rewards[i].item(), "advantage": adv[i].item(),
                                "tokens": [tok.decode([t]) for t in resp[i][m].tolist()], "delta": d.tolist(),
                                "weight": torch.exp(torch.sign(adv[i]) * d).tolist()}, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------- the update
def train_step(model, opt, batch, lam, args, world, teacher=None):
    """Steps 5-9 on this rank's share of the step's batch, then one optimizer step.

    batch: prompt_ids/prompt_mask [N, P], resp/resp_mask [N, T], adv [N], logp_teacher [N, T] (None
    for GRPO or once lam = 0: every token then carries A_i, exactly), images (N per-row image inputs),
    and for OPSD teacher_ids/teacher_mask [N, P'] (the `teacher`'s prompt, scored here chunk by chunk).
    There is one update per rollout, so pi_old is the policy of this very forward: logp_old =
    logp.detach() (rho = 1) and no separate old-policy pass is needed. Each micro-batch's loss is its
    summed token loss / the global token count, so adding the micro-batches of all ranks gives the
    global token mean; FSDP averages gradients over ranks, so the loss is multiplied by world to turn
    that average back into the sum. Returns token-weighted diagnostics over all ranks."""
    dev = batch["resp"].device
    num_tokens = max(all_reduce_sum([batch["resp_mask"].sum().item()], dev)[0], 1.0)
    distill = args.algo in ("opsd", "grpo+opsd")
    model.train()
    opt.zero_grad(set_to_none=True)
    sums = [0.0] * 10  # loss, clip*n, entropy*n, delta*n, w*n, low*nw, high*nw, jsd*n, n, nw
    with gathered(teacher) if distill else contextlib.nullcontext():
        for i in range(0, batch["resp"].shape[0], args.micro_batch):
            mb = {k: v[i:i + args.micro_batch] if v is not None else None for k, v in batch.items()}
            mask, images = mb["resp_mask"], cat_images(mb["images"] or [])
            hidden = response_hidden(model, mb["prompt_ids"], mb["prompt_mask"], mb["resp"], mask, **images)
            teacher_hidden = ()  # OPSD: the teacher's states for the same response tokens, no gradient
            if distill:
                with torch.no_grad():
                    teacher_hidden = (response_hidden(teacher, mb["teacher_ids"], mb["teacher_mask"], mb["resp"],
                                                      mask, **images),)
            score = partial(token_scores, weight=model.get_output_embeddings().weight, temperature=args.temperature,
                            teacher_weight=teacher.get_output_embeddings().weight if distill else None,
                            beta=args.jsd_beta)
            logp, entropy, jsd = (unflatten(x, mask) for x in in_chunks(score, hidden, mb["resp"][mask.bool()],
                                                                         *teacher_hidden))  # [n, T] each
            logp_old = logp.detach()
            if mb["logp_teacher"] is not None and lam > 0:
                token_adv, w = rlsd_token_advantages(mb["adv"], mb["logp_teacher"], logp_old, mask, lam, args.eps_w)
            else:  # GRPO: every token carries A_i
                token_adv, w = mb["adv"][:, None] * mask, {}
            loss, st = policy_loss(logp, logp_old, token_adv, mask, args.clip_low, args.clip_high, num_tokens=num_tokens)
            if distill:  # OPSD: token mean of the divergence (+ the GRPO loss for grpo+opsd)
                jsd_loss = (jsd * mask).sum() / num_tokens
                loss = jsd_loss if args.algo == "opsd" else loss + args.distill_coef * jsd_loss
            (loss * world).backward()
            n, nw = mask.sum().item(), (mask * (mb["adv"] != 0)[:, None]).sum().item()
            sums = [s + x for s, x in zip(sums, [
                loss.item(), st["ratio_clip_frac"] * n, (entropy * mask).sum().item(), w.get("delta_mean", 0.0) * n,
                w.get("w_mean", 0.0) * n, w.get("w_clip_low_frac", 0.0) * nw, w.get("w_clip_high_frac", 0.0) * nw,
                (jsd * mask).sum().item(), n, nw])]
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    grad_norm = grad_norm.full_tensor().item() if hasattr(grad_norm, "full_tensor") else grad_norm.item()
    s = all_reduce_sum(sums, dev)
    ok = math.isfinite(s[0]) and math.isfinite(grad_norm)
    if ok:
        opt.step()
    opt.zero_grad(set_to_none=True)
    n, nw = max(s[8], 1.0), max(s[9], 1.0)
    stats = {"loss": s[0], "ppo/clip_frac": s[1] / n, "policy/entropy": s[2] / n, "grad_norm": grad_norm,
             "skipped": int(not ok)}
    if batch["logp_teacher"] is not None and lam > 0:
        stats.update({"rlsd/delta_mean": s[3] / n, "rlsd/weight_mean": s[4] / n,
                      "rlsd/clip_low": s[5] / nw, "rlsd/clip_high": s[6] / nw})
    if distill:
        stats["opsd/jsd"] = s[7] / n
    return stats


# ----------------------------------------------------------------------------- checkpoints, resuming, stopping
def save_checkpoint(model, proc, path, arch, dtype, rank, state=None):
    """A Hugging Face model dir (config.json + model.safetensors + tokenizer/processor) that
    from_pretrained loads with no project code, and with `state` (teacher, opt, gen, info) what
    --resume needs, in path/trainer: the sharded fp32 weights, optimizer state and teacher
    (torch.distributed.checkpoint), every rank's RNG states, and info (step, data order, settings) in
    state.json. Written to path.tmp and renamed when complete: an interrupted save leaves every
    earlier checkpoint as it was. Every rank gathers and writes its shard; rank 0 writes the rest."""
    tmp = path + ".tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    dist.barrier()
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        if getattr(model.config, "tie_word_embeddings", False):
            sd.pop("lm_head.weight", None)  # tied to the input embedding; from_pretrained re-ties it
        save_file({k: v.to(dtype).contiguous() for k, v in sd.items()}, os.path.join(tmp, "model.safetensors"),
                  metadata={"format": "pt"})
        config = copy.deepcopy(model.config)
        config.architectures = [arch]  # the original class, not the FSDP wrapper
        config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        proc.save_pretrained(tmp)  # tokenizer, or processor (tokenizer + image processor + chat template)
        write_video_config(proc, tmp)
    if state is not None:
        sharded = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, state["opt"])}
        if state["teacher"] is not None:
            sharded["teacher"] = get_model_state_dict(state["teacher"])
        dcp.save(sharded, checkpoint_id=os.path.join(tmp, "trainer"))
        save_file(rng_states(state["gen"]), os.path.join(tmp, "trainer", f"rng-{rank}.safetensors"))
        if rank == 0:
            with open(os.path.join(tmp, "trainer", "state.json"), "w") as f:
                json.dump(state["info"], f)
    dist.barrier()
    if rank == 0:
        if os.path.exists(path):  # (only "final" is ever rewritten)
            os.replace(path, path + ".old")
            shutil.rmtree(path + ".old")
        os.replace(tmp, path)
    dist.barrier()


def rng_states(gen):
    states = {"torch": torch.get_rng_state(), "sampler": gen.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def load_checkpoint(path, model, teacher, opt, gen, rank):
    """Restore what save_checkpoint(..., state) wrote; returns its info."""
    from safetensors.torch import load_file
    sharded = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    if teacher is not None:
        sharded["teacher"] = get_model_state_dict(teacher)
    dcp.load(sharded, checkpoint_id=os.path.join(path, "trainer"))
    set_model_state_dict(model, sharded["model"])
    set_optimizer_state_dict(model, opt, sharded["optim"])
    if teacher is not None:
        set_model_state_dict(teacher, sharded["teacher"])
    rng = load_file(os.path.join(path, "trainer", f"rng-{rank}.safetensors"))
    torch.set_rng_state(rng["torch"])
    gen.set_state(rng["sampler"])
    if "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"])
    with open(os.path.join(path, "trainer", "state.json")) as f:
        return json.load(f)


def find_checkpoint(resume, out):
    """--resume: the latest complete checkpoint-N in out, or the given one."""
    if resume == "latest":
        steps = [int(n.split("-")[1]) for n in (os.listdir(out) if os.path.isdir(out) else [])
                 if re.fullmatch(r"checkpoint-\d+", n) and os.path.isfile(os.path.join(out, n, "trainer", "state.json"))]
        if not steps:
            fail(f"--resume: no complete checkpoint in {out} (runs save them with --save_every N)")
        return os.path.join(out, f"checkpoint-{max(steps)}")
    if not os.path.isfile(os.path.join(resume, "trainer", "state.json")):
        fail(f"--resume {resume}: not a complete checkpoint (no trainer/state.json)")
    return resume


def fingerprint(path):
    """sha1 of a data file, to tell when --resume is given different data."""
    if path is None:
        return None
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def prune(out, keep_last):
    """Delete all but the keep_last newest checkpoint-N dirs (0 keeps all)."""
    steps = sorted(int(n.split("-")[1]) for n in os.listdir(out) if re.fullmatch(r"checkpoint-\d+", n))
    for s in steps[:-keep_last] if keep_last else []:
        shutil.rmtree(os.path.join(out, f"checkpoint-{s}"), ignore_errors=True)


def check_out(args):
    """--out is a writable directory and holds no other run unless --resume or --overwrite."""
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        fail(f"--out {args.out} is a file, not a directory")
    earlier = sorted(n for n in (os.listdir(args.out) if os.path.isdir(args.out) else [])
                     if n in ("metrics.jsonl", "args.json", "final") or n.startswith("checkpoint-"))
    if earlier and not (args.resume or args.overwrite):
        fail(f"--out {args.out} holds another run ({', '.join(earlier[:3])}{', ...' if len(earlier) > 3 else ''}): "
             f"--resume continues it, --overwrite replaces it")
    probe = os.path.join(args.out, f".write-test-{os.environ.get('RANK', '0')}")
    try:
        os.makedirs(args.out, exist_ok=True)
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        fail(f"--out {args.out} is not writable ({e.strerror})")


def check_model(name, flag):
    """A model dir with a config.json, or a hub id (in the local cache when HF_HUB_OFFLINE is set)."""
    if name in (None, "tiny-vl"):
        return
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            fail(f"{flag} {name}: a directory without config.json (not a saved model)")
        return
    if name.startswith((".", "/", "~")) or name.count("/") != 1 or os.path.isdir(name.split("/")[0]):
        fail(f"{flag} {name}: no such directory")
    from huggingface_hub import constants, try_to_load_from_cache
    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(name, "config.json"), str):
        fail(f"{flag} {name}: not in the local Hugging Face cache, and HF_HUB_OFFLINE is set")


STOP = {}  # when the first SIGINT/SIGTERM came


def on_signal(signum, frame):
    """First signal: stop after the step in progress (and save). torchrun relays a signal it gets to
    its workers, so one within 3 s of the first is the same request; a later one exits at once."""
    if "at" in STOP and time.time() - STOP["at"] > 3:
        print(f"\n{signal.Signals(signum).name} again: exiting now, nothing saved", file=sys.stderr, flush=True)
        os._exit(130)
    STOP.setdefault("at", time.time())


# ----------------------------------------------------------------------------- main
def main(argv=None):
    signal.signal(signal.SIGINT, on_signal)  # a stop request is honoured between steps (see on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    args = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    check_args(args, world)
    check_out(args)
    check_model(args.model, "--model")
    check_model(args.init_from, "--init_from")
    if args.data:  # every data error surfaces before a model is loaded
        train_rows = load_jsonl(args.data, args.allow_abs_paths)
        eval_rows = load_jsonl(args.eval_data, args.allow_abs_paths) if args.eval_data else []
        if not args.eval_data:
            random.Random(args.seed).shuffle(train_rows)
            n_eval = min(args.eval_size, len(train_rows) // 10)
            train_rows, eval_rows = train_rows[n_eval:], train_rows[:n_eval]
    else:
        train_rows, eval_rows = toy.task_data(args.task, 20000, args.eval_size, args.seed)
    data_id = {"model": args.model, "data": fingerprint(args.data), "eval_data": fingerprint(args.eval_data),
               "world": world}
    if args.resume:  # the same run, or a one-line error saying what differs
        with open(os.path.join(args.resume, "trainer", "state.json")) as f:
            saved = json.load(f)["id"]
        for k in data_id:
            if data_id[k] != saved[k]:
                what = {"world": "processes", "model": "--model"}.get(k, f"--{k} (its content)")
                fail(f"--resume: {what} differs from the stopped run's ({saved[k]} then, {data_id[k]} now)"
                     if k in ("world", "model") else f"--resume: {what} differs from the stopped run's")

    # ---- tokenizer / processor and config (no weights yet)
    from transformers import AutoConfig
    if args.model == "tiny-vl":
        proc, save_dtype = toy.vl_processor(toy_phrases(args.task)), torch.float32
        config = toy.vl_config(proc)
    elif args.model:
        proc = load_processor(args.model, args.trust_remote_code)
        config = AutoConfig.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
        save_dtype = config.dtype if isinstance(config.dtype, torch.dtype) else getattr(torch, config.dtype or "float32")
    else:
        proc, save_dtype = toy_tokenizer(args.task), torch.float32
        config = toy.text_config(proc)
    vision = is_vision_model(config)
    if not vision and (r := next((r for r in train_rows + eval_rows if r.get("images")), None)):
        fail(f"{r['where']}: a row with images, but {args.model or 'the built-in model'} is a text-only model")
    if vision and args.max_pixels:
        proc.image_processor.size = {"shortest_edge": min(proc.image_processor.size["shortest_edge"], args.max_pixels),
                                     "longest_edge": args.max_pixels}
    tok = tokenizer_of(proc)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    train_rows, dropped = tokenize(train_rows, proc, args.max_prompt_len, args.chat_template_kwargs)
    eval_rows, dropped_eval = tokenize(eval_rows, proc, args.max_prompt_len, args.chat_template_kwargs)
    if len(train_rows) < args.prompts_per_step:
        fail(f"{len(train_rows)} usable training prompts (<= {args.max_prompt_len} tokens), "
             f"fewer than --prompts_per_step {args.prompts_per_step}")

    # ---- the run's settings, printed and kept in OUT/args.json
    rank, world, device = setup_distributed(args.timeout_min)
    if rank == 0:
        if args.overwrite:  # the earlier run's files go; nothing of it is mixed with this one
            for n in os.listdir(args.out):
                if n in ("metrics.jsonl", "args.json", "credit.jsonl", "final") or n.startswith("checkpoint-"):
                    shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p := os.path.join(args.out, n)) else os.remove(p)
        with open(os.path.join(args.out, "args.json"), "w") as f:
            json.dump(vars(args), f, indent=1)
        items = [f"{k}={v}" for k, v in vars(args).items() if v not in (None, False, {}) and k != "overwrite"]
        print("settings: " + "  ".join(items))
        if dropped or dropped_eval:
            print(f"{dropped} training and {dropped_eval} held-out rows dropped: prompt longer than "
                  f"--max_prompt_len {args.max_prompt_len} tokens")

    # ---- model: rank 0 loads the weights once; every rank builds a sharded skeleton and receives them
    torch.manual_seed(args.seed)
    full_state = {}
    if rank == 0:  # the only full copy of the weights in host memory
        if args.init_from or (args.model and args.model != "tiny-vl"):
            source = model_class(config).from_pretrained(args.init_from or args.model, dtype=save_dtype,
                                                         trust_remote_code=args.trust_remote_code)
        else:
            source = toy.vl_model(proc) if vision else toy.text_model(proc)
            if not args.data and not args.resume:  # the cold start knows the built-in tasks only
                toy.warmup(source, proc, train_rows, student_prompt, teacher_prompt,
                           {**toy.TASKS, **toy.VL_TASKS}[args.task][1], steps=args.warmup_steps)
        full_state = source.state_dict()
        del source
    cuda = device.type == "cuda"
    make = lambda: model_class(config).from_config(config, trust_remote_code=args.trust_remote_code)
    model = build_sharded(make, full_state, device, torch.float32, cuda, bool(args.gradient_checkpointing))
    teacher = None
    if args.algo != "grpo":  # a copy (rlsd: refreshed every --teacher_sync steps; opsd: frozen); bf16 on GPU
        teacher = build_sharded(make, full_state, device, torch.bfloat16 if cuda else torch.float32, False)
        teacher.eval().requires_grad_(False)
    del full_state
    if vision and args.freeze_vision:
        model.model.visual.requires_grad_(False)
    if vision and world > 1:
        keep_vision_in_step(model)
    arch = config.architectures[0] if config.architectures else type(model).__name__
    eos = eos_token_ids(model, tok)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                            weight_decay=args.weight_decay)
    torch.manual_seed(args.seed * 1000 + rank + 1)  # per-rank sampling
    gen = torch.Generator(device=device).manual_seed(args.seed * 1000 + rank + 1)
    start, order, bad = 1, [], 0
    if args.resume:  # weights, optimizer, teacher, RNG states, data order, step
        info = load_checkpoint(args.resume, model, teacher, opt, gen, rank)
        start, order, bad = info["step"] + 1, info["order"], info["bad"]

    metrics = os.path.join(args.out, "metrics.jsonl")
    if rank == 0 and args.resume:  # keep the history up to the checkpoint; what came after is redone
        with open(metrics) as f:
            kept = [l for l in f if json.loads(l)["step"] < start]
        with open(metrics, "w") as f:
            f.writelines(kept)
    log = open(metrics, "a") if rank == 0 else None

    def write(rec):
        if log:
            log.write(json.dumps(rec) + "\n")
            log.flush()

    def checkpoint(step):
        info = {"step": step, "order": order, "bad": bad, "args": vars(args), "id": data_id}
        save_checkpoint(model, proc, os.path.join(args.out, f"checkpoint-{step}"), arch, save_dtype, rank,
                        dict(teacher=teacher, opt=opt, gen=gen, info=info))
        if rank == 0:
            prune(args.out, args.keep_last)

    acc0 = None
    if not args.resume:
        acc0 = evaluate(model, proc, eval_rows, args, eos, device, rank, world) if eval_rows else None
        write({"step": 0, "eval/accuracy": acc0})
    per_rank, G = args.prompts_per_step // world, args.group_size
    bar = tqdm(range(start, args.steps + 1), disable=rank != 0, desc=args.algo, dynamic_ncols=True,
               initial=start - 1, total=args.steps)
    rec = {}
    for step in bar:
        t0 = time.time()
        if len(order) < args.prompts_per_step:  # same permutation on every rank
            perm = list(range(len(train_rows)))
            random.Random(args.seed + step).shuffle(perm)
            order += perm
        batch_idx, order = order[:args.prompts_per_step], order[args.prompts_per_step:]
        rows = [train_rows[i] for i in batch_idx[rank * per_rank:(rank + 1) * per_rank]]

        # ---- 1. group sampling (parameters stay gathered for the whole rollout)
        refs = [r for r in rows for _ in range(G)]  # [N]: each prompt G times, a group consecutive
        per_row = row_images(proc, rows, device)
        images = [per_row[k // G] for k in range(len(refs))]
        model.eval()
        with gathered(model):
            resp, resp_mask, texts, gen_batch, logp_sampled = rollout(model, proc, refs, images, args, eos, device,
                                                                      args.temperature, gen)
        t_rollout = time.time()

        # ---- 2-3. binary rewards, group advantages
        rewards = torch.tensor([reward(t, r["answer"], r.get("options")) for t, r in zip(texts, refs)],
                               device=device)  # [N]
        adv = group_advantages(rewards, G)  # [N]

        # ---- 4. teacher pass: teacher prompt + the same response tokens (skipped once lam = 0)
        lam = lam_schedule(step - 1, args.lam0, args.lam_decay_steps) if args.algo == "rlsd" else 0.0
        t_ids, t_mask = (t.to(device) for t in left_pad([r["teacher_ids"] for r in refs], tok.pad_token_id))
        logp_teacher = teacher_logprobs(teacher, t_ids, t_mask, resp, resp_mask, images, args) if lam > 0 else None
        if args.dump_credit and logp_teacher is not None and rank == 0:
            dump_credit(os.path.join(args.out, "credit.jsonl"), step, tok, refs, resp, resp_mask, rewards, adv,
                        logp_teacher - logp_sampled, args.dump_credit)
        t_teacher = time.time()

        # ---- 5-9. token advantages and the policy update
        s_ids, s_mask = left_pad([r["student_ids"] for r in refs], tok.pad_token_id)
        batch = dict(prompt_ids=s_ids.to(device), prompt_mask=s_mask.to(device), resp=resp, resp_mask=resp_mask,
                     adv=adv, logp_teacher=logp_teacher, images=images, teacher_ids=t_ids, teacher_mask=t_mask)
        st = train_step(model, opt, batch, lam, args, world, teacher)
        if args.algo == "rlsd" and args.teacher_sync and step % args.teacher_sync == 0:  # teacher <- policy
            with torch.no_grad():
                for pt, ps in zip(teacher.parameters(), model.parameters()):
                    pt.copy_(ps)
        t_update = time.time()

        # ---- logging: means over all ranks
        truncated = ~(torch.isin(resp, torch.tensor(sorted(eos), device=device)) & resp_mask.bool()).any(1)
        sums = all_reduce_sum([rewards.sum().item(), len(texts), resp_mask.sum().item(), truncated.sum().item(),
                               sum(map(leaked, texts))], device)
        n_rows, dt = sums[1], time.time() - t0
        rec = {"step": step, "train/reward": sums[0] / n_rows, "train/response_len": sums[2] / n_rows,
               "train/truncated": sums[3] / n_rows,
               **({"rlsd/lam": lam} if args.algo == "rlsd" else {}), **st, "leak/rate": sums[4] / n_rows,
               "rollout/gen_batch": gen_batch, "time/step_s": dt, "time/rollout_s": t_rollout - t0,
               "time/teacher_s": t_teacher - t_rollout, "time/update_s": t_update - t_teacher,
               "time/tokens_per_s": sums[2] / dt}
        bad = bad + 1 if st["skipped"] else 0
        if st["skipped"] and rank == 0:
            tqdm.write(f"step {step}: non-finite loss or grad norm, update skipped ({bad} in a row)")
        if bad >= args.max_bad_steps:
            fail(f"{bad} non-finite steps in a row (--max_bad_steps): lower --lr or check the data")
        if (args.eval_every and step % args.eval_every == 0) or step == args.steps:
            rec["eval/accuracy"] = evaluate(model, proc, eval_rows, args, eos, device, rank, world) if eval_rows else None
        write(rec)
        bar.set_postfix(reward=f"{rec['train/reward']:.3f}", s_step=f"{dt:.2f}",
                        **({"eval": f"{rec['eval/accuracy']:.3f}"} if rec.get("eval/accuracy") is not None else {}))
        stop = all_reduce_sum([float("at" in STOP)], device)[0] > 0  # any rank signalled: all stop here
        if stop or (args.save_every and step % args.save_every == 0):
            checkpoint(step)
        if stop:
            bar.close()
            if rank == 0:
                cmd = "torchrun --nproc_per_node=%d train.py" % world if world > 1 else "python train.py"
                print(f"stopped after step {step}: checkpoint in {os.path.join(args.out, f'checkpoint-{step}')}; "
                      f"resume with: {cmd} --resume --out {args.out}", file=sys.stderr, flush=True)
            dist.destroy_process_group()
            return 0 if "TORCHELASTIC_RUN_ID" in os.environ else 130  # (torchrun reports non-zero as a failure)

    save_checkpoint(model, proc, os.path.join(args.out, "final"), arch, save_dtype, rank)
    if rank == 0:
        print(f"eval/accuracy {acc0} -> {rec.get('eval/accuracy', acc0)}; model in {os.path.join(args.out, 'final')}")
    if log:
        log.close()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    code = main()
    # Leave without finalizing the interpreter. A gloo worker thread (ProcessGroupGloo::runLoop) can
    # outlive destroy_process_group and drop the last reference to a Python-made tensor while the
    # interpreter finalizes: taking the GIL then ends that thread with pthread_exit, and the process
    # aborts ("terminate called without an active exception") after a complete run. Rare, load-dependent.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

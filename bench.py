"""Benchmarks, each printed side by side against its baseline from the same process, and a memory
plan.

    python bench.py                     # 1-3 and 5 below on CPU (about 11 minutes on 2 cores)
    python bench.py --only rollout      # or step, memory, update
    python bench.py --only update --profile    # 5 with the update's operators, by time
    python bench.py --plan Qwen3-8B --gpus 8 --gpu_mem 80    # 4: per-GPU memory plan, no download

1. rollout: tokens/s of sample.generate vs model.generate, same random model and prompts, greedy,
   forced lengths and spread lengths, and whether their outputs are equal; on a GPU also decode
   bandwidth as a share of the peak; then G samples per prompt with each prompt prefilled once vs
   every row prefilled, and prefill tokens computed; then finished rows' slots refilled with
   waiting prompts vs dropped: useful tokens/s and rows alive per step.
2. step: seconds per step in rollout / teacher / update, rlsd (lam > 0) vs grpo, on the built-in
   model (also with a teacher prompt 3x the student's) and on the SmolLM2-135M shape, and the
   teacher pass's tokens; on a GPU the update's MFU.
3. memory: peak memory per process of each phase, 1 vs 2 processes, next to the plan of 4.
4. plan: bytes per GPU of each phase (memory.py and its presets), and the largest generate batch
   that fits.
5. update: on 2 processes, the update vs a no-grad forward of the same rows (SmolLM2-135M shape),
   with and without --keep_gathered.
"""
import argparse
import math
import contextlib
import os
import time
from functools import partial

import torch
import torch.distributed as dist

import data
import parallel
import rlsd
import sample
import toy
import train
from cli import ArgumentParser, UserError, entry_point
from logprobs import CHUNK
from memory import (GiB, PRESETS, kv_bytes_per_token, largest_gen_batch, memory_plan, n_params,
                    shape_of)

EOS = 1  # the EOS token of the rows with spread lengths
PEAK_BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12}  # bytes/s; others: as H100
PEAK_BF16_FLOPS = 989e12  # H100 and H200


# ---- 4. the memory plan

def print_plan(name, gpus, gpu_mem, prompt_len, resp_len, micro_batch, gen_batch=None):
    """Print the per-GPU memory plan of preset `name` on `gpus` GPUs of `gpu_mem` GB, and whether
    each phase fits. gen_batch None: the largest that fits. Returns (plan, that largest batch)."""
    s = PRESETS[name]
    largest = largest_gen_batch(s, gpus, gpu_mem * 1e9, prompt_len, resp_len, micro_batch)
    gen_batch = gen_batch or largest
    plan = memory_plan(s, gpus, gen_batch, prompt_len, resp_len, micro_batch)
    P = n_params(s)
    kv = kv_bytes_per_token(s, 2)
    seq_len = prompt_len + resp_len
    print(f"memory plan: {name} ({P / 1e9:.2f}B parameters) on {gpus} x {gpu_mem:g} GB, "
          f"prompt {prompt_len} + response {resp_len} tokens, micro-batch {micro_batch}, "
          f"generate batch {gen_batch} (largest that fits: {largest})")
    print(f"  fp32 weights + AdamW, sharded  {P * 12 / gpus / GiB:7.1f} GiB")
    print(f"  teacher (bf16, sharded)        {P * 2 / gpus / GiB:7.1f} GiB")
    print(f"  gathered weights (bf16)        {P * 2 / GiB:7.1f} GiB   (rollout and teacher pass)")
    print(f"  KV cache per token per row     {kv / 2 ** 10:7.1f} KiB; {gen_batch} rows x {seq_len} "
          f"tokens = {gen_batch * seq_len * kv / GiB:.1f} GiB")
    print(f"  one logit chunk ({CHUNK} tokens)   {CHUNK * s['vocab'] * 12 / GiB:7.1f} GiB")
    kept = memory_plan(s, gpus, gen_batch, prompt_len, resp_len, micro_batch, keep_gathered=True)
    plan["update, --keep_gathered"] = kept["update"]
    for phase in ("rollout", "teacher", "update", "update, --keep_gathered"):
        fits = "fits" if plan[phase] <= gpu_mem * 1e9 else "DOES NOT FIT"
        print(f"  peak {phase:25s} {plan[phase] / GiB:7.1f} GiB   {fits} in {gpu_mem:g} GB")
    return plan, largest


def policy_and_teacher(make, device, rank=0, grad_ckpt=False):
    """The policy, its AdamW and a frozen teacher, sharded, both from rank 0's make() after
    torch.manual_seed(0)."""
    torch.manual_seed(0)
    full = {}  # rank 0's full weights, broadcast to the shards
    if rank == 0:
        full = make().state_dict()
    model = parallel.build_sharded(make, full, device, torch.float32, False, grad_ckpt)
    teacher = parallel.build_sharded(make, full, device, torch.float32, False).eval()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-5), teacher


def best_of(runs, reps, device):
    """({name: best seconds}, {name: output}) of the functions in `runs`, interleaved (other load
    hits all alike)."""
    best = {}
    outs = {}
    for _ in range(reps):
        for name, fn in runs.items():
            t = clock(device)
            outs[name] = fn()
            best[name] = min(best.get(name, 1e9), clock(device) - t)
    return best, outs


def clock(device):
    """time.perf_counter() once the device has done its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# ---- 1. rollout

def small_model(vocab=4096, dtype=torch.float32):
    """The random model of the rollout benchmark: a 4-layer, 256-wide Qwen3."""
    from transformers import Qwen3Config, Qwen3ForCausalLM
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=vocab, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                      max_position_embeddings=4096, eos_token_id=None, pad_token_id=0)
    return Qwen3ForCausalLM(cfg).to(dtype).eval()


def random_prompts(rows, g):
    """`rows` prompts of 8-32 random tokens (ids 1-4095) from generator g."""
    prompts = []
    for _ in range(rows):
        length = int(torch.randint(8, 33, (1,), generator=g))
        prompts.append(torch.randint(1, 4096, (length,), generator=g).tolist())
    return prompts


@torch.no_grad()
def bench_rollout(device, rows=64, lengths=(32, 512), reps=2):
    """1: sample.generate vs model.generate at forced and spread lengths, then prefix sharing and
    refill (bench_sharing, bench_refill)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = small_model(dtype=dtype).to(device)
    prompts = random_prompts(rows, torch.Generator().manual_seed(0))
    ids, mask = [t.to(device) for t in sample.left_pad(prompts, 0)]
    print(f"1. rollout: {rows} prompts of 8-32 tokens, greedy, random 4-layer 256-wide Qwen3, "
          f"{device}; forced lengths, then an EOS at spread lengths (finished rows: dropped by "
          f"sample.py, kept by model.generate)")
    for n in lengths:
        bench_generate(device, model, ids, mask, n, False, reps)
    bench_generate(device, model, ids, mask, lengths[-1], True, reps)
    bench_sharing(device, "4-layer Qwen3", model, 64, 8, 128, 64)
    bench_refill(device, model)
    torch.manual_seed(0)
    smol = toy.smollm2_shape().to(model.dtype).to(device).eval()
    bench_sharing(device, "SmolLM2-135M shape", smol, 8, 8, 64, 32, reps=1)


def bench_generate(device, model, ids, mask, n, spread, reps):
    """One row of 1: n new tokens for each prompt, greedy, by sample.py and by model.generate;
    spread: an EOS at content-given lengths over 10-100 % of n (eos_uniform), else exactly n."""
    rows, prompt_len = ids.shape
    eos_ids = {EOS} if spread else set()
    hf_min_new = 0 if spread else n
    hf_eos = EOS if spread else None
    if spread:
        eos_hook = partial(eos_uniform, budget=n, prompt_len=prompt_len)
        hook = model.register_forward_hook(eos_hook, with_kwargs=True)

    def ours():
        return sample.generate(model, ids, mask, n, eos_ids=eos_ids, pad_id=0, temperature=0)[0]

    def hf():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                             min_new_tokens=hf_min_new, eos_token_id=hf_eos, pad_token_id=0)
        return out[:, prompt_len:]

    best, outs = best_of({"sample.py": ours, "model.generate": hf}, reps, device)
    if spread:
        hook.remove()
    ours_out = outs["sample.py"]
    useful = sample.response_mask(ours_out, eos_ids).sum().item()  # tokens up to each row's EOS
    same = torch.equal(ours_out, outs["model.generate"][:, :ours_out.shape[1]])
    ours_tps = useful / best["sample.py"]
    hf_tps = useful / best["model.generate"]
    label = ", spread" if spread else ""
    print(f"   {rows} x {n:4d} new tokens{label:8s}: sample.py {ours_tps:6.0f} tok/s   "
          f"model.generate {hf_tps:6.0f} tok/s   ratio {ours_tps / hf_tps:.2f}x   "
          f"mean length {useful / rows:5.1f}   greedy outputs equal: {same}")
    if device.type == "cuda":
        print_decode_bandwidth(device, model, rows, prompt_len, n, best["sample.py"])


def print_decode_bandwidth(device, model, rows, prompt_len, n, seconds):
    """Bytes read per second while decoding n tokens in `seconds` (the weights and, on average,
    half the final KV cache, each step), as a share of the device's peak."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    kv_per_token = kv_bytes_per_token(shape_of(model.config), 2)
    kv = kv_per_token * rows * (prompt_len + n / 2)
    bw = (weights + kv) * n / seconds
    device_name = torch.cuda.get_device_name(device)
    peak = next((b for k, b in PEAK_BANDWIDTH.items() if k in device_name), PEAK_BANDWIDTH["H100"])
    print(f"   decode bandwidth {bw / 1e9:.0f} GB/s = {bw / peak:.0%} of the device's peak "
          f"(bytes/s)")


@torch.no_grad()
def bench_sharing(device, name, model, prompts, G, prompt_len, new_tokens, reps=2):
    """G rows per prompt, each prompt prefilled once vs every row prefilled (sample.py,
    model.generate); greedy."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, model.config.vocab_size, (prompts, prompt_len), generator=g).to(device)
    rep = ids.repeat_interleave(G, 0)  # [prompts * G, prompt_len]

    def shared():
        return sample.generate(model, ids, torch.ones_like(ids), new_tokens, set(), 0,
                               temperature=0, n=G)[0]

    def per_row():
        return sample.generate(model, rep, torch.ones_like(rep), new_tokens, set(), 0,
                               temperature=0)[0]

    def hf():
        out = model.generate(input_ids=rep, attention_mask=torch.ones_like(rep), do_sample=False,
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
        return out[:, prompt_len:]

    runs = {"shared": shared, "per row": per_row, "model.generate": hf}
    best, outs = best_of(runs, reps, device)
    rates = "   ".join(f"{k} {prompts * G * new_tokens / t:6.0f}" for k, t in best.items())
    equal = all(torch.equal(outs["shared"], o) for o in outs.values())
    print(f"   {name}, {prompts} prompts x G {G}, prompts of {prompt_len} tokens, {new_tokens} new "
          f"tokens: prefill tokens {prompts * prompt_len} shared vs {prompts * G * prompt_len} per "
          f"row; tok/s {rates}   shared / per row {best['per row'] / best['shared']:.2f}x, "
          f"/ model.generate {best['model.generate'] / best['shared']:.2f}x   "
          f"greedy outputs equal: {equal}")


def eos_uniform(model, args, kwargs, out, budget, prompt_len):
    """Forward hook: a row whose input so far holds t tokens more than the longest prompt
    (prompt_len) and ends in token x gets EOS next when (31 x + t) % (budget - t) == 0 once
    t >= budget / 10: a chance of 1 / (budget - t), so lengths spread about uniformly over 10-100 %
    of the budget, from each row's content alone: sample.py (any batch layout) and model.generate
    end a greedy row at the same token."""
    x = kwargs["input_ids"][:, -1]
    t = kwargs["attention_mask"].sum(-1) - prompt_len
    hit = (31 * x + t) % (budget - t).clamp(min=1) == 0
    out.logits[hit & (t >= budget // 10), -1, EOS] = 1e4


@torch.no_grad()
def bench_refill(device, model, prompts=16, G=8, prompt_len=64, budget=128, batch=32):
    """At most `batch` rows at once: one generate call whose finished rows' slots take waiting
    prompts vs the previous rollout's batch // G prompts per call, finished rows dropped; lengths
    over 10-100 % of the budget."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, model.config.vocab_size, (prompts, prompt_len), generator=g).to(device)
    alive = []  # rows of each decode forward

    def count_alive(module, args, kwargs):
        """Forward pre-hook: records the rows of each decode forward."""
        if kwargs["input_ids"].shape[1] <= 1:  # a decode step
            alive.append(len(kwargs["input_ids"]))

    eos_hook = partial(eos_uniform, budget=budget, prompt_len=prompt_len)
    hooks = [model.register_forward_hook(eos_hook, with_kwargs=True),
             model.register_forward_pre_hook(count_alive, with_kwargs=True)]

    def run(refill, temperature):
        """(responses [prompts * G, budget], rows alive per decode step) of one way."""
        alive.clear()
        torch.manual_seed(0)
        calls = [ids] if refill else ids.split(batch // G)
        outs = [sample.generate(model, x, torch.ones_like(x), budget, {EOS}, 0, temperature, n=G,
                                batch=batch)[0] for x in calls]
        padded = [torch.nn.functional.pad(o, (0, budget - o.shape[1])) for o in outs]
        return torch.cat(padded), list(alive)

    runs = {"drop only": lambda: run(False, 1.0), "refill": lambda: run(True, 1.0)}
    best, outs = best_of(runs, 2, device)
    tps = {k: sample.response_mask(o, {EOS}).sum().item() / best[k] for k, (o, _) in outs.items()}
    ways = "".join(f"   {k} {tps[k]:6.0f} useful tok/s, {len(a)} decode steps, "
                   f"{sum(a) / len(a):4.1f} rows alive per step" for k, (_, a) in outs.items())
    greedy_equal = torch.equal(run(False, 0.0)[0], run(True, 0.0)[0])
    print(f"   {prompts} prompts x G {G}, {prompt_len}-token prompts, lengths over 10-100 % of "
          f"{budget}, <= {batch} rows at once, sampled:{ways}   refill / drop only "
          f"{tps['refill'] / tps['drop only']:.2f}x   greedy outputs equal: {greedy_equal}")
    for h in hooks:
        h.remove()


# ---- 2. the training step

def step_prompts(tok, prompts, teacher_3x, device):
    """(s_ids, s_mask, t_ids, t_mask) of `prompts` rows of the largest task, left-padded: student
    prompts [prompts, P] and teacher prompts [prompts, P'] (teacher_3x: the student's 3 times)."""
    rows, _ = data.tokenize(toy.task_data("largest", prompts, 1, 0)[0], tok, 256, {})
    student = [r["student_ids"] for r in rows]
    if teacher_3x:
        teacher = [r["student_ids"] * 3 for r in rows]
    else:
        teacher = [r["teacher_ids"] for r in rows]
    s_ids, s_mask = [t.to(device) for t in sample.left_pad(student, 0)]
    t_ids, t_mask = [t.to(device) for t in sample.left_pad(teacher, 0)]
    return s_ids, s_mask, t_ids, t_mask


def keep_fastest(best, name, seconds):
    """best[name] = the least of its seconds so far and `seconds`."""
    best[name] = min(best.get(name, 1e9), seconds)


def bench_step(device, prompts=8, G=8, new_tokens=32, reps=3, teacher_3x=False, make=None,
               name="the built-in 2-layer 128-wide Qwen2"):
    """2: the seconds of one step's rollout, teacher pass and update, rlsd vs grpo (best of reps),
    and the teacher pass with every row its own prompt."""
    tok = toy.text_tokenizer()
    model, opt, teacher = policy_and_teacher(make or (lambda: toy.text_model(tok)), device)
    s_ids, s_mask, t_ids, t_mask = step_prompts(tok, prompts, teacher_3x, device)
    gen = torch.Generator(device=device).manual_seed(0)
    N = prompts * G
    print(f"2. step: {prompts} prompts x {G} samples x {new_tokens} forced tokens, {name}, "
          f"student prompts {s_ids.shape[1]} tokens, teacher {t_ids.shape[1]}"
          f"{' (3x)' if teacher_3x else ''}, 1 process, {torch.get_num_threads()} threads, "
          f"{device}")
    times = {"rlsd": {}, "grpo": {}}  # {algo: {phase: best seconds}}
    per_row_seconds = 1e9  # best seconds of the teacher pass without prefix sharing
    for _ in range(reps):
        t0 = time.perf_counter()
        model.eval()
        with parallel.gathered(model):
            resp, resp_mask, _ = sample.generate(model, s_ids, s_mask, new_tokens, set(), 0, 1.0,
                                                 1.0, gen, n=G)
        t_roll = clock(device) - t0
        adv = rlsd.group_advantages(torch.randn(N, device=device).round(), G)
        for algo, lam in (("rlsd", 0.5), ("grpo", None)):
            t1 = time.perf_counter()
            logp_t = None
            if lam is not None:
                logp_t = train.teacher_logprobs(teacher, t_ids, t_mask, resp, resp_mask, [{}] * N,
                                                G, N, 1.0)
            t2 = clock(device)
            batch = dict(prompt_ids=s_ids.repeat_interleave(G, 0),
                         prompt_mask=s_mask.repeat_interleave(G, 0), resp=resp,
                         resp_mask=resp_mask, adv=adv, images=None)
            if lam is None:
                train.train_step(model, opt, batch, algo="grpo", lam=0.0, micro_batch=N)
            else:
                train.train_step(model, opt, batch, algo="rlsd", lam=lam, logp_teacher=logp_t,
                                 micro_batch=N)
            t3 = clock(device)
            keep_fastest(times[algo], "rollout", t_roll)
            keep_fastest(times[algo], "teacher", t2 - t1)
            keep_fastest(times[algo], "update", t3 - t2)
        # the teacher pass as before prefix sharing: every row its own prompt, for comparison
        t4 = time.perf_counter()
        train.teacher_logprobs(teacher, t_ids.repeat_interleave(G, 0),
                               t_mask.repeat_interleave(G, 0), resp, resp_mask, [{}] * N, 1, N,
                               1.0)
        per_row_seconds = min(per_row_seconds, clock(device) - t4)
    print_step_times(times)
    print_teacher_tokens(times["rlsd"]["teacher"], per_row_seconds, t_ids, N, new_tokens)
    if device.type == "cuda":  # forward + backward ~ 6 FLOPs per parameter per token
        tokens = (s_mask.sum() * G + resp_mask.sum()).item()
        flops = 6 * sum(p.numel() for p in model.parameters()) * tokens
        print(f"   update MFU {flops / times['grpo']['update'] / PEAK_BF16_FLOPS:.1%} of a bf16 "
              f"peak of 989 TFLOP/s (H100/H200)")


def print_step_times(times):
    """One line per algorithm: its phases' seconds, their sum, and the sum relative to grpo's."""
    grpo = times["grpo"]
    base = grpo["rollout"] + grpo["teacher"] + grpo["update"]
    for name in ("rlsd", "grpo"):
        r = times[name]["rollout"]
        t = times[name]["teacher"]
        u = times[name]["update"]
        print(f"   {name:14s} rollout {r:6.3f} s  teacher {t:6.3f} s  update {u:6.3f} s  "
              f"= {r + t + u:6.3f} s/step  ({(r + t + u) / base:.2f}x grpo)")


def print_teacher_tokens(shared_seconds, per_row_seconds, t_ids, N, new_tokens):
    """The teacher pass's tokens computed with each prompt once (shared) vs every row its own."""
    shared = t_ids.numel() + N * (new_tokens - 1)
    per_row = N * (t_ids.shape[1] + new_tokens)
    print(f"   teacher pass: {shared} tokens computed, {shared_seconds / shared * 1e6:.0f} "
          f"us/token; every row its own prompt: {per_row} tokens, {per_row_seconds:.3f} s "
          f"({per_row_seconds / shared_seconds:.2f}x)")


# ---- 3. memory

def rss_peak_reset():
    """Peak resident memory (VmHWM) since the last call, in bytes; Linux resets it on '5' to
    clear_refs."""
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return peak


def memory_config():
    """A config large enough that its states dominate the process's own memory."""
    from transformers import Qwen3Config
    return Qwen3Config(vocab_size=32000, hidden_size=512, intermediate_size=1536,
                       num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                       head_dim=64, max_position_embeddings=2048, tie_word_embeddings=False,
                       eos_token_id=None, pad_token_id=0)


def init_gloo(rank, world, port):
    """This process as `rank` of a gloo group of `world` on localhost:port, with 1 thread."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)


def _memory_worker(rank, world, port, out, rows, prompt_len, new_tokens, micro_batch):
    """One process of the memory benchmark: saves to out.RANK {phase: peak RSS above the start} of
    the second step (AdamW's moments allocated: the steady state)."""
    from transformers import Qwen3ForCausalLM
    init_gloo(rank, world, port)
    cfg = memory_config()
    base = rss_peak_reset()
    model, opt, teacher = policy_and_teacher(lambda: Qwen3ForCausalLM(cfg), torch.device("cpu"),
                                             rank, grad_ckpt=True)
    g = torch.Generator().manual_seed(rank)
    ids = torch.randint(1, 32000, (rows // 2, prompt_len), generator=g)  # 2 responses per prompt
    mask = torch.ones_like(ids)
    peaks = {}
    for step in range(2):  # the second step has AdamW's moments allocated: the steady state
        rss_peak_reset()
        model.eval()
        with parallel.gathered(model):
            resp, resp_mask, _ = sample.generate(model, ids, mask, new_tokens, set(), 0, 1.0, 1.0,
                                                 g, n=2)
        peaks["rollout"] = rss_peak_reset() - base
        logp_t = train.teacher_logprobs(teacher, ids, mask, resp, resp_mask, [{}] * len(ids), 2,
                                        micro_batch, 1.0)
        peaks["teacher"] = rss_peak_reset() - base
        adv = rlsd.group_advantages(torch.randn(rows, generator=g), 2)
        batch = dict(prompt_ids=ids.repeat_interleave(2, 0),
                     prompt_mask=mask.repeat_interleave(2, 0), resp=resp, resp_mask=resp_mask,
                     adv=adv, images=None)
        for phase, keep in (("update", False), ("update, kept", True)):
            train.train_step(model, opt, batch, lam=0.5, logp_teacher=logp_t,
                             micro_batch=micro_batch, world=world, keep_gathered=keep)
            peaks[phase] = rss_peak_reset() - base
    torch.save(peaks, f"{out}.{rank}")  # (plain dict of ints)
    dist.barrier()
    dist.destroy_process_group()


def spawn(worker, world, *args, out="/tmp/rlsd_bench"):
    """Run worker(rank, world, port, out, *args) on `world` gloo processes; return what each rank
    saved to out.RANK."""
    port = parallel.free_port()
    torch.multiprocessing.spawn(worker, nprocs=world, args=(world, port, out, *args))
    saved = [torch.load(f"{out}.{r}") for r in range(world)]
    for r in range(world):
        os.remove(f"{out}.{r}")
    return saved


def measure_memory(world, *args, **kwargs):
    """spawn(_memory_worker, ...) with every allocation above 64 KiB mmap-ed, so that freed tensors
    leave the RSS (glibc reads this at process start; it slows a process down: only the memory
    benchmark sets it)."""
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    try:
        return spawn(_memory_worker, world, *args, **kwargs)
    finally:
        del os.environ["MALLOC_MMAP_THRESHOLD_"]


def bench_memory(rows=8, prompt_len=256, new_tokens=256, micro_batch=4):
    """3: measured peak memory of each phase on 1 and 2 processes, next to the memory plan's."""
    s = shape_of(memory_config())
    print(f"3. memory: peak RSS per process above its start, one step (the second), a 4-layer "
          f"512-wide Qwen3 with a 32k vocabulary ({n_params(s) / 1e6:.0f}M parameters, fp32), "
          f"{rows} rows x {prompt_len} + {new_tokens} tokens per process, micro-batch "
          f"{micro_batch}; plan = the memory plan for the same shapes")
    for world in (1, 2):
        got = measure_memory(world, rows, prompt_len, new_tokens, micro_batch)[0]
        plan = memory_plan(s, world, rows, prompt_len, new_tokens, micro_batch, compute_bytes=4)
        kept = memory_plan(s, world, rows, prompt_len, new_tokens, micro_batch, compute_bytes=4,
                           keep_gathered=True)
        plan["update, kept"] = kept["update"]
        phases = "   ".join(f"{k} {got[k] / 2 ** 20:5.0f} MiB (plan {plan[k] / 2 ** 20:5.0f})"
                            for k in plan if k != "resident")
        processes = "processes" if world > 1 else "process  "
        print(f"   {world} {processes}: {phases}")


# ---- 5. the update, 2 processes

def _update_worker(rank, world, port, out, prompts, G, prompt_len, new_tokens, micro_batch,
                   profile, reps=2):
    """One process of the update benchmark: saves to out.RANK {what: best seconds}; with profile,
    rank 0 prints the update's operators by time."""
    init_gloo(rank, world, port)
    model, opt, teacher = policy_and_teacher(toy.smollm2_shape, torch.device("cpu"), rank)
    g = torch.Generator().manual_seed(rank)
    N = prompts * G
    s_ids = torch.randint(2, 49152, (prompts, prompt_len), generator=g)  # [prompts, P]
    t_ids = torch.cat([s_ids] * 3, 1)  # [prompts, 3P]
    resp = torch.randint(2, 49152, (N, new_tokens), generator=g)  # [N, T]
    rep = s_ids.repeat_interleave(G, 0)  # [N, P]
    ones = torch.ones_like
    batch = dict(prompt_ids=rep, prompt_mask=ones(rep), resp=resp, resp_mask=ones(resp),
                 images=None, adv=rlsd.group_advantages(torch.randn(N, generator=g).round(), G))
    teacher_out = {}  # the teacher pass's log-probs, read by the updates

    def forward():
        train.teacher_logprobs(model, rep, ones(rep), resp, ones(resp), [{}] * N, 1, micro_batch,
                               1.0)

    def teacher_pass():
        teacher_out["logp"] = train.teacher_logprobs(
            teacher, t_ids, ones(t_ids), resp, ones(resp), [{}] * prompts, G, micro_batch, 1.0)

    def update():
        train.train_step(model, opt, batch, lam=0.5, logp_teacher=teacher_out["logp"],
                         micro_batch=micro_batch, world=world)

    def update_kept():
        train.train_step(model, opt, batch, lam=0.5, logp_teacher=teacher_out["logp"],
                         micro_batch=micro_batch, world=world, keep_gathered=True)

    runs = {"no-grad forward of the same rows": forward,
            "teacher pass (its prompt 3x, shared)": teacher_pass,
            "update": update,
            "update, --keep_gathered": update_kept}
    times = {}
    table = ""
    for _ in range(reps):
        for name, fn in runs.items():
            dist.barrier()
            t = time.perf_counter()
            prof = None
            if profile and name == "update" and rank == 0:
                prof = torch.profiler.profile()
            with prof or contextlib.nullcontext():
                fn()
            dist.barrier()
            keep_fastest(times, name, time.perf_counter() - t)
            if prof:
                table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
    print(table, end="")
    torch.save(times, f"{out}.{rank}")
    dist.destroy_process_group()


def bench_update(profile=False, world=2, prompts=2, G=8, prompt_len=48, new_tokens=64,
                 micro_batch=8):
    """5: the update's seconds on `world` processes against a no-grad forward of the same rows."""
    print(f"5. update: {world} processes (gloo, 1 thread each), random SmolLM2-135M shape, "
          f"{prompts} prompts x {G} samples x {new_tokens} tokens per process, prompts of "
          f"{prompt_len} tokens, micro-batch {micro_batch}")
    times = spawn(_update_worker, world, prompts, G, prompt_len, new_tokens, micro_batch,
                  profile)[0]
    fwd = times["no-grad forward of the same rows"]
    for name, t in times.items():
        print(f"   {name:38s} {t:7.2f} s   {t / fwd:5.2f}x the forward")


# ---- main

@entry_point
def main():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["rollout", "step", "memory", "update"])
    p.add_argument("--profile", action="store_true",
                   help="with --only update: the update's profile, by operator")
    p.add_argument("--plan", choices=sorted(PRESETS),
                   help="print the memory plan of a preset and exit")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--gpu_mem", type=float, default=80, help="GB per GPU")
    p.add_argument("--prompt_len", type=int, default=4096)
    p.add_argument("--response_len", type=int, default=4096)
    p.add_argument("--micro_batch", type=int, default=4)
    p.add_argument("--gen_batch", type=int, default=None, help="default: the largest that fits")
    args = p.parse_args()
    at_least_one = ["gpus", "prompt_len", "response_len", "micro_batch", "gen_batch"]
    for flag in at_least_one:
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag} must be at least 1, got {value}")
    if not args.gpu_mem > 0 or math.isinf(args.gpu_mem):
        raise UserError(f"--gpu_mem must be a positive number of GB, got {args.gpu_mem}")
    if args.plan:
        print_plan(args.plan, args.gpus, args.gpu_mem, args.prompt_len, args.response_len,
                   args.micro_batch, args.gen_batch)
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    parallel.setup_distributed()
    if args.only in (None, "rollout"):
        bench_rollout(device)
    if args.only in (None, "step"):
        bench_step(device)
        bench_step(device, teacher_3x=True)
        bench_step(device, prompts=2, make=toy.smollm2_shape,
                   name="a random SmolLM2-135M shape (30-layer Llama)")
    if args.only in (None, "memory") and device.type == "cpu":
        bench_memory()
    if args.only in (None, "update") and device.type == "cpu":
        bench_update(args.profile)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

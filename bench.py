"""Benchmarks, each printed side by side against its baseline from the same process, and a memory plan.

    python bench.py                     # 1-3 and 5 below on CPU (about 11 minutes on 2 cores)
    python bench.py --only rollout      # or step, memory, update
    python bench.py --only update --profile    # 5 with the update's operators, by time
    python bench.py --plan Qwen3-8B --gpus 8 --gpu_mem 80    # 4: per-GPU memory plan, no download

1. rollout: tokens/s of sample.generate vs model.generate, same random model and prompts, greedy, forced lengths
   and spread lengths, and whether their outputs are equal; on a GPU also decode bandwidth as a share of the peak;
   then G samples per prompt with each prompt prefilled once vs every row prefilled, and prefill tokens computed;
   then finished rows' slots refilled with waiting prompts vs dropped: useful tokens/s and rows alive per step.
2. step: seconds per step in rollout / teacher / update, rlsd (lam > 0) vs grpo, on the built-in model (also with
   a teacher prompt 3x the student's) and on the SmolLM2-135M shape, and the teacher pass's tokens; on a GPU the
   update's MFU.
3. memory: peak memory per process of each phase, 1 vs 2 processes, next to the plan of 4.
4. plan: bytes per GPU of each phase (memory.py and its presets), and the largest generate batch that fits.
5. update: on 2 processes, the update vs a no-grad forward of the same rows (SmolLM2-135M shape), with and
   without --keep_gathered.
"""
import argparse
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
from logprobs import CHUNK
from memory import GiB, PRESETS, kv_bytes_per_token, largest_gen_batch, memory_plan, n_params, shape_of

# ----------------------------------------------------------------------------- 4. the memory plan
def print_plan(name, gpus, gpu_mem, prompt_len, resp_len, micro_batch, gen_batch=None):
    s = PRESETS[name]
    gen = largest_gen_batch(s, gpus, gpu_mem * 1e9, prompt_len, resp_len, micro_batch)
    gen_batch = gen_batch or gen
    plan = memory_plan(s, gpus, gen_batch, prompt_len, resp_len, micro_batch)
    P, kv = n_params(s), kv_bytes_per_token(s, 2)
    print(f"memory plan: {name} ({P / 1e9:.2f}B parameters) on {gpus} x {gpu_mem:g} GB, prompt {prompt_len} + response "
          f"{resp_len} tokens, micro-batch {micro_batch}, generate batch {gen_batch} (largest that fits: {gen})")
    print(f"  fp32 weights + AdamW, sharded  {P * 12 / gpus / GiB:7.1f} GiB")
    print(f"  teacher (bf16, sharded)        {P * 2 / gpus / GiB:7.1f} GiB")
    print(f"  gathered weights (bf16)        {P * 2 / GiB:7.1f} GiB   (rollout and teacher pass)")
    print(f"  KV cache per token per row     {kv / 2 ** 10:7.1f} KiB; {gen_batch} rows x {prompt_len + resp_len} "
          f"tokens = {gen_batch * (prompt_len + resp_len) * kv / GiB:.1f} GiB")
    print(f"  one logit chunk ({CHUNK} tokens)   {CHUNK * s['vocab'] * 12 / GiB:7.1f} GiB")
    plan["update, --keep_gathered"] = memory_plan(s, gpus, gen_batch, prompt_len, resp_len, micro_batch,
                                                  keep_gathered=True)["update"]
    for phase in ("rollout", "teacher", "update", "update, --keep_gathered"):
        ok = "fits" if plan[phase] <= gpu_mem * 1e9 else "DOES NOT FIT"
        print(f"  peak {phase:25s} {plan[phase] / GiB:7.1f} GiB   {ok} in {gpu_mem:g} GB")
    return plan, gen


def policy_and_teacher(make, device, rank=0, grad_ckpt=False):
    """The policy, its AdamW and a frozen teacher, sharded, both from rank 0's make() after torch.manual_seed(0)."""
    torch.manual_seed(0)
    full = make().state_dict() if rank == 0 else {}  # rank 0's full weights, broadcast to the shards
    model = parallel.build_sharded(make, full, device, torch.float32, False, grad_ckpt)
    teacher = parallel.build_sharded(make, full, device, torch.float32, False).eval()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-5), teacher


# ----------------------------------------------------------------------------- 1. rollout
def small_model(vocab=4096, dtype=torch.float32):
    """The random model of the rollout benchmark: a 4-layer, 256-wide Qwen3."""
    from transformers import Qwen3Config, Qwen3ForCausalLM
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=vocab, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=4096,
                      eos_token_id=None, pad_token_id=0)
    return Qwen3ForCausalLM(cfg).to(dtype).eval()


@torch.no_grad()
def bench_rollout(device, rows=64, lengths=(32, 512), reps=2):
    model = small_model(dtype=torch.bfloat16 if device.type == "cuda" else torch.float32).to(device)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, 4096, (int(torch.randint(8, 33, (1,), generator=g)),), generator=g).tolist()
               for _ in range(rows)]
    ids, mask = [t.to(device) for t in sample.left_pad(prompts, 0)]
    print(f"1. rollout: {rows} prompts of 8-32 tokens, greedy, random 4-layer 256-wide Qwen3, {device}; forced lengths,"
          " then an EOS at spread lengths (finished rows: dropped by sample.py, kept by model.generate)")
    for n, spread in [(n, False) for n in lengths] + [(lengths[-1], True)]:
        eos = {EOS} if spread else set()
        hook = spread and model.register_forward_hook(partial(eos_uniform, budget=n, prompt_len=ids.shape[1]),
                                                      with_kwargs=True)
        ours = lambda: sample.generate(model, ids, mask, n, eos_ids=eos, pad_id=0, temperature=0)[0]
        hf = lambda: model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                                    min_new_tokens=0 if spread else n, eos_token_id=EOS if spread else None,
                                    pad_token_id=0)[:, ids.shape[1]:]
        best, outs = best_of({"sample.py": ours, "model.generate": hf}, reps, device)
        hook and hook.remove()
        useful = sample.response_mask(outs["sample.py"], eos).sum().item()  # tokens up to each row's EOS
        same = torch.equal(outs["sample.py"], outs["model.generate"][:, :outs["sample.py"].shape[1]])
        ours_tps, hf_tps = useful / best["sample.py"], useful / best["model.generate"]
        print(f"   {rows} x {n:4d} new tokens{', spread' if spread else '':8s}: sample.py {ours_tps:6.0f} tok/s   "
              f"model.generate {hf_tps:6.0f} tok/s   ratio {ours_tps / hf_tps:.2f}x   mean length {useful / rows:5.1f}"
              f"   greedy outputs equal: {same}")
        if device.type == "cuda":
            weights = sum(p.numel() * p.element_size() for p in model.parameters())
            kv = kv_bytes_per_token(shape_of(model.config), 2) * rows * (ids.shape[1] + n / 2)
            bw, peaks = (weights + kv) * n / best["sample.py"], {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12}
            peak = next((b for k, b in peaks.items() if k in torch.cuda.get_device_name(device)), peaks["H100"])
            print(f"   decode bandwidth {bw / 1e9:.0f} GB/s = {bw / peak:.0%} of the device's peak (bytes/s)")
    bench_sharing(device, "4-layer Qwen3", model, 64, 8, 128, 64)
    bench_refill(device, model)
    torch.manual_seed(0)
    smol = toy.smollm2_shape().to(model.dtype).to(device).eval()
    bench_sharing(device, "SmolLM2-135M shape", smol, 8, 8, 64, 32, reps=1)


EOS = 1  # the EOS token of the rows with spread lengths


@torch.no_grad()
def bench_sharing(device, name, model, prompts, G, prompt_len, new_tokens, reps=2):
    """G rows per prompt, each prompt prefilled once vs every row prefilled (sample.py, model.generate); greedy."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, model.config.vocab_size, (prompts, prompt_len), generator=g).to(device)
    ones, rep = torch.ones_like, ids.repeat_interleave(G, 0)
    runs = {"shared": lambda: sample.generate(model, ids, ones(ids), new_tokens, set(), 0, temperature=0, n=G)[0],
            "per row": lambda: sample.generate(model, rep, ones(rep), new_tokens, set(), 0, temperature=0)[0],
            "model.generate": lambda: model.generate(input_ids=rep, attention_mask=ones(rep), do_sample=False,
                                                     max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                                     pad_token_id=0)[:, prompt_len:]}
    best, outs = best_of(runs, reps, device)
    print(f"   {name}, {prompts} prompts x G {G}, prompts of {prompt_len} tokens, {new_tokens} new tokens: prefill "
          f"tokens {prompts * prompt_len} shared vs {prompts * G * prompt_len} per row; tok/s " + "   ".join(
              f"{k} {prompts * G * new_tokens / t:6.0f}" for k, t in best.items()) +
          f"   shared / per row {best['per row'] / best['shared']:.2f}x, / model.generate "
          f"{best['model.generate'] / best['shared']:.2f}x   greedy outputs equal: "
          f"{all(torch.equal(outs['shared'], o) for o in outs.values())}")


def eos_uniform(model, args, kwargs, out, budget, prompt_len):
    """Forward hook: a row whose input so far holds t tokens more than the longest prompt (prompt_len) and
    ends in token x gets EOS next when (31 x + t) % (budget - t) == 0 once t >= budget / 10: a chance of
    1 / (budget - t), so lengths spread about uniformly over 10-100 % of the budget, from each row's content
    alone: sample.py (any batch layout) and model.generate end a greedy row at the same token."""
    x, t = kwargs["input_ids"][:, -1], kwargs["attention_mask"].sum(-1) - prompt_len
    out.logits[((31 * x + t) % (budget - t).clamp(min=1) == 0) & (t >= budget // 10), -1, EOS] = 1e4


@torch.no_grad()
def bench_refill(device, model, prompts=16, G=8, prompt_len=64, budget=128, batch=32):
    """At most `batch` rows at once: one generate call whose finished rows' slots take waiting prompts vs the
    previous rollout's batch // G prompts per call, finished rows dropped; lengths over 10-100 % of the budget."""
    ids = torch.randint(2, model.config.vocab_size, (prompts, prompt_len), generator=torch.Generator().manual_seed(0))
    ids, alive = ids.to(device), []  # rows of each decode forward
    hooks = [model.register_forward_hook(partial(eos_uniform, budget=budget, prompt_len=prompt_len), with_kwargs=True),
             model.register_forward_pre_hook(lambda m, a, k: None if k["input_ids"].shape[1] > 1 else alive.append(
                 len(k["input_ids"])), with_kwargs=True)]

    def run(refill, temperature):
        alive.clear()
        torch.manual_seed(0)
        outs = [sample.generate(model, x, torch.ones_like(x), budget, {EOS}, 0, temperature, n=G, batch=batch)[0]
                for x in ([ids] if refill else ids.split(batch // G))]
        return torch.cat([torch.nn.functional.pad(o, (0, budget - o.shape[1])) for o in outs]), list(alive)
    best, outs = best_of({"drop only": lambda: run(False, 1.0), "refill": lambda: run(True, 1.0)}, 2, device)
    tps = {k: sample.response_mask(o, {EOS}).sum().item() / best[k] for k, (o, _) in outs.items()}
    rows = "".join(f"   {k} {tps[k]:6.0f} useful tok/s, {len(a)} decode steps, {sum(a) / len(a):4.1f} rows alive "
                   "per step" for k, (_, a) in outs.items())
    print(f"   {prompts} prompts x G {G}, {prompt_len}-token prompts, lengths over 10-100 % of {budget}, <= {batch} "
          f"rows at once, sampled:{rows}   refill / drop only {tps['refill'] / tps['drop only']:.2f}x   "
          f"greedy outputs equal: {torch.equal(run(False, 0.0)[0], run(True, 0.0)[0])}")
    for h in hooks:
        h.remove()


def best_of(runs, reps, device):
    """{name: best seconds}, {name: output} of the functions in `runs`, interleaved (other load hits all alike)."""
    best, outs = {}, {}
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


# ----------------------------------------------------------------------------- 2. the training step
def bench_step(device, prompts=8, G=8, new_tokens=32, reps=3, teacher_3x=False, make=None,
               name="the built-in 2-layer 128-wide Qwen2"):
    tok = toy.text_tokenizer()
    model, opt, teacher = policy_and_teacher(make or (lambda: toy.text_model(tok)), device)
    rows, _ = data.tokenize(toy.task_data("largest", prompts, 1, 0)[0], tok, 256, {})
    s_ids, s_mask = [t.to(device) for t in sample.left_pad([r["student_ids"] for r in rows], 0)]  # [prompts, P]
    t_ids, t_mask = [t.to(device) for t in sample.left_pad([r["student_ids"] * 3 if teacher_3x else r["teacher_ids"]
                                                            for r in rows], 0)]  # [prompts, P']
    gen, N = torch.Generator(device=device).manual_seed(0), prompts * G
    print(f"2. step: {prompts} prompts x {G} samples x {new_tokens} forced tokens, {name}, student prompts "
          f"{s_ids.shape[1]} tokens, teacher {t_ids.shape[1]}{' (3x)' if teacher_3x else ''}, 1 process, "
          f"{torch.get_num_threads()} threads, {device}")
    times = {}
    for _ in range(reps):
        t0 = time.perf_counter()
        model.eval()
        with parallel.gathered(model):
            resp, resp_mask, _ = sample.generate(model, s_ids, s_mask, new_tokens, set(), 0, 1.0, 1.0, gen, n=G)
        t_roll = clock(device) - t0
        adv = rlsd.group_advantages(torch.randn(N, device=device).round(), G)
        for name, lam in (("rlsd", 0.5), ("grpo", None)):
            t1 = time.perf_counter()
            logp_t = lam and train.teacher_logprobs(teacher, t_ids, t_mask, resp, resp_mask, [{}] * N, G, N, 1.0)
            t2 = clock(device)
            batch = dict(prompt_ids=s_ids.repeat_interleave(G, 0), prompt_mask=s_mask.repeat_interleave(G, 0),
                         resp=resp, resp_mask=resp_mask, adv=adv, logp_teacher=logp_t, images=None)
            train.train_step(model, opt, batch, algo="grpo" if lam is None else "rlsd", lam=lam or 0.0, micro_batch=N)
            t3 = clock(device)
            times[name] = [min(a, b) for a, b in zip(times.get(name, [1e9] * 3), [t_roll, t2 - t1, t3 - t2])]
        t4 = time.perf_counter()  # the teacher pass as before prefix sharing: every row its own prompt, for comparison
        train.teacher_logprobs(teacher, t_ids.repeat_interleave(G, 0), t_mask.repeat_interleave(G, 0), resp, resp_mask,
                               [{}] * N, 1, N, 1.0)
        times["per row"] = min(times.get("per row", 1e9), clock(device) - t4)
    base = sum(times["grpo"])
    for name in ("rlsd", "grpo"):
        r, t, u = times[name]
        print(f"   {name:14s} rollout {r:6.3f} s  teacher {t:6.3f} s  update {u:6.3f} s  = {r + t + u:6.3f} s/step  "
              f"({(r + t + u) / base:.2f}x grpo)")
    shared, per_row = t_ids.numel() + N * (new_tokens - 1), N * (t_ids.shape[1] + new_tokens)  # tokens computed
    print(f"   teacher pass: {shared} tokens computed, {times['rlsd'][1] / shared * 1e6:.0f} us/token; every row its "
          f"own prompt: {per_row} tokens, {times['per row']:.3f} s ({times['per row'] / times['rlsd'][1]:.2f}x)")
    if device.type == "cuda":  # forward + backward ~ 6 FLOPs per parameter per token
        flops = 6 * sum(p.numel() for p in model.parameters()) * (s_mask.sum() * G + resp_mask.sum()).item()
        print(f"   update MFU {flops / times['grpo'][2] / 989e12:.1%} of a bf16 peak of 989 TFLOP/s (H100/H200)")


# ----------------------------------------------------------------------------- 3. memory
def rss_peak_reset():
    """Peak resident memory (VmHWM) since the last call, in bytes; Linux resets it on '5' to clear_refs."""
    with open("/proc/self/status") as f:
        peak = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM"))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return peak


def memory_config():
    """A config large enough that its states dominate the process's own memory."""
    from transformers import Qwen3Config
    return Qwen3Config(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                       num_attention_heads=8, num_key_value_heads=4, head_dim=64, max_position_embeddings=2048,
                       tie_word_embeddings=False, eos_token_id=None, pad_token_id=0)


def _memory_worker(rank, world, port, out, rows, prompt_len, new_tokens, micro_batch):
    from transformers import Qwen3ForCausalLM
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    cfg = memory_config()
    base = rss_peak_reset()
    model, opt, teacher = policy_and_teacher(lambda: Qwen3ForCausalLM(cfg), torch.device("cpu"), rank, grad_ckpt=True)
    g = torch.Generator().manual_seed(rank)
    ids = torch.randint(1, 32000, (rows // 2, prompt_len), generator=g)  # 2 responses per prompt
    mask = torch.ones_like(ids)
    peaks = {}
    for step in range(2):  # the second step has AdamW's moments allocated: the steady state
        rss_peak_reset()
        model.eval()
        with parallel.gathered(model):
            resp, resp_mask, _ = sample.generate(model, ids, mask, new_tokens, set(), 0, 1.0, 1.0, g, n=2)
        peaks["rollout"] = rss_peak_reset() - base
        logp_t = train.teacher_logprobs(teacher, ids, mask, resp, resp_mask, [{}] * len(ids), 2, micro_batch, 1.0)
        peaks["teacher"] = rss_peak_reset() - base
        adv = rlsd.group_advantages(torch.randn(rows, generator=g), 2)
        batch = dict(prompt_ids=ids.repeat_interleave(2, 0), prompt_mask=mask.repeat_interleave(2, 0), resp=resp,
                     resp_mask=resp_mask, adv=adv, logp_teacher=logp_t, images=None)
        for keep in (False, True):
            train.train_step(model, opt, batch, lam=0.5, micro_batch=micro_batch, world=world, keep_gathered=keep)
            peaks["update, kept" if keep else "update"] = rss_peak_reset() - base
    torch.save(peaks, f"{out}.{rank}")  # (plain dict of ints)
    dist.barrier()
    dist.destroy_process_group()


def spawn(worker, world, *args, out="/tmp/rlsd_bench"):
    """Run worker(rank, world, port, out, *args) on `world` gloo processes; return what each rank saved to out.RANK."""
    torch.multiprocessing.spawn(worker, nprocs=world, args=(world, parallel.free_port(), out, *args))
    saved = [torch.load(f"{out}.{r}") for r in range(world)]
    for r in range(world):
        os.remove(f"{out}.{r}")
    return saved


def measure_memory(world, *args, **kwargs):
    """spawn(_memory_worker, ...) with every allocation above 64 KiB mmap-ed, so that freed tensors leave the RSS
    (glibc reads this at process start; it slows a process down: only the memory benchmark sets it)."""
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    try:
        return spawn(_memory_worker, world, *args, **kwargs)
    finally:
        del os.environ["MALLOC_MMAP_THRESHOLD_"]


def bench_memory(rows=8, prompt_len=256, new_tokens=256, micro_batch=4):
    s = shape_of(memory_config())
    print(f"3. memory: peak RSS per process above its start, one step (the second), a 4-layer 512-wide Qwen3 with "
          f"a 32k vocabulary ({n_params(s) / 1e6:.0f}M parameters, fp32), {rows} rows x {prompt_len} + {new_tokens} "
          f"tokens per process, micro-batch {micro_batch}; plan = the memory plan for the same shapes")
    for world in (1, 2):
        got = measure_memory(world, rows, prompt_len, new_tokens, micro_batch)[0]
        plan = memory_plan(s, world, rows, prompt_len, new_tokens, micro_batch, compute_bytes=4)
        plan["update, kept"] = memory_plan(s, world, rows, prompt_len, new_tokens, micro_batch, compute_bytes=4,
                                           keep_gathered=True)["update"]
        print(f"   {world} process{'es' if world > 1 else '  '}: " + "   ".join(
            f"{k} {got[k] / 2 ** 20:5.0f} MiB (plan {plan[k] / 2 ** 20:5.0f})" for k in plan if k != "resident"))


# ----------------------------------------------------------------------------- 5. the update, 2 processes
def _update_worker(rank, world, port, out, prompts, G, prompt_len, new_tokens, micro_batch, profile, reps=2):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    model, opt, teacher = policy_and_teacher(toy.smollm2_shape, torch.device("cpu"), rank)
    g, N = torch.Generator().manual_seed(rank), prompts * G
    s_ids = torch.randint(2, 49152, (prompts, prompt_len), generator=g)  # [prompts, P], the teacher's [prompts, 3P]
    t_ids, resp = torch.cat([s_ids] * 3, 1), torch.randint(2, 49152, (N, new_tokens), generator=g)  # resp [N, T]
    rep, ones = s_ids.repeat_interleave(G, 0), torch.ones_like
    batch = dict(prompt_ids=rep, prompt_mask=ones(rep), resp=resp, resp_mask=ones(resp), images=None,
                 adv=rlsd.group_advantages(torch.randn(N, generator=g).round(), G), logp_teacher=None)
    runs = {"no-grad forward of the same rows": lambda: train.teacher_logprobs(
                model, rep, ones(rep), resp, ones(resp), [{}] * N, 1, micro_batch, 1.0),
            "teacher pass (its prompt 3x, shared)": lambda: batch.update(logp_teacher=train.teacher_logprobs(
                teacher, t_ids, ones(t_ids), resp, ones(resp), [{}] * prompts, G, micro_batch, 1.0)),
            "update": lambda: train.train_step(model, opt, batch, lam=0.5, micro_batch=micro_batch, world=world),
            "update, --keep_gathered": lambda: train.train_step(model, opt, batch, lam=0.5, micro_batch=micro_batch,
                                                                world=world, keep_gathered=True)}
    times, table = {}, ""
    for _ in range(reps):
        for name, fn in runs.items():
            dist.barrier()
            t = time.perf_counter()
            prof = torch.profiler.profile() if profile and name == "update" and rank == 0 else None
            with prof or contextlib.nullcontext():
                fn()
            dist.barrier()
            times[name] = min(times.get(name, 1e9), time.perf_counter() - t)
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20) if prof else table
    print(table, end="")
    torch.save(times, f"{out}.{rank}")
    dist.destroy_process_group()


def bench_update(profile=False, world=2, prompts=2, G=8, prompt_len=48, new_tokens=64, micro_batch=8):
    print(f"5. update: {world} processes (gloo, 1 thread each), random SmolLM2-135M shape, {prompts} prompts x {G} "
          f"samples x {new_tokens} tokens per process, prompts of {prompt_len} tokens, micro-batch {micro_batch}")
    times = spawn(_update_worker, world, prompts, G, prompt_len, new_tokens, micro_batch, profile)[0]
    fwd = times["no-grad forward of the same rows"]
    for name, t in times.items():
        print(f"   {name:38s} {t:7.2f} s   {t / fwd:5.2f}x the forward")


# ----------------------------------------------------------------------------- main
def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["rollout", "step", "memory", "update"])
    p.add_argument("--profile", action="store_true", help="with --only update: the update's profile, by operator")
    p.add_argument("--plan", choices=sorted(PRESETS), help="print the memory plan of a preset and exit")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--gpu_mem", type=float, default=80, help="GB per GPU")
    p.add_argument("--prompt_len", type=int, default=4096)
    p.add_argument("--response_len", type=int, default=4096)
    p.add_argument("--micro_batch", type=int, default=4)
    p.add_argument("--gen_batch", type=int, default=None, help="default: the largest that fits")
    args = p.parse_args()
    if args.plan:
        print_plan(args.plan, args.gpus, args.gpu_mem, args.prompt_len, args.response_len, args.micro_batch,
                   args.gen_batch)
        return
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    parallel.setup_distributed()
    if args.only in (None, "rollout"):
        bench_rollout(device)
    if args.only in (None, "step"):
        bench_step(device)
        bench_step(device, teacher_3x=True)
        bench_step(device, prompts=2, make=toy.smollm2_shape, name="a random SmolLM2-135M shape (30-layer Llama)")
    if args.only in (None, "memory") and device.type == "cpu":
        bench_memory()
    if args.only in (None, "update") and device.type == "cpu":
        bench_update(args.profile)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

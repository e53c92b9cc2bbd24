"""Benchmarks, each printed side by side against its baseline from the same process, and a memory plan.

    python bench.py                     # 1-3 below on CPU (a few minutes on 2 cores)
    python bench.py --only rollout      # or step, memory
    python bench.py --plan Qwen3-8B --gpus 8 --gpu_mem 80    # 4: per-GPU memory plan, no download

1. rollout: tokens/s of sample.generate vs model.generate, same random model and prompts, greedy, forced lengths
   and spread lengths, and whether their outputs are equal; on a GPU also decode bandwidth as a share of the peak.
2. step: seconds per step in rollout / teacher / update, rlsd (lam > 0) vs grpo; on a GPU the update's MFU.
3. memory: peak memory per process of each phase, 1 vs 2 processes, next to the plan of 4.
4. plan: bytes per GPU of each phase (memory.py and its presets), and the largest generate batch that fits.
"""
import argparse
import os
import socket
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
    for phase in ("rollout", "teacher", "update"):
        ok = "fits" if plan[phase] <= gpu_mem * 1e9 else "DOES NOT FIT"
        print(f"  peak {phase:8s}                {plan[phase] / GiB:7.1f} GiB   {ok} in {gpu_mem:g} GB")
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
        hook = spread and model.register_forward_hook(partial(eos_at_spread_lengths, budget=n), with_kwargs=True)
        ours = lambda: sample.generate(model, ids, mask, n, eos_ids=eos, pad_id=0, temperature=0)[0]
        hf = lambda: model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                                    min_new_tokens=0 if spread else n, eos_token_id=EOS if spread else None,
                                    pad_token_id=0)[:, ids.shape[1]:]
        best, outs = {}, {}
        for _ in range(reps):  # interleaved, best of reps: the machine's other load hits both alike
            for name, fn in (("sample.py", ours), ("model.generate", hf)):
                t = clock(device)
                outs[name] = fn()
                best[name] = min(best.get(name, 1e9), clock(device) - t)
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
            bw = (weights + kv) * n / best["sample.py"]
            print(f"   decode bandwidth {bw / 1e9:.0f} GB/s = {bw / peak_bandwidth(device):.0%} of the device's peak")


EOS = 1  # the spread-lengths row's EOS token


def eos_at_spread_lengths(model, args, kwargs, out, budget):
    """Forward hook: a row whose input so far holds m tokens and ends in token x gets EOS next when
    (31 x + m) % budget == 0, a function of its content alone, so sample.py and model.generate end a
    greedy row at the same length: a chance of about 1 in `budget` per token, lengths spread over the budget."""
    x, m = kwargs["input_ids"][:, -1], kwargs["attention_mask"].sum(-1)
    out.logits[(31 * x + m) % budget == 0, -1, EOS] = 1e4


def clock(device):
    """time.perf_counter() once the device has done its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def peak_bandwidth(device):
    """Peak memory bandwidth of the GPU in bytes/s (H100 SXM 3.35 TB/s, H200 4.8 TB/s, A100 2.0 TB/s)."""
    peaks = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12}
    return next((b for k, b in peaks.items() if k in torch.cuda.get_device_name(device)), peaks["H100"])


# ----------------------------------------------------------------------------- 2. the training step
def bench_step(device, prompts=8, G=8, new_tokens=32, reps=3):
    tok = toy.text_tokenizer()
    model, opt, teacher = policy_and_teacher(lambda: toy.text_model(tok), device)
    rows, _ = data.tokenize(toy.task_data("largest", prompts, 1, 0)[0], tok, 256, {})
    refs = [r for r in rows for _ in range(G)]
    pad, N = tok.pad_token_id, len(refs)
    s_ids, s_mask = [t.to(device) for t in sample.left_pad([r["student_ids"] for r in refs], pad)]
    t_ids, t_mask = [t.to(device) for t in sample.left_pad([r["teacher_ids"] for r in refs], pad)]
    gen = torch.Generator(device=device).manual_seed(0)
    print(f"2. step: {prompts} prompts x {G} samples x {new_tokens} forced tokens, the built-in 2-layer 128-wide "
          f"Qwen2, 1 process, {torch.get_num_threads()} threads, {device}")
    times = {}
    for _ in range(reps):
        t0 = time.perf_counter()
        model.eval()
        with parallel.gathered(model):
            roll = train.rollout(model, tok, refs, [{}] * N, max_new_tokens=new_tokens, temperature=1.0, top_p=1.0,
                                 gen_batch=0, eos=set(), generator=gen)
        resp, resp_mask = roll["resp"], roll["resp_mask"]
        t_roll = clock(device) - t0
        adv = rlsd.group_advantages(torch.randn(N, device=device).round(), G)
        for name, lam in (("rlsd", 0.5), ("grpo", None)):
            t1 = time.perf_counter()
            logp_t = train.teacher_logprobs(teacher, t_ids, t_mask, resp, resp_mask, [{}] * N, N, 1.0) if lam else None
            t2 = clock(device)
            batch = dict(prompt_ids=s_ids, prompt_mask=s_mask, resp=resp, resp_mask=resp_mask, adv=adv,
                         logp_teacher=logp_t, images=None)
            train.train_step(model, opt, batch, algo="grpo" if lam is None else "rlsd", lam=lam or 0.0, micro_batch=N)
            t3 = clock(device)
            times[name] = [min(a, b) for a, b in zip(times.get(name, [1e9] * 3), [t_roll, t2 - t1, t3 - t2])]
    base = sum(times["grpo"])
    for name, (r, t, u) in times.items():
        print(f"   {name:14s} rollout {r:6.3f} s  teacher {t:6.3f} s  update {u:6.3f} s  = {r + t + u:6.3f} s/step  "
              f"({(r + t + u) / base:.2f}x grpo)")
    if device.type == "cuda":  # forward + backward ~ 6 FLOPs per parameter per token
        flops = 6 * sum(p.numel() for p in model.parameters()) * (s_mask.sum() + resp_mask.sum()).item()
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
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # (set before spawn too) freed tensors leave the RSS
    from transformers import Qwen3ForCausalLM
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    cfg = memory_config()
    base = rss_peak_reset()
    model, opt, teacher = policy_and_teacher(lambda: Qwen3ForCausalLM(cfg), torch.device("cpu"), rank, grad_ckpt=True)
    g = torch.Generator().manual_seed(rank)
    ids = torch.randint(1, 32000, (rows, prompt_len), generator=g)
    mask = torch.ones_like(ids)
    peaks = {}
    for step in range(2):  # the second step has AdamW's moments allocated: the steady state
        rss_peak_reset()
        model.eval()
        with parallel.gathered(model):
            resp, resp_mask, _ = sample.generate(model, ids, mask, new_tokens, set(), 0, 1.0, 1.0, g)
        peaks["rollout"] = rss_peak_reset() - base
        logp_t = train.teacher_logprobs(teacher, ids, mask, resp, resp_mask, [{}] * rows, micro_batch, 1.0)
        peaks["teacher"] = rss_peak_reset() - base
        adv = rlsd.group_advantages(torch.randn(rows, generator=g), 2)
        batch = dict(prompt_ids=ids, prompt_mask=mask, resp=resp, resp_mask=resp_mask, adv=adv, logp_teacher=logp_t,
                     images=None)
        train.train_step(model, opt, batch, lam=0.5, micro_batch=micro_batch, world=world)
        peaks["update"] = rss_peak_reset() - base
    torch.save(peaks, f"{out}.{rank}")  # (plain dict of ints)
    dist.barrier()
    dist.destroy_process_group()


def measure_memory(world, rows=8, prompt_len=256, new_tokens=256, micro_batch=4, out="/tmp/rlsd_bench_mem"):
    """Peak RSS above the process's start, per phase, of one step on `world` gloo processes (rank 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    torch.multiprocessing.spawn(_memory_worker, nprocs=world,
                                args=(world, port, out, rows, prompt_len, new_tokens, micro_batch))
    peaks = [torch.load(f"{out}.{r}") for r in range(world)]
    for r in range(world):
        os.remove(f"{out}.{r}")
    return peaks


def bench_memory(rows=8, prompt_len=256, new_tokens=256, micro_batch=4):
    s = shape_of(memory_config())
    print(f"3. memory: peak RSS per process above its start, one step (the second), a 4-layer 512-wide Qwen3 with "
          f"a 32k vocabulary ({n_params(s) / 1e6:.0f}M parameters, fp32), {rows} rows x {prompt_len} + {new_tokens} "
          f"tokens per process, micro-batch {micro_batch}; plan = the memory plan for the same shapes")
    for world in (1, 2):
        got = measure_memory(world, rows, prompt_len, new_tokens, micro_batch)[0]
        plan = memory_plan(s, world, rows, prompt_len, new_tokens, micro_batch, compute_bytes=4)
        print(f"   {world} process{'es' if world > 1 else '  '}: " + "   ".join(
            f"{k} {got[k] / 2 ** 20:6.0f} MiB (plan {plan[k] / 2 ** 20:6.0f})" for k in ("rollout", "teacher", "update")))


# ----------------------------------------------------------------------------- main
def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["rollout", "step", "memory"])
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
    if not dist.is_initialized():
        parallel.setup_distributed()
    if args.only in (None, "rollout"):
        bench_rollout(device)
    if args.only in (None, "step"):
        bench_step(device)
    if args.only in (None, "memory") and device.type == "cpu":
        bench_memory()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""Memory sizing: bytes per GPU of each phase of a step, and the rows decoded at once that fit.

A model is described by a few numbers of its config (`shape_of`, or a preset for models this
project does not download). The plan is checked against measured CPU peaks by bench.py and the tests.
"""
import torch

from logprobs import CHUNK

GiB = 2 ** 30
# The few numbers of each config that the plan needs (from the models' config.json files).
PRESETS = {
    "Qwen3-1.7B": dict(hidden=2048, layers=28, inter=6144, heads=16, kv_heads=8, head_dim=128, vocab=151936, tied=True),
    "Qwen3-4B": dict(hidden=2560, layers=36, inter=9728, heads=32, kv_heads=8, head_dim=128, vocab=151936, tied=True),
    "Qwen3-8B": dict(hidden=4096, layers=36, inter=12288, heads=32, kv_heads=8, head_dim=128, vocab=151936, tied=False),
}
# Qwen3-VL-8B-Instruct: the Qwen3-8B language model plus a 27-block, 1152-wide vision tower
PRESETS["Qwen3-VL-8B"] = dict(PRESETS["Qwen3-8B"], vision=dict(hidden=1152, layers=27, inter=4304, out=4096, patch=16))


def shape_of(config):
    """The plan's numbers from a transformers config (a VLM's: its language model's)."""
    c = config.get_text_config() if hasattr(config, "get_text_config") else config
    return dict(hidden=c.hidden_size, layers=c.num_hidden_layers,
                inter=getattr(c, "intermediate_size", None) or 4 * c.hidden_size, heads=c.num_attention_heads,
                kv_heads=getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
                head_dim=getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
                vocab=c.vocab_size, tied=bool(getattr(config, "tie_word_embeddings", False)))


def n_params(s):
    """Parameters of a Qwen-style decoder (+ vision tower): attention, gated MLP, norms, embeddings."""
    h, kv = s["hidden"], s["kv_heads"] * s["head_dim"]
    attn = h * s["heads"] * s["head_dim"] * 2 + h * kv * 2
    layer = attn + 3 * h * s["inter"] + 2 * h + 2 * s["head_dim"]  # (+ Qwen3's q/k norms)
    n = s["layers"] * layer + s["vocab"] * h * (1 if s["tied"] else 2) + h
    if "vision" in s:
        v = s["vision"]
        n += v["layers"] * (4 * v["hidden"] ** 2 + 2 * v["hidden"] * v["inter"]) + 4 * v["hidden"] * 4 * v["out"]
    return n


def kv_bytes_per_token(s, dtype_bytes=2):
    """Bytes of K and V that one token adds to the cache: 2 * layers * kv_heads * head_dim * dtype."""
    return 2 * s["layers"] * s["kv_heads"] * s["head_dim"] * dtype_bytes


# ----------------------------------------------------------------------------- the plan
def memory_plan(s, gpus, gen_batch, prompt_len, resp_len, micro_batch, master_bytes=4, compute_bytes=2, teacher=True,
                keep_gathered=False):
    """Bytes per GPU at the peak of each phase of a step (FSDP2 over `gpus`, AdamW, fp32 master weights,
    `compute_bytes` for gathered weights, activations and the KV cache).

    resident : sharded fp32 weights + AdamW's two moments (+ the teacher's sharded weights)
    rollout  : resident + all weights gathered + the KV cache of gen_batch rows x (prompt + response)
               + fp32 logits/probabilities of one decode step
    teacher  : resident + the teacher gathered + one micro-batch's no-grad forward + one logit chunk
    update   : resident + sharded fp32 grads + gathered root weights (embeddings, head) and their grads
               + two gathered blocks (one prefetched) + activations with checkpointing (each block's
               input kept, one block recomputed) + one logit chunk (logits, log-softmax, grad);
               keep_gathered: all weights gathered and all gradients unsharded (fp32) instead of root + blocks
    """
    P, h, L = n_params(s), s["hidden"], prompt_len + resp_len
    root = s["vocab"] * h * (1 if s["tied"] else 2)
    per_block = (P - root) / s["layers"]
    tokens = micro_batch * L
    chunk = min(CHUNK, tokens) * s["vocab"] * 4 * 3  # fp32 logits, log-softmax, grad of one chunk
    resident = P * master_bytes * 3 / gpus + (P * compute_bytes / gpus if teacher else 0)
    block_act = tokens * (6 * h + 3 * s["inter"]) * compute_bytes  # one block's saved tensors, recomputed
    return {"resident": resident,
            "rollout": resident + P * compute_bytes + gen_batch * L * kv_bytes_per_token(s, compute_bytes)
                       + gen_batch * s["vocab"] * 4 * 3,
            "teacher": resident + (P * compute_bytes + tokens * (2 * h + s["inter"]) * compute_bytes + chunk
                                   if teacher else 0),
            "update": resident + P * master_bytes / gpus + tokens * h * compute_bytes * s["layers"] + block_act + chunk
                      + (P * (compute_bytes + master_bytes) if keep_gathered else
                         2 * root * compute_bytes + 2 * per_block * compute_bytes)}


def largest_gen_batch(s, gpus, gpu_bytes, prompt_len, resp_len, micro_batch, reserve=0.1):
    """The most rows decoded at once whose rollout phase fits in (1 - reserve) of the GPU."""
    lo, hi = 0, 100000
    while lo < hi:
        mid = (lo + hi + 1) // 2
        fits = memory_plan(s, gpus, mid, prompt_len, resp_len, micro_batch)["rollout"] <= gpu_bytes * (1 - reserve)
        lo, hi = (mid, hi) if fits else (lo, mid - 1)
    return lo


# ----------------------------------------------------------------------------- the generate batch of a run
def auto_gen_batch(config, prompt_len, max_new_tokens, free_bytes, dtype_bytes=2, reserve=0.1, group=1):
    """Rows decoded at once that fit in free_bytes less a `reserve` share, `group` rows per prompt: a row's
    KV cache slot for prompt + budget, plus, while a waiting prompt is prefilled into freed slots (the others
    decoding on), 1/group of its prompt's own cache and of one layer's activations (~4 hidden + 3 intermediate
    values per token); plus fp32 logits and probabilities."""
    s = shape_of(config)
    kv = kv_bytes_per_token(s, dtype_bytes)
    act = (4 * s["hidden"] + 3 * s["inter"]) * dtype_bytes
    per_row = kv * (prompt_len + max_new_tokens) + (kv + act) * prompt_len / group
    return max(1, int(free_bytes * (1 - reserve) // (per_row + 3 * 4 * s["vocab"])))


def gen_batch_size(config, rows, prompt_len, gen_batch, max_new_tokens, device, free_gb=None, dtype_bytes=2, group=1):
    """Rows decoded at once: gen_batch (0 = all), or with "auto" what fits in free_gb GB (default: the GPU's
    free memory; on CPU without free_gb, all rows) for prompts of prompt_len tokens + the response budget."""
    if gen_batch != "auto":
        return gen_batch or rows
    if free_gb is None and device.type != "cuda":
        return rows
    free = free_gb * 1e9 if free_gb is not None else (torch.cuda.mem_get_info(device)[0]
                                                       + torch.cuda.memory_reserved(device)
                                                       - torch.cuda.memory_allocated(device))
    return min(rows, auto_gen_batch(config, prompt_len, max_new_tokens, free, dtype_bytes, group=group))

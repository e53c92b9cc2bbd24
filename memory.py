"""Memory sizing: bytes per GPU of each phase of a step, and the rows decoded at once that fit.

A model is described by a few numbers of its config (`shape_of`, or a preset for models this
project does not download). The plan is checked against measured CPU peaks by bench.py and the
tests.
"""
import torch

from logprobs import CHUNK

GiB = 2 ** 30
# The few numbers of each config that the plan needs (from the models' config.json files).
PRESETS = {
    "Qwen3-1.7B": dict(hidden=2048, layers=28, inter=6144, heads=16, kv_heads=8, head_dim=128,
                       vocab=151936, tied=True),
    "Qwen3-4B": dict(hidden=2560, layers=36, inter=9728, heads=32, kv_heads=8, head_dim=128,
                     vocab=151936, tied=True),
    "Qwen3-8B": dict(hidden=4096, layers=36, inter=12288, heads=32, kv_heads=8, head_dim=128,
                     vocab=151936, tied=False),
}
# Qwen3-VL-8B-Instruct: the Qwen3-8B language model plus a 27-block, 1152-wide vision tower
PRESETS["Qwen3-VL-8B"] = dict(PRESETS["Qwen3-8B"],
                              vision=dict(hidden=1152, layers=27, inter=4304, out=4096, patch=16))


def shape_of(config):
    """The plan's numbers from a transformers config (a VLM's: its language model's)."""
    c = config
    if hasattr(config, "get_text_config"):
        c = config.get_text_config()
    heads = c.num_attention_heads
    return dict(hidden=c.hidden_size,
                layers=c.num_hidden_layers,
                inter=getattr(c, "intermediate_size", None) or 4 * c.hidden_size,
                heads=heads,
                kv_heads=getattr(c, "num_key_value_heads", None) or heads,
                head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads,
                vocab=c.vocab_size,
                tied=bool(getattr(config, "tie_word_embeddings", False)))


def embedding_matrices(s):
    """1 if the input embedding and the output layer share one [vocab, hidden] matrix, else 2."""
    if s["tied"]:
        return 1
    return 2


def n_params(s):
    """Parameters of a Qwen-style decoder (+ vision tower): attention, gated MLP, norms and
    embeddings."""
    h = s["hidden"]
    kv = s["kv_heads"] * s["head_dim"]
    attn = h * s["heads"] * s["head_dim"] * 2 + h * kv * 2  # q, o; k, v
    layer = attn + 3 * h * s["inter"] + 2 * h + 2 * s["head_dim"]  # (+ Qwen3's q/k norms)
    n = s["layers"] * layer + s["vocab"] * h * embedding_matrices(s) + h
    if "vision" in s:
        n += vision_params(s["vision"])
    return n


def vision_params(v):
    """Parameters of a vision tower: its blocks (attention, MLP) and the merger into the LM."""
    blocks = v["layers"] * (4 * v["hidden"] ** 2 + 2 * v["hidden"] * v["inter"])
    return blocks + 4 * v["hidden"] * 4 * v["out"]


def kv_bytes_per_token(s, dtype_bytes=2):
    """Bytes of K and V one token adds to the cache: 2 * layers * kv_heads * head_dim * dtype."""
    return 2 * s["layers"] * s["kv_heads"] * s["head_dim"] * dtype_bytes


# ----------------------------------------------------------------------------- the plan
def memory_plan(s, gpus, gen_batch, prompt_len, resp_len, micro_batch, master_bytes=4,
                compute_bytes=2, teacher=True, keep_gathered=False):
    """Bytes per GPU at the peak of each phase of a step (FSDP2 over `gpus`, AdamW, fp32 master
    weights, `compute_bytes` for gathered weights, activations and the KV cache).

    resident : sharded fp32 weights + AdamW's two moments (+ the teacher's sharded weights)
    rollout  : resident + all weights gathered + the KV cache of gen_batch rows x (prompt +
               response) + fp32 logits/probabilities of one decode step
    teacher  : resident + the teacher gathered + one micro-batch's no-grad forward + one logit chunk
    update   : resident + sharded fp32 grads + gathered root weights (embeddings, head) and their
               grads + two gathered blocks (one prefetched) + activations with checkpointing (each
               block's input kept, one block recomputed) + one logit chunk (logits, log-softmax,
               grad); keep_gathered: all weights gathered and all gradients unsharded (fp32)
               instead of root + blocks
    """
    # (each phase's terms are summed left to right, in the order listed above)
    P = n_params(s)
    h = s["hidden"]
    L = prompt_len + resp_len
    root = s["vocab"] * h * embedding_matrices(s)
    per_block = (P - root) / s["layers"]
    tokens = micro_batch * L
    chunk = min(CHUNK, tokens) * s["vocab"] * 4 * 3  # fp32 logits, log-softmax, grad of one chunk

    own_state = P * master_bytes * 3 / gpus  # fp32 weights and AdamW's two moments
    teacher_shards = 0
    if teacher:
        teacher_shards = P * compute_bytes / gpus
    resident = own_state + teacher_shards

    all_gathered = P * compute_bytes
    kv_cache = gen_batch * L * kv_bytes_per_token(s, compute_bytes)
    decode_logits = gen_batch * s["vocab"] * 4 * 3
    rollout = resident + all_gathered + kv_cache + decode_logits

    teacher_pass = 0
    if teacher:
        no_grad_forward = tokens * (2 * h + s["inter"]) * compute_bytes
        teacher_pass = P * compute_bytes + no_grad_forward + chunk

    grads = P * master_bytes / gpus
    block_inputs = tokens * h * compute_bytes * s["layers"]
    block_act = tokens * (6 * h + 3 * s["inter"]) * compute_bytes  # one block's saved tensors
    if keep_gathered:
        gathered_for_update = P * (compute_bytes + master_bytes)
    else:
        gathered_for_update = 2 * root * compute_bytes + 2 * per_block * compute_bytes
    update = resident + grads + block_inputs + block_act + chunk + gathered_for_update

    return {"resident": resident,
            "rollout": rollout,
            "teacher": resident + teacher_pass,
            "update": update}


def largest_gen_batch(s, gpus, gpu_bytes, prompt_len, resp_len, micro_batch, reserve=0.1):
    """The most rows decoded at once whose rollout phase fits in (1 - reserve) of the GPU."""
    budget = gpu_bytes * (1 - reserve)
    lo = 0
    hi = 100000
    while lo < hi:  # bisection: lo fits, everything above hi does not
        mid = (lo + hi + 1) // 2
        rollout = memory_plan(s, gpus, mid, prompt_len, resp_len, micro_batch)["rollout"]
        if rollout <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


# ------------------------------------------------------------------- the generate batch of a run
def auto_gen_batch(config, prompt_len, max_new_tokens, free_bytes, dtype_bytes=2, reserve=0.1,
                   group=1):
    """Rows decoded at once that fit in free_bytes less a `reserve` share, `group` rows per prompt.

    A row's KV cache slot for prompt + budget, plus, while a waiting prompt is prefilled into freed
    slots (the others decoding on), 1/group of its prompt's own cache and of one layer's
    activations (~4 hidden + 3 intermediate values per token); plus fp32 logits and probabilities.
    """
    s = shape_of(config)
    kv = kv_bytes_per_token(s, dtype_bytes)
    act = (4 * s["hidden"] + 3 * s["inter"]) * dtype_bytes
    per_row = kv * (prompt_len + max_new_tokens) + (kv + act) * prompt_len / group
    logits = 3 * 4 * s["vocab"]
    rows = free_bytes * (1 - reserve) // (per_row + logits)
    return max(1, int(rows))


def gen_batch_size(config, rows, prompt_len, gen_batch, max_new_tokens, device, free_gb=None,
                   dtype_bytes=2, group=1):
    """Rows decoded at once: gen_batch (0 = all), or with "auto" what fits in free_gb GB (default:
    the GPU's free memory; on CPU without free_gb, all rows) for prompts of prompt_len tokens + the
    response budget."""
    if gen_batch != "auto":
        return gen_batch or rows
    if free_gb is None and device.type != "cuda":
        return rows
    if free_gb is not None:
        free = free_gb * 1e9
    else:
        free = free_gpu_bytes(device)
    fitting = auto_gen_batch(config, prompt_len, max_new_tokens, free, dtype_bytes, group=group)
    return min(rows, fitting)


def free_gpu_bytes(device):
    """Bytes the process could still allocate on a GPU: free memory + what its allocator caches."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)

"""The training-side forward passes: log-probs, entropy and the OPSD divergence of response tokens.

Sequence layout: a left-padded prompt [N, P] followed by a right-padded response [N, T]; the hidden
states at columns P-1 .. P+T-2 predict the response. Only real response tokens (mask 1) are
projected onto the vocabulary, CHUNK at a time, so no [rows, T, V] fp32 tensor of a micro-batch
ever exists; with gradients on, each chunk's logits are recomputed in the backward instead of kept.

Shapes: N rows (responses), B distinct prompts (N = B * n), P prompt columns, T response columns,
H hidden size, V vocabulary size, M real response tokens (resp_mask.sum()), C tokens of one chunk.
"""
from functools import partial

import torch
from torch.utils.checkpoint import checkpoint
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from hf import decode_positions, rope_positions
from rlsd import generalized_jsd, token_logprobs

# Response tokens per vocabulary projection: bounds the [tokens, V] fp32 logits in memory.
CHUNK = 1024


def output_hidden(model, **inputs):
    """The model's forward, returning the hidden states that enter its output layer, not logits.

    Returns [N, L', H]: the positions `logits_to_keep` selects. The vocabulary projection is left to
    the caller, chunk by chunk. Assumes a plain linear output layer (Qwen, Llama, Mistral, GPT-2).
    """
    captured = []

    def take_input(module, args):
        captured.append(args[0])
        return (args[0][..., :0, :],)  # the output layer projects nothing

    handle = model.get_output_embeddings().register_forward_pre_hook(take_input)
    try:
        model(**inputs)
    finally:
        handle.remove()
    return captured[0]


# --------------------------------------------------------------------------------- hidden states
def response_hidden(model, prompt_ids, prompt_mask, resp, resp_mask, n=1, **model_inputs):
    """Hidden states that predict the real response tokens: [M, H], M = resp_mask.sum(), row by row.

    n = 1: one forward of prompt + response per row (joint_hidden).
    n > 1: prompt_ids/prompt_mask [B, P] are distinct prompts and resp [B * n, T] holds n responses
    to each (row j answers prompt j // n): each prompt and its images run once, then the responses
    run on top of its keys and values (shared_prompt_hidden).
    """
    # Drop the columns that are padding in every row (the prompts are left-padded).
    width = int(prompt_mask.sum(1).max())
    prompt_ids = prompt_ids[:, -width:]
    prompt_mask = prompt_mask[:, -width:]
    if n == 1:
        hidden = joint_hidden(model, prompt_ids, prompt_mask, width, resp, resp_mask, model_inputs)
    else:
        hidden = shared_prompt_hidden(model, prompt_ids, prompt_mask, resp, resp_mask, n,
                                      model_inputs)
    return hidden[resp_mask.bool()]  # [N, T, H] -> [M, H]


def joint_hidden(model, prompt_ids, prompt_mask, prompt_len, resp, resp_mask, model_inputs):
    """n = 1: each row's prompt + response in one forward.

    [N, T, H]: column t predicts resp[:, t].
    """
    T = resp.shape[1]
    ids = torch.cat([prompt_ids, resp], dim=1)  # [N, P + T]
    mask = torch.cat([prompt_mask, resp_mask], dim=1)  # [N, P + T]
    image_grid_thw = model_inputs.get("image_grid_thw")
    # [N, P + T] (text) or [3, N, P + T] (Qwen-VL M-RoPE), the response columns as text
    positions = rope_positions(model, ids, mask, image_grid_thw, prompt_len=prompt_len)
    # the last T + 1 columns (P-1 .. P+T-1); the first T of them predict the response
    hidden = output_hidden(model, input_ids=ids, attention_mask=mask, position_ids=positions,
                           logits_to_keep=T + 1, use_cache=False, **model_inputs)  # [N, T + 1, H]
    return hidden[:, :T]  # [N, T, H]


def shared_prompt_hidden(model, prompt_ids, prompt_mask, resp, resp_mask, n, model_inputs):
    """n > 1: each distinct prompt (and its images) runs once, keeping its keys and values; then its
    n responses run on top of them (SharedPrompt). [N, T, H]: column t predicts resp[:, t]."""
    T = resp.shape[1]
    image_grid_thw = model_inputs.get("image_grid_thw")
    # [B, P] (text) or [3, B, P] (Qwen-VL M-RoPE)
    prompt_positions = rope_positions(model, prompt_ids, prompt_mask, image_grid_thw)
    cache = DynamicCache()
    prompt_of_row = torch.arange(len(resp), device=resp.device) // n  # [N]: row j -> prompt j // n
    # each prompt's last hidden state predicts response token 0 of its n rows
    prompt_last = output_hidden(model, input_ids=prompt_ids, attention_mask=prompt_mask,
                                position_ids=prompt_positions, past_key_values=cache,
                                use_cache=True, logits_to_keep=1, **model_inputs)  # [B, 1, H]
    hidden = prompt_last[prompt_of_row]  # [N, 1, H]
    if T > 1:
        later = hidden_on_prompt_cache(model, cache, prompt_positions, prompt_mask, prompt_of_row,
                                       resp, resp_mask)  # [N, T - 1, H]
        hidden = torch.cat([hidden, later], dim=1)  # [N, T, H]
    return hidden


def hidden_on_prompt_cache(model, cache, prompt_positions, prompt_mask, prompt_of_row, resp,
                           resp_mask):
    """Response tokens 0 .. T-2 of every row, run on its prompt's cached keys and values.

    [N, T - 1, H]: they predict response tokens 1 .. T-1. No image inputs: a prompt's images are
    in its cache already.
    """
    T = resp.shape[1]
    shared = Cache(layers=[SharedPrompt(layer.keys, layer.values, prompt_of_row)
                           for layer in cache.layers])
    # positions continue each row's prompt: [N, T - 1] (or [3, N, T - 1] for M-RoPE)
    next_position = decode_positions(prompt_positions)[..., prompt_of_row, :]  # [N, 1] or [3, N, 1]
    positions = next_position + torch.arange(T - 1, device=resp.device)
    mask = torch.cat([prompt_mask[prompt_of_row], resp_mask[:, :-1]], dim=1)  # [N, P + T - 1]
    return output_hidden(model, input_ids=resp[:, :-1], attention_mask=mask, position_ids=positions,
                         past_key_values=shared, use_cache=True)


class SharedPrompt(DynamicLayer):
    """One layer's keys and values of B distinct prompts, read by their N responses, never written.

    Row j reads prompt prompt_of_row[j]: the pass holds each prompt's cache once, not once per
    response.
    """

    def __init__(self, keys, values, prompt_of_row):
        super().__init__()
        self.keys = keys  # [B, kv_heads, P, head_dim]
        self.values = values  # [B, kv_heads, P, head_dim]
        self.prompt_of_row = prompt_of_row  # [N]
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        """Each row's prompt keys/values followed by its new ones ([N, kv_heads, T', head_dim])."""
        # [N, kv_heads, P + T', head_dim]
        keys = torch.cat([self.keys[self.prompt_of_row], key_states], dim=-2)
        values = torch.cat([self.values[self.prompt_of_row], value_states], dim=-2)
        return keys, values


# ------------------------------------------------------------------------- vocabulary projection
def in_chunks(fn, *tensors, chunk=CHUNK):
    """fn over row chunks of the [M, ...] tensors, its outputs concatenated: a list, one [M, ...]
    per output of fn (None when M = 0).

    With gradients on and more than one chunk, each chunk is recomputed in the backward instead of
    kept, so only one chunk's logits ever exist (a single chunk is kept: recomputing it would save
    nothing).
    """
    n_rows = len(tensors[0])
    if torch.is_grad_enabled() and n_rows > chunk:
        fn = partial(checkpoint, fn, use_reentrant=False)
    per_chunk = []  # per_chunk[c][k]: output k of chunk c
    for start in range(0, n_rows, chunk):
        pieces = [t[start:start + chunk] for t in tensors]
        per_chunk.append(fn(*pieces))
    if not per_chunk:
        return None
    return [torch.cat(chunks_of_output) for chunks_of_output in zip(*per_chunk)]


def token_scores(hidden, tokens, teacher_hidden=None, *, weight, temperature, teacher_weight=None,
                 beta=0.5, entropy=True):
    """(log p(tokens), entropy, OPSD divergence) of a chunk of positions, each [C].

    hidden [C, H], tokens [C]. The entropy is that of the next-token distribution (0 unless asked);
    the divergence, given the teacher's hidden states [C, H], is the generalized JSD between the
    teacher's and the student's distributions (else 0). The [C, V] logits live only here.
    """
    logits = hidden @ weight.t()  # [C, V]
    logp = token_logprobs(logits[None], tokens[None], temperature)[0]  # [C]
    if teacher_hidden is not None:
        teacher_logits = teacher_hidden @ teacher_weight.t()  # [C, V]
        jsd = generalized_jsd(logits, teacher_logits, beta, temperature)  # [C]
    else:
        jsd = torch.zeros_like(logp)
    if not entropy:  # (the teacher pass: a second vocabulary-wide pass saved)
        return logp, torch.zeros_like(logp), jsd
    return logp, next_token_entropy(logits, logp.dtype, temperature), jsd


def next_token_entropy(logits, dtype, temperature):
    """-sum_v p_v log p_v of softmax(logits / temperature) in `dtype`, without gradient: [C]."""
    with torch.no_grad():
        log_p = torch.log_softmax(logits.to(dtype) / temperature, -1)  # [C, V]
        return -(log_p.exp() * log_p).sum(-1)


def unflatten(values, resp_mask):
    """[M] values of the real response tokens -> [N, T], 0 on padding."""
    out = torch.zeros(resp_mask.shape, dtype=values.dtype, device=values.device)
    return out.masked_scatter(resp_mask.bool(), values)


def response_logprobs(model, prompt_ids, prompt_mask, resp, resp_mask, temperature=1.0,
                      with_entropy=False, chunk=CHUNK, n=1, **model_inputs):
    """log p(resp_t | prompt, resp_<t) for every response column: [N, T] (and entropy [N, T]), 0 on
    padding; n > 1: n responses per prompt, as in response_hidden. Only real response tokens are
    projected onto the vocabulary, `chunk` at a time."""
    # [M, H]
    hidden = response_hidden(model, prompt_ids, prompt_mask, resp, resp_mask, n, **model_inputs)
    tokens = resp[resp_mask.bool()]  # [M]
    weight = model.get_output_embeddings().weight  # [V, H]
    score = partial(token_scores, weight=weight, temperature=temperature, entropy=with_entropy)
    scores = in_chunks(score, hidden, tokens, chunk=chunk)  # [logp, entropy, jsd], each [M]
    logp, entropy, _ = (unflatten(values, resp_mask) for values in scores)  # each [N, T]
    if with_entropy:
        return logp, entropy
    return logp

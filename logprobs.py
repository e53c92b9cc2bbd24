"""The training-side forward passes: log-probs, entropy and the OPSD divergence of response tokens.

Sequence layout: a left-padded prompt [N, P] followed by a right-padded response [N, T]; the hidden
states at columns P-1 .. P+T-2 predict the response. Only real response tokens (mask 1) are projected
onto the vocabulary, CHUNK at a time, so no [rows, T, V] fp32 tensor of a micro-batch ever exists;
with gradients on, each chunk's logits are recomputed in the backward instead of kept.
"""
from functools import partial

import torch
from torch.utils.checkpoint import checkpoint
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from hf import decode_positions, rope_positions
from rlsd import generalized_jsd, token_logprobs

CHUNK = 1024  # response tokens per vocabulary projection: bounds the [tokens, V] fp32 logits in memory


def output_hidden(model, **inputs):
    """The model's forward, returning the hidden states that enter its output layer ([N, L', H], the
    positions `logits_to_keep` selects) instead of logits; the vocabulary projection is left to the
    caller, chunk by chunk. Assumes a plain linear output layer (Qwen, Llama, Mistral, GPT-2)."""
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


def response_hidden(model, prompt_ids, prompt_mask, resp, resp_mask, n=1, **model_inputs):
    """Hidden states that predict the real response tokens: [M, H], M = resp_mask.sum(), row by row.

    n = 1: one forward of prompt + response per row. n > 1: prompt_ids/prompt_mask [B, P] are distinct
    prompts and resp [B * n, T] holds n responses to each (row j answers prompt j // n): each prompt
    and its images run once, then the responses run on top of its keys and values (SharedPrompt)."""
    width = int(prompt_mask.sum(1).max())  # drop columns that are padding in every row
    prompt_ids, prompt_mask, T = prompt_ids[:, -width:], prompt_mask[:, -width:], resp.shape[1]
    if n == 1:
        ids, mask = torch.cat([prompt_ids, resp], dim=1), torch.cat([prompt_mask, resp_mask], dim=1)  # [N, P + T]
        pos = rope_positions(model, ids, mask, model_inputs.get("image_grid_thw"), prompt_len=width)
        hidden = output_hidden(model, input_ids=ids, attention_mask=mask, position_ids=pos,
                               logits_to_keep=T + 1, use_cache=False, **model_inputs)[:, :T]  # [N, T, H]
        return hidden[resp_mask.bool()]  # [M, H]
    pos = rope_positions(model, prompt_ids, prompt_mask, model_inputs.get("image_grid_thw"))  # [B, P] or [3, B, P]
    cache, first = DynamicCache(), torch.arange(len(resp), device=resp.device) // n  # [B * n]: row -> its prompt
    last = output_hidden(model, input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=pos,
                         past_key_values=cache, use_cache=True, logits_to_keep=1, **model_inputs)[first]  # [N, 1, H]
    if T > 1:  # response tokens 0 .. T-2 predict tokens 1 .. T-1
        shared = Cache(layers=[SharedPrompt(layer.keys, layer.values, first) for layer in cache.layers])
        rpos = decode_positions(pos)[..., first, :] + torch.arange(T - 1, device=resp.device)  # [N, T-1] (3 for VL)
        att = torch.cat([prompt_mask[first], resp_mask[:, :-1]], dim=1)  # [N, P + T - 1]
        last = torch.cat([last, output_hidden(model, input_ids=resp[:, :-1], attention_mask=att, position_ids=rpos,
                                              past_key_values=shared, use_cache=True)], dim=1)  # [N, T, H]
    return last[resp_mask.bool()]


class SharedPrompt(DynamicLayer):
    """One layer's keys and values of B distinct prompts, read by their responses (row j: prompt first[j]),
    never written: the pass holds each prompt's cache once, not once per response."""

    def __init__(self, keys, values, first):
        super().__init__()
        self.keys, self.values, self.first, self.is_initialized = keys, values, first, True

    def update(self, key_states, value_states, *args, **kwargs):
        return (torch.cat([self.keys[self.first], key_states], dim=-2),
                torch.cat([self.values[self.first], value_states], dim=-2))


def in_chunks(fn, *tensors, chunk=CHUNK):
    """fn over row chunks of the [M, ...] tensors, outputs concatenated. With gradients on and more than
    one chunk, each chunk is recomputed in the backward instead of kept, so only one chunk's logits ever
    exist (a single chunk is kept: recomputing it would save nothing)."""
    if torch.is_grad_enabled() and len(tensors[0]) > chunk:
        fn = partial(checkpoint, fn, use_reentrant=False)
    outs = [fn(*(t[i:i + chunk] for t in tensors)) for i in range(0, len(tensors[0]), chunk)]
    return [torch.cat(o) for o in zip(*outs)] if outs else None


def token_scores(hidden, tokens, teacher_hidden=None, *, weight, temperature, teacher_weight=None, beta=0.5,
                 entropy=True):
    """For a chunk of positions (hidden [C, H], tokens [C]): log p(tokens), the entropy of the next-token
    distribution (if asked, else 0) and, given the teacher's hidden states, the OPSD divergence between the
    teacher's and the student's distributions (else 0). Each [C]; the [C, V] logits live only here."""
    logits = hidden @ weight.t()  # [C, V]
    logp = token_logprobs(logits[None], tokens[None], temperature)[0]
    jsd = (generalized_jsd(logits, teacher_hidden @ teacher_weight.t(), beta, temperature)
           if teacher_hidden is not None else torch.zeros_like(logp))
    if not entropy:  # (the teacher pass: a second vocabulary-wide pass saved)
        return logp, torch.zeros_like(logp), jsd
    with torch.no_grad():
        z = torch.log_softmax(logits.to(logp.dtype) / temperature, -1)
        return logp, -(z.exp() * z).sum(-1), jsd


def unflatten(values, resp_mask):
    """[M] values of the real response tokens -> [N, T], 0 on padding."""
    out = torch.zeros(resp_mask.shape, dtype=values.dtype, device=values.device)
    return out.masked_scatter(resp_mask.bool(), values)


def response_logprobs(model, prompt_ids, prompt_mask, resp, resp_mask, temperature=1.0,
                      with_entropy=False, chunk=CHUNK, n=1, **model_inputs):
    """log p(resp_t | prompt, resp_<t) for every response column: [N, T] (and entropy [N, T]), 0 on
    padding; n > 1: n responses per prompt, as in response_hidden. Only real response tokens are
    projected onto the vocabulary, `chunk` at a time."""
    hidden = response_hidden(model, prompt_ids, prompt_mask, resp, resp_mask, n, **model_inputs)  # [M, H]
    score = partial(token_scores, weight=model.get_output_embeddings().weight, temperature=temperature,
                    entropy=with_entropy)
    logp, ent, _ = (unflatten(x, resp_mask) for x in in_chunks(score, hidden, resp[resp_mask.bool()], chunk=chunk))
    return (logp, ent) if with_entropy else logp

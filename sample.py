"""Batched sampling with a KV cache over any transformers causal LM (gpt-fast style small functions).

Layout: prompts are left-padded ([B, P], explicit position ids = cumsum(mask) - 1), responses are
right-padded ([B, T]); response token t of every row sits in column P + t. The response mask is 1 up
to and including the first EOS, built from EOS positions (never from `ids != pad_id`, which would
drop the EOS token when pad == EOS).

Extra model inputs (e.g. `pixel_values` of a vision-language model) go to the prefill only.

CLI: python sample.py CHECKPOINT_DIR "prompt" [--n 4] [--temperature 1.0] [--max_new_tokens 256]
"""
import argparse

import torch
from transformers import DynamicCache

from rlsd import token_logprobs


def left_pad(seqs, pad_id):
    """List of token-id lists -> (ids [B, P] left-padded, mask [B, P])."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


def position_ids(mask):
    """Positions that ignore left padding: cumsum(mask) - 1, clamped at 0 on the pads. [B, L]."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def response_mask(ids, eos_ids):
    """1 on every token up to and including the first EOS of each row, 0 after. ids: [B, T] -> [B, T].

    A row with no EOS (truncated) keeps all T tokens."""
    is_eos = torch.isin(ids, torch.as_tensor(list(eos_ids), device=ids.device))  # [B, T]
    eos_before = is_eos.long().cumsum(-1) - is_eos.long()  # EOS strictly before t
    return (eos_before == 0).long()


def sample_next(logits, temperature=1.0, top_p=1.0, generator=None):
    """Draw one token per row from logits [B, V]; temperature 0 is greedy. Returns [B]."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # [B, V]
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest set whose mass reaches top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def prefill(model, ids, mask, cache, **model_inputs):
    """Run the whole prompt through the model, filling `cache`; return last-position logits [B, V]."""
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                past_key_values=cache, use_cache=True, logits_to_keep=1, **model_inputs)
    return out.logits[:, -1]


def decode_one_token(model, token, mask, pos, cache):
    """Feed one token per row ([B]) at positions pos ([B]); mask covers the cache plus this token."""
    out = model(input_ids=token[:, None], attention_mask=mask, position_ids=pos[:, None],
                past_key_values=cache, use_cache=True)
    return out.logits[:, -1]


@torch.no_grad()
def generate(model, ids, mask, max_new_tokens, eos_ids, pad_id, temperature=1.0, top_p=1.0,
             generator=None, **model_inputs):
    """Sample a response for every row of the left-padded prompt batch ids/mask [B, P].

    Returns (response ids [B, T] padded with pad_id after EOS, response mask [B, T] with the EOS
    token kept, token log-probs [B, T] at `temperature` under the sampling policy; T <= max_new_tokens).
    Runs no collective: under FSDP keep parameters gathered, ranks may stop at different steps.
    """
    device = ids.device
    eos = torch.as_tensor(sorted(eos_ids), device=device)
    cache = DynamicCache()
    logits = prefill(model, ids, mask, cache, **model_inputs)  # [B, V]
    pos = position_ids(mask)[:, -1]  # [B]
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
    tokens, logps = [], []
    for t in range(max_new_tokens):
        tok = sample_next(logits, temperature, top_p, generator)  # [B]
        lp = token_logprobs(logits[:, None], tok[:, None], temperature or 1.0)[:, 0]  # [B]
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        tokens.append(tok)
        logps.append(torch.where(done, torch.zeros_like(lp), lp))
        done = done | torch.isin(tok, eos)
        if done.all() or t == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        pos = pos + 1
        logits = decode_one_token(model, tok, mask, pos, cache)
    resp = torch.stack(tokens, dim=1)  # [B, T]
    return resp, response_mask(resp, eos_ids), torch.stack(logps, dim=1)


def eos_token_ids(model, tokenizer):
    """Every id that ends a response: the tokenizer's EOS and the model's generation_config EOS ids."""
    ids = {tokenizer.eos_token_id}
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    ids |= set(extra if isinstance(extra, (list, tuple)) else [extra])
    return {i for i in ids if i is not None}


def format_prompt(tokenizer, text):
    """A user turn through the tokenizer's chat template when it has one, else the raw text."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text


def main():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    p = argparse.ArgumentParser(description="Sample responses from a saved checkpoint directory.")
    p.add_argument("checkpoint")
    p.add_argument("prompt")
    p.add_argument("--n", type=int, default=4, help="responses to draw")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trust_remote_code", action="store_true")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(args.checkpoint, trust_remote_code=args.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(args.checkpoint, trust_remote_code=args.trust_remote_code,
                                                 dtype="auto").to(device).eval()
    prompt = tok(format_prompt(tok, args.prompt), add_special_tokens=False)["input_ids"]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids, mask = left_pad([prompt] * args.n, pad)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    resp, rmask, _ = generate(model, ids.to(device), mask.to(device), args.max_new_tokens,
                              eos_token_ids(model, tok), pad, args.temperature, args.top_p, gen)
    for i in range(args.n):
        print(f"--- sample {i} ({int(rmask[i].sum())} tokens)")
        print(tok.decode(resp[i][rmask[i].bool()], skip_special_tokens=True))


if __name__ == "__main__":
    main()

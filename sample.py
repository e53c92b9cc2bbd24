"""Batched sampling with a KV cache over any transformers causal LM (gpt-fast style small functions).

Layout: prompts are left-padded ([B, P], explicit position ids = cumsum(mask) - 1), responses are right-padded
([B, T]); response token t of every row sits in column P + t. The response mask is 1 up to and including the first
EOS, built from EOS positions (never from `ids != pad_id`, which would drop the EOS token when pad == EOS).

Extra model inputs (e.g. `pixel_values` of a vision-language model) go to the prefill only.

CLI: python sample.py CHECKPOINT_DIR "question" [--image PATH] [--n 4] [--temperature 1.0]
     python sample.py CHECKPOINT_DIR "question" --reference ANSWER --heatmap credit.html [--response TEXT]
     python sample.py CHECKPOINT_DIR --eval FILE.jsonl [--n K] [--out results.jsonl]
"""
import argparse
import json
import os
import sys
from functools import partial

import torch
from transformers.cache_utils import Cache, DynamicLayer

from cli import UserError, entry_point
from data import load_jsonl
from hf import (decode_positions, eos_token_ids, format_prompt, image_inputs, load_spec, model_class, open_image,
                prompt_ids, rope_positions, tokenizer_of, vision_token_ids)
from logprobs import response_logprobs
from rlsd import log_evidence_weight, student_prompt, teacher_prompt, token_logprobs
from verify import extract_answer, reward


def left_pad(seqs, pad_id):
    """List of token-id lists -> (ids [B, P] left-padded, mask [B, P])."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids, mask


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


class InPlaceLayer(DynamicLayer):
    """One layer's KV cache, preallocated for max_len tokens and written in place (no torch.cat per
    token); attention reads only the filled part, keys[:, :, :length]. Rows can be dropped."""

    def __init__(self, max_len):
        super().__init__()
        self.max_len, self.length = max_len, 0

    def lazy_initialization(self, key_states, value_states):
        B, H, _, D = key_states.shape
        self.k_buf = key_states.new_empty(B, H, self.max_len, D)  # [B, H, max_len, D]
        self.v_buf = value_states.new_empty(B, H, self.max_len, value_states.shape[-1])
        self.dtype, self.device, self.is_initialized = key_states.dtype, key_states.device, True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        self.k_buf[:, :, self.length:self.length + n] = key_states
        self.v_buf[:, :, self.length:self.length + n] = value_states
        self.length += n
        self.keys, self.values = self.k_buf[:, :, :self.length], self.v_buf[:, :, :self.length]
        return self.keys, self.values

    def get_seq_length(self):
        return self.length

    def batch_select_indices(self, rows):
        self.k_buf, self.v_buf = self.k_buf[rows], self.v_buf[rows]
        self.keys, self.values = self.k_buf[:, :, :self.length], self.v_buf[:, :, :self.length]


def prefill(model, ids, mask, positions, cache, **model_inputs):
    """Run the whole prompt through the model, filling `cache`; return last-position logits [B, V]."""
    return model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
                 logits_to_keep=1, **model_inputs).logits[:, -1]


def decode_one_token(model, token, mask, positions, cache):
    """Feed one token per row ([B]) at `positions` ([B, 1], or [3, B, 1] for M-RoPE), mask covering cache + token."""
    return model(input_ids=token[:, None], attention_mask=mask, position_ids=positions, past_key_values=cache,
                 use_cache=True).logits[:, -1]


# ----------------------------------------------------------------------------- sampling
@torch.no_grad()
def generate(model, ids, mask, max_new_tokens, eos_ids, pad_id, temperature=1.0, top_p=1.0,
             generator=None, n=1, sync_every=16, poll=None, **model_inputs):
    """Sample n responses to every prompt of the left-padded batch ids/mask [B, P] (and its images).

    Returns, for B' = B * n rows (row j answers prompt j // n), response ids [B', T] padded with pad_id after EOS,
    response mask [B', T] with the EOS token kept, token log-probs [B', T] at `temperature` under the sampling policy;
    T <= max_new_tokens. Each prompt is prefilled once; its KV cache is then copied to its n rows. The cache is
    preallocated for P + max_new_tokens and written in place. Every `sync_every` tokens (the only host syncs)
    finished rows leave the working batch, so a long straggler does not keep the whole batch decoding; there
    `poll()`, if given, may raise to abandon the batch. Runs no collective: under FSDP keep parameters gathered,
    ranks may stop at different steps."""
    B, P = ids.shape
    device = ids.device
    eos = torch.as_tensor(sorted(eos_ids), device=device)
    banned = vision_token_ids(model.config)  # a VLM must not write image placeholders into its response
    banned = torch.tensor(banned, device=device) if banned else None
    cache = Cache(layer_class_to_replicate=partial(InPlaceLayer, P + max_new_tokens))
    att = torch.cat([mask, mask.new_zeros(B, max_new_tokens)], dim=1)  # [B, P + max_new]
    pos = rope_positions(model, ids, mask, model_inputs.get("image_grid_thw"))  # [B, P] or [3, B, P]
    logits = prefill(model, ids, mask, pos, cache, **model_inputs)  # [B, V]
    pos = decode_positions(pos)  # [B, 1] or [3, B, 1]
    if n > 1:  # prefix sharing: the prompt's logits, mask, positions and cache, copied to each of its n rows
        first = torch.arange(B, device=device).repeat_interleave(n)  # [B * n]
        logits, att, pos, B = logits[first], att[first], pos[..., first, :], B * n
        for layer in cache.layers:
            layer.batch_select_indices(first)
    out = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)  # [B, max_new]
    out_logp = torch.zeros(B, max_new_tokens, device=device, dtype=torch.promote_types(logits.dtype, torch.float32))
    rows = torch.arange(B, device=device)  # working row -> output row
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for t in range(max_new_tokens):
        allowed = logits if banned is None else logits.index_fill(-1, banned, float("-inf"))
        tok = sample_next(allowed, temperature, top_p, generator)  # [B']
        lp = token_logprobs(logits[:, None], tok[:, None], temperature or 1.0)[:, 0]  # [B'] under the policy
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        out[rows, t] = tok
        out_logp[rows, t] = torch.where(done, torch.zeros_like(lp), lp)
        done = done | torch.isin(tok, eos)
        if t == max_new_tokens - 1:
            break
        if poll is not None and (t + 1) % sync_every == 0:
            poll()
        if (t + 1) % sync_every == 0 and done.any():  # drop finished rows (one host sync)
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            rows, done, att, tok, pos = rows[keep], done[keep], att[keep], tok[keep], pos[..., keep, :]
            for layer in cache.layers:
                layer.batch_select_indices(keep)
        att[:, P + t] = 1
        logits = decode_one_token(model, tok, att[:, :P + t + 1], pos + t, cache)
    resp_mask = response_mask(out, eos_ids)
    T = max(int(resp_mask.sum(1).max()), 1)  # drop columns that are padding in every row
    return out[:, :T], resp_mask[:, :T], out_logp[:, :T]


# ----------------------------------------------------------------------------- the command line
def token_credit(model, proc, question, reference, resp, resp_mask, images):
    """RLSD's view of one response (resp [1, T]): Delta_t = log p_T - log p_S (the same network, with
    and without the reference) and the evidence weight w_t = exp(sign(A) Delta_t), A's sign from the
    response's reward against the reference. Returns (delta [T], w [T], reward)."""
    tok, sizes = tokenizer_of(proc), [im.size for im in images]
    extra = image_inputs(proc, images, resp.device)
    logps = []
    for text in (student_prompt(question), teacher_prompt(question, reference)):
        ids = torch.tensor([prompt_ids(proc, format_prompt(proc, text, len(images)), sizes)], device=resp.device)
        logps.append(response_logprobs(model, ids, torch.ones_like(ids), resp, resp_mask, 1.0, **extra)[0])
    r = reward(tok.decode(resp[0][resp_mask[0].bool()], skip_special_tokens=True), reference)
    delta = logps[1] - logps[0]
    return delta, log_evidence_weight(torch.tensor(1.0 if r else -1.0, device=delta.device), delta).exp(), r


def write_heatmap(path, tok, resp, delta, w, r, question):
    """credit.html and credit.png (same stem) with one coloured cell per response token."""
    import plot  # (pillow drawing: only this command needs it)
    tokens = [tok.decode([t]) for t in resp.tolist()]
    title = f"{question[:80]} | reward {r:g}: w = exp({'+' if r else '-'}Delta)"
    stem = os.path.splitext(path)[0]
    with open(stem + ".html", "w", encoding="utf-8") as f:
        f.write(plot.credit_html(tokens, w.tolist(), delta.tolist(), title, advantage=1.0 if r else -1.0))
    plot.credit_png(tokens, w.tolist(), delta.tolist(), stem + ".png", title, advantage=1.0 if r else -1.0)
    return stem + ".html", stem + ".png"


def evaluate_file(model, proc, path, out_path, n, args, device):
    """Accuracy of a checkpoint on a JSONL of {question, answer[, images, options]}, read as the trainer reads its
    data (data.load_jsonl: same fields, same errors): greedy (n = 1) or the mean over n samples at --temperature;
    a response cut off at --max_new_tokens scores 0, as in training. Writes one row per question and sample."""
    tok = tokenizer_of(proc)
    rows, total, out = load_jsonl(path, args.allow_abs_paths), 0.0, []
    temperature = args.temperature if n > 1 else 0.0
    gen = torch.Generator(device=device).manual_seed(args.seed)
    eos = eos_token_ids(model, tok)
    for i in range(0, len(rows), max(1, args.batch // n)):
        chunk = rows[i:i + max(1, args.batch // n)]
        images = [[open_image(p) for p in r["images"]] for r in chunk]
        ids, mask = left_pad([prompt_ids(proc, format_prompt(proc, student_prompt(r["question"]), len(ims)),
                                         [im.size for im in ims]) for r, ims in zip(chunk, images)], tok.pad_token_id)
        resp, rmask, _ = generate(model, ids.to(device), mask.to(device), args.max_new_tokens, eos,
                                  tok.pad_token_id, temperature, args.top_p, gen, n=n,
                                  **image_inputs(proc, [im for ims in images for im in ims], device))
        for k, (r, y, m) in enumerate(zip([r for r in chunk for _ in range(n)], resp, rmask)):
            text = tok.decode(y[m.bool()], skip_special_tokens=True)
            ended = bool(torch.isin(y[m.bool()], torch.tensor(sorted(eos), device=device)).any())
            score = reward(text, r["answer"], r.get("options")) if ended else 0.0  # as train.py: cut off = 0
            total += score
            out.append({"where": r["where"], "sample": k % n, "question": r["question"], "answer": r["answer"],
                        "response": text, "extracted": extract_answer(text), "reward": score})
        print(f"\r{len(out) // n}/{len(rows)} questions, accuracy {total / len(out):.4f}", end="", file=sys.stderr)
    print(file=sys.stderr)
    with open(out_path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(o, ensure_ascii=False) + "\n" for o in out)
    return total / max(len(out), 1), len(rows)


@entry_point
def main():
    p = argparse.ArgumentParser(description="Sample from a saved checkpoint, draw RLSD's token credit, or evaluate.")
    p.add_argument("checkpoint", help="a model directory saved by train.py (or any Hugging Face model directory)")
    p.add_argument("question", nargs="?", help="asked in the training format (the student prompt), unless --raw")
    p.add_argument("--raw", action="store_true", help="send the question as the whole prompt")
    p.add_argument("--image", action="append", default=[], help="an image for a VLM (repeatable); <image> in the "
                                                                "question marks where each goes, else they come first")
    p.add_argument("--n", type=int, default=None, help="responses (4); with --eval samples per question (1 = greedy)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference", help="the reference answer: with --heatmap, the teacher's privileged information")
    p.add_argument("--response", help="score this response instead of a sampled one (with --heatmap)")
    p.add_argument("--heatmap", metavar="PATH", help="write RLSD's per-token credit as PATH.html and PATH.png")
    p.add_argument("--eval", metavar="FILE", help="accuracy on a JSONL of {question, answer[, images, options]}")
    p.add_argument("--out", default=None, help="--eval: per-question results (default: FILE.results.jsonl)")
    p.add_argument("--batch", type=int, default=64, help="--eval: rows per generate call")
    p.add_argument("--allow_abs_paths", action="store_true", help="--eval: images outside the data file's directory")
    p.add_argument("--trust_remote_code", action="store_true")
    args = p.parse_args()
    args.n = args.n or (1 if args.eval else 4)
    if not os.path.isfile(os.path.join(args.checkpoint, "config.json")):
        raise UserError(f"{args.checkpoint} is not a model directory (no config.json)")
    if args.eval is None and args.question is None:
        raise UserError("give a question, or --eval FILE")
    if args.heatmap and not args.reference:
        raise UserError("--heatmap needs --reference (the teacher's privileged answer)")
    if args.eval and not os.path.isfile(args.eval):
        raise UserError(f"--eval: no such file {args.eval}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    proc, config, _ = load_spec(args.checkpoint, args.trust_remote_code)
    model = model_class(config).from_pretrained(args.checkpoint, trust_remote_code=args.trust_remote_code,
                                                dtype="auto").to(device).eval()
    tok = tokenizer_of(proc)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if args.eval:
        out = args.out or os.path.splitext(args.eval)[0] + ".results.jsonl"
        acc, n = evaluate_file(model, proc, args.eval, out, args.n, args, device)
        print(f"accuracy {acc:.4f} on {n} questions ({'greedy' if args.n == 1 else f'mean of {args.n} samples'}); "
              f"per-question results in {out}")
        return
    images = [open_image(path) for path in args.image]
    text = args.question if args.raw else student_prompt(args.question)
    prompt = prompt_ids(proc, format_prompt(proc, text, len(images)), [im.size for im in images])
    ids, mask = left_pad([prompt], tok.pad_token_id)
    if args.response is not None:
        resp = torch.tensor([tok(args.response, add_special_tokens=False)["input_ids"]], device=device)
        rmask = torch.ones_like(resp)
    else:
        gen = torch.Generator(device=device).manual_seed(args.seed)
        resp, rmask, _ = generate(model, ids.to(device), mask.to(device), args.max_new_tokens,
                                  eos_token_ids(model, tok), tok.pad_token_id, args.temperature, args.top_p, gen,
                                  n=args.n, **image_inputs(proc, images, device))
        for i in range(args.n):
            print(f"--- sample {i} ({int(rmask[i].sum())} tokens)")
            print(tok.decode(resp[i][rmask[i].bool()], skip_special_tokens=True))
    if args.heatmap:
        first, fmask = resp[:1], rmask[:1]
        delta, w, r = token_credit(model, proc, args.question, args.reference, first, fmask, images)
        n = int(fmask.sum())
        paths = write_heatmap(args.heatmap, tok, first[0, :n], delta[:n], w[:n], r, args.question)
        print(f"token credit of {'the given response' if args.response is not None else 'sample 0'} "
              f"(reward {r:g}): {paths[0]}, {paths[1]}")


if __name__ == "__main__":
    main()

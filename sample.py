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

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

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
    """One layer's KV cache over a fixed set of row slots, preallocated for max_len columns and written in
    place (no torch.cat per token). Each row advances on its own, so a finished row's slot can take a new
    prompt while the others decode on: the next token's keys go to k_buf[at["where"]], one column of all rows
    while they were admitted together, else (row b, its own column). Attention reads columns
    [0, at["width"]); the attention mask hides each row's unused columns."""

    def __init__(self, slots, max_len, like, at):  # like: a prefill's keys [k, H, w, D], for shape and dtype
        super().__init__()
        self.k_buf, self.v_buf = (like.new_zeros(slots, like.shape[1], max_len, like.shape[-1]) for _ in range(2))
        self.dtype, self.device, self.is_initialized, self.at = like.dtype, like.device, True, at

    def put(self, slots, keys, values):
        """A prefilled prompt's keys/values [k, H, w, D] into rows `slots` [k], columns [0, w)."""
        self.k_buf[slots, :, :keys.shape[-2]], self.v_buf[slots, :, :keys.shape[-2]] = keys, values

    def update(self, key_states, value_states, *args, **kwargs):  # one token per row: [B, H, 1, D]
        self.k_buf[self.at["where"]], self.v_buf[self.at["where"]] = key_states[:, :, 0], value_states[:, :, 0]
        self.keys, self.values = self.k_buf[:, :, :self.at["width"]], self.v_buf[:, :, :self.at["width"]]
        return self.keys, self.values

    def get_seq_length(self):
        return self.at["width"] - 1

    def batch_select_indices(self, rows):
        self.k_buf, self.v_buf = self.k_buf[rows], self.v_buf[rows]


def prefill(model, ids, mask, positions, cache, **model_inputs):
    """Run the whole prompt through the model, filling `cache`; return last-position logits [B, V]."""
    return model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
                 logits_to_keep=1, **model_inputs).logits[:, -1]


def decode_one_token(model, token, mask, positions, cache):
    """Feed one token per row ([B]) at `positions` ([B, 1], or [3, B, 1] for M-RoPE), mask covering cache + token."""
    return model(input_ids=token[:, None], attention_mask=mask, position_ids=positions, past_key_values=cache,
                 use_cache=True).logits[:, -1]


def prefill_prompts(model, ids, mask, n, **model_inputs):
    """Prefill each prompt of ids/mask [k, P] once, all-pad columns trimmed (width w) into a fresh cache (k rows).
    Returns, for n rows per prompt (row r answers prompt first[r] = r // n): last-position logits [k * n, V],
    the cache, the mask [k * n, w], next positions [k * n, 1] (M-RoPE [3, k * n, 1]), first [k * n]."""
    w = int(mask.sum(1).max())
    ids, mask, cache = ids[:, -w:], mask[:, -w:], DynamicCache()
    pos = rope_positions(model, ids, mask, model_inputs.get("image_grid_thw"))  # [k, w] or [3, k, w]
    logits = prefill(model, ids, mask, pos, cache, **model_inputs)  # [k, V]
    first = torch.arange(len(ids), device=ids.device).repeat_interleave(n)  # [k * n]
    return logits[first], cache, mask[first], decode_positions(pos)[..., first, :], first


def images_of(config, ids, inputs, idx):
    """The image inputs of prompts idx (ascending) of a batch ids [B, P] whose images, in prompt order, are
    `inputs` (pixel_values [patches, ...], image_grid_thw [images, 3]); one vision-start token per image."""
    if not inputs or len(idx) == len(ids):
        return inputs
    owner = torch.arange(len(ids), device=ids.device).repeat_interleave(
        (ids == config.vision_start_token_id).sum(1))  # [images] -> its prompt
    mine = torch.isin(owner, idx)  # [images]
    patches = mine.repeat_interleave(inputs["image_grid_thw"].prod(1))  # [patches]
    return {"pixel_values": inputs["pixel_values"][patches], "image_grid_thw": inputs["image_grid_thw"][mine]} \
        if mine.any() else {}


# ----------------------------------------------------------------------------- sampling
@torch.no_grad()
def generate(model, ids, mask, max_new_tokens, eos_ids, pad_id, temperature=1.0, top_p=1.0,
             generator=None, n=1, batch=None, sync_every=16, poll=None, **model_inputs):
    """Sample n responses to every prompt of the left-padded batch ids/mask [B, P] (and its images).

    Returns, for B' = B * n rows (row j answers prompt j // n), response ids [B', T] padded with pad_id after EOS,
    response mask [B', T] with the EOS token kept, token log-probs [B', T] at `temperature` under the sampling policy;
    T <= max_new_tokens. At most `batch` rows (default all; whole groups of n) decode at once, in slots of a KV cache
    preallocated for P + max_new_tokens and written in place. Each prompt is prefilled once, its cache copied to
    its n rows' slots. Every `sync_every` tokens (the only host syncs), `poll()`, if given, may raise to abandon
    the batch, and finished rows give their slots to waiting prompts (continuous batching); once none wait,
    finished rows leave the batch, so a long straggler does not keep the whole batch decoding. Runs no
    collective: under FSDP keep parameters gathered, ranks may stop at different steps."""
    (B, P), device = ids.shape, ids.device
    eos = torch.as_tensor(sorted(eos_ids), device=device)
    banned = vision_token_ids(model.config)  # a VLM must not write image placeholders into its response
    banned = torch.tensor(banned, device=device) if banned else None
    slots = max(n, min(batch or B * n, B * n) // n * n)
    at, L, cache = {"width": 0}, P + max_new_tokens, None
    att = mask.new_zeros(slots, L)  # [slots, P + max_new] what each row's attention sees
    cols = torch.zeros(slots, dtype=torch.long, device=device)  # the column each row writes next
    t_row, rows, done = torch.zeros_like(cols), torch.zeros_like(cols), torch.ones_like(cols, dtype=torch.bool)
    out = torch.full((B * n, max_new_tokens + 1), pad_id, dtype=torch.long, device=device)  # (+ a scratch column)
    out_logp, free, nxt, step, end = None, torch.arange(slots, device=device), 0, 0, 0
    while True:
        k = min(len(free) // n, B - nxt)  # ---- admit waiting prompts into free slots: n rows each
        if k:
            idx, s = torch.arange(nxt, nxt + k, device=device), free[:k * n]  # prompts [k], their slots [k * n]
            lg, new, m, p, first = prefill_prompts(model, ids[idx], mask[idx], n,
                                                   **images_of(model.config, ids, model_inputs, idx))
            if cache is None:
                cache = Cache(layers=[InPlaceLayer(slots, L, layer.keys, at) for layer in new.layers])
                logits, pos = lg.new_zeros(slots, lg.shape[-1]), p.new_zeros(*p.shape[:-2], slots, 1)
                out_logp = torch.zeros(B * n, max_new_tokens + 1, device=device,
                                       dtype=torch.promote_types(lg.dtype, torch.float32))
            for layer, fresh in zip(cache.layers, new.layers):
                layer.put(s, fresh.keys[first], fresh.values[first])
            logits[s], pos[..., s, :], att[s], cols[s], t_row[s], done[s] = lg, p, 0, m.shape[1], 0, False
            att[s, :m.shape[1]], rows[s] = m, nxt * n + torch.arange(k * n, device=device)
            free, nxt, end, at["width"] = free[k * n:], nxt + k, step + max_new_tokens, max(at["width"], m.shape[1])
            col = m.shape[1] if nxt == k else None  # all rows write one column until a refill
        allowed = logits if banned is None else logits.index_fill(-1, banned, float("-inf"))  # ---- sample
        tok = sample_next(allowed, temperature, top_p, generator)  # [slots]
        lp = token_logprobs(logits[:, None], tok[:, None], temperature or 1.0)[:, 0]  # [slots] under the policy
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        out[rows, t_row] = tok
        out_logp[rows, t_row] = torch.where(done, torch.zeros_like(lp), lp)
        t_row = (t_row + 1).clamp(max=max_new_tokens)
        done = done | torch.isin(tok, eos) | (t_row == max_new_tokens)
        step += 1
        if step == end and nxt == B:  # every row has reached the budget
            break
        if step % sync_every == 0:  # ---- one host sync: refill finished rows' slots, or drop them
            if poll is not None:
                poll()
            if nxt < B:
                free = done.nonzero().squeeze(1)
            elif done.any():
                keep = (~done).nonzero().squeeze(1)
                if keep.numel() == 0:
                    break
                att, cols, t_row, rows, done, tok = (x[keep] for x in (att, cols, t_row, rows, done, tok))
                pos = pos[..., keep, :]
                for layer in cache.layers:
                    layer.batch_select_indices(keep)
        # ---- decode one token per row, written at one column of all rows (admitted together) or at each row's own
        rc = (slice(None), col) if col is not None else (torch.arange(len(cols), device=device), cols)
        at["where"], at["width"] = (rc[0], slice(None), rc[1]), min(at["width"] + 1, L)
        att[rc] = 1
        logits = decode_one_token(model, tok, att[:, :at["width"]], pos, cache)
        pos, cols, col = pos + 1, (cols + 1).clamp(max=L - 1), None if col is None else min(col + 1, L - 1)
    out, out_logp = out[:, :max_new_tokens], out_logp[:, :max_new_tokens]
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

"""Batched sampling with a KV cache over any transformers causal LM (gpt-fast style: small
functions).

Layout: prompts are left-padded ([B, P], explicit position ids = cumsum(mask) - 1), responses are
right-padded ([B, T]); response token t of every row sits in column P + t. The response mask is 1
up to and including the first EOS, built from EOS positions (never from `ids != pad_id`, which
would drop the EOS token when pad == EOS).

Extra model inputs (e.g. `pixel_values` of a vision-language model) go to the prefill only.

CLI: python sample.py CHECKPOINT_DIR "question" [--image PATH] [--n 4] [--temperature 1.0]
     python sample.py CHECKPOINT_DIR "question" --reference ANSWER --heatmap credit.html
                      [--response TEXT]
     python sample.py CHECKPOINT_DIR --eval FILE.jsonl [--n K] [--out results.jsonl]
"""
import json
import math
import os
import sys
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from cli import ArgumentParser, UserError, entry_point
from data import check_image, load_jsonl
from hf import (check_weights, decode_positions, eos_token_ids, format_prompt, image_inputs,
                is_vision_model, load_spec, load_weights, open_image, prompt_ids, rope_positions,
                tokenizer_of, vision_token_ids)
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
    """1 on every token up to and including the first EOS of each row, 0 after.
    ids: [B, T] -> [B, T].

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
        # keep the smallest set whose mass reaches top_p
        drop = sorted_p.cumsum(-1) - sorted_p > top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class InPlaceLayer(DynamicLayer):
    """One layer's KV cache over a fixed set of row slots, preallocated for max_len columns and
    written in place (no torch.cat per token). Each row advances on its own, so a finished row's
    slot can take a new prompt while the others decode on. `state` (the Slots of generate) says
    where: the next token of row b goes to its cache column, state.col (one int for all rows while
    they were admitted together: a plain slice), and attention reads columns [0, state.width); the
    attention mask hides each row's unused columns."""

    def __init__(self, slots, max_len, like, state):
        """like: a prefill's keys [k, H, w, D], for the shape and dtype."""
        super().__init__()
        heads = like.shape[1]
        head_dim = like.shape[-1]
        self.k_buf = like.new_zeros(slots, heads, max_len, head_dim)  # [slots, H, max_len, D]
        self.v_buf = like.new_zeros(slots, heads, max_len, head_dim)
        self.dtype = like.dtype
        self.device = like.device
        self.is_initialized = True
        self.state = state

    def put(self, slots, keys, values):
        """A prefilled prompt's keys/values [k, H, w, D] into rows `slots` [k], columns [0, w)."""
        width = keys.shape[-2]
        self.k_buf[slots, :, :width] = keys
        self.v_buf[slots, :, :width] = values

    def update(self, key_states, value_states, *args, **kwargs):
        """One token per row: key_states, value_states [B, H, 1, D]."""
        col = self.state.col
        if isinstance(col, int):  # every row writes the same column
            self.k_buf[:, :, col:col + 1] = key_states
            self.v_buf[:, :, col:col + 1] = value_states
        else:  # row b writes column col[b]
            rows = torch.arange(len(col), device=col.device)
            self.k_buf[rows, :, col] = key_states[:, :, 0]
            self.v_buf[rows, :, col] = value_states[:, :, 0]
        width = self.state.width
        self.keys = self.k_buf[:, :, :width]
        self.values = self.v_buf[:, :, :width]
        return self.keys, self.values

    def get_seq_length(self):
        return self.state.width - 1

    def batch_select_indices(self, rows):
        self.k_buf = self.k_buf[rows]
        self.v_buf = self.v_buf[rows]


def prefill(model, ids, mask, positions, cache, **model_inputs):
    """Run the whole prompt through the model, filling `cache`; return the last position's logits
    [B, V]."""
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                use_cache=True, logits_to_keep=1, **model_inputs)
    return out.logits[:, -1]


def decode_one_token(model, token, mask, positions, cache):
    """Feed one token per row ([B]) at `positions` ([B, 1], or [3, B, 1] for M-RoPE); the mask
    covers the cache plus this token."""
    out = model(input_ids=token[:, None], attention_mask=mask, position_ids=positions,
                past_key_values=cache, use_cache=True)
    return out.logits[:, -1]


def prefill_prompts(model, ids, mask, n, **model_inputs):
    """Prefill each prompt of ids/mask [k, P] once, all-pad columns trimmed (width w), into a
    fresh cache (k rows). Returns, for n rows per prompt (row r answers prompt first[r] = r // n):
    last-position logits [k * n, V], the cache, the mask [k * n, w], next positions [k * n, 1]
    (M-RoPE [3, k * n, 1]), first [k * n]."""
    w = int(mask.sum(1).max())
    ids = ids[:, -w:]
    mask = mask[:, -w:]
    cache = DynamicCache()
    grid = model_inputs.get("image_grid_thw")
    pos = rope_positions(model, ids, mask, grid)  # [k, w] or [3, k, w]
    logits = prefill(model, ids, mask, pos, cache, **model_inputs)  # [k, V]
    first = torch.arange(len(ids), device=ids.device).repeat_interleave(n)  # [k * n]
    next_pos = decode_positions(pos)[..., first, :]
    return logits[first], cache, mask[first], next_pos, first


def images_of(config, ids, inputs, idx):
    """The image inputs of prompts idx (ascending) of a batch ids [B, P] whose images, in prompt
    order, are `inputs` (pixel_values [patches, ...], image_grid_thw [images, 3]); one vision-start
    token per image."""
    if not inputs or len(idx) == len(ids):
        return inputs
    images_per_prompt = (ids == config.vision_start_token_id).sum(1)  # [B]
    prompts = torch.arange(len(ids), device=ids.device)
    owner = prompts.repeat_interleave(images_per_prompt)  # [images] -> its prompt
    mine = torch.isin(owner, idx)  # [images]
    if not mine.any():
        return {}
    patches = mine.repeat_interleave(inputs["image_grid_thw"].prod(1))  # [patches]
    return {"pixel_values": inputs["pixel_values"][patches],
            "image_grid_thw": inputs["image_grid_thw"][mine]}


# ----------------------------------------------------------------------------- sampling
# A "column" below is where each slot writes next: one int shared by every slot while all slots
# were admitted together (the tensors are then written with a plain slice), else one per slot [S].
def next_column(col, last):
    """The column after `col` (an int or [S]), never past `last`."""
    if isinstance(col, int):
        return min(col + 1, last)
    return (col + 1).clamp(max=last)


def per_slot(col, slots, device):
    """`col` as one column per slot [slots]."""
    if isinstance(col, int):
        return torch.full((slots,), col, dtype=torch.long, device=device)
    return col


def slot_index(col):
    """The index of column `col` of every slot in a [S, C] tensor."""
    if isinstance(col, int):
        return slice(None), col
    return torch.arange(len(col), device=col.device), col


@dataclass
class Slots:
    """The rows that generate decodes at once: S slots of a KV cache preallocated for `length`
    columns, each slot holding one response (or none: an empty slot is `done`)."""
    rows: torch.Tensor  # [S] the output row each slot writes
    done: torch.Tensor  # [S] bool: the response has ended (EOS or budget) or the slot is empty
    att: torch.Tensor  # [S, length] the cache columns each slot's attention sees
    length: int  # cache columns allocated: P + max_new_tokens
    t: int | torch.Tensor = 0  # a column: the response column each slot writes next
    col: int | torch.Tensor = 0  # a column: the cache column each slot's next token goes to
    width: int = 0  # attention reads cache columns [0, width)
    logits: torch.Tensor | None = None  # [S, V] each slot's next-token logits
    pos: torch.Tensor | None = None  # [S, 1] (M-RoPE [3, S, 1]) each slot's next position
    cache: Cache | None = None  # InPlaceLayers over the S slots (from the first admission)


def empty_slots(slots, length, mask):
    """S = `slots` empty slots for prompts of the batch mask [B, P], length = P + max_new_tokens."""
    device = mask.device
    return Slots(rows=torch.zeros(slots, dtype=torch.long, device=device),
                 done=torch.ones(slots, dtype=torch.bool, device=device),
                 att=mask.new_zeros(slots, length),
                 length=length)


def admit(model, state, ids, mask, prompts, slots, n, model_inputs):
    """Prefill the prompts `prompts` [k] of the batch ids/mask [B, P] (each once) and give each one
    n slots: slot slots[j] [k * n] then answers prompt prompts[j // n], in output row
    prompts[0] * n + j, from response column 0; its cache holds the prompt, columns [0, w)."""
    images = images_of(model.config, ids, model_inputs, prompts)
    logits, cache, prompt_mask, pos, first = prefill_prompts(model, ids[prompts], mask[prompts], n,
                                                             **images)
    w = prompt_mask.shape[1]
    size = len(state.done)
    if state.cache is None:  # the first admission fills every slot: all start in lock-step
        layers = [InPlaceLayer(size, state.length, layer.keys, state) for layer in cache.layers]
        state.cache = Cache(layers=layers)
        state.logits = logits.new_zeros(size, logits.shape[-1])
        state.pos = pos.new_zeros(*pos.shape[:-2], size, 1)
        state.t = 0
        state.col = w
    else:  # a refill: the slots go on from different columns
        state.t = per_slot(state.t, size, ids.device)
        state.col = per_slot(state.col, size, ids.device)
        state.t[slots] = 0
        state.col[slots] = w
    for layer, fresh in zip(state.cache.layers, cache.layers):
        layer.put(slots, fresh.keys[first], fresh.values[first])
    state.logits[slots] = logits
    state.pos[..., slots, :] = pos
    state.att[slots] = 0
    state.att[slots, :w] = prompt_mask
    state.done[slots] = False
    state.rows[slots] = prompts[0] * n + torch.arange(len(slots), device=ids.device)
    state.width = max(state.width, w)


def sample_step(logits, banned, temperature, top_p, generator):
    """Draw one token for every slot (finished and empty ones too, so that the draws do not depend
    on which rows are alive) from logits [S, V], never a `banned` id. Returns the tokens [S] and
    their log-probs [S] under the sampling policy."""
    allowed = logits
    if banned is not None:
        allowed = logits.index_fill(-1, banned, float("-inf"))
    tok = sample_next(allowed, temperature, top_p, generator)  # [S]
    lp = token_logprobs(logits[:, None], tok[:, None], temperature or 1.0)[:, 0]  # [S]
    return tok, lp


def record(state, out, out_logp, tok, lp, eos, pad_id, max_new_tokens):
    """Write each slot's token tok [S] and log-prob lp [S] (pad_id and 0 once it is done) at its
    response column of out / out_logp [B * n, max_new_tokens + 1] (the last: a scratch column for
    finished slots), then mark the slots that wrote an EOS or reached the budget done. Returns the
    tokens written [S], the next decode's input."""
    tok = tok.masked_fill(state.done, pad_id)
    out[state.rows, state.t] = tok
    out_logp[state.rows, state.t] = lp.masked_fill(state.done, 0.0)
    state.t = next_column(state.t, max_new_tokens)
    at_budget = state.t == max_new_tokens  # [S], or one bool for all slots
    state.done = state.done | torch.isin(tok, eos) | at_budget
    return tok


def retire(state, tok):
    """Drop the finished slots from the batch: their rows, masks, positions and caches. Returns the
    next tokens of the slots kept ([S'], empty when every slot has finished)."""
    keep = (~state.done).nonzero().squeeze(1)  # [S'] (a host sync)
    state.rows = state.rows[keep]
    state.done = state.done[keep]
    state.att = state.att[keep]
    state.pos = state.pos[..., keep, :]
    if not isinstance(state.t, int):
        state.t = state.t[keep]
    if not isinstance(state.col, int):
        state.col = state.col[keep]
    for layer in state.cache.layers:
        layer.batch_select_indices(keep)
    return tok[keep]


def decode(model, state, tok):
    """Feed each slot's token tok [S] at its cache column and position; the logits of the next
    tokens replace state.logits."""
    state.width = min(state.width + 1, state.length)
    state.att[slot_index(state.col)] = 1
    mask = state.att[:, :state.width]
    state.logits = decode_one_token(model, tok, mask, state.pos, state.cache)
    state.pos = state.pos + 1
    state.col = next_column(state.col, state.length - 1)


def banned_ids(config, device):
    """The ids a response must never contain (a VLM's image placeholders), or None."""
    banned = vision_token_ids(config)
    if not banned:
        return None
    return torch.tensor(banned, device=device)


@torch.no_grad()
def generate(model, ids, mask, max_new_tokens, eos_ids, pad_id, temperature=1.0, top_p=1.0,
             generator=None, n=1, batch=None, sync_every=16, poll=None, **model_inputs):
    """Sample n responses to every prompt of the left-padded batch ids/mask [B, P] (and its images).

    Returns, for B' = B * n rows (row j answers prompt j // n), response ids [B', T] padded with
    pad_id after EOS, response mask [B', T] with the EOS token kept, token log-probs [B', T] at
    `temperature` under the sampling policy; T <= max_new_tokens. At most `batch` rows (default
    all; whole groups of n) decode at once, in slots of a KV cache preallocated for
    P + max_new_tokens and written in place. Each prompt is prefilled once, its cache copied to its
    n rows' slots. Every `sync_every` tokens (the only host syncs), `poll()`, if given, may raise
    to abandon the batch, and finished rows give their slots to waiting prompts (continuous
    batching); once none wait, finished rows leave the batch, so a long straggler does not keep
    the whole batch decoding. Runs no collective: under FSDP keep parameters gathered, ranks may
    stop at different steps."""
    B, P = ids.shape
    device = ids.device
    eos = torch.as_tensor(sorted(eos_ids), device=device)
    banned = banned_ids(model.config, device)  # a VLM must not write image placeholders
    slots = max(n, min(batch or B * n, B * n) // n * n)
    state = empty_slots(slots, P + max_new_tokens, mask)
    # [B * n, max_new_tokens + 1]: the responses, and a scratch column for finished slots
    out = torch.full((B * n, max_new_tokens + 1), pad_id, dtype=torch.long, device=device)
    out_logp = None  # the same shape, in the logits' precision (float32 or wider)
    free = torch.arange(slots, device=device)  # the slots that waiting prompts may take
    admitted = 0  # prompts admitted so far: prompts [0, admitted)
    step = 0
    end = 0  # the step at which the rows admitted last reach the budget
    while True:
        k = min(len(free) // n, B - admitted)  # prompts to admit: n free slots each
        if k:
            prompts = torch.arange(admitted, admitted + k, device=device)
            admit(model, state, ids, mask, prompts, free[:k * n], n, model_inputs)
            free = free[k * n:]
            admitted += k
            end = step + max_new_tokens
            if out_logp is None:  # (the first prefill has given the logits' dtype)
                dtype = torch.promote_types(state.logits.dtype, torch.float32)
                out_logp = torch.zeros(out.shape, dtype=dtype, device=device)
        tok, lp = sample_step(state.logits, banned, temperature, top_p, generator)
        tok = record(state, out, out_logp, tok, lp, eos, pad_id, max_new_tokens)
        step += 1
        if step == end and admitted == B:  # every row has reached the budget
            break
        if step % sync_every == 0:  # the host sync: refill finished rows' slots, or drop them
            if poll is not None:
                poll()
            if admitted < B:
                free = state.done.nonzero().squeeze(1)
            elif state.done.any():
                tok = retire(state, tok)
                if len(tok) == 0:
                    break
        decode(model, state, tok)
    out = out[:, :max_new_tokens]
    out_logp = out_logp[:, :max_new_tokens]
    resp_mask = response_mask(out, eos_ids)
    T = max(int(resp_mask.sum(1).max()), 1)  # drop columns that are padding in every row
    return out[:, :T], resp_mask[:, :T], out_logp[:, :T]


# ----------------------------------------------------------------------------- the command line
def token_credit(model, proc, question, reference, resp, resp_mask, images):
    """RLSD's view of one response (resp [1, T]): Delta_t = log p_T - log p_S (the same network,
    with and without the reference) and the evidence weight w_t = exp(sign(A) Delta_t), A's sign
    from the response's reward against the reference. Returns (delta [T], w [T], reward)."""
    tok = tokenizer_of(proc)
    sizes = [im.size for im in images]
    extra = image_inputs(proc, images, resp.device)

    def logprobs_after(text):
        """log p of the response's tokens [T] after the prompt `text`."""
        prompt = format_prompt(proc, text, len(images))
        ids = torch.tensor([prompt_ids(proc, prompt, sizes)], device=resp.device)
        return response_logprobs(model, ids, torch.ones_like(ids), resp, resp_mask, 1.0, **extra)[0]

    student = logprobs_after(student_prompt(question))
    teacher = logprobs_after(teacher_prompt(question, reference))
    text = tok.decode(resp[0][resp_mask[0].bool()], skip_special_tokens=True)
    r = reward(text, reference)
    delta = teacher - student
    sign = torch.tensor(1.0 if r else -1.0, device=delta.device)
    return delta, log_evidence_weight(sign, delta).exp(), r


def write_heatmap(path, tok, resp, delta, w, r, question):
    """credit.html and credit.png (same stem) with one coloured cell per response token."""
    import plot  # (pillow drawing: only this command needs it)
    tokens = [tok.decode([t]) for t in resp.tolist()]
    title = f"{question[:80]} | reward {r:g}: w = exp({'+' if r else '-'}Delta)"
    advantage = 1.0 if r else -1.0
    stem = os.path.splitext(path)[0]
    with open(stem + ".html", "w", encoding="utf-8") as f:
        f.write(plot.credit_html(tokens, w.tolist(), delta.tolist(), title, advantage=advantage))
    plot.credit_png(tokens, w.tolist(), delta.tolist(), stem + ".png", title, advantage=advantage)
    return stem + ".html", stem + ".png"


def evaluate_file(model, proc, rows, out_path, n, args, device):
    """Accuracy of a checkpoint on the rows of a JSONL of {question, answer[, images, options]},
    read as the trainer reads its data (data.load_jsonl: same fields, same errors): greedy (n = 1)
    or the mean over n samples at --temperature; a response cut off at --max_new_tokens scores 0,
    as in training. Writes one row per question and sample."""
    tok = tokenizer_of(proc)
    total = 0.0
    out = []
    temperature = args.temperature if n > 1 else 0.0
    gen = torch.Generator(device=device).manual_seed(args.seed)
    eos = eos_token_ids(model, tok)
    eos_tensor = torch.tensor(sorted(eos), device=device)
    questions_per_call = max(1, args.batch // n)
    for i in range(0, len(rows), questions_per_call):
        chunk = rows[i:i + questions_per_call]
        images = [[open_image(p) for p in r["images"]] for r in chunk]
        prompts = []
        for r, ims in zip(chunk, images):
            text = format_prompt(proc, student_prompt(r["question"]), len(ims))
            prompts.append(prompt_ids(proc, text, [im.size for im in ims]))
        ids, mask = left_pad(prompts, tok.pad_token_id)
        extra = image_inputs(proc, [im for ims in images for im in ims], device)
        resp, rmask, _ = generate(model, ids.to(device), mask.to(device), args.max_new_tokens, eos,
                                  tok.pad_token_id, temperature, args.top_p, gen, n=n, **extra)
        row_of_sample = [r for r in chunk for _ in range(n)]
        for k, (r, y, m) in enumerate(zip(row_of_sample, resp, rmask)):
            kept = y[m.bool()]
            text = tok.decode(kept, skip_special_tokens=True)
            ended = bool(torch.isin(kept, eos_tensor).any())
            score = 0.0  # as train.py: a response cut off scores 0
            if ended:
                score = reward(text, r["answer"], r.get("options"))
            total += score
            out.append({"where": r["where"], "sample": k % n, "question": r["question"],
                        "answer": r["answer"], "response": text, "extracted": extract_answer(text),
                        "reward": score})
        print(f"\r{len(out) // n}/{len(rows)} questions, accuracy {total / len(out):.4f}", end="",
              file=sys.stderr)
    print(file=sys.stderr)
    with open(out_path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(o, ensure_ascii=False) + "\n" for o in out)
    return total / max(len(out), 1), len(rows)


def parse_args():
    p = ArgumentParser(
        description="Sample from a saved checkpoint, draw RLSD's token credit, or evaluate.")
    p.add_argument("checkpoint",
                   help="a model directory saved by train.py (or any Hugging Face model directory)")
    p.add_argument("question", nargs="?",
                   help="asked in the training format (the student prompt), unless --raw")
    p.add_argument("--raw", action="store_true", help="send the question as the whole prompt")
    p.add_argument("--image", action="append", default=[],
                   help="an image for a VLM (repeatable); <image> in the question marks where each "
                        "goes, else they come first")
    p.add_argument("--n", type=int, default=None,
                   help="responses (4); with --eval samples per question (1 = greedy)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference",
                   help="the reference answer: with --heatmap, the teacher's privileged "
                        "information")
    p.add_argument("--response",
                   help="score this response instead of a sampled one (with --heatmap)")
    p.add_argument("--heatmap", metavar="PATH",
                   help="write RLSD's per-token credit as PATH.html and PATH.png")
    p.add_argument("--eval", metavar="FILE",
                   help="accuracy on a JSONL of {question, answer[, images, options]}")
    p.add_argument("--out", default=None,
                   help="--eval: per-question results (default: FILE.results.jsonl)")
    p.add_argument("--batch", type=int, default=64, help="--eval: rows per generate call")
    p.add_argument("--allow_abs_paths", action="store_true",
                   help="--eval: images outside the data file's directory")
    p.add_argument("--trust_remote_code", action="store_true")
    args = p.parse_args()
    if args.n is None:
        args.n = 1 if args.eval else 4
    return args


def check_args(args):
    """One-line errors for what the flags alone show wrong, before anything is loaded."""
    if not os.path.isfile(os.path.join(args.checkpoint, "config.json")):
        raise UserError(f"{args.checkpoint} is not a model directory (no config.json)")
    check_weights(args.checkpoint, "checkpoint")
    if args.eval is None and args.question is None:
        raise UserError("give a question, or --eval FILE")
    if args.heatmap and not args.reference:
        raise UserError("--heatmap needs --reference (the teacher's privileged answer)")
    if args.response is not None and not args.heatmap:
        raise UserError("--response is scored by --heatmap: give --heatmap PATH and --reference")
    if args.eval and not os.path.isfile(args.eval):
        raise UserError(f"--eval: no such file {args.eval}")
    at_least_one = {"n": args.n, "max_new_tokens": args.max_new_tokens, "batch": args.batch}
    for flag, value in at_least_one.items():
        if value < 1:
            raise UserError(f"--{flag} must be at least 1, got {value}")
    if not 0 <= args.temperature < math.inf:
        raise UserError(f"--temperature must be in [0, inf) (0 = greedy), got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top_p must be in (0, 1], got {args.top_p}")


@entry_point
def main():
    args = parse_args()
    check_args(args)
    rows = None
    if args.eval:
        rows = load_jsonl(args.eval, args.allow_abs_paths)  # every row checked, as train.py does
    images = [check_image("--image", os.getcwd(), path, True)[0] for path in args.image]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    proc, config, _ = load_spec(args.checkpoint, args.trust_remote_code)
    if not is_vision_model(config):
        if images:
            raise UserError(f"--image, but {args.checkpoint} is a text-only model")
        image_rows = [r["where"] for r in rows or [] if r["images"]]
        if image_rows:
            raise UserError(f"{image_rows[0]}: a row with images, but {args.checkpoint} is a "
                            "text-only model")
    model = load_weights(config, args.checkpoint, trust_remote_code=args.trust_remote_code,
                         dtype="auto")
    model = model.to(device).eval()
    tok = tokenizer_of(proc)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if args.eval:
        out = args.out or os.path.splitext(args.eval)[0] + ".results.jsonl"
        acc, n = evaluate_file(model, proc, rows, out, args.n, args, device)
        how = "greedy" if args.n == 1 else f"mean of {args.n} samples"
        print(f"accuracy {acc:.4f} on {n} questions ({how}); per-question results in {out}")
        return
    images = [open_image(path) for path in images]
    text = args.question if args.raw else student_prompt(args.question)
    prompt = prompt_ids(proc, format_prompt(proc, text, len(images)), [im.size for im in images])
    ids, mask = left_pad([prompt], tok.pad_token_id)
    if args.response is not None:
        answer_ids = tok(args.response, add_special_tokens=False)["input_ids"]
        resp = torch.tensor([answer_ids], device=device)
        rmask = torch.ones_like(resp)
    else:
        gen = torch.Generator(device=device).manual_seed(args.seed)
        resp, rmask, _ = generate(model, ids.to(device), mask.to(device), args.max_new_tokens,
                                  eos_token_ids(model, tok), tok.pad_token_id, args.temperature,
                                  args.top_p, gen, n=args.n, **image_inputs(proc, images, device))
        for i in range(args.n):
            print(f"--- sample {i} ({int(rmask[i].sum())} tokens)")
            print(tok.decode(resp[i][rmask[i].bool()], skip_special_tokens=True))
    if args.heatmap:
        first = resp[:1]
        fmask = rmask[:1]
        delta, w, r = token_credit(model, proc, args.question, args.reference, first, fmask, images)
        n = int(fmask.sum())
        paths = write_heatmap(args.heatmap, tok, first[0, :n], delta[:n], w[:n], r, args.question)
        scored = "the given response" if args.response is not None else "sample 0"
        print(f"token credit of {scored} (reward {r:g}): {paths[0]}, {paths[1]}")


if __name__ == "__main__":
    main()

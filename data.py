"""Training data: JSONL rows and images, checked before any model loads; the held-out split; the prompts as token ids.

A row: question (`question` | `problem` | `prompt`), answer (`answer` | `solution`, whose \\boxed{} or
<answer> is the reference), optional images (`images` | `image`: paths relative to the file; `<image>`
in the question marks where each goes) and options (`options` | `choices`: texts of choices A, B, ...)."""
import os
import random

from cli import UserError, read_jsonl
from hf import format_prompt, prompt_ids
from rlsd import student_prompt, teacher_prompt
from verify import extract_answer


def load_jsonl(path, allow_abs_paths=False):
    """[{question, answer, images, image_sizes, options, where}] from a JSONL file; UserError naming file and line."""
    # every error is found here, before any model is loaded: each image is opened to check it
    root, rows = os.path.dirname(os.path.abspath(path)), []
    for n, row in read_jsonl(path):
        where = f"{path}:{n}"
        q = next((row[k] for k in ("question", "problem", "prompt") if k in row), None)
        key, a = next(((k, row[k]) for k in ("answer", "solution") if k in row), (None, None))
        if not isinstance(q, str) or not q.strip():
            raise UserError(f"{where}: missing question (a non-empty 'question', 'problem' or 'prompt' field)")
        if not isinstance(a, (str, int, float)) or not str(a).strip():
            raise UserError(f"{where}: missing answer (a non-empty 'answer' or 'solution' field)")
        images = row.get("images", row.get("image")) or []
        images = [images] if isinstance(images, str) else images
        if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            raise UserError(f"{where}: 'images' must be a path or a list of paths")
        if q.count("<image>") not in (0, len(images)):
            raise UserError(f"{where}: {q.count('<image>')} <image> markers for {len(images)} images")
        checked = [check_image(where, root, i, allow_abs_paths) for i in images]
        options = row.get("options", row.get("choices"))
        if options is not None and (not isinstance(options, list) or not all(isinstance(o, str) for o in options)):
            raise UserError(f"{where}: 'options' must be a list of strings (the choices in order A, B, ...)")
        if key == "solution" and extract_answer(str(a)) is None:
            raise UserError(f"{where}: no final answer found in 'solution' "
                            f"(end it with \\boxed{{...}} or give an 'answer')")
        rows.append({"question": q, "answer": extract_answer(str(a)) or str(a), "where": where,
                     "images": [c[0] for c in checked], "image_sizes": [c[1] for c in checked],
                     **({"options": options} if options else {})})
    if not rows:
        raise UserError(f"{path}: no examples")
    return rows


def check_image(where, root, item, allow_abs_paths):
    """(path, (width, height)) of a data row's image, relative to the data file's directory."""
    from PIL import Image
    path = os.path.realpath(os.path.join(root, item))
    if not allow_abs_paths and (os.path.isabs(item) or os.path.commonpath([path, root]) != root):
        raise UserError(f"{where}: image {item} is outside the data file's directory (--allow_abs_paths allows it)")
    try:
        with Image.open(path) as im:
            im.verify()
            return path, im.size
    except Exception as e:  # missing, unreadable, or not an image
        raise UserError(f"{where}: cannot read image {item}: {getattr(e, 'strerror', None) or e}") from None


def load_split(path, eval_path, eval_size, seed, allow_abs_paths=False):
    """(training rows, held-out rows): eval_path's, or eval_size (at most a tenth) of path's, shuffled with seed."""
    train_rows = load_jsonl(path, allow_abs_paths)
    if eval_path:
        return train_rows, load_jsonl(eval_path, allow_abs_paths)
    random.Random(seed).shuffle(train_rows)
    n_eval = min(eval_size, len(train_rows) // 10)
    return train_rows[n_eval:], train_rows[:n_eval]


def take_prompts(order, n_rows, n, seed, step):
    """The step's n row indices and the data order left after them (extended as needed)."""
    if len(order) < n:  # a fresh permutation of all n_rows rows, seeded with seed + step: the same on every rank
        perm = list(range(n_rows))
        random.Random(seed + step).shuffle(perm)
        order = order + perm
    return order[:n], order[n:]


def tokenize(rows, proc, max_len, template_kwargs):
    """(rows plus student_ids and teacher_ids, image placeholders expanded, less any over max_len; number dropped)."""
    out, seen = [], {}  # a prompt repeated in the data (a toy task's) is tokenized once
    for r in rows:
        sizes = r.get("image_sizes") or [im.size for im in r.get("images", [])]
        key = (r["question"], r["answer"], tuple(sizes))
        if key not in seen:
            seen[key] = [prompt_ids(proc, format_prompt(proc, text, len(sizes), **template_kwargs), sizes)
                         for text in (student_prompt(r["question"]), teacher_prompt(r["question"], r["answer"]))]
        s, t = seen[key]
        if max(len(s), len(t)) <= max_len:
            out.append({**r, "student_ids": s, "teacher_ids": t})
    return out, len(rows) - len(out)

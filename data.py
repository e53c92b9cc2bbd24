"""Training data: JSONL rows and images, checked before any model loads; the held-out split; the
prompts as token ids.

A row: question (`question` | `problem` | `prompt`), answer (`answer`: the reference as written,
less an <answer> or \\boxed{} marking it | `solution`: a worked solution, whose final answer is the
reference), optional images (`images` | `image`: paths relative to the file; `<image>` in the
question marks where each goes) and options (`options` | `choices`: texts of choices A, B, ...).
"""
import os
import random

from cli import UserError, read_jsonl
from hf import format_prompt, prompt_ids
from rlsd import student_prompt, teacher_prompt
from verify import reference_answer

QUESTION_KEYS = ("question", "problem", "prompt")  # the first a row has is its question
ANSWER_KEYS = ("answer", "solution")  # the first a row has is its answer


# ----------------------------------------------------------------------------- rows
def load_jsonl(path, allow_abs_paths=False):
    """[{question, answer, images, image_sizes, options, where}] from a JSONL file; UserError naming
    file and line."""
    # every error is found here, before any model is loaded: each image is opened to check it
    root = os.path.dirname(os.path.abspath(path))
    rows = []
    for n, row in read_jsonl(path):
        rows.append(parse_row(row, f"{path}:{n}", root, allow_abs_paths))
    if not rows:
        raise UserError(f"{path}: no examples")
    return rows


def parse_row(row, where, root, allow_abs_paths):
    """One checked data row ({question, answer, where, images, image_sizes[, options]}) from a JSONL
    object; `where` (file:line) opens every error message, in the order of the checks below."""
    _, question = first_field(row, QUESTION_KEYS)
    answer_key, answer = first_field(row, ANSWER_KEYS)
    if not isinstance(question, str) or not question.strip():
        raise UserError(f"{where}: missing question "
                        f"(a non-empty 'question', 'problem' or 'prompt' field)")
    if not isinstance(answer, (str, int, float)) or not str(answer).strip():
        raise UserError(f"{where}: missing answer (a non-empty 'answer' or 'solution' field)")
    images = image_paths(row, where)
    n_markers = question.count("<image>")
    if n_markers not in (0, len(images)):
        raise UserError(f"{where}: {n_markers} <image> markers for {len(images)} images")
    checked = [check_image(where, root, item, allow_abs_paths) for item in images]
    options = options_of(row, where)
    reference = reference_answer(answer, solution=answer_key == "solution")
    if answer_key == "solution" and reference is None:
        raise UserError(f"{where}: no final answer found in 'solution' "
                        f"(end it with \\boxed{{...}} or give an 'answer')")
    if not reference:
        raise UserError(f"{where}: the answer's <answer> or \\boxed{{}} is empty")
    parsed = {"question": question,
              "answer": reference,
              "where": where,
              "images": [path for path, _ in checked],
              "image_sizes": [size for _, size in checked]}
    if options:
        parsed["options"] = options
    return parsed


def first_field(row, keys):
    """(key, value) of the first of `keys` that `row` has; (None, None) if it has none."""
    for key in keys:
        if key in row:
            return key, row[key]
    return None, None


def image_paths(row, where):
    """The row's image paths (`images` or `image`: a path or a list of paths; [] if neither)."""
    images = row.get("images", row.get("image")) or []
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise UserError(f"{where}: 'images' must be a path or a list of paths")
    return images


def options_of(row, where):
    """The row's choices (`options` or `choices`: a list of strings), or None."""
    options = row.get("options", row.get("choices"))
    if options is None:
        return None
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise UserError(f"{where}: 'options' must be a list of strings "
                        f"(the choices in order A, B, ...)")
    return options


def check_image(where, root, item, allow_abs_paths):
    """(path, (width, height)) of a data row's image, relative to the data file's directory."""
    from PIL import Image
    path = os.path.realpath(os.path.join(root, item))
    outside = os.path.isabs(item) or os.path.commonpath([path, root]) != root
    if not allow_abs_paths and outside:
        raise UserError(f"{where}: image {item} is outside the data file's directory "
                        f"(--allow_abs_paths allows it)")
    try:
        with Image.open(path) as im:
            im.verify()  # the file's structure (verify leaves the image unusable: opened again)
        with Image.open(path) as im:
            im.load()  # every pixel decoded: a truncated or damaged file fails here, not in step 1
            return path, im.size
    except Exception as e:  # missing, unreadable, truncated, or not an image
        reason = getattr(e, "strerror", None) or e
        raise UserError(f"{where}: cannot read image {item}: {reason}") from None


# ----------------------------------------------------------------------------- split and order
def load_split(path, eval_path, eval_size, seed, allow_abs_paths=False):
    """(training rows, held-out rows): eval_path's, or eval_size (at most a tenth) of path's,
    shuffled with seed."""
    train_rows = load_jsonl(path, allow_abs_paths)
    if eval_path:
        return train_rows, load_jsonl(eval_path, allow_abs_paths)
    random.Random(seed).shuffle(train_rows)
    n_eval = min(eval_size, len(train_rows) // 10)
    return train_rows[n_eval:], train_rows[:n_eval]


def take_prompts(order, n_rows, n, seed, step):
    """The step's n row indices and the data order left after them (extended as needed)."""
    if len(order) < n:
        # a fresh permutation of all n_rows rows, seeded with seed + step: the same on every rank
        perm = list(range(n_rows))
        random.Random(seed + step).shuffle(perm)
        order = order + perm
    return order[:n], order[n:]


# ----------------------------------------------------------------------------- token ids
def tokenize(rows, proc, max_len, template_kwargs):
    """(rows plus student_ids and teacher_ids, image placeholders expanded, less any over max_len;
    number dropped)."""
    kept = []
    seen = {}  # a prompt repeated in the data (a toy task's) is tokenized once
    for row in rows:
        sizes = row.get("image_sizes") or [im.size for im in row.get("images", [])]
        key = (row["question"], row["answer"], tuple(sizes))
        if key not in seen:
            seen[key] = student_and_teacher_ids(proc, row, sizes, template_kwargs)
        student_ids, teacher_ids = seen[key]
        if max(len(student_ids), len(teacher_ids)) <= max_len:
            kept.append({**row, "student_ids": student_ids, "teacher_ids": teacher_ids})
    return kept, len(rows) - len(kept)


def student_and_teacher_ids(proc, row, image_sizes, template_kwargs):
    """(student prompt ids, teacher prompt ids) of a row with images of `image_sizes`."""

    def ids_of(text):
        formatted = format_prompt(proc, text, len(image_sizes), **template_kwargs)
        return prompt_ids(proc, formatted, image_sizes)

    try:
        student_ids = ids_of(student_prompt(row["question"]))
    except ValueError as e:  # the image processor refuses a size (a 1 x 400 image's aspect ratio)
        sizes = ", ".join(f"{w} x {h}" for w, h in image_sizes)
        where = row.get("where", "a row")
        raise UserError(f"{where}: the image processor refuses its image ({sizes}): {e}") from None
    teacher_ids = ids_of(teacher_prompt(row["question"], row["answer"]))
    return student_ids, teacher_ids

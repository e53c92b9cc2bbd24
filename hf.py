"""Hugging Face glue: model classes, processors, chat template, image inputs, positions.

Text models load with AutoModelForCausalLM and AutoTokenizer; a model with a vision config
(Qwen3-VL, Qwen2.5-VL) with AutoModelForImageTextToText and its processor (tokenizer + image
processor + chat template). Positions: cumsum of the attention mask for text (left padding), a
Qwen-VL model's own 3-D M-RoPE positions (get_rope_index).
"""
import contextlib
import json
import os
import re

import torch

from cli import UserError


# ------------------------------------------------------------------------- models and processors
def is_vision_model(config):
    """Whether a config is a VLM's (it has a vision_config)."""
    return getattr(config, "vision_config", None) is not None


def model_class(config):
    """The transformers Auto class that loads the model of `config`."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    if is_vision_model(config):
        return AutoModelForImageTextToText
    return AutoModelForCausalLM


def tokenizer_of(proc):
    """The tokenizer of a processor (a text model's processor is its tokenizer)."""
    return getattr(proc, "tokenizer", proc)


def check_model(name, flag):
    """A model dir with a config.json, or a hub id whose config.json the hub or the local cache
    has; else UserError."""
    if name in (None, "tiny-vl"):
        return
    if is_model_dir(name):
        check_weights(name, flag)
        return
    if os.path.isdir(name):
        raise UserError(f"{flag} {name}: a directory without config.json (not a saved model)")
    if not looks_like_hub_id(name):
        raise UserError(f"{flag} {name}: no such directory")
    check_hub_config(name, flag)


def check_weights(directory, flag):
    """UserError unless every *.safetensors file in `directory` is whole: its header reads and its
    size covers the tensors the header lists (a copy cut short fails here, before any loading)."""
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".safetensors"):
            continue
        path = os.path.join(directory, name)
        problem = safetensors_problem(path)
        if problem:
            raise UserError(f"{flag} {directory}: {name} is damaged ({problem}); copy or save the "
                            f"model again")


def safetensors_problem(path):
    """What is wrong with a safetensors file (None if nothing): its layout is an 8-byte header
    length N, N bytes of JSON ({name: {data_offsets: [begin, end]}, ...}), then the data."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{size} bytes, no header"
        header_len = int.from_bytes(head, "little")
        if 8 + header_len > size:
            return f"{size} bytes, shorter than its {header_len}-byte header"
        try:
            header = json.loads(f.read(header_len))
            ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return "its header is not valid"
    needed = 8 + header_len + max(ends, default=0)
    if size < needed:
        return f"{size} bytes of the {needed} its header lists"
    return None


def is_model_dir(name):
    """Whether `name` is a directory holding a config.json."""
    return os.path.isdir(name) and os.path.isfile(os.path.join(name, "config.json"))


def looks_like_hub_id(name):
    """Whether `name` reads as a hub id, `owner/model` or a one-word legacy id (`gpt2`), rather
    than a local path."""
    if not re.fullmatch(r"[\w-][\w.-]*(/[\w-][\w.-]*)?", name):
        return False
    owner = name.split("/")[0]
    return "/" not in name or not os.path.isdir(owner)


def check_hub_config(name, flag):
    """UserError unless the hub, or else the local cache, has the config.json of hub id `name`.

    With the hub unreachable and the cache holding it: sets HF_HUB_OFFLINE, as HF_HUB_OFFLINE=1
    would have.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    if constants.HF_HUB_OFFLINE and not cached:
        raise UserError(f"{flag} {name}: no such directory, and not in the local Hugging Face "
                        f"cache (HF_HUB_OFFLINE is set)")
    if constants.HF_HUB_OFFLINE:
        return
    # one request, so that a bad id or no network fails here and not in transformers' retry loop
    try:
        get_hf_file_metadata(hf_hub_url(name, "config.json"), timeout=10)
    except Exception as e:
        if cached:  # the hub is unreachable but the cache has it: use the cache
            os.environ["HF_HUB_OFFLINE"] = "1"
            constants.HF_HUB_OFFLINE = True
            return
        message_lines = str(e).splitlines() or [type(e).__name__]
        why = message_lines[0][:120]
        raise UserError(f"{flag} {name}: no such directory, and cannot read its config.json "
                        f"from the Hugging Face hub "
                        f"({why}); download it first (hf download {name}), or set "
                        f"HF_HUB_OFFLINE=1 to use the local cache") from None


def load_spec(path, trust_remote_code=False):
    """(processor, config, dtype of its saved weights) of a hub id or model dir; no weights loaded.

    The processor of a text model is its tokenizer; of a VLM, tokenizer + image processor + chat
    template (see image_only).
    """
    import transformers
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES
    remote = {"trust_remote_code": trust_remote_code}
    try:
        config = transformers.AutoConfig.from_pretrained(path, **remote)
        dtype = saved_dtype(config)
        if not is_vision_model(config):
            return transformers.AutoTokenizer.from_pretrained(path, **remote), config, dtype
        processor_class = getattr(transformers, PROCESSOR_MAPPING_NAMES[config.model_type])
        proc = image_only(processor_class).from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as e:  # a damaged config or tokenizer file
        raise UserError(f"{path}: cannot load its config or tokenizer ({first_line(e)})") from None
    return proc, config, dtype


def load_weights(config, path, **kwargs):
    """The model of `config` with the weights of the model directory or hub id `path`; UserError if
    they do not load (damaged, or not this config's)."""
    from safetensors import SafetensorError
    try:
        return model_class(config).from_pretrained(path, **kwargs)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise UserError(f"{path}: cannot load its weights ({first_line(e)})") from None


def first_line(error):
    """The first sentence of an exception's message (at most 200 characters), or its type's name."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return lines[0].split(". ")[0][:200]


def saved_dtype(config):
    """The torch dtype of a config's saved weights (float32 when it names none)."""
    if isinstance(config.dtype, torch.dtype):
        return config.dtype
    return getattr(torch, config.dtype or "float32")


def image_only(cls):
    """A processor class like `cls` without its video processor, under the stock name (the name
    that the saved files give)."""
    # transformers' processors require every sub-processor they declare; Qwen-VL's video processors
    # need torchvision
    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        cls.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)
    return type(cls.__name__, (cls,), {"__init__": __init__})


# The video processor each image-only Qwen-VL processor stands in for, and the hub's settings for
# it that differ from the image processor's (Qwen2(.5)-VL's video processor takes the image sizes).
VIDEO_PROCESSORS = {
    "Qwen3VLProcessor": ("Qwen3VLVideoProcessor",
                         {"shortest_edge": 4096, "longest_edge": 25165824}),
    "Qwen2_5_VLProcessor": ("Qwen2VLVideoProcessor", None),
    "Qwen2VLProcessor": ("Qwen2VLVideoProcessor", None),
}
# The image processor's settings a video processor config copies (those it has).
VIDEO_SETTINGS_FROM_IMAGE = ("patch_size", "temporal_patch_size", "merge_size", "image_mean",
                             "image_std")


def write_video_config(proc, directory):
    """video_preprocessor_config.json (only JSON) beside a saved image-only processor."""
    # where torchvision is installed, AutoProcessor.from_pretrained(directory) then loads the stock
    # processor (which requires a video processor); patching and normalization are those of the
    # image processor
    name = type(proc).__name__
    if name not in VIDEO_PROCESSORS or not hasattr(proc, "image_processor"):
        return
    kind, size = VIDEO_PROCESSORS[name]
    image = proc.image_processor
    if not size:
        size = {k: image.size[k] for k in ("shortest_edge", "longest_edge")}
    config = {"video_processor_type": kind, "processor_class": name, "size": size}
    for key in VIDEO_SETTINGS_FROM_IMAGE:
        if getattr(image, key, None) is not None:
            config[key] = getattr(image, key)
    with open(os.path.join(directory, "video_preprocessor_config.json"), "w") as f:
        json.dump(config, f, indent=2, default=list)


def eos_token_ids(model, tokenizer):
    """Every id that ends a response: the tokenizer's EOS and the generation_config's EOS ids."""
    generation_config = getattr(model, "generation_config", None)
    extra = getattr(generation_config, "eos_token_id", None)  # an id, a list of ids, or None
    if not isinstance(extra, (list, tuple)):
        extra = [extra]
    ids = {tokenizer_of(tokenizer).eos_token_id, *extra}
    return {i for i in ids if i is not None}


def vision_token_ids(config):
    """The image/video placeholder and delimiter ids of a VLM (none for a text model)."""
    if not is_vision_model(config):
        return []
    names = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    ids = [getattr(config, name, None) for name in names]
    return [i for i in ids if i is not None]


# ----------------------------------------------------------------------------- prompts and images
# apply_chat_template's own arguments, set by format_prompt: not for --chat_template_kwargs
TEMPLATE_ARGUMENTS = ("conversation", "tokenize", "add_generation_prompt", "continue_final_message",
                      "return_dict", "return_tensors", "return_assistant_tokens_mask", "padding",
                      "truncation", "max_length", "tokenizer_kwargs")


def format_prompt(proc, text, n_images=0, **template_kwargs):
    """One user turn with n_images images through the chat template (or the raw text, without
    a template)."""
    if not getattr(proc, "chat_template", None):
        return text
    content = text
    if n_images:
        content = text_and_images(text, n_images)
    messages = [{"role": "user", "content": content}]
    return proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                    **template_kwargs)


def text_and_images(text, n_images):
    """A user turn's content list: `<image>` in `text` marks where each image goes; with no marker
    the images come first. No empty text parts."""
    if "<image>" in text:
        parts = text.split("<image>")
    else:
        parts = [""] * n_images + [text]
    content = []
    for i, part in enumerate(parts):
        if i > 0:  # an image between two parts
            content.append({"type": "image"})
        if part:
            content.append({"type": "text", "text": part})
    return content


def prompt_ids(proc, text, image_sizes=()):
    """Token ids of a formatted prompt, each image placeholder repeated once per image token."""
    if image_sizes:
        text = expand_image_placeholders(proc, text, image_sizes)
    return tokenizer_of(proc)(text, add_special_tokens=False)["input_ids"]


def expand_image_placeholders(proc, text, image_sizes):
    """`text` with its i-th image placeholder repeated once per token of image i, of size
    image_sizes[i] = (width, height)."""
    pieces = text.split(proc.image_token)
    if len(pieces) != len(image_sizes) + 1:
        raise ValueError(f"{len(pieces) - 1} image placeholders for {len(image_sizes)} images")
    counts = [image_token_count(proc.image_processor, w, h) for w, h in image_sizes]
    counts.append(0)  # nothing after the last piece
    return "".join(piece + proc.image_token * n for piece, n in zip(pieces, counts))


def image_token_count(image_processor, width, height):
    """Tokens of an image of size (width, height), from the image processor's resize: its patches
    over the merge_size x merge_size patches that merge into one token."""
    patches = image_processor.get_number_of_image_patches(height, width, {})
    return patches // image_processor.merge_size ** 2


def open_image(item):
    """A PIL image, RGB, from a path or an image."""
    from PIL import Image
    if isinstance(item, str):
        item = Image.open(item)
    return item.convert("RGB")


def image_inputs(proc, images, device):
    """pixel_values and image_grid_thw of a batch's images in prompt order ({} for no images)."""
    if not images:
        return {}
    out = proc.image_processor(images=images, return_tensors="pt")
    return {k: out[k].to(device) for k in ("pixel_values", "image_grid_thw")}


def cat_images(items):
    """One batch's image inputs from per-row ones (image_inputs of each row), in row order."""
    items = [i for i in items if i]
    if not items:
        return {}
    return {k: torch.cat([i[k] for i in items]) for k in items[0]}


@contextlib.contextmanager
def vision_once(models, items):
    """The forward's image inputs of rows whose per-row inputs `items` repeat (a prompt's G rows
    hold one dict).

    While open, each model's vision tower runs once per distinct dict and its outputs (merged image
    tokens, Qwen3-VL's deepstack features) are indexed out to every row holding it; the rows'
    gradients meet in one vision backward.
    """
    rows = [i for i in items if i]
    distinct = list({id(i): i for i in rows}.values())
    if len(distinct) == len(rows):  # nothing repeats (or no images)
        yield cat_images(rows)
        return
    once = cat_images(distinct)
    merge = models[0].config.vision_config.spatial_merge_size ** 2
    grid = once["image_grid_thw"]  # [distinct images, 3]
    index = merged_token_rows(distinct, rows, merge, grid.device)
    hooks = hook_vision_towers(models, grid, index)
    try:
        yield {"pixel_values": once["pixel_values"],
               "image_grid_thw": cat_images(rows)["image_grid_thw"]}
    finally:
        for h in hooks:
            h.remove()


def merged_token_rows(distinct, rows, merge, device):
    """[image tokens of all rows]: for each row in turn, the rows of the tower's output (the merged
    image tokens of the `distinct` dicts, in order) that hold its images."""
    # merged image tokens per distinct dict
    sizes = [int(d["image_grid_thw"].prod(-1).sum()) // merge for d in distinct]
    token_rows = torch.arange(sum(sizes), device=device).split(sizes)
    rows_of_dict = dict(zip(map(id, distinct), token_rows))
    return torch.cat([rows_of_dict[id(i)] for i in rows])


def hook_vision_towers(models, grid, index):
    """Hooks on each model's vision tower (their handles returned): it runs on the distinct images
    only (grid: [distinct images, 3]), and its outputs are indexed out to each row's image tokens
    (index: rows of its output)."""

    def distinct_only(module, args, kwargs):  # the tower's input: the distinct images
        return args, {**kwargs, "grid_thw": grid}

    def expand(module, args, kwargs, out):  # its output: each row's image tokens
        out.pooler_output = out.pooler_output[index]
        if getattr(out, "deepstack_features", None) is not None:
            out.deepstack_features = [f[index] for f in out.deepstack_features]

    hooks = [m.model.visual.register_forward_pre_hook(distinct_only, with_kwargs=True)
             for m in models]
    hooks += [m.model.visual.register_forward_hook(expand, with_kwargs=True) for m in models]
    return hooks


# ----------------------------------------------------------------------------- positions
def position_ids(mask):
    """Positions that ignore left padding: cumsum(mask) - 1, clamped at 0 on the pads. [B, L]."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def rope_positions(model, ids, mask, image_grid_thw=None, prompt_len=None):
    """Position ids of a left-padded batch ids/mask [B, L].

    A text model: position_ids(mask). A Qwen-VL model: its own 3-D M-RoPE positions [3, B, L]
    (get_rope_index), the response columns (from `prompt_len` on) as text.
    """
    if not is_vision_model(model.config):
        return position_ids(mask)
    types = (ids == model.config.image_token_id).long()  # 1 image, 0 text (mm_token_type_ids)
    if prompt_len is not None:  # a response is text whatever its ids
        types[:, prompt_len:] = 0
    # an image's tokens take (t, row, column) positions; the text after it continues from the
    # largest of them
    rope_index = model.model.get_rope_index(ids, types, image_grid_thw=image_grid_thw,
                                            attention_mask=mask)
    return rope_index[0]


def decode_positions(last):
    """Next positions [B, 1] or [3, B, 1] after prompt positions `last` [B, L] or [3, B, L]: each
    row's largest + 1."""
    B = last.shape[-2]
    L = last.shape[-1]
    largest = last.reshape(-1, B, L).amax(dim=(0, 2))  # [B], the same on the three M-RoPE axes
    nxt = largest + 1
    if last.dim() == 2:
        return nxt[:, None]  # [B, 1]
    return nxt.view(1, B, 1).expand(3, B, 1)  # [3, B, 1]

"""Hugging Face glue: model classes, processors, chat template, image inputs, positions.

Text models load with AutoModelForCausalLM and AutoTokenizer; a model with a vision config (Qwen3-VL, Qwen2.5-VL)
with AutoModelForImageTextToText and its processor (tokenizer + image processor + chat template). Positions: cumsum of
the attention mask for text (left padding), a Qwen-VL model's own 3-D M-RoPE positions (get_rope_index)."""
import contextlib
import json
import os

import torch

from cli import UserError


# ----------------------------------------------------------------------------- models and processors
def is_vision_model(config):
    return getattr(config, "vision_config", None) is not None


def model_class(config):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    return AutoModelForImageTextToText if is_vision_model(config) else AutoModelForCausalLM


def tokenizer_of(proc):
    return getattr(proc, "tokenizer", proc)


def check_model(name, flag):
    """A model dir with a config.json, or a hub id whose config.json the hub or the local cache has; else UserError."""
    if name in (None, "tiny-vl") or (os.path.isdir(name) and os.path.isfile(os.path.join(name, "config.json"))):
        return
    if os.path.isdir(name):
        raise UserError(f"{flag} {name}: a directory without config.json (not a saved model)")
    if name.startswith((".", "/", "~")) or name.count("/") != 1 or os.path.isdir(name.split("/")[0]):
        raise UserError(f"{flag} {name}: no such directory")
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    if constants.HF_HUB_OFFLINE and not cached:
        raise UserError(f"{flag} {name}: not in the local Hugging Face cache, and HF_HUB_OFFLINE is set")
    try:  # one request, so that a bad id or no network fails here and not in transformers' retry loop
        constants.HF_HUB_OFFLINE or get_hf_file_metadata(hf_hub_url(name, "config.json"), timeout=10)
    except Exception as e:
        if cached:  # the hub is unreachable but the cache has it: use the cache, as HF_HUB_OFFLINE=1 would
            os.environ["HF_HUB_OFFLINE"] = "1"
            constants.HF_HUB_OFFLINE = True
            return
        why = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise UserError(f"{flag} {name}: cannot read its config.json from the Hugging Face hub ({why}); download "
                        f"it first (hf download {name}), or set HF_HUB_OFFLINE=1 to use the local cache") from None


def load_spec(path, trust_remote_code=False):
    """(processor, config, dtype of its saved weights) of a hub id or model dir; no weights loaded. The processor
    of a text model is its tokenizer; of a VLM, tokenizer + image processor + chat template (see image_only)."""
    import transformers
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES
    config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    dtype = config.dtype if isinstance(config.dtype, torch.dtype) else getattr(torch, config.dtype or "float32")
    if not is_vision_model(config):
        return transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code), config, dtype
    proc = image_only(getattr(transformers, PROCESSOR_MAPPING_NAMES[config.model_type])).from_pretrained(path)
    return proc, config, dtype


def image_only(cls):
    """A processor class like `cls` without its video processor, under the stock name (which the saved files name)."""
    # transformers' processors require every sub-processor they declare; Qwen-VL's video processors need torchvision
    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        cls.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)
    return type(cls.__name__, (cls,), {"__init__": __init__})


# The video processor each image-only Qwen-VL processor stands in for, and the hub's settings for it that
# differ from the image processor's (Qwen2(.5)-VL's video processor takes the image sizes).
VIDEO_PROCESSORS = {"Qwen3VLProcessor": ("Qwen3VLVideoProcessor", {"shortest_edge": 4096, "longest_edge": 25165824}),
                    "Qwen2_5_VLProcessor": ("Qwen2VLVideoProcessor", None),
                    "Qwen2VLProcessor": ("Qwen2VLVideoProcessor", None)}


def write_video_config(proc, directory):
    """video_preprocessor_config.json (only JSON) beside a saved image-only processor."""
    # where torchvision is installed, AutoProcessor.from_pretrained(directory) then loads the stock processor (it
    # requires a video processor); patching and normalization are the image processor's
    if type(proc).__name__ not in VIDEO_PROCESSORS or not hasattr(proc, "image_processor"):
        return
    (kind, size), image = VIDEO_PROCESSORS[type(proc).__name__], proc.image_processor
    config = {"video_processor_type": kind, "processor_class": type(proc).__name__,
              "size": size or {k: image.size[k] for k in ("shortest_edge", "longest_edge")},
              **{k: getattr(image, k) for k in ("patch_size", "temporal_patch_size", "merge_size", "image_mean",
                                                  "image_std") if getattr(image, k, None) is not None}}
    with open(os.path.join(directory, "video_preprocessor_config.json"), "w") as f:
        json.dump(config, f, indent=2, default=list)


def eos_token_ids(model, tokenizer):
    """Every id that ends a response: the tokenizer's EOS and the model's generation_config EOS ids."""
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = {tokenizer_of(tokenizer).eos_token_id, *(extra if isinstance(extra, (list, tuple)) else [extra])}
    return {i for i in ids if i is not None}


def vision_token_ids(config):
    """The image/video placeholder and delimiter ids of a VLM (none for a text model)."""
    names = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    return [i for i in (getattr(config, n, None) for n in names) if i is not None] if is_vision_model(config) else []


# ----------------------------------------------------------------------------- prompts and images
def format_prompt(proc, text, n_images=0, **template_kwargs):
    """One user turn with n_images images through the chat template (the raw text if there is none)."""
    if not getattr(proc, "chat_template", None):
        return text
    content = text
    if n_images:  # `<image>` in `text` marks where each image goes; with no marker the images come first
        parts = text.split("<image>") if "<image>" in text else [""] * n_images + [text]
        content = []
        for i, part in enumerate(parts):  # an image between two parts; no empty text
            content += ([{"type": "image"}] if i else []) + ([{"type": "text", "text": part}] if part else [])
    return proc.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                    add_generation_prompt=True, **template_kwargs)


def prompt_ids(proc, text, image_sizes=()):
    """Token ids of a formatted prompt, each image placeholder repeated once per image token."""
    if image_sizes:
        pieces = text.split(proc.image_token)
        if len(pieces) != len(image_sizes) + 1:
            raise ValueError(f"{len(pieces) - 1} image placeholders for {len(image_sizes)} images")
        ip = proc.image_processor  # tokens per image of size (width, height), from the image processor's resize
        counts = [ip.get_number_of_image_patches(h, w, {}) // ip.merge_size ** 2 for w, h in image_sizes] + [0]
        text = "".join(p + proc.image_token * n for p, n in zip(pieces, counts))
    return tokenizer_of(proc)(text, add_special_tokens=False)["input_ids"]


def open_image(item):  # a PIL image, RGB, from a path or an image
    from PIL import Image
    return (Image.open(item) if isinstance(item, str) else item).convert("RGB")


def image_inputs(proc, images, device):
    """pixel_values and image_grid_thw of a batch's images in prompt order ({} when there are none)."""
    out = proc.image_processor(images=images, return_tensors="pt") if images else None
    return {k: out[k].to(device) for k in ("pixel_values", "image_grid_thw")} if images else {}


def cat_images(items):
    """One batch's image inputs from per-row ones (image_inputs of each row), in row order."""
    items = [i for i in items if i]
    return {k: torch.cat([i[k] for i in items]) for k in items[0]} if items else {}


@contextlib.contextmanager
def vision_once(models, items):
    """The forward's image inputs of rows whose per-row inputs `items` repeat (a prompt's G rows hold one dict):
    while open, each model's vision tower runs once per distinct dict and its outputs (merged image tokens, Qwen3-VL's
    deepstack features) are indexed out to every row holding it; the rows' gradients meet in one vision backward."""
    rows = [i for i in items if i]
    distinct = list({id(i): i for i in rows}.values())
    if len(distinct) == len(rows):  # nothing repeats (or no images)
        yield cat_images(rows)
        return
    once, merge = cat_images(distinct), models[0].config.vision_config.spatial_merge_size ** 2
    grid = once["image_grid_thw"]  # [distinct images, 3]
    sizes = [int(d["image_grid_thw"].prod(-1).sum()) // merge for d in distinct]  # merged image tokens per dict
    tokens = dict(zip(map(id, distinct), torch.arange(sum(sizes), device=grid.device).split(sizes)))  # their rows
    index = torch.cat([tokens[id(i)] for i in rows])  # [image tokens of all rows]: rows of the tower's output

    def distinct_only(module, args, kwargs):  # the tower's input: the distinct images
        return args, {**kwargs, "grid_thw": grid}

    def expand(module, args, kwargs, out):  # its output: each row's image tokens
        out.pooler_output = out.pooler_output[index]
        if getattr(out, "deepstack_features", None) is not None:
            out.deepstack_features = [f[index] for f in out.deepstack_features]

    hooks = [m.model.visual.register_forward_pre_hook(distinct_only, with_kwargs=True) for m in models]
    hooks += [m.model.visual.register_forward_hook(expand, with_kwargs=True) for m in models]
    try:
        yield {"pixel_values": once["pixel_values"], "image_grid_thw": cat_images(rows)["image_grid_thw"]}
    finally:
        for h in hooks:
            h.remove()


# ----------------------------------------------------------------------------- positions
def position_ids(mask):
    """Positions that ignore left padding: cumsum(mask) - 1, clamped at 0 on the pads. [B, L]."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def rope_positions(model, ids, mask, image_grid_thw=None, prompt_len=None):
    """Position ids of a left-padded batch ids/mask [B, L]: position_ids(mask) for a text model; for a Qwen-VL model its
    own 3-D M-RoPE positions [3, B, L] (get_rope_index), the response columns (from `prompt_len` on) as text."""
    if not is_vision_model(model.config):
        return position_ids(mask)
    types = (ids == model.config.image_token_id).long()  # 1 image, 0 text (mm_token_type_ids)
    if prompt_len is not None:  # a response is text whatever its ids
        types[:, prompt_len:] = 0
    # an image's tokens take (t, row, column) positions, the text after it continues from the largest
    return model.model.get_rope_index(ids, types, image_grid_thw=image_grid_thw, attention_mask=mask)[0]


def decode_positions(last):
    """Next positions [B, 1] or [3, B, 1] after prompt positions `last` [B, L] or [3, B, L]: the row's largest + 1."""
    B = last.shape[-2]
    nxt = last.reshape(-1, B, last.shape[-1]).amax(dim=(0, 2)) + 1  # [B], the same on the three M-RoPE axes
    return nxt[:, None] if last.dim() == 2 else nxt.view(1, B, 1).expand(3, B, 1)

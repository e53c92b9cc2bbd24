"""Process group and FSDP2: what makes one training loop run on 1 CPU process or many GPUs.

build_sharded builds a model on the meta device, shards every transformer block and the root with
fully_shard, and fills it from rank 0's weights by broadcast (host memory holds one full copy);
gathered() keeps parameters gathered for a rollout or a no-grad pass, so that no collective runs
inside the decode loop.
"""
import contextlib
import datetime
import os
import socket

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.utils._pytree import tree_leaves


def free_port():
    """A TCP port of 127.0.0.1 that nothing listens on now: for the store of a process group on
    this machine."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_distributed(timeout_min=60):
    """(rank, world size, device): the process group from torchrun's env.

    The timeout bounds a rank's wait at a collective (a slower rank's rollout).
    """
    if "RANK" not in os.environ:  # plain `python train.py`: a 1-process group
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_min))
    return dist.get_rank(), dist.get_world_size(), device


@contextlib.contextmanager
def params_on_meta():
    """Build modules with their parameters on the meta device (no memory), buffers for real."""
    # buffers stay real: those computed at construction (rotary inv_freq) are in no checkpoint
    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        if param is not None and param.device.type != "meta":  # a tied parameter is already meta
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def build_sharded(make_model, full_state, device, dtype, mixed_precision, grad_ckpt=False):
    """The model every rank trains: built on meta, sharded, filled from `full_state` (rank 0's; {}
    on other ranks)."""
    with params_on_meta():
        model = make_model().to(dtype)
    buffers = dict(model.named_buffers())  # real tensors, computed at construction
    if grad_ckpt:
        checkpointing = {"use_reentrant": False}
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpointing)
    shard(model, device, mixed_precision)
    model.to_empty(device=device)
    with torch.no_grad():
        for name, b in buffers.items():
            model.get_buffer(name).copy_(b)
    # one tensor at a time by broadcast from rank 0: host memory holds one copy, not one per rank
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    state = dict(full_state)  # a copy: set_model_state_dict edits the dict it is given
    set_model_state_dict(model, state, options=options)
    return model


def shard(model, device, mixed_precision):
    """FSDP2 over all ranks: fully_shard every transformer block (model._no_split_modules), then the
    root; mixed_precision: bf16 compute, fp32 gradient reduction."""
    kwargs = {"mesh": init_device_mesh(device.type, (dist.get_world_size(),))}
    if mixed_precision:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                                   reduce_dtype=torch.float32)
    block_names = set(getattr(model, "_no_split_modules", None) or [])
    # listed before any is sharded: fully_shard changes a module's class (and so its name)
    blocks = [m for m in model.modules() if type(m).__name__ in block_names]
    for module in blocks + [model]:
        fully_shard(module, **kwargs)


def keep_vision_in_step(model):
    """In training mode a forward without images also runs the vision tower on a blank image,
    adding 0 x its output."""
    # FSDP all-gathers each vision block as it runs: a rank whose micro-batch has no image would
    # skip those collectives and leave the others waiting. So every rank runs the tower once per
    # forward, on a 2x2-patch image if need be.
    # (Rollout and teacher pass keep all weights gathered: no collectives.)
    inner = model.model
    vision = model.config.vision_config
    patch_values = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2
    merge = vision.spatial_merge_size

    def run_blank(module, args, kwargs):
        if module.training and kwargs.get("pixel_values") is None:
            device = kwargs["input_ids"].device
            blank = torch.zeros(merge * merge, patch_values, device=device)  # [patches, values]
            grid = torch.tensor([[1, merge, merge]], device=device)  # one frame, merge x merge
            out = module.visual(blank, grid_thw=grid)
            tensors = [t for t in tree_leaves(out) if torch.is_tensor(t)]
            module.blank_vision = sum(t.float().sum() for t in tensors) * 0

    def add_zero(module, args, kwargs, out):
        if getattr(module, "blank_vision", None) is not None:
            out.last_hidden_state = out.last_hidden_state + module.blank_vision
            module.blank_vision = None
        return out

    inner.register_forward_pre_hook(run_blank, with_kwargs=True)
    inner.register_forward_hook(add_zero, with_kwargs=True)


@contextlib.contextmanager
def gathered(model):
    """Keep every FSDP parameter gathered (rollout, no_grad passes); resharded on exit."""
    # the decode loop then runs no collective, so ranks may stop decoding at different steps
    mods = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in mods:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        # as fully_shard set them: the root keeps its parameters from forward to backward
        for m in mods:
            m.set_reshard_after_forward(m is not model, recurse=False)
        reshard(model)


def reshard(model):
    """Free gathered parameters; a no-grad-only module (the teacher) must be resharded by hand."""
    # FSDP keeps the root's parameters gathered after a forward (it expects a backward)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def local_shard(param):
    """This rank's part of a parameter: the local tensor of a DTensor (FSDP2), else the tensor."""
    if isinstance(param, DTensor):
        return param.to_local()
    return param


def all_reduce_sum(values, device):
    """The sums over all ranks of a list of numbers (in float64)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()

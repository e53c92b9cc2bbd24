"""The run directory (--out): metrics.jsonl, args.json, credit.jsonl, checkpoint-N/ and final/; resuming a
stopped run, and stopping on a signal. The loop sees one object, `Run`: built before the first step (a
new run, or a stopped one restored), told where each step begins and ends, and at the end `finish()`.

A checkpoint is a Hugging Face model directory that from_pretrained loads with no project code, plus
in trainer/ what --resume needs: the sharded fp32 weights, optimizer state and teacher
(torch.distributed.checkpoint), every rank's RNG states, and state.json (step, data order, settings).
It is written to NAME.tmp and renamed when complete, so an interrupted save leaves the earlier ones."""
import contextlib
import copy
import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import sys
import time

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)

from cli import UserError
from hf import write_video_config
from parallel import all_reduce_sum
from rlsd import log_evidence_weight


# ----------------------------------------------------------------------------- before anything is loaded
def check_out(out, resume, overwrite):
    """--out is a writable directory and holds no other run unless --resume or --overwrite."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file, not a directory")
    earlier = sorted(n for n in (os.listdir(out) if os.path.isdir(out) else [])
                     if n in ("metrics.jsonl", "args.json", "final") or n.startswith("checkpoint-"))
    if earlier and not (resume or overwrite):
        listed = ", ".join(earlier[:3]) + (", ..." if len(earlier) > 3 else "")
        raise UserError(f"--out {out} holds another run ({listed}): --resume continues it, --overwrite replaces it")
    probe = os.path.join(out, f".write-test-{os.environ.get('RANK', '0')}")
    try:
        os.makedirs(out, exist_ok=True)
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        raise UserError(f"--out {out} is not writable ({e.strerror})") from None


def find_checkpoint(resume, out):
    """--resume: the latest complete checkpoint-N in out ("latest"), or the given one."""
    if resume == "latest":
        steps = [int(n.split("-")[1]) for n in (os.listdir(out) if os.path.isdir(out) else [])
                 if re.fullmatch(r"checkpoint-\d+", n) and os.path.isfile(os.path.join(out, n, "trainer/state.json"))]
        if not steps:
            raise UserError(f"--resume: no complete checkpoint in {out} (runs save them with --save_every N)")
        return os.path.join(out, f"checkpoint-{max(steps)}")
    if not os.path.isfile(os.path.join(resume, "trainer", "state.json")):
        raise UserError(f"--resume {resume}: not a complete checkpoint (no trainer/state.json)")
    return resume


def saved_state(path):
    """trainer/state.json of a checkpoint: step, order, bad, args, id."""
    return json.loads(pathlib.Path(path, "trainer", "state.json").read_text())


def run_id(model, data, eval_data, world):
    """What must not change across a resume: the model, the data files' content (sha1), the process count."""
    sha1 = {p: hashlib.sha1(pathlib.Path(p).read_bytes()).hexdigest() for p in (data, eval_data) if p is not None}
    return {"model": model, "data": sha1.get(data), "eval_data": sha1.get(eval_data), "world": world}


def check_same_run(path, this_id):
    saved = saved_state(path)["id"]
    for k in this_id:
        if this_id[k] != saved[k]:
            what = {"world": "processes", "model": "--model"}.get(k, f"--{k} (its content)")
            raise UserError(f"--resume: {what} differs from the stopped run's ({saved[k]} then, {this_id[k]} now)"
                            if k in ("world", "model") else f"--resume: {what} differs from the stopped run's")


# ----------------------------------------------------------------------------- stop requests
STOP = {}  # when the first SIGINT/SIGTERM/SIGUSR1 came (or another rank's, seen through the store)


class Stopped(Exception):
    """A stop request reached a safe point: the step in progress is abandoned (Run.abandon)."""


def on_signal(signum, frame):
    """First signal: abandon the step at its next safe point, save, exit. A later one exits at once."""
    # torchrun relays a signal it gets to its workers, so one within 3 s of the first is the same request
    if "at" in STOP and time.time() - STOP["at"] > 3:
        print(f"\n{signal.Signals(signum).name} again: exiting now, nothing saved", file=sys.stderr, flush=True)
        os._exit(130)
    STOP.setdefault("at", time.time())
    STOP.setdefault("name", signal.Signals(signum).name)


def catch_stop_signals():
    """SIGINT, SIGTERM (torchrun, SLURM, Kubernetes) and SIGUSR1 (SLURM's --signal) request a stop."""
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(s, on_signal)


def tell_others():
    if "name" in STOP and not STOP.get("told"):
        dist.distributed_c10d._get_default_store().set("rlsd-stop", f"{STOP['name']} {STOP['at']}")
        STOP["told"] = True


def poll():
    """A safe point where ranks need not be in step (between decode chunks): Stopped if any rank was signalled."""
    tell_others()
    if "at" in STOP or dist.distributed_c10d._get_default_store().check(["rlsd-stop"]):
        STOP.setdefault("at", time.time())
        raise Stopped


def agree(device):
    """A safe point where ranks are in step (phase ends, micro-batches): Stopped on all if on any."""
    tell_others()
    if all_reduce_sum([float("at" in STOP)], device)[0] > 0:
        STOP.setdefault("at", time.time())
        raise Stopped


@contextlib.contextmanager
def stoppable(device):
    """A phase whose polls may raise Stopped on some ranks only: the ranks meet at its end, all raise."""
    with contextlib.suppress(Stopped):
        yield
    agree(device)


# ----------------------------------------------------------------------------- checkpoints
def trainer_state(model, teacher, opt):  # what trainer/ holds besides the RNG states and state.json
    return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt),
            **({"teacher": get_model_state_dict(teacher)} if teacher is not None else {})}


def rng_states(gen):
    return {"torch": torch.get_rng_state(), "sampler": gen.get_state(),
            **({"cuda": torch.cuda.get_rng_state()} if torch.cuda.is_available() else {})}


def set_rng_states(rng, gen):
    torch.set_rng_state(rng["torch"])
    gen.set_state(rng["sampler"])
    if "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"])


# ----------------------------------------------------------------------------- the run, as the loop sees it
class Run:
    """--out of one run. Once built (from the checkpoint on resume): start (first step to run), order (data order still
    to use), bad (non-finite steps in a row), pending (metrics line awaiting its held-out accuracy)."""

    def __init__(self, args, this_id, model, teacher, opt, gen, proc, arch, save_dtype, rank, world):
        self.args, self.id, self.rank, self.world, self.arch = args, this_id, rank, world, arch
        self.model, self.teacher, self.opt, self.gen, self.proc, self.dtype = model, teacher, opt, gen, proc, save_dtype
        # pending: step 0's metrics line, or one a stop cut short (its evaluation is redone on resume)
        self.start, self.order, self.bad, self.pending, self.began = 1, [], 0, {"step": 0}, None
        self.stopped, self.stopped_at, self.abandoned = False, None, None
        self.device, self.saved_at = next(model.parameters()).device, time.time()
        metrics = pathlib.Path(args.out, "metrics.jsonl")
        if rank == 0:
            if args.overwrite:  # the earlier run's files go; nothing of it is mixed with this one
                for n in os.listdir(args.out):
                    if n in ("metrics.jsonl", "args.json", "credit.jsonl", "final") or n.startswith("checkpoint-"):
                        p = os.path.join(args.out, n)
                        shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else os.remove(p)
            pathlib.Path(args.out, "args.json").write_text(json.dumps(vars(args), indent=1))
        if args.resume:  # weights, optimizer, teacher, RNG states, data order, step: what Run.save wrote
            sharded = trainer_state(model, teacher, opt)
            dcp.load(sharded, checkpoint_id=os.path.join(args.resume, "trainer"))
            set_model_state_dict(model, sharded["model"])
            set_optimizer_state_dict(model, opt, sharded["optim"])
            if teacher is not None:
                set_model_state_dict(teacher, sharded["teacher"])
            set_rng_states(load_file(os.path.join(args.resume, "trainer", f"rng-{rank}.safetensors")), gen)
            info = saved_state(args.resume)
            self.start, self.order, self.bad = info["step"] + 1, info["order"], info["bad"]
            self.pending = info.get("pending")
            if rank == 0:  # keep the history up to the checkpoint; what came after is redone
                lines = metrics.read_text().splitlines(keepends=True)
                metrics.write_text("".join(line for line in lines if json.loads(line)["step"] < self.start))
        self.log = open(metrics, "a") if rank == 0 else None

    def write(self, rec):
        if self.log:
            print(json.dumps(rec), file=self.log, flush=True)

    def save(self, step, order, bad, pending=None):
        info = {"step": step, "order": order, "bad": bad, "pending": pending, "args": vars(self.args), "id": self.id}
        self.save_dir(os.path.join(self.args.out, f"checkpoint-{step}"), info)
        if self.rank == 0:  # all but the --keep_last newest checkpoint-N dirs go (0 keeps all)
            out, keep = self.args.out, self.args.keep_last
            steps = sorted(int(n.split("-")[1]) for n in os.listdir(out) if re.fullmatch(r"checkpoint-\d+", n))
            for s in steps[:-keep] if keep else []:
                shutil.rmtree(os.path.join(out, f"checkpoint-{s}"), ignore_errors=True)
        self.saved_at = time.time()

    def save_dir(self, path, info=None):
        """The model directory at `path`; with `info` (state.json) also the training state in path/trainer."""
        model, rank, tmp = self.model, self.rank, path + ".tmp"
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        dist.barrier()
        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            if getattr(model.config, "tie_word_embeddings", False):
                sd.pop("lm_head.weight", None)  # tied to the input embedding; from_pretrained re-ties it
            save_file({k: v.to(self.dtype).contiguous() for k, v in sd.items()}, os.path.join(tmp, "model.safetensors"),
                      metadata={"format": "pt"})
            config = copy.deepcopy(model.config)
            config.architectures = [self.arch]  # the original class, not the FSDP wrapper
            config.save_pretrained(tmp)
            if getattr(model, "generation_config", None) is not None:
                model.generation_config.save_pretrained(tmp)
            self.proc.save_pretrained(tmp)  # tokenizer, or processor (tokenizer + image processor + chat template)
            write_video_config(self.proc, tmp)
        if info is not None:
            dcp.save(trainer_state(model, self.teacher, self.opt), checkpoint_id=os.path.join(tmp, "trainer"))
            save_file(rng_states(self.gen), os.path.join(tmp, "trainer", f"rng-{rank}.safetensors"))
            if rank == 0:
                pathlib.Path(tmp, "trainer", "state.json").write_text(json.dumps(info))
        dist.barrier()
        if rank == 0:
            if os.path.exists(path):  # only "final" is rewritten: the old one is deleted after the new one is in place
                shutil.rmtree(path + ".old", ignore_errors=True)
                os.replace(path, path + ".old")
            os.replace(tmp, path)
            shutil.rmtree(path + ".old", ignore_errors=True)
        dist.barrier()

    def begin_step(self, step, order, bad):
        """What a stop during this step saves: the data order, bad count and RNG states at its start."""
        self.began = (step, order, bad, rng_states(self.gen))

    def end_step(self, step, rec, order, bad):
        """After a step: its metrics line, a checkpoint if one is due or any rank has a stop request (then True)."""
        self.write(rec)
        a = self.args
        due = (a.save_every and step % a.save_every == 0) or (
            self.rank == 0 and a.save_every_min and time.time() - self.saved_at >= 60 * a.save_every_min)
        tell_others()
        stop, due = (x > 0 for x in all_reduce_sum([float("at" in STOP), float(bool(due))], self.device))
        if stop or due:
            self.save(step, order, bad)
        if stop:
            self.stopped, self.stopped_at = True, step
        return stop

    def abandon(self, step, rec, order, bad):
        """After Stopped. The update of `step` done (the stop came in its evaluation; rec is its metrics):
        checkpoint-step, the evaluation redone on resume. Else the step is abandoned before its optimizer step:
        checkpoint-(step - 1) with the data order and RNG states of its start, so that resuming replays it exactly."""
        # gradients of the micro-batches already run: with any, get_optimizer_state_dict takes the optimizer state
        # as initialized and, before the first update, saves an empty one that the resume cannot load
        self.opt.zero_grad(set_to_none=True)
        if rec.get("step") == step:
            self.save(step, order, bad, pending=rec)
        elif self.began is not None:
            step, order, bad, rng = self.began
            set_rng_states(rng, self.gen)
            self.save(step - 1, order, bad)
            self.abandoned, step = step, step - 1
        elif not self.args.resume:  # during the start-up of a new run (its step-0 evaluation saves checkpoint-0)
            step = None  # a stop before the first step of a new run saves nothing
        self.stopped, self.stopped_at = True, step

    def finish(self):
        """The final model dir, or after a stop the line with the resume command. Returns the exit code."""
        if self.log:
            self.log.close()
        if not self.stopped:
            self.save_dir(os.path.join(self.args.out, "final"))
            return 0
        if self.rank == 0:
            cmd = f"torchrun --nproc_per_node={self.world} train.py" if self.world > 1 else "python train.py"
            # the signal that stopped the run, whichever rank got it
            what, at = ((STOP["name"], STOP["at"]) if "name" in STOP
                        else dist.distributed_c10d._get_default_store().get("rlsd-stop").decode().split())
            done = f"step {self.abandoned} abandoned" if self.abandoned else f"stopped after step {self.stopped_at}"
            print(f"{what} during start-up: stopped, nothing saved" if self.stopped_at is None else
                  f"{what}: {done}; checkpoint-{self.stopped_at} complete {time.time() - float(at):.1f} s after the "
                  f"signal; resume with: {cmd} --resume --out {self.args.out}", file=sys.stderr, flush=True)
        return 0 if "TORCHELASTIC_RUN_ID" in os.environ else 130  # (torchrun reports non-zero as a failure)


def write_credit(path, step, tok, refs, resp, resp_mask, rewards, adv, delta, n):
    """Append the per-token Delta_t and w_t = exp(sign(A) Delta_t) of the first n responses to path."""
    with open(path, "a", encoding="utf-8") as f:
        for i in range(min(n, len(refs))):
            m = resp_mask[i].bool()
            d = delta[i][m]
            f.write(json.dumps({"step": step, "question": refs[i]["question"], "answer": refs[i]["answer"],
                                "reward": rewards[i].item(), "advantage": adv[i].item(),
                                "tokens": [tok.decode([t]) for t in resp[i][m].tolist()], "delta": d.tolist(),
                                "weight": log_evidence_weight(adv[i], d).exp().tolist()}, ensure_ascii=False) + "\n")

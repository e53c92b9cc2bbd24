"""The run directory (--out): metrics.jsonl, args.json, credit.jsonl, leaks.jsonl, checkpoint-N/
and final/; resuming a stopped run, and stopping on a signal. The loop sees one object, `Run`: built
before the first step (a new run, or a stopped one restored), told where each step begins and ends,
and at the end `finish()`. Run owns every piece of resumable state: the data order still to use, the
count of non-finite steps in a row, the metrics line awaiting its held-out accuracy, the RNG states.

A checkpoint is a Hugging Face model directory that from_pretrained loads with no project code,
plus in trainer/ what --resume needs: the sharded fp32 weights, optimizer state and teacher
(torch.distributed.checkpoint), every rank's RNG states, and state.json (step, data order,
settings). It is written to NAME.tmp and renamed when complete, so an interrupted save leaves the
earlier ones.

Stopping: a stop request (stop.py) raises Stopped at the next safe point on every rank; the loop
hands it to Run.abandon, which saves what a resume needs to replay the step exactly."""
import contextlib
import copy
import hashlib
import json
import os
import pathlib
import re
import shutil
import sys
import time

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict,
                                                     set_model_state_dict,
                                                     set_optimizer_state_dict)
from tqdm import tqdm

import data
from cli import UserError
from hf import first_line, tokenizer_of, write_video_config
from parallel import all_reduce_sum
from rlsd import leaked, log_evidence_weight
from stop import STOP, Stopped, agree, poll, store, tell_others

RUN_FILES = ("metrics.jsonl", "args.json", "final")  # besides checkpoint-N: what marks a run
LOG_FILES = ("credit.jsonl", "leaks.jsonl")  # one line per response, cut back on a resume
STATE_KEYS = ("step", "order", "bad", "args", "id")  # what trainer/state.json must hold


# ------------------------------------------------------------------- before anything is loaded
def check_out(out, resume, overwrite):
    """--out is a writable directory and holds no other run unless --resume or --overwrite."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file, not a directory")
    names = os.listdir(out) if os.path.isdir(out) else []
    earlier = sorted(n for n in names if n in RUN_FILES or n.startswith("checkpoint-"))
    if earlier and not (resume or overwrite):
        listed = ", ".join(earlier[:3])
        if len(earlier) > 3:
            listed += ", ..."
        raise UserError(f"--out {out} holds another run ({listed}): --resume continues it, "
                        "--overwrite replaces it")
    # nothing is created yet (a later error must leave no trace): the nearest existing directory
    # on the way to out must be writable
    existing = os.path.abspath(out)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"--out {out} is not writable ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out {out} is not writable ({existing}: permission denied)")


def checkpoint_steps(out):
    """The N of every checkpoint-N directory in out (complete or not)."""
    names = os.listdir(out) if os.path.isdir(out) else []
    return sorted(int(n.split("-")[1]) for n in names if re.fullmatch(r"checkpoint-\d+", n))


def find_checkpoint(resume, out):
    """--resume: the latest complete checkpoint-N in out ("latest"), or the given one."""
    if resume == "latest":
        complete = [s for s in checkpoint_steps(out)
                    if os.path.isfile(os.path.join(out, f"checkpoint-{s}", "trainer/state.json"))]
        if not complete:
            raise UserError(f"--resume: no complete checkpoint in {out} "
                            "(runs save them with --save_every N)")
        return os.path.join(out, f"checkpoint-{max(complete)}")
    if not os.path.isfile(os.path.join(resume, "trainer", "state.json")):
        raise UserError(f"--resume {resume}: not a complete checkpoint (no trainer/state.json)")
    return resume


def saved_state(path):
    """trainer/state.json of a checkpoint: step, order, bad, pending, args, id."""
    state_file = pathlib.Path(path, "trainer", "state.json")
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError) as e:  # unreadable, cut short, not JSON
        raise UserError(f"--resume: {state_file} is damaged ({first_line(e)}); resume from an "
                        "earlier checkpoint (--resume CHECKPOINT_DIR)") from None
    if not isinstance(state, dict) or any(k not in state for k in STATE_KEYS):
        raise UserError(f"--resume: {state_file} is damaged (not a training state); resume from "
                        "an earlier checkpoint (--resume CHECKPOINT_DIR)")
    return state


def run_id(model, data_path, eval_path, world):
    """What must not change across a resume: the model, the data files' content (sha1), the
    process count."""
    sha1 = {p: hashlib.sha1(pathlib.Path(p).read_bytes()).hexdigest()
            for p in (data_path, eval_path) if p is not None}
    return {"model": model, "data": sha1.get(data_path), "eval_data": sha1.get(eval_path),
            "world": world}


def check_same_run(path, this_id):
    saved = saved_state(path)["id"]
    for k in this_id:
        if this_id[k] == saved[k]:
            continue
        if k == "world":
            raise UserError(f"--resume: processes differs from the stopped run's "
                            f"({saved[k]} then, {this_id[k]} now)")
        if k == "model":
            raise UserError(f"--resume: --model differs from the stopped run's "
                            f"({saved[k]} then, {this_id[k]} now)")
        raise UserError(f"--resume: --{k} (its content) differs from the stopped run's")


# ----------------------------------------------------------------------------- checkpoints
def trainer_state(model, teacher, opt):
    """What trainer/ holds besides the RNG states and state.json."""
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    if teacher is not None:
        state["teacher"] = get_model_state_dict(teacher)
    return state


def rng_states(gen):
    states = {"torch": torch.get_rng_state(), "sampler": gen.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_states(rng, gen):
    torch.set_rng_state(rng["torch"])
    gen.set_state(rng["sampler"])
    if "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"])


def keep_lines_before(path, start):
    """Drop the lines of a JSONL file whose step is start or later (they are redone); return the
    kept records. A last line cut short (a crash while it was written) is dropped, and said so; a
    damaged line before it is a UserError."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines(keepends=True)
    last = max((n for n, line in enumerate(lines, 1) if line.strip()), default=0)
    kept = []
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = record["step"]
        except (ValueError, KeyError, TypeError):
            if n < last:
                raise UserError(f"--resume: {path}:{n} is damaged (not a metrics line); "
                                "remove that line and resume again") from None
            print(f"--resume: {path}:{n}, a line cut short, dropped ({len(line)} characters)")
            continue
        if step < start:
            kept.append(line.rstrip("\n") + "\n")
            records.append(record)
    path.write_text("".join(kept))
    return records


# ------------------------------------------------------------------- the run, as the loop sees it
class Run:
    """--out of one run, and every piece of its state that a resume needs.

    start: the first step to run. order: the data order still to use. bad: non-finite steps in a
    row. pending: a metrics line awaiting its held-out accuracy (step 0's, or one a stop cut
    short). first_accuracy / last_accuracy: the held-out accuracy at step 0 and the latest one."""

    def __init__(self, args, this_id, model, teacher, opt, gen, proc, save_dtype, rank, world):
        self.args = args
        self.id = this_id
        self.rank = rank
        self.world = world
        # the model's class name for config.json (the FSDP wrapper's only if the config has none)
        self.arch = type(model).__name__
        if model.config.architectures:
            self.arch = model.config.architectures[0]
        self.model = model
        self.teacher = teacher
        self.opt = opt
        self.gen = gen
        self.proc = proc
        self.save_dtype = save_dtype
        self.device = next(model.parameters()).device

        self.start = 1
        self.order = []
        self.bad = 0
        self.pending = {"step": 0}
        self.first_accuracy = None
        self.last_accuracy = None
        self.began = None  # the state at the start of the step in progress: what a stop saves
        self.rec = {}  # the metrics line being completed
        self.stopped = False
        self.stopped_at = None  # the step of the checkpoint a stop left (None: nothing saved)
        self.abandoned = None  # the step a stop abandoned
        self.saved_at = time.time()

        if args.resume:  # before anything is written: a damaged checkpoint changes nothing
            self.restore(args.resume)
        if rank == 0:
            os.makedirs(args.out, exist_ok=True)
            if args.overwrite:  # the earlier run's files go; nothing of it is mixed with this one
                self.remove_earlier_run()
            pathlib.Path(args.out, "args.json").write_text(json.dumps(vars(args), indent=1))
        self.log = None
        if rank == 0:
            self.log = open(os.path.join(args.out, "metrics.jsonl"), "a")

    def remove_earlier_run(self):
        for name in os.listdir(self.args.out):
            if name in RUN_FILES + LOG_FILES or name.startswith("checkpoint-"):
                path = os.path.join(self.args.out, name)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.remove(path)

    def restore(self, path):
        """Weights, optimizer, teacher, RNG states, data order, step: what Run.save wrote. The
        output files keep their lines up to the checkpoint; what came after is redone."""
        sharded = trainer_state(self.model, self.teacher, self.opt)
        rng_file = os.path.join(path, "trainer", f"rng-{self.rank}.safetensors")
        try:
            dcp.load(sharded, checkpoint_id=os.path.join(path, "trainer"))
            rng = load_file(rng_file)
        except (Exception, CheckpointException) as e:  # damaged or missing files
            if isinstance(e, CheckpointException):  # its message names ranks; say what failed
                exception_and_traceback = next(iter(e.failures.values()))
                e = exception_and_traceback[0]
            raise UserError(f"--resume {path}: cannot read its training state "
                            f"({first_line(e)}); resume from an earlier checkpoint "
                            "(--resume CHECKPOINT_DIR)") from None
        set_model_state_dict(self.model, sharded["model"])
        set_optimizer_state_dict(self.model, self.opt, sharded["optim"])
        if self.teacher is not None:
            set_model_state_dict(self.teacher, sharded["teacher"])
        set_rng_states(rng, self.gen)
        info = saved_state(path)
        self.start = info["step"] + 1
        self.order = info["order"]
        self.bad = info["bad"]
        self.pending = info.get("pending")
        if self.rank == 0:
            out = pathlib.Path(self.args.out)
            history = keep_lines_before(out / "metrics.jsonl", self.start)
            for name in LOG_FILES:
                keep_lines_before(out / name, self.start)
            for rec in history:
                if rec.get("eval/accuracy") is not None:
                    if rec["step"] == 0:
                        self.first_accuracy = rec["eval/accuracy"]
                    self.last_accuracy = rec["eval/accuracy"]

    # ---- stopping
    def safe_point(self):
        """A safe point where the ranks are in step: Stopped on every rank if any was asked."""
        agree(self.device)

    @contextlib.contextmanager
    def stoppable(self):
        """A phase whose ranks may stop apart (decoding): yields a local check for its inner
        loop; the ranks meet at the block's end and all raise Stopped if any was asked."""
        try:
            yield poll
        except Stopped:
            pass
        self.safe_point()

    # ---- the steps
    def evaluate_pending(self, evaluate):
        """Before the first step: step 0's held-out accuracy, or the one a stop cut short."""
        if self.pending is None:
            return
        self.rec = dict(self.pending)
        self.record_accuracy(evaluate())
        self.write(self.rec)

    def record_accuracy(self, accuracy):
        self.rec["eval/accuracy"] = accuracy
        if self.rec["step"] == 0:
            self.first_accuracy = accuracy
        self.last_accuracy = accuracy

    def begin_step(self, step):
        """What a stop during this step saves: the data order, bad count and RNG states at its
        start."""
        self.began = {"step": step, "order": self.order, "bad": self.bad,
                      "rng": rng_states(self.gen)}

    def take_prompts(self, step, num_rows):
        """The step's --prompts_per_step row indices, in the run's data order (all ranks)."""
        a = self.args
        idx, self.order = data.take_prompts(self.order, num_rows, a.prompts_per_step, a.seed, step)
        return idx

    def dump_credit(self, step, refs, roll, rewards, adv, logp_teacher):
        """--dump_credit N: Delta_t and w_t of the step's first N responses to credit.jsonl."""
        if not self.args.dump_credit or self.rank != 0:
            return
        path = os.path.join(self.args.out, "credit.jsonl")
        delta = logp_teacher - roll["logp"]  # [N, T] against the sampler's log-probs
        write_credit(path, step, tokenizer_of(self.proc), refs, roll["resp"], roll["resp_mask"],
                     rewards, adv, delta, self.args.dump_credit)

    def write_leaks(self, step, refs, texts):
        """The step's responses that leak (rlsd.leaked: what leak/rate counts) to leaks.jsonl, rank
        0's share of them; no file while none has."""
        if self.rank != 0:
            return
        rows = [{"step": step, "question": r["question"], "answer": r["answer"], "response": text}
                for r, text in zip(refs, texts) if leaked(text)]
        if not rows:
            return
        with open(os.path.join(self.args.out, "leaks.jsonl"), "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    def end_step(self, rec, evaluate):
        """After a step's update: count a skipped update (a UserError after --max_bad_steps in a
        row), the held-out accuracy if due, the metrics line, and a checkpoint if one is due or
        any rank was asked to stop. Returns True on a stop (every rank saved this step)."""
        a = self.args
        step = rec["step"]
        self.rec = rec
        if rec["skipped"]:
            self.bad += 1
        else:
            self.bad = 0
        if rec["skipped"] and self.rank == 0:
            tqdm.write(f"step {step}: non-finite loss or grad norm, update skipped "
                       f"({self.bad} in a row)")
        if self.bad >= a.max_bad_steps:
            raise UserError(f"{self.bad} non-finite steps in a row (--max_bad_steps): "
                            "lower --lr or check the data")
        if (a.eval_every and step % a.eval_every == 0) or step == a.steps:
            self.record_accuracy(evaluate())
        self.write(rec)

        due = bool(a.save_every and step % a.save_every == 0)
        minutes = (time.time() - self.saved_at) / 60
        if self.rank == 0 and a.save_every_min and minutes >= a.save_every_min:
            due = True  # (rank 0's clock decides for all)
        tell_others()
        asked, due = all_reduce_sum([float("at" in STOP), float(due)], self.device)
        if asked or due:
            self.save(step)
        if asked:
            self.stopped = True
            self.stopped_at = step
        return bool(asked)

    def abandon(self):
        """After Stopped. If the update of the step in progress is done (the stop came in its
        evaluation): checkpoint-step, its evaluation redone on resume. Else the step is abandoned
        before its optimizer step: checkpoint-(step - 1) with the data order and RNG states of
        its start, so that resuming replays it exactly."""
        # gradients of the micro-batches already run: with any, get_optimizer_state_dict takes
        # the optimizer state as initialized and, before the first update, saves an empty one
        # that the resume cannot load
        self.opt.zero_grad(set_to_none=True)
        self.stopped = True
        if self.began is not None:
            step = self.began["step"]
        else:
            step = self.start - 1  # a stop before the first step (the model load, step 0's eval)
        if self.rec.get("step") == step:  # the stop came in this step's (or step 0's) evaluation
            self.save(step, pending=self.rec)
            self.stopped_at = step
        elif self.began is not None:
            set_rng_states(self.began["rng"], self.gen)
            self.order = self.began["order"]
            self.bad = self.began["bad"]
            self.save(step - 1)
            self.abandoned = step
            self.stopped_at = step - 1
        elif self.args.resume:  # during the start-up of a resumed run: its checkpoint stays
            self.stopped_at = step
        else:  # during the start-up of a new run: nothing saved
            self.stopped_at = None

    def finish(self):
        """The final model dir, or after a stop the line with the resume command. Returns the
        exit code."""
        if self.log:
            self.log.close()
        if not self.stopped:
            self.save_dir(os.path.join(self.args.out, "final"))
            return 0
        if self.rank == 0:
            print(self.stop_message(), file=sys.stderr, flush=True)
        if "TORCHELASTIC_RUN_ID" in os.environ:
            return 0  # (torchrun reports a non-zero exit as a failure)
        return 130

    def stop_message(self):
        if "name" in STOP:  # the signal that stopped the run, whichever rank got it
            signal_name = STOP["name"]
            signal_at = STOP["at"]
        else:
            signal_name, signal_at = store().get("rlsd-stop").decode().split()
        if self.stopped_at is None:
            return f"{signal_name} during start-up: stopped, nothing saved"
        if self.abandoned:
            done = f"step {self.abandoned} abandoned"
        else:
            done = f"stopped after step {self.stopped_at}"
        if self.world > 1:
            cmd = f"torchrun --nproc_per_node={self.world} train.py"
        else:
            cmd = "python train.py"
        seconds = time.time() - float(signal_at)
        return (f"{signal_name}: {done}; checkpoint-{self.stopped_at} complete {seconds:.1f} s "
                f"after the signal; resume with: {cmd} --resume --out {self.args.out}")

    # ---- files
    def write(self, rec):
        if self.log:
            print(json.dumps(rec), file=self.log, flush=True)

    def save(self, step, pending=None):
        """checkpoint-step with the run's state; then all but the --keep_last newest go."""
        info = {"step": step, "order": self.order, "bad": self.bad, "pending": pending,
                "args": vars(self.args), "id": self.id}
        out = self.args.out
        self.save_dir(os.path.join(out, f"checkpoint-{step}"), info)
        keep = self.args.keep_last
        if self.rank == 0 and keep:  # (0 keeps all)
            for old in checkpoint_steps(out)[:-keep]:
                shutil.rmtree(os.path.join(out, f"checkpoint-{old}"), ignore_errors=True)
        self.saved_at = time.time()

    def save_dir(self, path, info=None):
        """The model directory at `path`; with `info` (state.json) also the training state in
        path/trainer. Written to path.tmp, renamed when complete."""
        tmp = path + ".tmp"
        try:
            self.write_tmp(tmp, info)
        except (OSError, SafetensorError, CheckpointException) as e:  # a full disk, a quota
            if self.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            raise UserError(f"cannot save {path} ({first_line(e)}); the earlier checkpoints are "
                            "kept: free some space, then resume (--resume)") from None
        dist.barrier()
        if self.rank == 0:
            if os.path.exists(path):  # rewritten (final/, or a checkpoint saved again at a stop):
                shutil.rmtree(path + ".old", ignore_errors=True)  # the old one goes once the new
                os.replace(path, path + ".old")  # one is in place
            os.replace(tmp, path)
            shutil.rmtree(path + ".old", ignore_errors=True)
        dist.barrier()

    def write_tmp(self, tmp, info):
        """save_dir's files, into the directory tmp."""
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        dist.barrier()
        full = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(self.model, options=full)  # every rank calls it
        if self.rank == 0:
            self.write_model_dir(tmp, state)
        if info is not None:
            trainer_dir = os.path.join(tmp, "trainer")
            dcp.save(trainer_state(self.model, self.teacher, self.opt), checkpoint_id=trainer_dir)
            rng_file = os.path.join(trainer_dir, f"rng-{self.rank}.safetensors")
            save_file(rng_states(self.gen), rng_file)
            if self.rank == 0:
                pathlib.Path(trainer_dir, "state.json").write_text(json.dumps(info))

    def write_model_dir(self, path, state):
        """A Hugging Face model directory: safetensors weights in the saved dtype, config.json
        naming the original class, generation config, tokenizer or processor."""
        model = self.model
        if getattr(model.config, "tie_word_embeddings", False):
            # tied to the input embedding; from_pretrained re-ties it
            state.pop("lm_head.weight", None)
        weights = {k: v.to(self.save_dtype).contiguous() for k, v in state.items()}
        save_file(weights, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        config = copy.deepcopy(model.config)
        config.architectures = [self.arch]  # the original class, not the FSDP wrapper
        config.save_pretrained(path)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(path)
        self.proc.save_pretrained(path)  # tokenizer, or processor (+ image processor, template)
        write_video_config(self.proc, path)


def write_credit(path, step, tok, refs, resp, resp_mask, rewards, adv, delta, n):
    """Append the per-token Delta_t and w_t = exp(sign(A) Delta_t) of the first n responses to
    path."""
    with open(path, "a", encoding="utf-8") as f:
        for i in range(min(n, len(refs))):
            real = resp_mask[i].bool()
            d = delta[i][real]
            row = {"step": step,
                   "question": refs[i]["question"],
                   "answer": refs[i]["answer"],
                   "reward": rewards[i].item(),
                   "advantage": adv[i].item(),
                   "tokens": [tok.decode([t]) for t in resp[i][real].tolist()],
                   "delta": d.tolist(),
                   "weight": log_evidence_weight(adv[i], d).exp().tolist()}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

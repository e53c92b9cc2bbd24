"""Stop requests: SIGINT, SIGTERM or SIGUSR1 asks the run to stop, and every rank learns of it at
the next safe point, where Stopped is raised on all ranks together (rundir.Run saves and exits).

There are two kinds of safe points. Where the ranks are in step (between micro-batches, at a
phase's end) a check is a collective, `agree`: every rank learns whether any rank was asked.
Inside a rollout the ranks decode at their own pace and nothing collective may run, so `poll`
checks locally (this rank's signal, or another's through the process group's store) and raises on
that rank alone; the ranks then meet at the end of the phase (rundir.Run.stoppable) and all raise.
"""
import os
import signal
import sys
import time

import torch.distributed as dist

from parallel import all_reduce_sum

STOP = {}  # when the first SIGINT/SIGTERM/SIGUSR1 came (or another rank's, seen through the store)


class Stopped(Exception):
    """A stop request reached a safe point: the step in progress is abandoned (Run.abandon)."""


def on_signal(signum, frame):
    """First signal: abandon the step at its next safe point, save, exit. A later one exits at
    once."""
    # torchrun relays a signal it gets to its workers, so one within 3 s of the first is the same
    if "at" in STOP and time.time() - STOP["at"] > 3:
        name = signal.Signals(signum).name
        print(f"\n{name} again: exiting now, nothing saved", file=sys.stderr, flush=True)
        os._exit(130)
    STOP.setdefault("at", time.time())
    STOP.setdefault("name", signal.Signals(signum).name)


def catch_stop_signals():
    """SIGINT, SIGTERM (torchrun, SLURM, Kubernetes) and SIGUSR1 (SLURM's --signal) request a
    stop."""
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(s, on_signal)


def store():
    return dist.distributed_c10d._get_default_store()


def tell_others():
    """Put this rank's stop request in the process group's store, once."""
    if "name" in STOP and not STOP.get("told"):
        store().set("rlsd-stop", f"{STOP['name']} {STOP['at']}")
        STOP["told"] = True


def poll():
    """A safe point where ranks need not be in step (between decode chunks): Stopped if any rank
    was signalled."""
    tell_others()
    if "at" in STOP or store().check(["rlsd-stop"]):
        STOP.setdefault("at", time.time())
        raise Stopped


def agree(device):
    """A safe point where ranks are in step (phase ends, micro-batches): Stopped on all if on
    any."""
    tell_others()
    asked = all_reduce_sum([float("at" in STOP)], device)[0]
    if asked > 0:
        STOP.setdefault("at", time.time())
        raise Stopped

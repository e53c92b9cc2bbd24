"""What every command-line entry point shares: one kind of error, one way to report it, one JSONL reader, the
argument types of flags that are not plain numbers. No torch here: verify.py and plot.py use it too.

Library code raises `UserError` with a one-line message (naming the file and line, or the flag); only an entry
point, wrapped in `@entry_point`, turns it into `error: ...` on stderr and exit code 2."""
import argparse
import functools
import json
import os
import sys
import time


class UserError(Exception):
    """Something the user can fix (a data row, a flag, a path, a setting); the message is one line."""


def fail(msg):
    """`error: msg` on stderr (rank 0 only, under torchrun) and in torchrun's error file, exit code 2."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"error: {msg}", file=sys.stderr)
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):  # so that torchrun's failure summary shows it instead of a traceback
        with open(os.environ["TORCHELASTIC_ERROR_FILE"], "w") as f:
            json.dump({"message": {"message": f"error: {msg}", "extraInfo": {"py_callstack": f"error: {msg}",
                                                                             "timestamp": str(int(time.time()))}}}, f)
    sys.exit(2)


def gen_batch_arg(v):
    if v != "auto" and not v.isdigit():
        raise argparse.ArgumentTypeError(f"expected a number of rows or 'auto', got {v!r}")
    return v if v == "auto" else int(v)


def json_object(v):
    try:
        obj = json.loads(v)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg})")
    if not isinstance(obj, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return obj


def entry_point(main):
    """Decorate a command's main(): a UserError becomes its one line and exit code 2."""
    @functools.wraps(main)
    def run(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            fail(str(e))
    return run


def read_jsonl(path):
    """Yield (line number, object) for each non-blank line of a JSONL file: UTF-8 (a BOM is fine), every line a JSON
    object, else UserError naming the file and line when reached (the caller's checks of earlier rows come first)."""
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    for n, raw in enumerate(lines, 1):
        try:
            line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{path}:{n}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{n}: expected a JSON object")
        yield n, row

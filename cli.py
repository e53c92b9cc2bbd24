"""What every command-line entry point shares: one kind of error, one way to report it, one JSONL
reader, the argument types of flags that are not plain numbers. No torch here: verify.py and plot.py
use it too.

Library code raises `UserError` with a one-line message (naming the file and line, or the flag);
only an entry point, wrapped in `@entry_point`, turns it into `error: ...` on stderr and exit
code 2.
"""
import argparse
import functools
import json
import os
import sys
import time


class UserError(Exception):
    """Something the user can fix (a data row, a flag, a path, a setting): a one-line message."""


def fail(msg):
    """`error: msg` on stderr (rank 0 only, under torchrun) and in torchrun's error file; exit 2."""
    line = f"error: {msg}"
    if int(os.environ.get("RANK", "0")) == 0:
        print(line, file=sys.stderr)
    # so that torchrun's failure summary shows it instead of a traceback
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):
        write_torchelastic_error(os.environ["TORCHELASTIC_ERROR_FILE"], line)
    sys.exit(2)


def write_torchelastic_error(path, line):
    """torchrun's error file: `line` as the message and as the call stack, with the time."""
    extra_info = {"py_callstack": line, "timestamp": str(int(time.time()))}
    with open(path, "w") as f:
        json.dump({"message": {"message": line, "extraInfo": extra_info}}, f)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors (an unknown flag, a value of the wrong type) are one line
    `error: ...` and exit 2, not its usage text."""

    def error(self, message):
        fail(f"{message} (python {self.prog} --help lists the flags)")


def gen_batch_arg(v):
    """--gen_batch: a number of rows, or "auto"."""
    if v == "auto":
        return v
    if not v.isdigit():
        raise argparse.ArgumentTypeError(f"expected a number of rows or 'auto', got {v!r}")
    return int(v)


def json_object(v):
    """A flag whose value is a JSON object (a dict)."""
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
    """Yield (line number, object) for each non-blank line of a JSONL file.

    UTF-8 (a BOM is fine), every line a JSON object, else UserError naming the file and line when
    reached (the caller's checks of earlier rows come first).
    """
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    for n, raw in enumerate(lines, 1):
        encoding = "utf-8"
        if n == 1:
            encoding = "utf-8-sig"  # drops a byte order mark
        try:
            line = raw.decode(encoding)
        except UnicodeDecodeError as e:
            bad_byte = raw[e.start]
            raise UserError(f"{path}:{n}: not UTF-8 text "
                            f"(byte 0x{bad_byte:02x} at column {e.start + 1})") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise UserError(f"{path}:{n}: JSON nested too deeply to read") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{n}: expected a JSON object")
        yield n, row

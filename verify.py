"""Binary answer verification: reward 1.0 if the response's final answer equals the reference.

Extraction order: the last <answer>...</answer>, else the last \\boxed{...} (nested braces).
A response with neither gets reward 0. Comparison: numbers by value (integers exactly, decimals
and simple fractions a/b or \\frac{a}{b} to a 1e-6 relative tolerance), multiple-choice letters
((B), B., B) ...) case-insensitively, anything else as case- and whitespace-insensitive text.
Pure stdlib; linear time in the response length; never raises on odd text.

CLI: python verify.py RESPONSE ANSWER   -> prints 1 or 0 and the extracted answer
"""
import re
import sys
from fractions import Fraction

NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
FRAC = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")
LETTER = re.compile(r"\(?([A-Za-z])[).:]?")
MAX_CHARS = 200  # a longer "final answer" is compared as text only


def last_boxed(text):
    """Content of the last \\boxed{...}, braces matched; None if absent or unclosed."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None


def extract_answer(response):
    """The final answer string of a response, or None."""
    end = response.rfind("</answer>")
    start = response.rfind("<answer>", 0, max(end, 0))
    if end >= 0 and start >= 0:
        return response[start + len("<answer>"):end].strip()
    boxed = last_boxed(response)
    return boxed.strip() if boxed is not None else None


def normalize(s):
    s = s.strip().strip("$").strip()
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    s = s.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("{,}", "")
    return re.sub(r"\s+", " ", s).strip().rstrip(".").strip()


def to_number(s):
    """A Fraction for '3', '-2.5', '1,000', '3/4', '\\frac{3}{4}'; else None."""
    s = s.replace(" ", "")
    if len(s) > 64:
        return None
    m = FRAC.fullmatch(s)
    if m:
        s = f"{m.group(1)}/{m.group(2)}"
    if re.fullmatch(r"[+-]?\d{1,3}(,\d{3})+(\.\d*)?", s):
        s = s.replace(",", "")
    parts = s.split("/")
    if len(parts) > 2 or not all(NUMBER.fullmatch(p) for p in parts):
        return None
    try:
        value = Fraction(parts[0])
        return value / Fraction(parts[1]) if len(parts) == 2 else value
    except (ValueError, ZeroDivisionError):
        return None


def is_equivalent(pred, gold):
    """True if the extracted answer pred means the same as the reference gold."""
    pred, gold = normalize(pred), normalize(gold)
    if not pred or len(pred) > MAX_CHARS:
        return pred == gold and bool(pred)
    a, b = to_number(pred), to_number(gold)
    if a is not None and b is not None:
        return a == b or abs(a - b) <= 1e-6 * max(abs(a), abs(b))
    la, lb = LETTER.fullmatch(pred), LETTER.fullmatch(gold)
    if la and lb:
        return la.group(1).upper() == lb.group(1).upper()
    return pred.lower() == gold.lower()


def reward(response, answer):
    """1.0 if the response's extracted answer is equivalent to `answer`, else 0.0 (never raises)."""
    try:
        pred = extract_answer(response)
        return float(pred is not None and is_equivalent(pred, answer))
    except Exception:  # odd text must cost a reward, never a training run
        return 0.0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python verify.py RESPONSE ANSWER")
    pred = extract_answer(sys.argv[1])
    print(int(reward(sys.argv[1], sys.argv[2])), f"(extracted: {pred!r})")

"""Binary answer verification: reward 1.0 when a response's final answer equals the reference.

Extraction, first rule that applies (reasoning inside <think>...</think> is dropped first; an
unclosed <think> means there is no answer yet):
  1. answer_tag  the last <answer>...</answer>; an empty tag is an empty answer (reward 0)
  2. boxed       the last \\boxed{...} or \\fbox{...}, nested braces matched
  3. answer_is   "the (final) answer is X": the last one, up to the end of its line or sentence
  4. answer_line the last line that starts with "Answer:" / "Final answer:"
  5. last_line   fallback: the last non-empty line if it is a bare answer (a number, a closed
                 form, "x = 5", a choice letter), else what follows its last "=" if that is a
                 number or closed form. Never a number from the middle of a sentence, so a
                 question echo or a sentence like "maybe 3 or 4" credits nothing.

Equivalence (is_equivalent), on both sides after stripping wrappers ($, \\(\\), \\text{}, \\left,
degrees, \\$, trailing units after a space, "x = "):
  - several answers joined by "or"/"and" are never equal to a single answer;
  - multiple choice: (B), B., B), "B) text", "Option B"; with `options`, an option's text counts as
    its letter; several different letters are not one letter;
  - matrices, tuples and intervals element-wise in order (bracket type matters), bare lists and
    \\{sets\\} in any order;
  - numbers: integers exactly, anything else within 1e-6 relative; 1,000 = 1{,}000 = 1\\,000 =
    1 000; a/b, \\frac, \\dfrac, \\tfrac, \\frac12, scientific notation; closed forms (+ - * / ^,
    parentheses, \\sqrt, \\pi, \\frac, n!) by value with a small bounded evaluator (no eval);
  - percentages: x% equals x and x/100 (so 50% = 50 = 0.5, but 0.5 != 50 without a %);
  - otherwise text, case- and whitespace-insensitive.
Linear time in the response length; long answers are compared as text; never raises.

CLI: python verify.py RESPONSE ANSWER [--options A_TEXT B_TEXT ...]
     python verify.py --jsonl FILE         (rows {response, answer[, options]}; prints accuracy)
"""
import argparse
import json
import math
import re
import sys
from fractions import Fraction

MAX_ANSWER = 1000  # a longer extracted answer is compared as plain text only
MAX_EXPR = 200  # the number parser and the evaluator see at most this many characters
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


# ----------------------------------------------------------------------------- extraction
BRACE = re.compile(r"[{}]")


def _last_braced(text, commands=("\\boxed", "\\fbox")):
    """Content of the last \\boxed{...} / \\fbox{...}; None if there is none or it is unclosed
    within 100k characters."""
    start, cmd = max((text.rfind(c + "{"), c) for c in commands)
    if start < 0:
        return None
    depth, i = 0, start + len(cmd)
    for m in BRACE.finditer(text, i, i + 100_000):  # brace to brace; a longer box counts as unclosed
        depth += 1 if m.group() == "{" else -1
        if depth == 0:
            return text[i + 1:m.start()]
    return None


ANSWER_LINE = re.compile(r"^[ \t*#_>]*(?:final[ \t]+)?answer[ \t*_]*:[ \t]*(.+)$", re.I | re.M)


def extract_with_rule(response):
    """(final answer string or None, name of the rule that found it)."""
    text = response
    if "</think>" in text:
        text = text[text.rfind("</think>") + len("</think>"):]
    elif "<think>" in text:
        return None, "unclosed_think"
    end = text.rfind("</answer>")
    start = text.rfind("<answer>", 0, max(end, 0))
    if end >= 0 and start >= 0:
        return text[start + len("<answer>"):end].strip(), "answer_tag"
    boxed = _last_braced(text)
    if boxed is not None:
        return boxed.strip(), "boxed"
    i = text.lower().rfind("answer is")
    if i >= 0:
        rest = text[i + len("answer is"):].split("\n", 1)[0]
        rest = re.split(r"\.(?:\s|$)", rest.lstrip(" :"), maxsplit=1)[0].strip(" *")
        if rest:
            return rest, "answer_is"
    lines = [m.group(1) for m in ANSWER_LINE.finditer(text[-100_000:])]
    if lines and lines[-1].strip(" *"):
        return lines[-1].strip(" *."), "answer_line"
    tail = text.rstrip()
    last = tail[tail.rfind("\n") + 1:].strip()
    if 0 < len(last) <= MAX_EXPR:
        bare = _normalize(last)
        if _value(bare) is not None or (_letters(bare) and tail.strip() == last):  # a letter only alone
            return last.strip(" ."), "last_line"
        if "=" in last:
            rhs = last.rsplit("=", 1)[1].strip(" .$")
            if _value(_normalize(rhs)) is not None:
                return rhs, "last_line"
    return None, "none"


def extract_answer(response):
    """The final answer string of a response, or None (see the module docstring for the rules)."""
    return extract_with_rule(response)[0]


# ----------------------------------------------------------------------------- normalization
WRAPPERS = [(r"^\$\$(.*)\$\$$", 1), (r"^\$(.*)\$$", 1), (r"^\\\((.*)\\\)$", 1), (r"^\\\[(.*)\\\]$", 1),
            (r"^\*\*(.*)\*\*$", 1), (r"^\\(?:boxed|fbox|text|textbf|mathrm|mbox)\{(.*)\}$", 1)]


def _normalize(s):
    """Strip presentation so that equal answers look alike; keeps the mathematical content."""
    s = s.strip()
    for _ in range(4):  # nested wrappers: $\boxed{\text{5}}$
        for pattern, group in WRAPPERS:
            m = re.match(pattern, s, re.S)
            if m and (not pattern.endswith(r"\}$") or _balanced(m.group(group))):
                s = m.group(group).strip()
    s = re.sub(r"(?<!\\)\\(?:left|right|displaystyle|!|;|:|quad|qquad| )|~", " ", s)
    s = re.sub(r"(?<!\\)\\,", "", s).replace("{,}", ",").replace("\\%", "%").replace("\\$", "").replace("$", "")
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree", "", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", s)
    s = re.sub(r"\\(?:text|mbox|mathrm|textbf)\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip()
    m = re.fullmatch(r"[A-Za-z](?:_\{?\w+\}?)?\s*=\s*([^=]+)", s)  # x = 5 -> 5
    if m:
        s = m.group(1).strip()
    m = re.fullmatch(r"([-+]?[\d.,]*\d%?) [A-Za-z][A-Za-z ]{0,20}(?:\^\d)?", s)  # 5 cm -> 5
    if m and not MULTI.search(s + " "):
        s = m.group(1)
    if re.fullmatch(r"[-+]?\d{1,3}( \d{3})+(\.\d+)?", s):  # 1 000 -> 1000
        s = s.replace(" ", "")
    return s


def _balanced(s, opening="{", closing="}"):
    """True if the brackets of s (by default only braces) never close more than they opened and end even."""
    depth = 0
    for c in s:
        depth += 1 if c in opening else -1 if c in closing else 0
        if depth < 0:
            return False
    return depth == 0


def _split_top(s, sep=","):
    """Split on sep outside (), [], {} (\\{ \\} count as braces). Returns the parts."""
    parts, depth, cur = [], 0, 0
    for i, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == sep and depth == 0:
            parts.append(s[cur:i])
            cur = i + 1
    return parts + [s[cur:]]


# ----------------------------------------------------------------------------- numbers and closed forms
NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def _exact(s):
    """Exact value (Fraction) of a plain number, a/b or \\frac{a}{b}; None otherwise."""
    s = re.sub(r"\s*([/+-])\s*", r"\1", s.strip())  # "- 3", "3 / 4"; but "3 4" is no number
    if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    m = re.fullmatch(r"(-?)\\frac\{(" + NUM + r")\}\{(" + NUM + r")\}", s)
    if m:
        s = f"{m.group(1)}{m.group(2)}/{m.group(3)}"
    parts = s.split("/")
    if len(s) > 100 or len(parts) > 2 or not all(re.fullmatch(NUM, p) for p in parts):
        return None
    if any(abs(int(e)) > 400 for e in re.findall(r"[eE]([-+]?\d+)", s)):
        return None  # 1e999999 would build a huge integer
    try:
        value = Fraction(parts[0])
        return value / Fraction(parts[1]) if len(parts) == 2 else value
    except ZeroDivisionError:
        return None


TOKEN = re.compile(r"\s*(\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+|\\[a-zA-Z]+|[-+*/^(){}\[\]!])")


class _Bad(Exception):
    pass


def _evaluate(s):
    """Float value of a closed form (numbers, + - * / ^, (), {}, \\sqrt, \\sqrt[n], \\pi, \\frac,
    \\cdot, \\times, \\div, n!, implicit products like 2\\sqrt{3}); None if it is not one.
    Bounded: at most MAX_EXPR characters, exponents and factorials of bounded size, no overflow."""
    if len(s) > MAX_EXPR:
        return None
    tokens, pos = [], 0
    s = s.strip()
    while pos < len(s):
        m = TOKEN.match(s, pos)
        if not m:
            return None
        tokens.append(m.group(1))
        pos = m.end()
    tokens.append("")
    i = 0

    def peek():
        return tokens[i]

    def take(expected=None):
        nonlocal i
        t = tokens[i]
        if expected is not None and t != expected:
            raise _Bad
        i += 1
        return t

    def expr():
        v = term()
        while peek() in ("+", "-"):
            v = v + term() if take() == "+" else v - term()
        return v

    def term():
        v = unary()
        while True:
            t = peek()
            if t in ("*", "/", "\\cdot", "\\times", "\\div"):
                take()
                r = unary()
                if t in ("/", "\\div"):
                    if r == 0:
                        raise _Bad
                    v = v / r
                else:
                    v = v * r
            elif t in ("(", "{", "\\pi", "\\sqrt", "\\frac"):
                v = v * power()  # implicit product: 2\sqrt{3}, 3(4); never two bare numbers ("3 4")
            else:
                return v

    def unary():
        if peek() in ("-", "+"):
            return -unary() if take() == "-" else unary()
        return power()

    def power():
        base = postfix()
        if peek() == "^":
            take()
            exp = unary()
            if abs(exp) > 1000 or (base < 0 and exp != int(exp)) or (base == 0 and exp < 0):
                raise _Bad
            try:
                return float(base) ** exp
            except OverflowError:
                raise _Bad
        return base

    def postfix():
        v = atom()
        while peek() == "!":
            take()
            if v != int(v) or not 0 <= v <= 100:
                raise _Bad
            v = float(math.factorial(int(v)))
        return v

    def group():
        if peek() == "{":
            take()
            v = expr()
            take("}")
            return v
        return atom()

    def atom():
        t = take()
        if t and (t[0].isdigit() or t[0] == "."):
            return float(t)
        if t in ("(", "{", "["):
            v = expr()
            take({"(": ")", "{": "}", "[": "]"}[t])
            return v
        if t == "\\pi":
            return math.pi
        if t == "\\frac":
            num, den = group(), group()
            if den == 0:
                raise _Bad
            return num / den
        if t == "\\sqrt":
            n = 2.0
            if peek() == "[":
                take()
                n = expr()
                take("]")
            v = group()
            if v < 0 or n == 0:
                raise _Bad
            return v ** (1 / n)
        raise _Bad

    try:
        v = expr()
        if peek() != "" or not math.isfinite(v):
            return None
        return v
    except (_Bad, OverflowError, ZeroDivisionError, ValueError, RecursionError):
        return None


def _value(s):
    """(exact Fraction or None, float) of a number or closed form; None if s is neither."""
    exact = _exact(s)
    if exact is not None:
        return exact, float(exact)
    if not re.search(r"\d|\\pi", s):
        return None
    v = _evaluate(s)
    return None if v is None else (None, v)


def _numbers_equal(a, b):
    (ea, fa), (eb, fb) = a, b
    if ea is not None and eb is not None:
        if ea.denominator == 1 and eb.denominator == 1:
            return ea == eb  # integers exactly
        return abs(ea - eb) <= Fraction(1, 10**6) * max(abs(ea), abs(eb))
    return math.isclose(fa, fb, rel_tol=1e-6, abs_tol=1e-12)


def _values_equal(p, g):
    """Numeric equality with the percentage convention: x% means x or x/100."""
    cands = []
    for s in (p, g):
        pct = s.endswith("%")
        v = _value(s.rstrip("%").strip()) if len(s) <= MAX_EXPR else None
        if v is None:
            return None
        cands.append([v] + ([(None if v[0] is None else v[0] / 100, v[1] / 100)] if pct else []))
    return any(_numbers_equal(a, b) for a in cands[0] for b in cands[1])


# ----------------------------------------------------------------------------- multiple choice
CHOICE = re.compile(r"(?:(?:option|choice)\s+)?\(?([A-Z])\)?(?:[.:)]|\s*$)", re.I)


def _letters(s, allow_text=True):
    """Set of choice letters named by s ('B', '(B)', 'B.', 'B) 8/11', 'A, C', 'A or B'), else None."""
    parts = [p.strip() for p in re.split(r",|\bor\b|\band\b", s) if p.strip()]
    found = set()
    for p in parts:
        m = CHOICE.match(p)
        if not m or (m.end() < len(p) and not (allow_text and len(parts) == 1 and p[m.end() - 1] in ".:)")):
            return None
        if re.search(r"(?:^|\s)\(?[A-Z][).:](?:\s|$)", p[m.end():]):
            return None  # "(A) (B) (C)": every option listed
        found.add(m.group(1).upper())
    return found or None


def _option_letter(s, options):
    """The letter of the one option whose text equals s, else None."""
    hits = {LETTERS[i] for i, o in enumerate(options[:26]) if _compare(_normalize(s), _normalize(str(o)))}
    return hits.pop() if len(hits) == 1 else None


# ----------------------------------------------------------------------------- equivalence
MATRIX = re.compile(r"\\begin\{[pbvB]?matrix\}(.*)\\end\{[pbvB]?matrix\}", re.S)
MULTI = re.compile(r"\s(?:or|and)\s|\\(?:text|mbox)\{\s*(?:or|and)\s*\}|\\lor")


def _squash(s):
    """Case-folded text with single spaces, and none next to a symbol: 'x + 1' == 'X+1', '3 4' != '34'."""
    return re.sub(r" ?([^\w ]) ?", r"\1", re.sub(r"\s+", " ", s.strip()).lower())


def _compare(p, g):
    """Equality of two normalized answers (no choice letters here)."""
    if _squash(p) == _squash(g):
        return bool(p)
    if len(p) > MAX_ANSWER or len(g) > MAX_ANSWER:
        return False
    if MULTI.search(p) or MULTI.search(g):
        return False  # "3 or 4": several answers are not one answer
    mp, mg = MATRIX.fullmatch(p), MATRIX.fullmatch(g)
    if mp or mg:
        if not (mp and mg):
            return False
        rp = [r.split("&") for r in mp.group(1).strip().split("\\\\") if r.strip()]
        rg = [r.split("&") for r in mg.group(1).strip().split("\\\\") if r.strip()]
        return [len(r) for r in rp] == [len(r) for r in rg] and all(
            _compare(_normalize(a), _normalize(b)) for ra, rb in zip(rp, rg) for a, b in zip(ra, rb))
    sp, sg = _sequence(p), _sequence(g)
    if sp or sg:
        if not (sp and sg) or len(sp[1]) != len(sg[1]):
            return False
        (kp, ep), (kg, eg) = sp, sg
        if "set" in (kp, kg) or (kp == kg == "list"):  # unordered
            if kp != kg:
                return False
            left = list(eg)
            for a in ep:
                hit = next((j for j, b in enumerate(left) if _compare(a, b)), None)
                if hit is None:
                    return False
                left.pop(hit)
            return True
        if "list" not in (kp, kg) and kp != kg:  # (0, 1] is not [0, 1]
            return False
        return all(_compare(a, b) for a, b in zip(ep, eg))
    eq = _values_equal(p, g)
    return bool(eq)


def _sequence(s):
    """(kind, normalized elements) for s with a top-level comma, else None. kind is 'set' for
    \\{...\\}, 'list' when unbracketed, else the bracket pair: '()' a tuple, '(]' an interval..."""
    kind, inner = "list", s
    if s.startswith("\\{") and s.endswith("\\}"):
        kind, inner = "set", s[2:-2]
    elif len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _balanced(s[1:-1], "([{", ")]}"):
        kind, inner = s[0] + s[-1], s[1:-1]
    parts = _split_top(inner)
    if len(parts) < 2:
        return None
    if kind == "list" and re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?", inner.strip()):
        return None  # a thousands separator, not a list
    return kind, [_normalize(q) for q in parts]


def is_equivalent(pred, gold, options=None):
    """True if the extracted answer pred means the same as the reference gold.
    options: the choices' texts in order (A, B, ...) when the question is multiple choice."""
    try:
        if len(pred) > MAX_ANSWER:
            return pred.strip().lower() == str(gold).strip().lower()
        p, g = _normalize(pred), _normalize(str(gold))
        if not p:
            return False
        gl = _letters(g, allow_text=False)
        if gl is None and options:
            letter = _option_letter(g, options)
            gl = {letter} if letter else None
        if gl is not None and (options or len(gl) > 1 or re.fullmatch(r"\(?[A-Z]\)?", g)):
            pl = _letters(p)
            if pl is None and options:
                letter = _option_letter(p, options)
                pl = {letter} if letter else None
            return pl == gl
        return _compare(p, g)
    except RecursionError:
        return False


def reward(response, answer, options=None):
    """1.0 if the response's extracted answer is equivalent to `answer`, else 0.0 (never raises)."""
    try:
        pred = extract_answer(response)
        return float(pred is not None and is_equivalent(pred, answer, options))
    except Exception:  # odd text must cost a reward, never a training run
        return 0.0


def main():
    p = argparse.ArgumentParser(description="Score a response against a reference answer (1 or 0).")
    p.add_argument("response", nargs="?")
    p.add_argument("answer", nargs="?")
    p.add_argument("--options", nargs="*", default=None, help="choice texts in order A, B, ...")
    p.add_argument("--jsonl", help="file of {response, answer[, options]} rows")
    args = p.parse_args()
    if args.jsonl:
        total = correct = 0
        with open(args.jsonl, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    correct += reward(row["response"], str(row["answer"]), row.get("options"))
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    sys.exit(f"error: {args.jsonl}:{n}: need a JSON object with response and answer ({e})")
                total += 1
        print(f"accuracy {correct / max(total, 1):.4f} ({int(correct)}/{total})")
        return
    if args.response is None or args.answer is None:
        p.error("give RESPONSE ANSWER, or --jsonl FILE")
    pred, rule = extract_with_rule(args.response)
    score = reward(args.response, args.answer, args.options)
    print(int(score))
    print(f"extracted {pred!r} by rule {rule}; reference {args.answer!r}")


if __name__ == "__main__":
    main()

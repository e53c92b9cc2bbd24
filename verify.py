"""Binary answer verification: reward 1.0 when a response's final answer equals the reference.

Extraction, first rule that applies, after dropping <think>...</think> (an unclosed <think> means no answer yet):
  1. answer_tag: the last <answer>...</answer>; an empty tag is an empty answer (reward 0). Its content starts at the
     first <answer> after the tag before it: "<answer>x<answer>9</answer>" is malformed (0)
  2. boxed: the last \\boxed{...} or \\fbox{...} (nested braces), unless "Final Answer:" / "final answer is" follows
  3. answer_is: X after the last "answer is", unless a hedge precedes it in its sentence ("I guess the answer is")
  4. answer_line: X after the last "Answer:" at most 80 characters into its line or a "####" opening a line (GSM8K).
     In 3 and 4, X ends with its line or sentence (in 3, "80!" is 80) and is kept if bare (a value, list, matrix or
     choice letters), else what follows its last is/are/equals if bare or at most 3 words ("The volume is 120"), else
     its sole value or letter by rule 9, no conclusion needed ("Jane started 3 hours ago"), else X as text; both are
     skipped when a CORRECTION follows within 2400 characters ("The answer is 80. Wait, no, it's 81").
  Rules 5-9 first drop up to 3 closing COURTESY sentences without a digit ("I hope this helps!").
  5. leading_value (no choice; at most 2400 characters): an opening plain number, bold or not, that ends its sentence
     or line ("80. To get this, I added 51 and 29."); not before a numbered list, "step", a hedge or a self-correction
  6. math_only: the content of the response or of its last line if that is one MATH_ONLY span, unless bare arithmetic
  7. last_line: the last non-empty line if it is a bare answer (a number, 20%, a closed form, "x = 5", a choice letter
     only when it is the whole response), else what follows its last "=" if that is a number or closed form and the
     line has no hedge or negation; bare arithmetic of plain numbers ("51 + 29", "x = 5 + 3") answers nothing
  8. leading_choice (choice only): an opening "B.", "(B)", "B)", "B:" or "**B**", unless the text lists labelled options
  9. free_text: the last sentence (split at . ! ? 。 and line ends; at most 600 characters). Refused: a HEDGE or echo
     of the task anywhere in it (maybe, could, question, "?", ...; for numbers also "or"), or a NEGATION, bound or
     condition in the clause of the answer ("So B is wrong", "not 5"; "If we multiply 7 by 8, we get 56" keeps 56).
     Multiple choice: its last standalone option letter ("I" before a lowercase word is the pronoun, "A" the article
       unless the word is a verb or and/or); refused when joined to the letter before it by or/and/","/"/" ("C or D"),
       when the sentence is only a letter (unless bold) or lists labelled options; with no letter, the number rule.
     Otherwise: its sole value (a PLAIN_NUMBER: 1,250, 3/4, 12:30, 30 %, eighty-one; or a math span with a digit, but
       "$1.45 and $2" is currency), counted from the clause of a CONCLUSION word or from after a RESULT verb (not the
       operands in "The sum of 51 and 29 is 80"), the last of these with a value after it, else from the whole
       sentence; after an "=" only what follows the last one. The sentence must conclude (a conclusion word, a result
       verb, a bold value **42** or an "="): no question text reaches the reward, so echoing its numbers earns 0.

Equivalence (is_equivalent), both sides after stripping WRAPPERS, TEXT commands, \\left, degrees and \\$, with
"percent"/"pct" -> %, spelled numbers read and up to 3 UNIT words after a value dropped ("5 cm", not "5 is too small"):
  - a left-hand side that is a name (letters, no digit or + - * ^ outside subscripts and parentheses) is dropped:
    x = 5, f(x) = 1, |AB| = 1, (p,q) = (3,2), x \\in [0,1), x \\approx 11, not "2x + z = 1"; chains x = 2 + 3 = 5
    and 51 + 29 = 80 keep the last side, "x = 1/3 \\approx 0.33" the exact 1/3; f(y) = y equals f(x) = x;
  - multiple choice: (B), B., B), "B) text", "Option B" or, with `options`, an option's text; "A, C" is not "A";
  - matrices, tuples and intervals element-wise in order (bracket type matters; +\\infty = \\infty), bare lists (split
    at commas, else semicolons, and at "and": "19, 46, and 82" = "19, 46, 82") and \\{sets\\} in any order (a set
    equals a bare list, never a tuple); several answers joined by "or" never equal a single answer;
  - numbers: integers exactly, others within 1e-6 relative; 1,000 = 1{,}000 = 1\\,000 = 1 000; a/b, \\frac and kin,
    scientific notation; closed forms (\\sqrt, \\pi, ^, n!) by a small bounded evaluator, no eval; a decimal of 4+
    significant digits also equals a non-decimal value rounding to it at its places (2.6667 = 8/3; 0.333 != 1/3);
  - decimal commas (reward only: it sees the response): 3,5 is 3.5 in a response in a language that writes them
    (DECIMAL_COMMA_TEXT) unless the reference is a choice or a list or 3,500 reads as grouping; else 3,5 is a list;
  - percentages: x% equals x and x/100 (50% = 50 = 0.5, but 0.5 != 50); else text, case- and whitespace-insensitive.
Linear time in the response length; long answers are compared as text; never raises.

CLI: python verify.py RESPONSE ANSWER [--options A_TEXT B_TEXT ...], or --jsonl FILE of {response, answer[, options]}
     rows: prints accuracy (a UTF-8 BOM is fine; a bad byte, row or file prints one "error: ..." line, exit 2)"""
import argparse
import math
import re
from fractions import Fraction
from itertools import accumulate

MAX_ANSWER = 1000  # a longer extracted answer is compared as plain text only
MAX_EXPR = 200  # the number parser and the evaluator see at most this many characters
MAX_SENTENCE = 600  # a longer last sentence holds no free-text answer
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


# ----------------------------------------------------------------------------- extraction
BRACES = re.compile(r"\{+|\}+")


def _last_braced(text, commands=("\\boxed", "\\fbox")):
    """(content, end) of the last \\boxed{...} / \\fbox{...}; None if none, or unclosed within 100k characters."""
    start, cmd = max((text.rfind(c + "{"), c) for c in commands)
    if start < 0:
        return None
    depth, i = 0, start + len(cmd)
    for m in BRACES.finditer(text, i, i + 100_000):  # run of braces to run; longer counts as unclosed
        n, opening = m.end() - m.start(), m.group()[0] == "{"
        if not opening and n >= depth:
            return text[i + 1:m.start() + depth - 1], m.start() + depth
        depth += n if opening else -n
    return None


# searched in lower case, per line: its last "answer:" at most 80 characters in (not inside a word), else "####" (GSM8K)
ANSWER_COLON = re.compile(r"^(?:[^\n]{0,80}(?<![a-z0-9])answer[ \t*_]*:|####)[ \t*_]*(?=[^\s*])", re.M)
FINAL_STATEMENT = re.compile(r"final answer\s*(?:is\b|:)", re.I)
MATH_ONLY = re.compile(r"\s*(?:\$\$(.+)\$\$|\\\[(.+)\\\]|\$(.+)\$|\\\((.+)\\\))[\s.]*", re.S)
SENTENCE_END = re.compile(r"(?<=[.!?؟])\s+|(?<=[。！？])|\n")


def extract_with_rule(response, choice=0):
    """(answer or None, the rule that found it); choice: the number of options if the reference is a letter, else 0."""
    if "<think>" in response and "</think>" not in response:
        return None, "unclosed_think"
    text = response.rsplit("</think>", 1)[-1]
    # the last </answer> closes the first <answer> after the </answer> before it
    before = text[:max(text.rfind("</answer>"), 0)].rsplit("</answer>", 1)[-1]
    if "<answer>" in before:
        return before.split("<answer>", 1)[1].strip(), "answer_tag"
    if (boxed := _last_braced(text)) and not FINAL_STATEMENT.search(text, boxed[1]):
        return boxed[0].strip(), "boxed"
    window = text[-100_000:]
    low = window.encode("ascii", "replace").decode().lower()  # same indices as window
    i = low.rfind("answer is")
    head = low[max([low.rfind(c, max(i - MAX_SENTENCE, 0), i) + 1 for c in ".!?\n"] + [i - MAX_SENTENCE]):i]
    if i >= 0 and not HEDGE.search(head) and not CORRECTION.search(low, i, i + 4 * MAX_SENTENCE):
        if rest := re.split(r"\n|[.!](?:\s|$)", window[i + len("answer is"):].lstrip(" :"), maxsplit=1)[0].strip(" *"):
            return _refine(rest, choice), "answer_is"
    if line := _answer_line(window, low):
        return _refine(line, choice), "answer_line"
    body, end = text.rstrip()[:-3 * MAX_SENTENCE], text.rstrip()[-3 * MAX_SENTENCE:]
    for _ in range(3):  # closing courtesy sentences: "I hope this helps!", "Let me know if ..."
        piece = SENTENCE_END.split(end[-MAX_SENTENCE:])[-1]
        end = end[:len(end) - len(piece)].rstrip() if COURTESY.fullmatch(piece) else end
    tail = body + end
    m = LEADING.match(tail[:80]) if len(tail) <= 4 * MAX_SENTENCE else None  # "80. To get this, I added 51 and 29."
    if m and not choice and not (re.search(r"\n\s*\d+[.)]\s|\bsteps?\b", tail) or HEDGE_NUMBER.search(tail, m.end())
                                 or CORRECTION.search(tail, m.end())):
        return m.group(2), "leading_value"
    last = tail[tail.rfind("\n") + 1:].strip()
    if (span := _math_only(tail) or _math_only(last)) and not ARITHMETIC.fullmatch(span):
        return span, "math_only"
    if 0 < len(last) <= MAX_EXPR:
        bare = _normalize(last)
        if (_value(bare.rstrip("%")) is not None and not ARITHMETIC.fullmatch(bare)) or (
                _letters(bare) and tail.strip() == last):  # a letter only alone
            return last.strip(" ."), "last_line"
        rhs = last.rsplit("=", 1)[-1].strip(" .$")
        if "=" in last and _value(_normalize(rhs)) is not None and not (
                ARITHMETIC.fullmatch(rhs) or HEDGE_NUMBER.search(last) or NEGATION.search(last)):
            return rhs, "last_line"
    m = re.match(r"\s*(?:\*\*)?\(?([A-Z])(?:\)|\.|:|\*\*)(?=\s|$)", tail)
    if m and LETTERS.index(m.group(1)) < choice and not _lists_options(tail[:1000]):  # no letter when choice is 0
        return m.group(1), "leading_choice"
    found = _sole(SENTENCE_END.split(tail[-4 * MAX_SENTENCE:].rstrip(" \t\n.!。！"))[-1].strip(), choice)
    return (found, "free_text") if found else (None, "none")


def extract_answer(response, choice=0):
    """The final answer string of a response, or None (see the module docstring for the rules)."""
    return extract_with_rule(response, choice)[0]


def _answer_line(window, low):
    """Text after the last "answer:" with at most 80 characters before it on its line, or a line-opening "####"."""
    last = max(ANSWER_COLON.finditer(low), key=lambda m: m.end(), default=None)  # the last one, streamed
    if last is None or CORRECTION.search(low, last.end(), last.end() + 4 * MAX_SENTENCE):
        return None
    return re.split(r"\n|\.(?:\s|$)", window[last.end():], maxsplit=1)[0].strip(" *.")


def _math_only(s):
    """Content of s when s is exactly one math span (see rule 6), else None."""
    m = MATH_ONLY.fullmatch(s) if len(s) <= 10 * MAX_ANSWER else None
    content = m and next(g for g in m.groups() if g is not None)
    return content.strip() if content and not re.search(r"\$|\\[\[\]()]", content) else None  # not "$3$ or $4$"


def _structured(s):
    return bool(n := _normalize(s)) and any(f(n) is not None for f in (_value, _sequence, MATRIX.fullmatch, _letters))


def _refine(c, choice):
    """The answer inside the text c after an answer phrase (rules 3 and 4; its callers strip spaces and *)."""
    if len(c) > MAX_EXPR or _structured(c):
        return c
    m = re.fullmatch(r"(?i).*\b(?:is|are|equals|was)\s+(.+)", c)  # "The volume is 120" -> "120"
    if m and (_structured(m.group(1)) or len(m.group(1).split()) <= 3):
        c = m.group(1).strip(" *")
    return _sole(c, choice, need_conclusion=False) or c


HEDGE = re.compile(r"\b(?:maybe|perhaps|possibly|probably|likely|might|unsure|not sure|guess|either|could|suppose|"
                   r"assume|whether|question|asks?|asked|told|estimate)\b|[?？؟]|可能|也许|如果", re.I)
# negations, bounds and conditions: they refuse the value or letter in their clause
NEGATION = re.compile(r"\b(?:not|cannot|never|wrong|incorrect|false|invalid|impossible|fails?|eliminated|ruled? out|"
                      r"excluded?|at least|at most|more than|less than|fewer than|greater than|(?<!add )(?<!adds )"
                      r"up to|except|instead|about|around|approximately|roughly|nearly|almost|if|let|find|what|"
                      r"how many|how much|given|consider|examine|analy[sz]e)\b|n't\b|不是", re.I)
CORRECTION = re.compile(r"\b(?:wait|oops|sorry|correction|mistake|actually|hmm|i mean|no,|wrong|incorrect|not right|"
                        r"re-?check|double-check|recalculate|recompute)", re.I)
COURTESY = re.compile(r"\D*\b(?:hope (?:this|that|it|you)|let me know|feel free|happy to help|glad to help|good luck|"
                      r"have a (?:great|nice|good)|thank|you'?re welcome|anything else|other questions)\b\D*", re.I)
# result verbs: "51 + 29 is 80", "Adding them gives us 80" (not "She gives 8 to Tom")
RESULT = re.compile(r"\b(?:is|are|equals?|gives?(?![^.,;]*\b(?:to|away)\b)|get|gets|got|makes?|yields?|leaves?|"
                    r"becomes?|has|have|needs?|costs?|takes?|(?:comes?|adds? up|amounts?|sums?) to|results? in|"
                    r"(?:ends?|ended) up with|(?:will|would) (?:be|have)|(?:it|that|this|there|here)['’]s)\b", re.I)
ARITHMETIC = re.compile(r"[\d.\s]+(?:[-+*][\d.\s]+)+")  # "51 + 29" echoes a task, it answers nothing
CLAUSE = re.compile(r"[,;:]|\b(?:so|thus|therefore|hence|because|but)\b", re.I)
HEDGE_NUMBER = re.compile(HEDGE.pattern + r"|\bor\b|或", re.I)  # for numbers "or" hedges too: "3 or 4"
CONCLUSION = re.compile(
    r"\b(?:so|thus|therefore|hence|total|totals|altogether|overall|result|finally|final|answer|now|left|remaining|"
    r"in all|together|daher|somit|insgesamt|ergebnis|antwort|donc|ainsi|réponse|résultat|entonces|respuesta|"
    r"resultado|portanto|então|resposta|quindi|dunque|risposta|totale|итак|поэтому|значит|всего|"
    r"итого|ответ|решение|yani|toplam|cevap|solution|lösung|solución|solução|soluzione)\b|"
    r"所以|因此|因而|总共|一共|共有|答案|合计|よって|したがって|合計|答え|따라서|그러므로|إذن|لذلك|المجموع|الإجابة|इसलिए|कुल|उत्तर", re.I)
BOLD = re.compile(r"\*\*[^*]*\d[^*]*\*\*|__[^_]*\d[^_]*__|\\textbf\{[^{}]*\d")
# math spans; a $...$ with a word in it is none: "$1.45 and $2" is currency
MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\\\((.+?)\\\)|\\\[(.+?)\\\]|"
                       r"(?<!\\)\$(?![^$]*(?<![\\A-Za-z])[A-Za-z]{2,}\s)([^$]+)\$")
NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                "sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety").split()
WORD_VALUE = {w: i if i < 20 else 10 * i - 180 for i, w in enumerate(NUMBER_WORDS)} | {"hundred": 100, "thousand": 1000}
# a spelled number: eighty-one, two hundred and five
SPELLED = r"(?i:\b(?:{0})(?:(?:[- ]|(?<=hundred) and |(?<=thousand) and )(?:{0}))*\b)".format("|".join(WORD_VALUE))
PLAIN_NUMBER = re.compile(r"(?<![A-Za-z0-9.,])(?:(?:negative|minus)\s+)?(?:-?\d+(?:[.,]\d+)*(?:/\d+)?(?::\d+)*|"
                          + SPELLED + r")(?:\s*(?:\\?%|percent\b))?")
LEADING = re.compile(r"\s*(\**)(-?\d[\d,]*(?:\.\d+)?%?)\1\s*(?:[.!]\s+|\n)(?=\S)")
LETTER = re.compile(r"(?<![\w\\$'’])\(?([A-Z])\)?(?![\w'’])")
OPTION_LABEL = re.compile(r"(?:^|\s)(?:\(([A-Z])\)|([A-Z])[.)])[ \t]+(?!(?:or|and|is|are|was|were|"
                          r"can|cannot|must|should|would|fits|works|holds|seems|remains)\b)[^\s,;]", re.M)
NOT_ARTICLE = {"is", "was", "must", "should", "would", "will", "fits", "works", "holds", "matches",
               "satisfies", "remains", "gives", "meets", "seems", "appears", "and", "or"}


def _sole(s, choice, need_conclusion=True):
    """The one value (multiple choice: the one final letter) a sentence states, else None (rule 9)."""
    if not s or len(s) > MAX_SENTENCE:
        return None
    # multiple choice (no letters when choice is 0)
    if letters := [m for m in LETTER.finditer(s) if LETTERS.index(m.group(1)) < choice and _is_letter(s, m)]:
        between = s[letters[-2].end():letters[-1].start()] if len(letters) > 1 else "x"
        # refused: a hedge, a lone letter, listed options, or several letters offered ("C or D", "A, C")
        if HEDGE.search(s) or not re.search(r"[^\W\d_]{2}|^\*\*", s) or _lists_options(s) or re.fullmatch(
                r"(?i)[\s,/&*]*(?:(?:or|and|und|oder|et|ou|y|o|или|и)\b[\s,*]*)?|[\s,*]*(?:或|和)[\s,*]*", between):
            return None
        return letters[-1].group(1) if _asserted(s, *letters[-1].span()) else None
    starts = sorted([max(s.rfind(c, 0, m.start()) for c in ",;:，；：") + 1 for m in CONCLUSION.finditer(s)]
                    + [m.end() for m in RESULT.finditer(s)])
    values, equals = next((v for v in map(lambda i: _values_in(s, i), reversed(starts[-8:])) if v[0]), _values_in(s, 0))
    if len(values) != 1 or HEDGE_NUMBER.search(s) or (need_conclusion and not (starts or equals or BOLD.search(s))):
        return None
    return values[0][2].strip() if _asserted(s, *values[0][:2]) else None


def _asserted(s, start, end):
    """False if the clause around s[start:end] negates or bounds it ("not 5", "B is wrong", "at least 5")."""
    return not NEGATION.search(CLAUSE.split(s[:start])[-1] + " " + CLAUSE.split(s[end:], maxsplit=1)[0])


def _is_letter(s, m):
    """False for the article "A" and the pronoun "I" before a lowercase word ("A triangle has")."""
    nxt = re.match(r"\s+([a-z]+)", s[m.end():])
    return not (nxt and m.group(1) in "AI" and (m.group(1) == "I" or nxt.group(1) not in NOT_ARTICLE))


def _lists_options(s):
    """True if s lists two or more labelled options ("A. 3/11 B. 8/11", "(A) 3 (B) 4")."""
    return len({a or b for a, b in OPTION_LABEL.findall(s)}) > 1


def _values_in(s, begin):
    """([(start, end, text)] of the values s states from `begin` on, whether an "=" came before them); rule 9."""
    values, pos, equals = [], begin, False
    for m in [*MATH_SPAN.finditer(s, begin), None]:
        stop = m.start() if m else len(s)
        if (eq := s.rfind("=", pos, stop)) >= 0:
            values, equals, pos = [], True, eq + 1
        values += [(n.start(), n.end(), n.group()) for n in PLAIN_NUMBER.finditer(s, pos, stop)]
        if m:
            content = next(g for g in m.groups() if g is not None)
            if "=" in content and "," not in content:
                values, equals, content = [], True, content[content.rfind("=") + 1:]
            if re.search(r"\d|\\pi", content):
                values.append((m.start(), m.end(), content))
            pos = m.end()
    return values, equals


# ----------------------------------------------------------------------------- normalization
TEXT = r"(?:text|textbf|textit|textnormal|textrm|mathrm|mathbf|mathit|mathsf|mbox|emph|operatorname)"
WRAPPERS = [r"^\$\$(.*)\$\$$", r"^\$(.*)\$$", r"^\\\((.*)\\\)$", r"^\\\[(.*)\\\]$", r"^\*\*(.*)\*\*$",
            r"^\\(?:boxed|fbox|" + TEXT[3:] + r"\{(.*)\}$"]
UNIT = re.compile(r"(.*?(?:\d\s+|\}\s*|%\s*))((?:(?!(?:is|are|was|were|be|not|no|too|than|or|and|but|if|so|"
                  r"it|only)\b)[A-Za-z]{1,12}\.?(?:\^\{?\d\}?|[²³])?\s*){1,3})")  # words that are no unit


def _normalize(s):
    """Strip presentation so that equal answers look alike; keeps the mathematical content."""
    s = s.strip()
    for _ in range(4):  # nested wrappers: $\boxed{\text{5}}$
        for pattern in WRAPPERS:
            if (m := re.match(pattern, s, re.S)) and (not pattern.endswith(r"\}$") or _balanced(m.group(1))):
                s = m.group(1).strip()
    s = re.sub(r"(?<!\\)\\(?:left|right|displaystyle|;|:|quad|qquad| )|~", " ", s)
    s = re.sub(r"(?<!\\)\\(,|!\s*)", "", s).replace("{,}", ",").replace("\\%", "%").replace("\\$", "").replace("$", "")
    for pattern, repl in ((r"\s*(?:%|\bpercent\b|\bpct\b)", "%"), (SPELLED, _spelled_value),
                          (r"\b(?:negative|minus)\s+(?=[\d.])", "-"), (r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree", ""),
                          (r"\\[dtc]frac", r"\\frac"), (r"\\frac(\d)(\d)", r"\\frac{\1}{\2}"),
                          (r"\\sqrt(\d)", r"\\sqrt{\1}"), (r"\\" + TEXT + r"\{([^{}]*)\}", r"\1")):
        s = re.sub(pattern, repl, s)
    s = re.sub(r"(^|[(\[,])\s*\+\s*(?=\\infty)", r"\1", s.replace("∞", "\\infty"))
    s = re.sub(r"\\in(?![a-zA-Z])", "=", s.replace("≈", "\\approx")).lstrip(" =")
    head = s.split("\\approx")[0]  # x = 1/3 \approx 0.33 -> x = 1/3; x \approx 11 -> x = 11
    s = head if "=" in head else s.replace("\\approx", "=").lstrip(" =")
    s = re.sub(r"\s*,?\s*\band\b\s*", ", ", s)  # "19, 46, and 82" is a list
    s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip()
    s = _drop_lhs(s)
    # 5 cm -> 5, \frac{1}{3} meters -> \frac{1}{3}
    if (m := UNIT.fullmatch(s)) and not MULTI.search(s) and _value(m.group(1).strip().rstrip("%")) is not None:
        s = m.group(1).strip()
    return s.replace(" ", "") if re.fullmatch(r"[-+]?\d{1,3}( \d{3})+(\.\d+)?", s) else s  # 1 000 -> 1000


def _spelled_value(m):
    """The digits of a spelled number ("two hundred and five" -> "205")."""
    total = part = 0
    for v in map(WORD_VALUE.get, re.findall(r"[a-z]+", m.group().lower())):  # "and" is None
        total, part = (total + (part or 1) * 1000, 0) if v == 1000 else (total, (part or 1) * 100 if v == 100
                                                                           else part + (v or 0))
    return str(total + part)


def _drop_lhs(s):
    """The last side of an equation whose left side is a name or whose sides are values, else s (module docstring)."""
    # a top-level comma before the last "=" keeps s: "x = 1, y = 2"
    if len(parts := _split_top(s, "=")) < 2 or any(len(_split_top(q)) > 1 for q in parts[:-1]):
        return s
    name = re.sub(r"_\{[^{}]*\}|_\w|\([^()]*\)", "", parts[0])
    is_name = re.search(r"[A-Za-z]", parts[0]) and not re.search(r"[\d+\-*^<>!]", name)
    return parts[-1].strip() if is_name or None not in (_value(parts[0].strip()), _value(parts[-1].strip())) else s


def _balanced(s, opening="{", closing="}"):
    """True if the brackets of s (by default only braces) never close more than they opened and end even."""
    depths = [0, *accumulate((c in opening) - (c in closing) for c in s)]
    return min(depths) == 0 == depths[-1]


def _split_top(s, sep=","):
    """Split on sep outside (), [], {} (\\{ \\} count as braces). Returns the parts."""
    depths = accumulate((c in "([{") - (c in ")]}") for c in s)
    cuts = [i for i, (c, depth) in enumerate(zip(s, depths)) if c == sep and depth == 0]
    return [s[a + 1:b] for a, b in zip([-1, *cuts], [*cuts, len(s)])]


# ----------------------------------------------------------------------------- numbers and closed forms
NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def _exact(s):
    """Exact value (Fraction) of a plain number, a/b or \\frac{a}{b}; None otherwise."""
    s = re.sub(r"\s*([/+-])\s*", r"\1", s.strip())  # "- 3", "3 / 4"; but "3 4" is no number
    s = s.replace(",", "") if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?", s) else s  # 1,000 -> 1000
    s = re.sub(r"\A(-?)\\frac\{(" + NUM + r")\}\{(" + NUM + r")\}\Z", r"\1\2/\3", s)
    parts = s.split("/")
    if (len(s) > 100 or len(parts) > 2 or not all(re.fullmatch(NUM, p) for p in parts)
            or any(abs(int(e)) > 400 for e in re.findall(r"[eE]([-+]?\d+)", s))):
        return None  # no number, or one like 1e999999 that would build a huge integer
    denominator = Fraction(parts[1] if len(parts) == 2 else 1)
    return Fraction(parts[0]) / denominator if denominator else None


TOKEN = re.compile(r"\s*(\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+|\\[a-zA-Z]+|[-+*/^(){}\[\]!])")


def _evaluate(s):
    """Float value of a closed form of TOKENs (implicit products: 2\\sqrt{3}; bounded n! and ^), else None."""
    if len(s) > MAX_EXPR or TOKEN.sub("", s).strip():
        return None  # too long, or something that is no token
    tokens = [""] + TOKEN.findall(s)[::-1]  # reversed: tokens[-1] is the next one, "" the end
    take = tokens.pop

    def expr():
        v = term()
        while tokens[-1] in ("+", "-"):
            v = v + term() if take() == "+" else v - term()
        return v

    def term():
        v = unary()
        while (t := tokens[-1]) in ("*", "/", "\\cdot", "\\times", "\\div", "(", "{", "\\pi", "\\sqrt", "\\frac"):
            implicit = t in ("(", "{", "\\pi", "\\sqrt", "\\frac")  # 2\sqrt{3}, 3(4); never two bare numbers ("3 4")
            v = v * power() if implicit else (v / unary() if take() in ("/", "\\div") else v * unary())
        return v

    def unary():
        if tokens[-1] in ("-", "+"):
            return -unary() if take() == "-" else unary()
        return power()

    def power():
        base = atom()
        while tokens[-1] == "!":
            take()
            if base != int(base) or not 0 <= base <= 100:
                raise ValueError
            base = float(math.factorial(int(base)))
        if tokens[-1] == "^":
            take()
            if abs(exp := unary()) > 1000 or (base < 0 and exp != int(exp)) or (base == 0 and exp < 0):
                raise ValueError
            return float(base) ** exp  # an OverflowError is caught below
        return base

    def atom():
        t = take()
        if t and (t[0].isdigit() or t[0] == "."):
            return float(t)
        if t in ("(", "{", "["):
            v = expr()
            if take() == {"(": ")", "{": "}", "[": "]"}[t]:
                return v  # else unclosed: raised below
        if t == "\\pi":
            return math.pi
        if t == "\\frac":
            return atom() / atom()
        if t == "\\sqrt":
            n = atom() if tokens[-1] == "[" else 2.0  # \sqrt[3]{8}
            if (v := atom()) < 0:
                raise ValueError
            return v ** (1 / n)
        raise ValueError

    try:
        v = expr()
        return v if tokens == [""] and math.isfinite(v) else None
    except (OverflowError, ZeroDivisionError, ValueError, RecursionError):
        return None


def _value(s):
    """(exact Fraction or None, float) of a number or closed form; None if s is neither."""
    if (exact := _exact(s)) is not None:
        return exact, float(exact)
    v = _evaluate(s) if re.search(r"\d|\\pi", s) else None
    return None if v is None else (None, v)


def _numbers_equal(ea, fa, eb, fb):
    if ea is None or eb is None:
        return math.isclose(fa, fb, rel_tol=1e-6, abs_tol=1e-12)
    # integers exactly
    return ea == eb if ea.denominator == eb.denominator == 1 else abs(ea - eb) <= max(abs(ea), abs(eb)) / 10**6


def _values_equal(p, g):
    """Numeric equality, x% meaning x or x/100, and a rounded decimal equal to its exact value (see _rounded)."""
    cands = []
    for s in (p, g):
        if len(s) > MAX_EXPR or (v := _value(s.rstrip("%").strip())) is None:
            return None
        cands.append([v] + ([(None if v[0] is None else v[0] / 100, v[1] / 100)] if s.endswith("%") else []))
    return (any(_numbers_equal(*a, *b) for a in cands[0] for b in cands[1])
            or _rounded(p, g, cands[1][0]) or _rounded(g, p, cands[0][0]))


def _rounded(s, other, value):
    """True if s (4+ significant digits) is `other` (value `value`, no plain decimal) rounded at its decimal places."""
    m = re.fullmatch(r"[-+]?(\d*)\.(\d+)", s)
    if not m or len((m.group(1) + m.group(2)).lstrip("0")) < 4 or re.fullmatch(r"[-+]?[\d,]*\.?\d*", other):
        return False
    places, (exact, approx) = len(m.group(2)), value
    if exact is not None:  # 8/3 -> 2.6667, but not an exact 2.5 against 2.5001
        return (exact * 10**places).denominator != 1 and abs(exact - Fraction(s)) <= Fraction(1, 2 * 10**places)
    return abs(approx - float(s)) <= 0.5 * 10.0**-places * (1 + 1e-9)


# ----------------------------------------------------------------------------- multiple choice
CHOICE = re.compile(r"(?:(?:option|choice)\s+)?\(?([A-Z])\)?(?:[.:)]|\s*$)", re.I)


def _letters(s, allow_text=True):
    """Set of choice letters named by s ('B', '(B)', 'B.', 'B) 8/11', 'A, C', 'A or B'), else None."""
    parts, found = [p.strip() for p in re.split(r",|\bor\b|\band\b", s) if p.strip()], set()
    for p in parts:
        m = CHOICE.match(p)
        if (not m or (m.end() < len(p) and not (allow_text and len(parts) == 1 and p[m.end() - 1] in ".:)"))
                or re.search(r"(?:^|\s)\(?[A-Z][).:](?:\s|$)", p[m.end():])):  # "(A) (B) (C)": every option listed
            return None
        found.add(m.group(1).upper())
    return found or None


def _named_letters(s, options, allow_text=True):
    """The set of choice letters s names, else with `options` that of the one option whose text equals s, else None."""
    if (letters := _letters(s, allow_text)) or not options:
        return letters
    hits = {LETTERS[i] for i, o in enumerate(options[:26]) if _compare(_normalize(s), _normalize(str(o)))}
    return hits if len(hits) == 1 else None


# ----------------------------------------------------------------------------- equivalence
MATRIX = re.compile(r"\\begin\{[pbvB]?matrix\}(.*)\\end\{[pbvB]?matrix\}", re.S)
MULTI = re.compile(r"\s(?:or)\s|\\(?:text|mbox)\{\s*or\s*\}|\\lor")


def _squash(s):
    """Case-folded text with single spaces, and none next to a symbol: 'x + 1' == 'X+1', '3 4' != '34'."""
    return re.sub(r" ?([^\w ]) ?", r"\1", re.sub(r"\s+", " ", s.strip()).lower())


def _compare(p, g):
    """Equality of two normalized answers (no choice letters here)."""
    if _squash(p) == _squash(g):
        return bool(p)
    if len(p) > MAX_ANSWER or len(g) > MAX_ANSWER or MULTI.search(p) or MULTI.search(g):
        return False  # too long, or "3 or 4": several answers are not one answer
    # a matrix equals only a matrix of the same shape, element by element
    if matrices := [m for m in (MATRIX.fullmatch(p), MATRIX.fullmatch(g)) if m]:
        rows = [[r.split("&") for r in m.group(1).strip().split("\\\\") if r.strip()] for m in matrices]
        return len(rows) == 2 and [len(r) for r in rows[0]] == [len(r) for r in rows[1]] and all(
            _compare(_normalize(a), _normalize(b)) for ra, rb in zip(*rows) for a, b in zip(ra, rb))
    sp, sg = _sequence(p), _sequence(g)
    if sp or sg:
        if not (sp and sg) or len(sp[1]) != len(sg[1]) or ("list" not in (sp[0], sg[0]) and sp[0] != sg[0]):
            return False  # (0, 1] is not [0, 1]; a set equals a bare list
        (kp, ep), (kg, eg) = sp, sg
        if {kp, kg} <= {"set", "list"}:  # unordered
            left = list(eg)
            for a in ep:
                if (hit := next((j for j, b in enumerate(left) if _compare(a, b)), None)) is None:
                    return False
                left.pop(hit)
            return True
        return all(_compare(a, b) for a, b in zip(ep, eg))
    return bool(_values_equal(p, g))


def _sequence(s):
    """(kind, elements) of a top-level comma (else semicolon) list, else None; kind 'set', 'list' or the bracket pair"""
    kind, inner = "list", s
    if s.startswith("\\{") and s.endswith("\\}"):
        kind, inner = "set", s[2:-2]
    elif len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _balanced(s[1:-1], "([{", ")]}"):
        kind, inner = s[0] + s[-1], s[1:-1]
    parts = _split_top(inner)
    parts = parts if len(parts) > 1 else _split_top(inner, ";")  # -3;-2
    if len(parts) < 2 or (kind == "list" and re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?", inner.strip())):
        return None  # no list, or a thousands separator
    return kind, [_normalize(q) for q in parts]


FUNCTION = re.compile(r"[\s$]*([A-Za-z])\(\s*([a-z])\s*\)\s*=")
DECIMAL_COMMA_TEXT = re.compile(r"[а-яё]|[äöüßéèêëàâçñãõóòúùíìłąęśźżčřšžåøæ]|\b(?:ist|und|der|die|das|est|"
                                r"es|la|el|le|il|de|donc|les|por|los|las|una|sono|della|jest|wynosi|het|een)\b", re.I)


def _gold_letters(g, options):
    """The choice letters the normalized reference names (a letter, several, or an option's text), else None."""
    gl = _named_letters(g, options, allow_text=False)
    return gl if gl is not None and (options or len(gl) > 1 or re.fullmatch(r"\(?[A-Z]\)?", g)) else None


def is_equivalent(pred, gold, options=None):
    """True if the extracted answer pred means the same as the reference gold (options: the choices' texts, A first)."""
    try:
        gold = str(gold)
        if len(pred) > MAX_ANSWER:
            return pred.strip().lower() == gold.strip().lower()
        mp, mg = FUNCTION.match(pred), FUNCTION.match(gold)
        if mp and mg and mp.group(1) == mg.group(1) and (a := mp.group(2)) != (b := mg.group(2)):  # f(y)=y, f(x)=x
            pred = re.sub(rf"(?<![A-Za-z\\])[{a}{b}](?![A-Za-z])", lambda m: b if m.group() == a else a, pred)
        p, g = _normalize(pred), _normalize(gold)
        return bool(p) and (_compare(p, g) if (gl := _gold_letters(g, options)) is None
                            else _named_letters(p, options) == gl)
    except RecursionError:
        return False


def _choice_count(answer, options):
    """How many option letters to look for in free text: 0 unless the reference is a choice."""
    return 0 if _gold_letters(_normalize(str(answer)), options) is None else min(len(options or LETTERS), 26)


def reward(response, answer, options=None):
    """1.0 if the response's extracted answer is equivalent to `answer`, else 0.0. Never raises."""
    # (extract_with_rule and is_equivalent, which the tests call, do raise): an odd response costs its reward, not the
    # training run hours in
    try:
        choice = _choice_count(answer, options)
        pred = extract_answer(response, choice)
        p = _normalize(pred) if pred is not None and not choice and len(pred) <= MAX_EXPR else ""
        if (re.fullmatch(r"[-+]?\d+,(?:\d{1,2}|\d{4,})%?", p) and _sequence(_normalize(str(answer))) is None
                and DECIMAL_COMMA_TEXT.search(response[-4 * MAX_SENTENCE:])):
            pred = p.replace(",", ".")  # a decimal comma: 3,5 -> 3.5 (see the module docstring)
        return float(pred is not None and is_equivalent(pred, answer, options))
    except Exception:  # odd text must cost a reward, never a training run
        return 0.0


def main():
    from cli import UserError, fail, read_jsonl  # the CLI's only import beyond the standard library
    p = argparse.ArgumentParser(description="Score a response against a reference answer (1 or 0).")
    p.add_argument("response", nargs="?")
    p.add_argument("answer", nargs="?")
    p.add_argument("--options", nargs="*", default=None, help="choice texts in order A, B, ...")
    p.add_argument("--jsonl", help="file of {response, answer[, options]} rows")
    args = p.parse_args()
    if args.jsonl:
        total = correct = 0
        try:
            for total, (n, row) in enumerate(read_jsonl(args.jsonl), 1):
                if "response" not in row or "answer" not in row:
                    raise UserError(f"{args.jsonl}:{n}: need a JSON object with response and answer")
                correct += reward(row["response"], str(row["answer"]), row.get("options"))
        except UserError as e:
            fail(str(e))
        print(f"accuracy {correct / max(total, 1):.4f} ({int(correct)}/{total})")
        return
    if args.response is None or args.answer is None:
        p.error("give RESPONSE ANSWER, or --jsonl FILE")
    pred, rule = extract_with_rule(args.response, _choice_count(args.answer, args.options))
    print(int(reward(args.response, args.answer, args.options)))
    print(f"extracted {pred!r} by rule {rule}; reference {args.answer!r}")


if __name__ == "__main__":
    main()

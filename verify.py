"""Binary answer verification: reward 1.0 when a response's final answer equals the reference.

EXTRACTION (extract_with_rule). Everything up to the last </think> is dropped; a <think> that is
never closed means no answer yet (rule unclosed_think). Then the first of these rules that applies:

  1. answer_tag: the content of the last <answer>...</answer>; an empty tag is an empty answer
     (reward 0). The content starts at the first <answer> after the </answer> before it, so
     "<answer>x<answer>9</answer>" answers "x<answer>9" (reward 0).
  2. boxed: the content of the last \\boxed{...} or \\fbox{...} (nested braces; if that one is not
     closed within MAX_SCAN characters, none), unless "Final Answer:" or "final answer is" follows.
  3. answer_is: X after the last "answer is", unless a HEDGE precedes it in its sentence ("I guess
     the answer is"). X ends at a line end, or at "." or "!" before a space ("80!" is 80).
  4. answer_line: X after the last "Answer:" that is at most 80 characters into its line (not the
     end of a longer word; spaces, * and _ may precede the colon), or after a "####" opening a line
     (GSM8K). X ends at a line end or at "." before a space.
     Rules 3 and 4 read the last MAX_SCAN characters, and are skipped when a CORRECTION follows
     within REACH characters ("The answer is 80. Wait, no, it's 81"). Their X is the answer if bare
     (a value, a list, a matrix or choice letters); else what follows its last is/are/equals/was
     becomes X if that is bare or at most 3 words ("The volume is 120" -> 120); then the answer is
     X's sole value or letter by rule 9, no conclusion needed ("Jane started 3 hours ago" -> 3),
     else X as text.
  Rules 5-9 read the text without up to 3 closing COURTESY sentences that hold no digit ("I hope
  this helps!").
  5. leading_value (not for multiple choice; a text of at most REACH characters): an opening plain
     number, bold or not, then "." or "!" and a space, or a line end, and more text ("80. To get
     this, I added 51 and 29."). Not when the text has a numbered-list line or the word "step" or
     "steps" anywhere, nor when a HEDGE_NUMBER or a CORRECTION follows the number.
  6. math_only: the content of the whole text, else of its last line, when that is exactly one
     MATH_ONLY span ($...$, $$...$$, \\[...\\], \\(...\\)) with no other delimiter inside; not when
     the content is bare ARITHMETIC of plain numbers ("51 + 29").
  7. last_line: the last non-empty line, of at most MAX_EXPR characters, if it is a bare answer: a
     number, 20%, a closed form or "x = 5" that is not bare arithmetic, or choice letters when that
     line is the whole text. Else what follows its last "=", if that is a number or a closed form
     and not bare arithmetic, and the line holds no HEDGE_NUMBER and no NEGATION.
  8. leading_choice (multiple choice only): an opening "B.", "(B)", "B)", "B:" or "**B**" naming an
     option, unless the first 1000 characters list labelled options ("A. 3 B. 4").
  9. free_text: the last sentence of the last REACH characters (split after . ! ? and a space,
     after 。！？, and at line ends), of at most MAX_SENTENCE characters. Refused when a HEDGE or an
     echo of the task is anywhere in it (maybe, could, question, "?", ...).
     Multiple choice: its last standalone option letter. "I" before a lowercase word is the
       pronoun; "A" before one is the article unless the word is in NOT_ARTICLE (a verb, and, or).
       Refused when the sentence is only letters (no word of two letters, and not opening with **),
       lists labelled options, joins the last two letters by nothing but spaces, "," "/" "&" or
       or/and ("C or D", "A, C"), or has a NEGATION, bound or condition in the letter's clause
       ("So B is wrong"). With no letter in the sentence, the number rule.
     Otherwise: its sole value. Values are PLAIN_NUMBERs (1,250; 3/4; 12:30; 30 %; eighty-one) and
       math spans with a digit or \\pi ("$1.45 and $2" is currency, no span); after an "=" only
       the values after the last one count. They are counted from the clause of a CONCLUSION word
       or from after a RESULT verb, the last of these (of the last 8) with a value after it, else
       from the start of the sentence: the operands of "The sum of 51 and 29 is 80" do not count.
       Refused unless there is exactly one value, when "or" or another HEDGE_NUMBER is anywhere in
       the sentence, and when the value's clause has a NEGATION ("not 5"; but "If we multiply 7 by
       8, we get 56" keeps 56). The sentence must conclude: a CONCLUSION word, a RESULT verb, an "="
       before the counted values or a BOLD number (**42**). So a question's numbers, echoed, earn 0.

EQUIVALENCE (is_equivalent). Both sides are normalized first: WRAPPERS ($...$, \\boxed{...},
**...**, \\text{...}) stripped; \\left, \\right, LaTeX spaces, degrees, \\, \\! "\\$" and "$"
dropped; {,} read as ","; "percent"/"pct" -> %; spelled numbers in digits (two hundred and five ->
205); "negative 5" -> -5; \\dfrac -> \\frac, \\frac12 -> \\frac{1}{2}, \\sqrt2 -> \\sqrt{2}; ∞
and +\\infty -> \\infty; \\in and \\approx -> "=" ("x = 1/3 \\approx 0.33" keeps 1/3); "and" -> ","
(19, 46, and 82 = 19, 46, 82); a left-hand side dropped (below); up to 3 UNIT words after a value
dropped ("5 cm" -> 5, not "5 is too small"). Then:
  - a left-hand side that is a name (a letter, and no digit or + - * ^ < > ! outside subscripts and
    parentheses) is dropped: x = 5, f(x) = 1, |AB| = 1, (p,q) = (3,2), x \\in [0,1), x \\approx 11,
    but not 2x + z = 1, nor "x = 1, y = 2"; a side that is a value is dropped when the last side is
    one too: x = 2 + 3 = 5 and 51 + 29 = 80 keep 5 and 80. f(y) = y equals f(x) = x (renamed).
  - the same text (case-folded, spaces only where both sides of them are word characters) is
    equal, unless empty; answers longer than MAX_ANSWER characters are compared as stripped,
    lower-cased text only, and several answers joined by "or" equal nothing else.
  - multiple choice, when the reference names letters: (B), B., B), "B) text", "Option B", or
    with `options` an option's text; the sets of letters must match ("A, C" is not "A"). Without
    options a reference counts as a letter only as B or (B), or as several letters.
  - matrices equal matrices of the same shape element by element; tuples and intervals equal
    element-wise in order, and brackets must match ((0, 1] is not [0, 1]; +\\infty = \\infty);
    a bare list (split at top-level commas, else semicolons) equals a bracketed one in order, and
    a bare list or a \\{set\\} in any order (a set never equals a tuple).
  - numbers: integers exactly, others within 1e-6 relative; 1,000 = 1{,}000 = 1\\,000 = 1 000;
    a/b, \\frac and kin, scientific notation; closed forms (\\sqrt, \\pi, ^, n!) by a small bounded
    evaluator, no eval; a decimal with 4+ significant digits also equals a value that is no plain
    decimal and rounds to it at its places (2.6667 = 8/3; 0.333 != 1/3).
  - percentages: x% equals x and x/100 (50% = 50 = 0.5, but 0.5 != 50).
  - decimal commas (reward only, as it sees the response): "3,5" is 3.5 in a response whose last
    REACH characters show a language that writes them (DECIMAL_COMMA_TEXT), unless the reference is
    a choice or a list, or "3,500" reads as grouping; else 3,5 is a list.
Linear time in the response length. extract_with_rule and is_equivalent may raise on odd input;
reward never raises (an exception scores 0).

CLI: python verify.py RESPONSE ANSWER [--options A_TEXT B_TEXT ...], or --jsonl FILE of rows
{response, answer[, options]}: prints the accuracy (a UTF-8 BOM is fine; a bad byte, row or file
prints one "error: ..." line and exits 2)."""
import argparse
import math
import re
from fractions import Fraction
from itertools import accumulate

MAX_ANSWER = 1000  # a longer extracted answer is compared as plain text only
MAX_EXPR = 200  # the number parser and the evaluator see at most this many characters
MAX_SENTENCE = 600  # a longer last sentence holds no free-text answer
REACH = 4 * MAX_SENTENCE  # how far a correction is looked for; the text rules 5 and 9 read
MAX_SCAN = 100_000  # answer phrases are looked for in the last this many characters
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


# ----------------------------------------------------------------------------- vocabulary
# rule 4, searched in lower case, per line: its last "answer:" at most 80 characters in (not
# inside a word), else a line-opening "####" (GSM8K)
ANSWER_COLON = re.compile(
    r"^(?:[^\n]{0,80}(?<![a-z0-9])answer[ \t*_]*:|####)[ \t*_]*(?=[^\s*])", re.M)
FINAL_STATEMENT = re.compile(r"final answer\s*(?:is\b|:)", re.I)
MATH_ONLY = re.compile(r"\s*(?:\$\$(.+)\$\$|\\\[(.+)\\\]|\$(.+)\$|\\\((.+)\\\))[\s.]*", re.S)
SENTENCE_END = re.compile(r"(?<=[.!?؟])\s+|(?<=[。！？])|\n")
BRACES = re.compile(r"\{+|\}+")
# "80. To get this, ...": an opening number (bold or not) ending its sentence or line (rule 5)
LEADING = re.compile(r"\s*(\**)(-?\d[\d,]*(?:\.\d+)?%?)\1\s*(?:[.!]\s+|\n)(?=\S)")
STEPS = r"\n\s*\d+[.)]\s|\bsteps?\b"  # a numbered list or "step(s)": no leading answer
LEADING_CHOICE = r"\s*(?:\*\*)?\(?([A-Z])(?:\)|\.|:|\*\*)(?=\s|$)"  # "B.", "(B)", "B:", "**B**"
AFTER_COPULA = r"(?i).*\b(?:is|are|equals|was)\s+(.+)"  # "The volume is 120" -> "120"

HEDGE = re.compile(
    r"\b(?:maybe|perhaps|possibly|probably|likely|might|unsure|not sure|guess|either|could|"
    r"suppose|assume|whether|question|asks?|asked|told|estimate)\b|[?？؟]|可能|也许|如果", re.I)
# for numbers "or" hedges too: "3 or 4"
HEDGE_NUMBER = re.compile(HEDGE.pattern + r"|\bor\b|或", re.I)
# negations, bounds and conditions: they refuse the value or letter in their clause
NEGATION = re.compile(
    r"\b(?:not|cannot|never|wrong|incorrect|false|invalid|impossible|fails?|eliminated|ruled? out|"
    r"excluded?|at least|at most|more than|less than|fewer than|greater than|(?<!add )(?<!adds )"
    r"up to|except|instead|about|around|approximately|roughly|nearly|almost|if|let|find|what|"
    r"how many|how much|given|consider|examine|analy[sz]e)\b|n't\b|不是", re.I)
CORRECTION = re.compile(
    r"\b(?:wait|oops|sorry|correction|mistake|actually|hmm|i mean|no,|wrong|incorrect|not right|"
    r"re-?check|double-check|recalculate|recompute)", re.I)
COURTESY = re.compile(
    r"\D*\b(?:hope (?:this|that|it|you)|let me know|feel free|happy to help|glad to help|"
    r"good luck|have a (?:great|nice|good)|thank|you'?re welcome|anything else|"
    r"other questions)\b\D*", re.I)
# result verbs: "51 + 29 is 80", "Adding them gives us 80" (not "She gives 8 to Tom")
RESULT = re.compile(
    r"\b(?:is|are|equals?|gives?(?![^.,;]*\b(?:to|away)\b)|get|gets|got|makes?|yields?|leaves?|"
    r"becomes?|has|have|needs?|costs?|takes?|(?:comes?|adds? up|amounts?|sums?) to|results? in|"
    r"(?:ends?|ended) up with|(?:will|would) (?:be|have)|(?:it|that|this|there|here)['’]s)\b", re.I)
# "51 + 29" echoes a task, it answers nothing
ARITHMETIC = re.compile(r"[\d.\s]+(?:[-+*][\d.\s]+)+")
CLAUSE = re.compile(r"[,;:]|\b(?:so|thus|therefore|hence|because|but)\b", re.I)
CONCLUSION = re.compile(
    r"\b(?:so|thus|therefore|hence|total|totals|altogether|overall|result|finally|final|answer|"
    r"now|left|remaining|in all|together|daher|somit|insgesamt|ergebnis|antwort|donc|ainsi|"
    r"réponse|résultat|entonces|respuesta|resultado|portanto|então|resposta|quindi|dunque|"
    r"risposta|totale|итак|поэтому|значит|всего|итого|ответ|решение|yani|toplam|cevap|solution|"
    r"lösung|solución|solução|soluzione)\b|所以|因此|因而|总共|一共|共有|答案|合计|よって|"
    r"したがって|合計|答え|따라서|그러므로|إذن|لذلك|المجموع|الإجابة|इसलिए|कुल|उत्तर", re.I)
BOLD = re.compile(r"\*\*[^*]*\d[^*]*\*\*|__[^_]*\d[^_]*__|\\textbf\{[^{}]*\d")
# math spans; a $...$ with a word in it is none: "$1.45 and $2" is currency
MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\\\((.+?)\\\)|\\\[(.+?)\\\]|"
                       r"(?<!\\)\$(?![^$]*(?<![\\A-Za-z])[A-Za-z]{2,}\s)([^$]+)\$")

NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                "fourteen fifteen sixteen seventeen eighteen nineteen "
                "twenty thirty forty fifty sixty seventy eighty ninety").split()
WORD_VALUE = {word: i for i, word in enumerate(NUMBER_WORDS[:20])}  # zero ... nineteen
WORD_VALUE |= {word: 10 * i for i, word in enumerate(NUMBER_WORDS[20:], 2)}  # twenty ... ninety
WORD_VALUE |= {"hundred": 100, "thousand": 1000}
# a spelled number: eighty-one, two hundred and five
SPELLED = r"(?i:\b(?:{0})(?:(?:[- ]|(?<=hundred) and |(?<=thousand) and )(?:{0}))*\b)".format(
    "|".join(WORD_VALUE))
PLAIN_NUMBER = re.compile(r"(?<![A-Za-z0-9.,])(?:(?:negative|minus)\s+)?"
                          r"(?:-?\d+(?:[.,]\d+)*(?:/\d+)?(?::\d+)*|" + SPELLED + r")"
                          r"(?:\s*(?:\\?%|percent\b))?")

# a standalone capital letter, in parentheses or not (multiple choice in free text)
LETTER = re.compile(r"(?<![\w\\$'’])\(?([A-Z])\)?(?![\w'’])")
# only spaces, "," "/" "&" "*" and at most one "or"/"and": "C or D", "A, C" offer several letters
LETTER_JOINER = (r"(?i)[\s,/&*]*(?:(?:or|and|und|oder|et|ou|y|o|или|и)\b[\s,*]*)?"
                 r"|[\s,*]*(?:或|和)[\s,*]*")
OPTION_LABEL = re.compile(r"(?:^|\s)(?:\(([A-Z])\)|([A-Z])[.)])[ \t]+(?!(?:or|and|is|are|was|were|"
                          r"can|cannot|must|should|would|fits|works|holds|seems|remains)\b)[^\s,;]",
                          re.M)
# after "A", these words make it a letter ("A is correct"), others an article ("A triangle")
NOT_ARTICLE = {"is", "was", "must", "should", "would", "will", "fits", "works", "holds", "matches",
               "satisfies", "remains", "gives", "meets", "seems", "appears", "and", "or"}


# ----------------------------------------------------------------------------- extraction
def extract_with_rule(response, choice=0):
    """(answer or None, the rule that found it), the rules in the module docstring's order.

    choice: the number of options when the reference is a choice letter, else 0."""
    if "<think>" in response and "</think>" not in response:
        return None, "unclosed_think"
    text = response.rsplit("</think>", 1)[-1]

    tagged = _answer_tag(text)
    if tagged is not None:
        return tagged, "answer_tag"
    boxed = _boxed(text)
    if boxed is not None:
        return boxed, "boxed"

    window = text[-MAX_SCAN:]
    low = window.encode("ascii", "replace").decode().lower()  # same indices as window
    after_answer_is = _after_answer_is(window, low)
    if after_answer_is:
        return _refine(after_answer_is, choice), "answer_is"
    after_answer_line = _answer_line(window, low)
    if after_answer_line:
        return _refine(after_answer_line, choice), "answer_line"

    tail = _without_courtesy(text.rstrip())
    leading = _leading_value(tail, choice)
    if leading is not None:
        return leading, "leading_value"

    last = tail[tail.rfind("\n") + 1:].strip()  # the last line
    span = _math_only(tail) or _math_only(last)
    if span and not ARITHMETIC.fullmatch(span):
        return span, "math_only"

    if 0 < len(last) <= MAX_EXPR:
        bare = _normalize(last)
        if _value(bare.rstrip("%")) is not None and not ARITHMETIC.fullmatch(bare):
            return last.strip(" ."), "last_line"
        if _letters(bare) and tail.strip() == last:  # a letter only alone
            return last.strip(" ."), "last_line"
        rhs = last.rsplit("=", 1)[-1].strip(" .$")  # what follows the last "="
        if "=" in last and _value(_normalize(rhs)) is not None:
            refused = HEDGE_NUMBER.search(last) or NEGATION.search(last)
            if not (ARITHMETIC.fullmatch(rhs) or refused):
                return rhs, "last_line"

    letter = _leading_choice(tail, choice)
    if letter is not None:
        return letter, "leading_choice"

    found = _sole(_last_sentence(tail), choice)
    if found:
        return found, "free_text"
    return None, "none"


def extract_answer(response, choice=0):
    """The final answer string of a response, or None (see the module docstring for the rules)."""
    return extract_with_rule(response, choice)[0]


def _answer_tag(text):
    """Rule 1: the stripped content of the last <answer>...</answer>, else None."""
    last_close = max(text.rfind("</answer>"), 0)
    # the last </answer> closes the first <answer> after the </answer> before it
    since_previous_close = text[:last_close].rsplit("</answer>", 1)[-1]
    if "<answer>" not in since_previous_close:
        return None
    return since_previous_close.split("<answer>", 1)[1].strip()


def _boxed(text):
    """Rule 2: the stripped content of the last box, unless a final-answer statement follows it."""
    found = _last_braced(text)
    if found is None:
        return None
    content, end = found
    if FINAL_STATEMENT.search(text, end):
        return None
    return content.strip()


def _last_braced(text, commands=("\\boxed", "\\fbox")):
    """(content, end) of the last \\boxed{...} / \\fbox{...}; None if none, or unclosed within
    MAX_SCAN characters."""
    start, command = max((text.rfind(c + "{"), c) for c in commands)
    if start < 0:
        return None
    opening = start + len(command)  # the index of its "{"
    depth = 0
    for run in BRACES.finditer(text, opening, opening + MAX_SCAN):  # a run of braces at a time
        length = run.end() - run.start()
        if run.group()[0] == "{":
            depth += length
        elif length >= depth:
            closing = run.start() + depth - 1  # the index of the "}" that closes the box
            return text[opening + 1:closing], closing + 1
        else:
            depth -= length
    return None


def _after_answer_is(window, low):
    """Rule 3: the text after the last "answer is" up to its line or sentence end; None when there
    is none, a hedge precedes it in its sentence or a correction follows."""
    i = low.rfind("answer is")
    if i < 0:
        return None
    search_from = max(i - MAX_SENTENCE, 0)
    sentence_starts = [low.rfind(c, search_from, i) + 1 for c in ".!?\n"]
    head = low[max(sentence_starts + [i - MAX_SENTENCE]):i]  # "I guess the " before "answer is"
    if HEDGE.search(head) or CORRECTION.search(low, i, i + REACH):
        return None
    after = window[i + len("answer is"):].lstrip(" :")
    return re.split(r"\n|[.!](?:\s|$)", after, maxsplit=1)[0].strip(" *")


def _answer_line(window, low):
    """Rule 4: the text after the last "answer:" with at most 80 characters before it on its line,
    or after a line-opening "####", up to its line or sentence end; None if none or corrected."""
    last = None
    for match in ANSWER_COLON.finditer(low):  # streamed: only the last one is kept
        last = match
    if last is None or CORRECTION.search(low, last.end(), last.end() + REACH):
        return None
    return re.split(r"\n|\.(?:\s|$)", window[last.end():], maxsplit=1)[0].strip(" *.")


def _refine(phrase, choice):
    """The answer inside the text after an answer phrase (rules 3 and 4; its callers strip spaces
    and *): the text itself if bare, else the sole value or letter of it or of what follows its
    last copula, else that text."""
    if len(phrase) > MAX_EXPR or _structured(phrase):
        return phrase
    copula = re.fullmatch(AFTER_COPULA, phrase)
    if copula:
        predicate = copula.group(1)
        if _structured(predicate) or len(predicate.split()) <= 3:
            phrase = predicate.strip(" *")
    sole = _sole(phrase, choice, need_conclusion=False)
    if sole:
        return sole
    return phrase


def _structured(s):
    """True if s is a bare answer: a value, a list, a matrix or choice letters."""
    normalized = _normalize(s)
    if not normalized:
        return False
    readers = (_value, _sequence, MATRIX.fullmatch, _letters)
    return any(read(normalized) is not None for read in readers)


def _without_courtesy(text):
    """text (right-stripped) without up to 3 closing courtesy sentences: "I hope this helps!"."""
    body = text[:-3 * MAX_SENTENCE]
    end = text[-3 * MAX_SENTENCE:]
    for _ in range(3):
        piece = SENTENCE_END.split(end[-MAX_SENTENCE:])[-1]
        if COURTESY.fullmatch(piece):
            end = end[:len(end) - len(piece)].rstrip()
    return body + end


def _leading_value(tail, choice):
    """Rule 5: an opening number that ends its sentence or line, else None."""
    if len(tail) > REACH:
        return None
    m = LEADING.match(tail[:80])  # "80. To get this, I added 51 and 29."
    if m is None or choice or re.search(STEPS, tail):
        return None
    if HEDGE_NUMBER.search(tail, m.end()) or CORRECTION.search(tail, m.end()):
        return None
    return m.group(2)


def _math_only(s):
    """Rule 6: the content of s when s is exactly one math span, else None."""
    if len(s) > 10 * MAX_ANSWER:
        return None
    m = MATH_ONLY.fullmatch(s)
    if m is None:
        return None
    content = _span_content(m)
    if re.search(r"\$|\\[\[\]()]", content):
        return None  # "$3$ or $4$"
    return content.strip()


def _span_content(m):
    """The one group of a MATH_ONLY or MATH_SPAN match that took part in it."""
    return next(group for group in m.groups() if group is not None)


def _leading_choice(tail, choice):
    """Rule 8: the letter of an opening "B." / "(B)" / "B)" / "B:" / "**B**" naming an option."""
    m = re.match(LEADING_CHOICE, tail)
    if m is None:
        return None
    letter = m.group(1)
    if LETTERS.index(letter) >= choice or _lists_options(tail[:1000]):  # none when choice is 0
        return None
    return letter


def _last_sentence(tail):
    """Rule 9's sentence: the last one of the last REACH characters, stripped."""
    text = tail[-REACH:].rstrip(" \t\n.!。！")
    return SENTENCE_END.split(text)[-1].strip()


# ----------------------------------------------------------------------------- one answer
def _sole(s, choice, need_conclusion=True):
    """The one value (multiple choice: the one final letter) a sentence states, else None (rule 9).
    need_conclusion: the sentence must conclude (not after an answer phrase)."""
    if not s or len(s) > MAX_SENTENCE:
        return None
    letters = [m for m in LETTER.finditer(s)
               if LETTERS.index(m.group(1)) < choice and _is_letter(s, m)]  # none when choice is 0
    if letters:
        return _final_letter(s, letters)
    return _sole_value(s, need_conclusion)


def _final_letter(s, letters):
    """The last of the option letters (LETTER matches) of sentence s, else None when s hedges, is
    only letters, lists labelled options, offers several letters or negates the last one."""
    last = letters[-1]
    between = "x"  # one letter: nothing joins it to another
    if len(letters) > 1:
        between = s[letters[-2].end():last.start()]
    lone = not re.search(r"[^\W\d_]{2}|^\*\*", s)  # no word: a lone letter, unless bold
    several = re.fullmatch(LETTER_JOINER, between)  # "C or D", "A, C"
    if HEDGE.search(s) or lone or _lists_options(s) or several:
        return None
    if not _asserted(s, *last.span()):
        return None
    return last.group(1)


def _sole_value(s, need_conclusion):
    """The one value sentence s states (see the module docstring, rule 9), else None."""
    clause_starts = [_clause_start(s, m.start()) for m in CONCLUSION.finditer(s)]
    result_ends = [m.end() for m in RESULT.finditer(s)]
    starts = sorted(clause_starts + result_ends)
    values, equals = _counted_values(s, starts)
    if len(values) != 1 or HEDGE_NUMBER.search(s):
        return None
    if need_conclusion and not (starts or equals or BOLD.search(s)):
        return None
    start, end, text = values[0]
    if not _asserted(s, start, end):
        return None
    return text.strip()


def _clause_start(s, pos):
    """The index after the last , ; : (or ，；：) before pos, else 0."""
    return max(s.rfind(c, 0, pos) for c in ",;:，；：") + 1


def _counted_values(s, starts):
    """_values_in(s, start) for the last of the last 8 starts with a value after it, else from 0."""
    for start in reversed(starts[-8:]):
        found = _values_in(s, start)
        values, _ = found
        if values:
            return found
    return _values_in(s, 0)


def _values_in(s, begin):
    """([(start, end, text)] of the values s states from `begin` on, whether an "=" came before
    them): plain numbers and math spans with a digit or \\pi, only those after the last "="."""
    values = []
    equals = False
    pos = begin
    spans = list(MATH_SPAN.finditer(s, begin))
    for span in spans + [None]:  # None: the text after the last span
        stop = len(s)
        if span is not None:
            stop = span.start()
        last_equals = s.rfind("=", pos, stop)
        if last_equals >= 0:
            values = []
            equals = True
            pos = last_equals + 1
        for number in PLAIN_NUMBER.finditer(s, pos, stop):
            values.append((number.start(), number.end(), number.group()))
        if span is None:
            break
        content = _span_content(span)
        if "=" in content and "," not in content:  # $x = 5$: only 5
            values = []
            equals = True
            content = content[content.rfind("=") + 1:]
        if re.search(r"\d|\\pi", content):
            values.append((span.start(), span.end(), content))
        pos = span.end()
    return values, equals


def _asserted(s, start, end):
    """False if the clause around s[start:end] negates or bounds it ("not 5", "B is wrong", "at
    least 5")."""
    before = CLAUSE.split(s[:start])[-1]
    after = CLAUSE.split(s[end:], maxsplit=1)[0]
    return not NEGATION.search(before + " " + after)


def _is_letter(s, m):
    """False for the pronoun "I" and the article "A" before a lowercase word ("A triangle has")."""
    letter = m.group(1)
    next_word = re.match(r"\s+([a-z]+)", s[m.end():])
    if next_word is None or letter not in "AI":
        return True
    if letter == "I":
        return False
    return next_word.group(1) in NOT_ARTICLE


def _lists_options(s):
    """True if s lists two or more labelled options ("A. 3/11 B. 8/11", "(A) 3 (B) 4")."""
    labels = {a or b for a, b in OPTION_LABEL.findall(s)}
    return len(labels) > 1


# ----------------------------------------------------------------------------- normalization
TEXT_COMMANDS = (r"text|textbf|textit|textnormal|textrm|mathrm|mathbf|mathit|mathsf|mbox|emph|"
                 r"operatorname")
TEXT = r"(?:" + TEXT_COMMANDS + ")"
WRAPPERS = [r"^\$\$(.*)\$\$$", r"^\$(.*)\$$", r"^\\\((.*)\\\)$", r"^\\\[(.*)\\\]$",
            r"^\*\*(.*)\*\*$", r"^\\(?:boxed|fbox|" + TEXT_COMMANDS + r")\{(.*)\}$"]
# a value, then 1 to 3 words of at most 12 letters (not one of these, which are no unit)
UNIT = re.compile(r"(.*?(?:\d\s+|\}\s*|%\s*))"
                  r"((?:(?!(?:is|are|was|were|be|not|no|too|than|or|and|but|if|so|"
                  r"it|only)\b)[A-Za-z]{1,12}\.?(?:\^\{?\d\}?|[²³])?\s*){1,3})")
COMMA_GROUPED = r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?"  # 1,000 and 12,345.5
SPACE_GROUPED = r"[-+]?\d{1,3}( \d{3})+(\.\d+)?"  # 1 000


def _normalize(s):
    """Strip presentation so that equal answers look alike; keeps the mathematical content (the
    steps are listed in the module docstring).

    The steps stay in this one function on purpose: an answer nested hundreds of tuples deep meets
    Python's recursion limit, where it does decides the verdict, and a helper function around a
    step would move that point (see _compare)."""
    s = s.strip()
    for _ in range(4):  # up to 4 nested WRAPPERS: $\boxed{\text{5}}$ -> 5
        for pattern in WRAPPERS:
            m = re.match(pattern, s, re.S)
            if m is None:
                continue
            if pattern.endswith(r"\}$") and not _balanced(m.group(1)):
                continue  # \boxed{1} + \boxed{2} is no wrapper
            s = m.group(1).strip()
    # LaTeX spacing, \left and \right; thousands separators \, \! {,}; \% and dollar signs
    s = re.sub(r"(?<!\\)\\(?:left|right|displaystyle|;|:|quad|qquad| )|~", " ", s)
    s = re.sub(r"(?<!\\)\\(,|!\s*)", "", s)
    s = s.replace("{,}", ",")
    s = s.replace("\\%", "%")
    s = s.replace("\\$", "")
    s = s.replace("$", "")
    # one spelling each: %, spelled numbers in digits, -5, no degree sign, \frac{1}{2}, \sqrt{2}
    s = re.sub(r"\s*(?:%|\bpercent\b|\bpct\b)", "%", s)
    s = re.sub(SPELLED, _spelled_value, s)
    s = re.sub(r"\b(?:negative|minus)\s+(?=[\d.])", "-", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree", "", s)
    s = re.sub(r"\\[dtc]frac", r"\\frac", s)
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", s)
    s = re.sub(r"\\" + TEXT + r"\{([^{}]*)\}", r"\1", s)  # \text{cm} -> cm
    # ∞ and +\infty -> \infty
    s = re.sub(r"(^|[(\[,])\s*\+\s*(?=\\infty)", r"\1", s.replace("∞", "\\infty"))
    # \in and \approx -> "=", but an exact value before an \approx stays: x = 1/3 \approx 0.33
    s = re.sub(r"\\in(?![a-zA-Z])", "=", s.replace("≈", "\\approx")).lstrip(" =")
    head = s.split("\\approx")[0]
    if "=" in head:
        s = head  # x = 1/3
    else:
        s = s.replace("\\approx", "=").lstrip(" =")  # x \approx 11 -> x = 11
    s = re.sub(r"\s*,?\s*\band\b\s*", ", ", s)  # "19, 46, and 82" is a list
    s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip()
    s = _drop_lhs(s)
    unit = UNIT.fullmatch(s)  # 5 cm -> 5, \frac{1}{3} meters -> \frac{1}{3}
    if unit and not MULTI.search(s):
        value = unit.group(1).strip()
        if _value(value.rstrip("%")) is not None:
            s = value
    if re.fullmatch(SPACE_GROUPED, s):
        return s.replace(" ", "")  # 1 000 -> 1000
    return s


def _spelled_value(m):
    """The digits of a spelled number ("two hundred and five" -> "205")."""
    total = 0  # the thousands so far
    part = 0  # below the last "thousand"
    for word in re.findall(r"[a-z]+", m.group().lower()):
        value = WORD_VALUE.get(word)  # "and" is None
        if value == 1000:
            total = total + (part or 1) * 1000
            part = 0
        elif value == 100:
            part = (part or 1) * 100
        else:
            part = part + (value or 0)
    return str(total + part)


def _drop_lhs(s):
    """The last side of an equation whose left side is a name or whose sides are values, else s
    (see the module docstring)."""
    sides = _split_top(s, "=")
    if len(sides) < 2:
        return s
    if any(len(_split_top(side)) > 1 for side in sides[:-1]):
        return s  # a top-level comma before the last "=": "x = 1, y = 2"
    lhs = sides[0]
    rhs = sides[-1].strip()
    bare_name = re.sub(r"_\{[^{}]*\}|_\w|\([^()]*\)", "", lhs)  # without subscripts, arguments
    is_name = re.search(r"[A-Za-z]", lhs) and not re.search(r"[\d+\-*^<>!]", bare_name)
    if is_name:
        return rhs
    if None not in (_value(lhs.strip()), _value(rhs)):  # 51 + 29 = 80
        return rhs
    return s


def _balanced(s, opening="{", closing="}"):
    """True if the brackets of s (by default braces) never close more than opened, and end even."""
    depths = [0, *accumulate((c in opening) - (c in closing) for c in s)]
    return min(depths) == 0 == depths[-1]


def _split_top(s, sep=","):
    """s split at each sep outside (), [], {} (\\{ \\} count as braces)."""
    depths = accumulate((c in "([{") - (c in ")]}") for c in s)
    cuts = [i for i, (c, depth) in enumerate(zip(s, depths)) if c == sep and depth == 0]
    starts = [-1, *cuts]
    ends = [*cuts, len(s)]
    return [s[a + 1:b] for a, b in zip(starts, ends)]


# ----------------------------------------------------------------------------- numbers
NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
TOKEN = re.compile(r"\s*(\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+|\\[a-zA-Z]+|[-+*/^(){}\[\]!])")
PRODUCTS = ("*", "/", "\\cdot", "\\times", "\\div")
IMPLICIT_PRODUCTS = ("(", "{", "\\pi", "\\sqrt", "\\frac")  # 2\sqrt{3}, 3(4); never "3 4"
CLOSING = {"(": ")", "{": "}", "[": "]"}


def _value(s):
    """(exact Fraction or None, float) of a number or closed form; None if s is neither."""
    exact = _exact(s)
    if exact is not None:
        return exact, float(exact)
    if not re.search(r"\d|\\pi", s):
        return None
    approx = _evaluate(s)
    if approx is None:
        return None
    return None, approx


def _exact(s):
    """Exact value (Fraction) of a plain number, a/b or \\frac{a}{b}; None otherwise."""
    s = re.sub(r"\s*([/+-])\s*", r"\1", s.strip())  # "- 3", "3 / 4"; but "3 4" is no number
    if re.fullmatch(COMMA_GROUPED, s):
        s = s.replace(",", "")  # 1,000 -> 1000
    s = re.sub(r"\A(-?)\\frac\{(" + NUM + r")\}\{(" + NUM + r")\}\Z", r"\1\2/\3", s)
    parts = s.split("/")
    if len(s) > 100 or len(parts) > 2 or not all(re.fullmatch(NUM, part) for part in parts):
        return None
    if any(abs(int(e)) > 400 for e in re.findall(r"[eE]([-+]?\d+)", s)):
        return None  # 1e999999 would build a huge integer
    denominator = Fraction(1)
    if len(parts) == 2:
        denominator = Fraction(parts[1])
    if not denominator:
        return None
    return Fraction(parts[0]) / denominator


def _evaluate(s):
    """Float value of a closed form of TOKENs (implicit products: 2\\sqrt{3}; bounded n! and ^),
    else None. A recursive-descent parser of
        expr = term {("+" | "-") term}
        term = unary {PRODUCTS unary | power after an IMPLICIT_PRODUCTS token}
        unary = ("-" | "+") unary | power
        power = atom {"!"} ["^" unary]
        atom = number | (expr) | {expr} | [expr] | \\pi | \\frac atom atom | \\sqrt [atom] atom"""
    if len(s) > MAX_EXPR or TOKEN.sub("", s).strip():
        return None  # too long, or something that is no token
    tokens = [""] + TOKEN.findall(s)[::-1]  # reversed: tokens[-1] is the next one, "" the end
    take = tokens.pop

    def expr():
        v = term()
        while tokens[-1] in ("+", "-"):
            if take() == "+":
                v = v + term()
            else:
                v = v - term()
        return v

    def term():
        v = unary()
        while tokens[-1] in PRODUCTS or tokens[-1] in IMPLICIT_PRODUCTS:
            if tokens[-1] in IMPLICIT_PRODUCTS:
                v = v * power()
            elif take() in ("/", "\\div"):
                v = v / unary()
            else:
                v = v * unary()
        return v

    def unary():
        if tokens[-1] in ("-", "+"):
            if take() == "-":
                return -unary()
            return unary()
        return power()

    def power():
        base = atom()
        while tokens[-1] == "!":
            take()
            if base != int(base) or not 0 <= base <= 100:
                raise ValueError
            base = float(math.factorial(int(base)))
        if tokens[-1] != "^":
            return base
        take()
        exponent = unary()
        if abs(exponent) > 1000:
            raise ValueError  # 9^{9^{9}}
        if base < 0 and exponent != int(exponent):
            raise ValueError  # no complex roots
        if base == 0 and exponent < 0:
            raise ValueError
        return float(base) ** exponent  # an OverflowError is caught below

    def atom():
        t = take()
        if t and (t[0].isdigit() or t[0] == "."):
            return float(t)
        if t in CLOSING:
            v = expr()
            if take() == CLOSING[t]:
                return v
            raise ValueError  # unclosed
        if t == "\\pi":
            return math.pi
        if t == "\\frac":
            return atom() / atom()
        if t == "\\sqrt":
            degree = 2.0
            if tokens[-1] == "[":
                degree = atom()  # \sqrt[3]{8}
            v = atom()
            if v < 0:
                raise ValueError
            return v ** (1 / degree)
        raise ValueError

    try:
        v = expr()
        if tokens != [""] or not math.isfinite(v):
            return None  # tokens left over, or no finite value
        return v
    except (OverflowError, ZeroDivisionError, ValueError, RecursionError):
        return None


def _numbers_equal(a, b):
    """Equality of two (exact or None, float) values: integers exactly, others within 1e-6
    relative."""
    exact_a, float_a = a
    exact_b, float_b = b
    if exact_a is None or exact_b is None:
        return math.isclose(float_a, float_b, rel_tol=1e-6, abs_tol=1e-12)
    if exact_a.denominator == exact_b.denominator == 1:
        return exact_a == exact_b
    return abs(exact_a - exact_b) <= max(abs(exact_a), abs(exact_b)) / 10**6


def _values_equal(p, g):
    """Numeric equality, x% meaning x or x/100, and a rounded decimal equal to its exact value (see
    _rounded); None if either side is no value."""
    readings = []  # per side: its value, and its value / 100 when it ends with "%"
    for s in (p, g):
        if len(s) > MAX_EXPR:
            return None
        value = _value(s.rstrip("%").strip())
        if value is None:
            return None
        side = [value]
        if s.endswith("%"):
            exact, approx = value
            if exact is not None:
                exact = exact / 100
            side.append((exact, approx / 100))
        readings.append(side)
    p_readings, g_readings = readings
    if any(_numbers_equal(a, b) for a in p_readings for b in g_readings):
        return True
    return _rounded(p, g, g_readings[0]) or _rounded(g, p, p_readings[0])


def _rounded(s, other, value):
    """True if s (4+ significant digits) is `other` (value `value`, no plain decimal) rounded at its
    decimal places."""
    m = re.fullmatch(r"[-+]?(\d*)\.(\d+)", s)
    if not m:
        return False
    significant = (m.group(1) + m.group(2)).lstrip("0")
    if len(significant) < 4 or re.fullmatch(r"[-+]?[\d,]*\.?\d*", other):  # other: no decimal
        return False
    places = len(m.group(2))
    exact, approx = value
    if exact is None:
        return abs(approx - float(s)) <= 0.5 * 10.0**-places * (1 + 1e-9)
    if (exact * 10**places).denominator == 1:
        return False  # 8/3 -> 2.6667, but not an exact 2.5 against 2.5001
    return abs(exact - Fraction(s)) <= Fraction(1, 2 * 10**places)


# ----------------------------------------------------------------------------- multiple choice
CHOICE = re.compile(r"(?:(?:option|choice)\s+)?\(?([A-Z])\)?(?:[.:)]|\s*$)", re.I)


def _letters(s, allow_text=True):
    """Set of choice letters named by s ('B', '(B)', 'B.', 'B) 8/11', 'A, C', 'A or B'), else None.
    allow_text: a single letter may be followed by its option's text ('B) 8/11')."""
    parts = [p.strip() for p in re.split(r",|\bor\b|\band\b", s) if p.strip()]
    found = set()
    for part in parts:
        m = CHOICE.match(part)
        if m is None:
            return None
        rest = part[m.end():]
        if rest:
            labelled = part[m.end() - 1] in ".:)"
            if not (allow_text and len(parts) == 1 and labelled):
                return None
        if re.search(r"(?:^|\s)\(?[A-Z][).:](?:\s|$)", rest):
            return None  # "(A) (B) (C)": every option listed
        found.add(m.group(1).upper())
    return found or None


def _named_letters(s, options, allow_text=True):
    """The set of choice letters s names, else with `options` that of the one option whose text
    equals s, else None."""
    letters = _letters(s, allow_text)
    if letters or not options:
        return letters
    hits = {LETTERS[i] for i, option in enumerate(options[:26])
            if _compare(_normalize(s), _normalize(str(option)))}
    if len(hits) == 1:
        return hits
    return None


def _gold_letters(g, options):
    """The choice letters the normalized reference names (a letter, several, or an option's text),
    else None. Without options, only a bare "B" or "(B)", or several letters."""
    letters = _named_letters(g, options, allow_text=False)
    if letters is None:
        return None
    if options or len(letters) > 1 or re.fullmatch(r"\(?[A-Z]\)?", g):
        return letters
    return None


def _choice_count(answer, options):
    """How many option letters to look for in free text: 0 unless the reference is a choice."""
    if _gold_letters(_normalize(str(answer)), options) is None:
        return 0
    return min(len(options or LETTERS), 26)


# ----------------------------------------------------------------------------- equivalence
MATRIX = re.compile(r"\\begin\{[pbvB]?matrix\}(.*)\\end\{[pbvB]?matrix\}", re.S)
MULTI = re.compile(r"\s(?:or)\s|\\(?:text|mbox)\{\s*or\s*\}|\\lor")  # several answers
FUNCTION = re.compile(r"[\s$]*([A-Za-z])\(\s*([a-z])\s*\)\s*=")
DECIMAL_COMMA_NUMBER = r"[-+]?\d+,(?:\d{1,2}|\d{4,})%?"  # 3,5 but not 3,500
DECIMAL_COMMA_TEXT = re.compile(
    r"[а-яё]|[äöüßéèêëàâçñãõóòúùíìłąęśźżčřšžåøæ]|\b(?:ist|und|der|die|das|est|"
    r"es|la|el|le|il|de|donc|les|por|los|las|una|sono|della|jest|wynosi|het|een)\b",
    re.I)


def is_equivalent(pred, gold, options=None):
    """True if the extracted answer pred means the same as the reference gold (options: the choices'
    texts, A first)."""
    try:
        gold = str(gold)
        if len(pred) > MAX_ANSWER:
            return pred.strip().lower() == gold.strip().lower()
        pred = _rename_variable(pred, gold)
        p = _normalize(pred)
        g = _normalize(gold)
        if not p:
            return False
        gold_letters = _gold_letters(g, options)
        if gold_letters is None:
            return _compare(p, g)
        return _named_letters(p, options) == gold_letters
    except RecursionError:
        return False


def _rename_variable(pred, gold):
    """pred with its function's variable and gold's swapped when both define the same function of
    different variables: f(y) = y against f(x) = x."""
    defined = FUNCTION.match(pred)
    reference = FUNCTION.match(gold)
    if not (defined and reference) or defined.group(1) != reference.group(1):
        return pred
    a = defined.group(2)
    b = reference.group(2)
    if a == b:
        return pred
    swap = {a: b, b: a}
    return re.sub(rf"(?<![A-Za-z\\])[{a}{b}](?![A-Za-z])", lambda m: swap[m.group()], pred)


def _squash(s):
    """Case-folded, single-spaced text, no space next to a symbol: 'x + 1' -> 'x+1'; '3 4' stays."""
    single_spaced = re.sub(r"\s+", " ", s.strip())
    return re.sub(r" ?([^\w ]) ?", r"\1", single_spaced.lower())


def _compare(p, g):
    """Equality of two normalized answers (no choice letters here).

    It recurses into the elements of matrices and lists through all() and next() over generators,
    as it always has: an answer nested hundreds of tuples deep meets Python's recursion limit, and
    the call depth of each step on the way decides where (see _normalize)."""
    if _squash(p) == _squash(g):
        return bool(p)
    if len(p) > MAX_ANSWER or len(g) > MAX_ANSWER or MULTI.search(p) or MULTI.search(g):
        return False  # too long, or "3 or 4": several answers are not one answer
    matrices = [m for m in (MATRIX.fullmatch(p), MATRIX.fullmatch(g)) if m]
    if matrices:  # a matrix equals only a matrix of the same shape, element by element
        cells = _matrix_cells(matrices)
        if cells is None:
            return False
        return all(_compare(_normalize(a), _normalize(b)) for a, b in cells)
    p_sequence = _sequence(p)
    g_sequence = _sequence(g)
    if not (p_sequence or g_sequence):
        return bool(_values_equal(p, g))
    if not (p_sequence and g_sequence):
        return False
    p_kind, p_items = p_sequence
    g_kind, g_items = g_sequence
    kinds_differ = "list" not in (p_kind, g_kind) and p_kind != g_kind  # (0, 1] != [0, 1]
    if len(p_items) != len(g_items) or kinds_differ:
        return False
    if {p_kind, g_kind} <= {"set", "list"}:  # in any order: each matches one not matched yet
        unmatched = list(g_items)
        for a in p_items:
            hit = next((j for j, b in enumerate(unmatched) if _compare(a, b)), None)
            if hit is None:
                return False
            unmatched.pop(hit)
        return True
    return all(_compare(a, b) for a, b in zip(p_items, g_items))


def _matrix_cells(matrices):
    """[(p element, g element)] of two MATRIX matches of one shape, row by row; else None."""
    rows = [_matrix_rows(m) for m in matrices]
    if len(rows) != 2:
        return None
    p_rows, g_rows = rows
    if [len(row) for row in p_rows] != [len(row) for row in g_rows]:
        return None
    return [(a, b) for p_row, g_row in zip(p_rows, g_rows) for a, b in zip(p_row, g_row)]


def _matrix_rows(m):
    """The rows (lists of element texts) of a MATRIX match; empty rows left out."""
    rows = m.group(1).strip().split("\\\\")
    return [row.split("&") for row in rows if row.strip()]


def _sequence(s):
    """(kind, normalized elements) of a top-level comma (else semicolon) list, else None; kind is
    'set', 'list' or the bracket pair ('()', '[)', ...)."""
    kind = "list"
    inner = s
    if s.startswith("\\{") and s.endswith("\\}"):
        kind = "set"
        inner = s[2:-2]
    elif len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _balanced(s[1:-1], "([{", ")]}"):
        kind = s[0] + s[-1]
        inner = s[1:-1]
    parts = _split_top(inner)
    if len(parts) < 2:
        parts = _split_top(inner, ";")  # -3;-2
    if len(parts) < 2:
        return None
    if kind == "list" and re.fullmatch(COMMA_GROUPED, inner.strip()):
        return None  # a thousands separator
    return kind, [_normalize(part) for part in parts]


def reward(response, answer, options=None):
    """1.0 if the response's extracted answer is equivalent to `answer`, else 0.0. Never raises:
    extract_with_rule and is_equivalent (which the tests call) do, and an odd response must cost its
    reward, not the training run hours in."""
    try:
        choice = _choice_count(answer, options)
        pred = extract_answer(response, choice)
        if pred is not None and not choice and len(pred) <= MAX_EXPR:
            p = _normalize(pred)
            if (re.fullmatch(DECIMAL_COMMA_NUMBER, p)
                    and _sequence(_normalize(str(answer))) is None
                    and DECIMAL_COMMA_TEXT.search(response[-REACH:])):
                pred = p.replace(",", ".")  # a decimal comma: 3,5 -> 3.5 (see the module docstring)
        return float(pred is not None and is_equivalent(pred, answer, options))
    except Exception:  # odd text must cost a reward, never a training run
        return 0.0


# ----------------------------------------------------------------------------- command line
def main():
    from cli import UserError, fail, read_jsonl  # the CLI's only import beyond the standard library
    p = argparse.ArgumentParser(description="Score a response against a reference answer (1 or 0).")
    p.add_argument("response", nargs="?")
    p.add_argument("answer", nargs="?")
    p.add_argument("--options", nargs="*", default=None, help="choice texts in order A, B, ...")
    p.add_argument("--jsonl", help="file of {response, answer[, options]} rows")
    args = p.parse_args()
    if args.jsonl:
        total = 0
        correct = 0
        try:
            for total, (n, row) in enumerate(read_jsonl(args.jsonl), 1):
                if "response" not in row or "answer" not in row:
                    message = f"{args.jsonl}:{n}: need a JSON object with response and answer"
                    raise UserError(message)
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

"""Binary answer verification: reward 1.0 when a response's final answer equals the reference.

EXTRACTION (extract_with_rule). Everything up to the last </think> is dropped; a <think> that is
never closed means no answer yet (rule unclosed_think). Then the first of these rules that applies:

  1. answer_tag: the content of the last <answer>...</answer>; an empty tag is an empty answer
     (reward 0). The content starts at the first <answer> after the </answer> before it, so
     "<answer>x<answer>9</answer>" answers "x<answer>9" (reward 0).
  2. boxed: the content of the last \\boxed{...} or \\fbox{...} (nested braces; if that one is not
     closed within MAX_SCAN characters, none), unless "Final Answer:" or "final answer is" follows,
     or a TAKEBACK within REACH characters. Up to MAX_BOXES boxes joined by nothing but BOX_JOINER
     ("," ";" "and", "$, $", "x =") give their contents as a list ("\\boxed{2}, \\boxed{3}" ->
     "2, 3"); joined by "or" they offer several answers ("2 or 3", which equals nothing).
  3. answer_is: X after the last "answer is", unless a HEDGE precedes it in its sentence ("I guess
     the answer is"). X ends at a line end, or at "." or "!" before a space ("80!" is 80).
  4. answer_line: X after the last "Answer:" that is at most 80 characters into its line (not the
     end of a longer word; spaces, * and _ may precede the colon), or after a "####" opening a line
     (GSM8K). X ends at a line end or at "." before a space.
     Rules 3 and 4 read the last MAX_SCAN characters, and are skipped when a CORRECTION or a
     TAKEBACK ("I may have slipped", "not 100% sure") follows within REACH characters ("The answer
     is 80. Wait, no, it's 81"). Multiple choice: a closing RULED_OUT tail is dropped from X first
     ("C, certainly not A or D", "B rather than D", "D (A and B are ruled out)"). X is the answer
     if bare (a value, a list, a matrix or choice letters); else what follows its last is, are,
     equals or was becomes X if that is bare or at most 3 words ("The volume is 120" -> 120);
     then the answer is X's sole value or letter by rule 9, no conclusion needed ("Jane started 3
     hours ago" -> 3), else X as text.
  Rules 5-9 read the text without up to 3 closing COURTESY sentences that hold no digit and no
  TAKEBACK ("I hope this helps!", but not "Hope that's right, I may have slipped").
  5. leading_value (not for multiple choice; a text of at most REACH characters): an opening plain
     number, bold or not, then "." or "!" and a space, or a line end, and more text ("80. To get
     this, I added 51 and 29."). Not when the text has a numbered-list line or the word "step" or
     "steps" (any case) anywhere, nor when a HEDGE_NUMBER, a CORRECTION or a TAKEBACK follows the
     number.
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
     after 。！？, and at line ends), of at most MAX_SENTENCE characters. Refused when a HEDGE (a
     TAKEBACK included) or an echo of the task is anywhere in it (maybe, could, question, "?", ...).
     Multiple choice: up to 3 closing RULED_OUT tails are dropped first (", not A or D", "; A and D
       are wrong", "，不是A或D", "et non A ou D"), then its last standalone option letter (a CJK
       character next to it is no word: 答案是C). "I" before a lowercase word is the
       pronoun; "A" before one is the article unless the word is in NOT_ARTICLE (a verb, and, or).
       Refused when the sentence is only letters (no word of two letters, and not opening with **),
       lists labelled options, joins the last two letters by nothing but spaces, "," "/" "&" or
       or/and ("C or D", "A, C"), or has a NEGATION, bound or condition in the letter's clause
       ("So B is wrong"). With no letter in the sentence, the number rule.
     Otherwise: its sole value. Values are PLAIN_NUMBERs (1,250; 3/4; 12:30; 30 %; eighty-one) and
       math spans with a digit or \\pi ("$1.45 and $2" is currency, no span); after an "=" only
       the values after the last one count. A sentence that opens with its value as the subject
       (VALUE_SUBJECT: "96 is the product of 12 and 8") answers that value unless it hedges, has a
       NEGATION or points at a number. Else values are counted from the clause of a CONCLUSION word
       or from after a RESULT verb or a STATING_VERB (a present-tense verb of amount before a value
       and a unit or noun: "The train covers 90 km"; not "had", "holds"), the last of these (of the
       last 8) with a value after it, else from the start of the sentence: the operands of "The sum
       of 51 and 29 is 80" do not count.
       Refused unless there is exactly one value, when "or" or another HEDGE_NUMBER is anywhere in
       the sentence, and when the value's clause has a NEGATION ("not 5"; but "If we multiply 7 by
       8, we get 56" keeps 56), and when the sentence points at a number: EXAMINING it ("Take 8
       first.", "Looking at 8") or, with no CONCLUSION word, naming it by POSITIONAL ("The second
       value is 6."). The sentence must conclude: a CONCLUSION word, a RESULT or STATING_VERB, an
       "=" before the counted values or a BOLD number (**42**). So a question's numbers, echoed,
       earn 0.

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
  - matrices (pmatrix, bmatrix and kin, or an array in brackets) equal matrices of the same shape
    element by element, whatever the environment; tuples and intervals equal
    element-wise in order, and brackets must match ((0, 1] is not [0, 1]; +\\infty = \\infty);
    a bare list (split at top-level commas, else semicolons) equals a bracketed one in order, and
    a bare list or a \\{set\\} in any order (a set never equals a tuple).
  - numbers: integers exactly, others within 1e-6 relative; 1,000 = 1{,}000 = 1\\,000 = 1 000;
    a/b, \\frac and kin, scientific notation; closed forms (\\sqrt, \\pi, ^, n!) by a small bounded
    evaluator, no eval; a decimal with 4+ significant digits also equals a value that is no plain
    decimal and rounds to it at its places (2.6667 = 8/3; 0.333 != 1/3).
  - polynomials in one-letter variables (+ - products, powers up to MAX_POWER, division by a
    number, \\frac; at most MAX_TERMS terms; no word, and an operator on both sides) equal when
    their normal forms do (\\frac{y}{5} + \\frac{3}{5} = \\frac{y+3}{5}; 2(x+1) = 2x + 2), and
    polynomial equations when one is the other times a nonzero number (-x^2 + 3x - 2 = 0 is
    x^2 - 3x + 2 = 0).
  - percentages: x% equals x and x/100 (50% = 50 = 0.5, but 0.5 != 50); against y%, only y.
  - decimal commas (reward only, as it sees the response): "3,5" is 3.5 in a response whose last
    REACH characters show a language that writes them (DECIMAL_COMMA_TEXT), unless the reference is
    a choice or a list, or "3,500" reads as grouping; in any language, a DECIMAL_COMMA_PLAIN (3,75,
    0,5, 3,1416) against a reference written as a decimal (3.75); else 3,5 is a list.
Linear time in the response length. extract_with_rule and is_equivalent may raise on odd input;
reward never raises (an exception scores 0).

CLI: python verify.py RESPONSE ANSWER [--options A_TEXT B_TEXT ...], or --jsonl FILE of rows
{response, answer[, options]}: prints the accuracy (a UTF-8 BOM is fine; a bad byte, row or file
prints one "error: ..." line and exits 2)."""
import re
from itertools import accumulate

import expr
from expr import COMMA_GROUPED, MAX_EXPR

MAX_ANSWER = 1000  # a longer extracted answer is compared as plain text only
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
STEPS = r"(?i)\n\s*\d+[.)]\s|\bsteps?\b"  # a numbered list or "step(s)": no leading answer
LEADING_CHOICE = r"\s*(?:\*\*)?\(?([A-Z])(?:\)|\.|:|\*\*)(?=\s|$)"  # "B.", "(B)", "B:", "**B**"
AFTER_COPULA = r"(?i).*\b(?:is|are|equals|was)\s+(.+)"  # "The volume is 120" -> "120"

# doubt after the answer that takes it back: "I may have slipped", "I might be wrong", "not 100%
# sure", "please double-check this", "take it with a grain of salt"
TAKEBACK = re.compile(
    r"\b(?:may|might|could)(?: well)? (?:have (?:slipped|erred|messed up|miscalculated|miscounted|"
    r"gotten it wrong|got it wrong|made (?:a|an|some)(?: \w+)? (?:mistakes?|errors?|slips?))|"
    r"be (?:wrong|mistaken|off|incorrect))\b|\bnot (?:[\w%]+ )?(?:sure|certain|confident)\b|"
    r"\b(?:unsure|uncertain)\b|grain of salt|\bdon'?t (?:quote|trust) me\b|"
    r"\b(?:just|only) (?:a|my) guess\b|\bdouble[- ]check (?:this|that|it|me|my)\b", re.I)
HEDGE = re.compile(
    r"\b(?:maybe|perhaps|possibly|probably|likely|might|unsure|not sure|guess|either|could|"
    r"suppose|assume|whether|question|asks?|asked|told|estimate)\b|[?？؟]|可能|也许|如果|"
    + TAKEBACK.pattern, re.I)
# for numbers "or" hedges too: "3 or 4"
HEDGE_NUMBER = re.compile(HEDGE.pattern + r"|\bor\b|或", re.I)
# negations, bounds and conditions: they refuse the value or letter in their clause
NEGATION = re.compile(
    r"\b(?:not|cannot|never|wrong|incorrect|false|invalid|impossible|fails?|eliminated|ruled? out|"
    r"excluded?|at least|at most|more than|less than|fewer than|greater than|(?<!add )(?<!adds )"
    r"up to|except|instead|about|around|approximately|roughly|nearly|almost|if|let|find|what|"
    r"how many|how much|given|consider|examine|analy[sz]e|nicht|pas|non(?!-)|ni|nem|não|né|"
    r"не)\b|n't\b|不是|并非|並非|而非", re.I)
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
    r"lösung|solución|solução|soluzione|відповідь|απάντηση|jawaban|đáp án|trả lời)\b|所以|因此|"
    r"因而|总共|一共|共有|答案|答|合计|정답|답|よって|"
    r"したがって|合計|答え|따라서|그러므로|إذن|لذلك|المجموع|الإجابة|इसलिए|कुल|उत्तर", re.I)
# a sentence that points at one of the question's numbers by position: "The second value is 6";
# it answers only with a CONCLUSION word ("So the second value is 6")
POSITIONAL = re.compile(
    r"\b(?:the|its|our|this)\s+(?:first|second|third|fourth|fifth|1st|2nd|3rd|[4-9]th|next|"
    r"given|original|initial)\s+(?:numbers?|values?|terms?|ones?|integers?|digits?|operands?|"
    r"factors?|addends?|entr(?:y|ies)|elements?|quantit(?:y|ies))\b", re.I)
# a sentence that takes up a number to examine it answers nothing: "Take 8 first.", "Looking at 8"
EXAMINING = re.compile(
    r"^\W*(?:(?:now|first|next|then)\W+)?(?:take|taking|pick|picking|choose|choosing|"
    r"look(?:ing)? at|start(?:ing)? with|begin(?:ning)? with|focus(?:ing)? on|try|trying|check|"
    r"checking|test|testing)\b|\bfirst\W*$", re.I)
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

# kana, hanzi, hangul and full-width forms: no word around a choice letter
CJK = r"\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uff00-\uffef"
# words after a value that make it no amount of a thing: "8 to her friend", "5 more than"
NOT_A_NOUN = (r"(?:to|away|from|into|of|by|for|and|or|with|in|on|at|out|more|less|times|than|"
              r"over|off|back|up|down|first|then|each|per)")
# a sentence that opens with its value as the subject: "96 is the product of 12 and 8."
VALUE_SUBJECT = re.compile(r"\W*(" + PLAIN_NUMBER.pattern + r")\s+(?:is|was)\s+(?:the|our)\s")
# a verb in the present tense that states a value, right before it (a value and a unit or noun, or $
# and a value, follow): "The train covers 90 km.", "She saves $45 each week."; not a past tense or
# a verb of holding, which restate a premise ("Tom had 5 apples.", "Each box holds 6 eggs.")
STATING_VERB = re.compile(
    r"(?<=[a-z] )(?:(?:cover|travel|run|drive|walk|swim|ride|save|earn|spend|pay|sell|buy|collect|"
    r"read|write|score|win|weigh|measure|use|receive|raise|produce|bake|consume|charge|owe|invest)"
    r"(?:e?s)?|fl(?:y|ies))\s+(?=\$\s?\d|\d[\d,.]*\s*(?:%|(?!" + NOT_A_NOUN
    + r"\b)[A-Za-z]))")

# a standalone capital letter, in parentheses or not (multiple choice in free text); a CJK character
# next to it is no word around it: 答案是C
LETTER = re.compile(r"(?<![^\W" + CJK + r"]|[\\$'’])\(?([A-Z])\)?(?![^\W" + CJK + r"]|['’])")
# one option letter in a list of ruled-out ones: "A", "(A)", "**A**"
RULED_LETTER = r"(?:\*\*)?\(?[A-Z]\)?(?:\*\*)?"
# what joins ruled-out letters: "A or D", "A, B and D", "A ni D", "A或D"
RULED_JOIN = (r"\s*(?:[,/&、，或和与及]|\b(?:or|nor|and|ou|ni|et|oder|noch|und|o|y|e|nem|né|"
              r"или|ни|и)\b)\s*")
RULED_LETTERS = RULED_LETTER + r"(?:" + RULED_JOIN + RULED_LETTER + r")*"
# a negation that rules the letters after it out: "certainly not", "rather than", "et non", "不是"
RULING_OUT = (r"(?:(?:and|but|certainly|definitely|surely|clearly|obviously|absolutely|et|mais|"
              r"certainement|und|aber|sicher|y|pero|e|mas|ma|а|и|конечно)\s+)*"
              r"(?:(?:not|never|rather than|instead of|nor|non|pas|nicht|keinesfalls|no|ni|não|"
              r"nem|né|не)\b|而不是|并非|並非|而非|不是|非)\s*(?:(?:options?|choices?)\s+)?")
# a verdict that rules the letters before it out: "are wrong", "can be ruled out", "都错"
RULED_OUT_VERDICT = (r"(?:(?:is|are|was|were|can be|must be|all|both|clearly|definitely|"
                     r"sont|sind|son|são|sono|tous|alle|是|都是|都|均|被)\s*)*"
                     r"(?:wrong|incorrect|false|ruled out|eliminated|excluded|impossible|invalid|"
                     r"faux|fausses?|incorrecte?s?|falsch|incorrect[oa]s?|errad[oa]s?|sbagliat[ei]|"
                     r"неверн\w*|ошибочн\w*|错误|错|不对|不正确|排除|不成立)")
# a closing tail that rules other options out after the chosen one (multiple choice): ", certainly
# not A or D", " rather than D", "; A and D are wrong", " (A and B are ruled out)", "，不是A或D"
RULED_OUT = re.compile(
    r"\s*[,;:，；(（—–-]?\s*(?:" + RULING_OUT + RULED_LETTERS
    + r"(?:\s*" + RULED_OUT_VERDICT + r")?|" + RULED_LETTERS + r"\s*" + RULED_OUT_VERDICT
    + r")\s*[)）]?[\s.!。！]*$")
# only spaces, "," "/" "&" "*" and at most one "or"/"and": "C or D", "A, C" offer several letters
LETTER_JOINER = (r"(?i)[\s,/&*]*(?:(?:or|and|und|oder|et|ou|y|o|или|и)\b[\s,*]*)?"
                 r"|[\s,*]*(?:或|和)[\s,*]*")
OPTION_LABEL = re.compile(r"(?:^|\s)(?:\(([A-Z])\)|([A-Z])[.)])[ \t]+(?!(?:or|and|is|are|was|were|"
                          r"can|cannot|must|should|would|fits|works|holds|seems|remains)\b)[^\s,;]",
                          re.M)
# after "A", these words make it a letter ("A is correct"), others an article ("A triangle")
NOT_ARTICLE = {"is", "was", "must", "should", "would", "will", "fits", "works", "holds", "matches",
               "satisfies", "remains", "gives", "meets", "seems", "appears", "and", "or", "nor",
               "ou", "ni", "et", "oder", "und", "noch", "o", "y", "e", "nem"}


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
        if expr.value(bare.rstrip("%")) is not None and not ARITHMETIC.fullmatch(bare):
            return last.strip(" ."), "last_line"
        if _letters(bare) and tail.strip() == last:  # a letter only alone
            return last.strip(" ."), "last_line"
        rhs = last.rsplit("=", 1)[-1].strip(" .$")  # what follows the last "="
        if "=" in last and expr.value(_normalize(rhs)) is not None:
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


def reference_answer(field, solution=False):
    """The reference a data row's answer field gives. A `solution` (a worked solution) gives its
    final answer, found by the rules above (None if it has none). An `answer` gives itself,
    stripped, unless it marks its answer: then the content of its last <answer>...</answer>, else of
    its last \\boxed{...}, else what follows its last line-opening "####" (GSM8K's worked answers).
    Nothing else is taken off: "f(x) = x + 1" stays "f(x) = x + 1"."""
    text = str(field).strip()
    if solution:
        return extract_answer(text)
    marked = _answer_tag(text)
    if marked is None:
        marked = _boxed(text)
    if marked is None:
        gsm8k = re.findall(r"^####[ \t]*(\S.*)$", text, re.M)
        if gsm8k:
            marked = gsm8k[-1].strip()
    if marked is None:
        return text
    return marked


def _answer_tag(text):
    """Rule 1: the stripped content of the last <answer>...</answer>, else None."""
    last_close = max(text.rfind("</answer>"), 0)
    # the last </answer> closes the first <answer> after the </answer> before it
    since_previous_close = text[:last_close].rsplit("</answer>", 1)[-1]
    if "<answer>" not in since_previous_close:
        return None
    return since_previous_close.split("<answer>", 1)[1].strip()


def _boxed(text):
    """Rule 2: the stripped content of the last box, unless a final-answer statement or a TAKEBACK
    follows it; with the boxes just before it that BOX_JOINER joins to it, their contents as a list
    ("\\boxed{2}, \\boxed{3}" -> "2, 3")."""
    found = _last_braced(text)
    if found is None:
        return None
    content, end = found
    if FINAL_STATEMENT.search(text, end) or TAKEBACK.search(text, end, end + REACH):
        return None
    contents = [content.strip()]
    separator = ", "
    before = text[:_box_start(text)]
    for _ in range(MAX_BOXES - 1):
        joined = BOX_JOINER.search(before[-MAX_EXPR:])
        previous = _last_braced(before)
        if joined is None or previous is None or len(before) - previous[1] != len(joined.group()):
            break
        if re.search(r"\bor\b", joined.group()):
            separator = " or "  # several answers offered: they equal nothing else
        contents.insert(0, previous[0].strip())
        before = before[:_box_start(before)]
    return separator.join(contents)


def _box_start(text):
    """The index of the last "\\boxed{" or "\\fbox{" in text (-1 if none)."""
    return max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))


MAX_BOXES = 10  # at most this many boxes joined into one list answer
# what joins boxes into one list answer, between a box and the next: ", ", " and ", "$, $",
# "\\quad", ", x = "; "or" offers several answers; words do not join ("first \\boxed{2}, then")
BOX_JOINER = re.compile(
    r"\$?\s*(?:,|;|\b(?:and|or)\b|\\quad|\\text\{\s*(?:,|and|or)\s*\})\s*(?:,\s*)?\$?\s*"
    r"(?:[A-Za-z]\s*=\s*\$?\s*)?\Z")


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
    if HEDGE.search(head) or _corrected(low, i):
        return None
    after = window[i + len("answer is"):].lstrip(" :")
    return re.split(r"\n|[.!](?:\s|$)", after, maxsplit=1)[0].strip(" *")


def _corrected(text, start):
    """True if a CORRECTION or a TAKEBACK follows text[start] within REACH characters."""
    end = start + REACH
    return bool(CORRECTION.search(text, start, end) or TAKEBACK.search(text, start, end))


def _answer_line(window, low):
    """Rule 4: the text after the last "answer:" with at most 80 characters before it on its line,
    or after a line-opening "####", up to its line or sentence end; None if none or corrected."""
    last = None
    for match in ANSWER_COLON.finditer(low):  # streamed: only the last one is kept
        last = match
    if last is None or _corrected(low, last.end()):
        return None
    return re.split(r"\n|\.(?:\s|$)", window[last.end():], maxsplit=1)[0].strip(" *.")


def _refine(phrase, choice):
    """The answer inside the text after an answer phrase (rules 3 and 4; its callers strip spaces
    and *): the text itself if bare, else the sole value or letter of it or of what follows its
    last copula, else that text."""
    if len(phrase) > MAX_EXPR:
        return phrase
    if choice:
        phrase = _without_ruled_out(phrase)  # "C, certainly not A or D" -> "C"
    if _structured(phrase):
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
    readers = (expr.value, _sequence, MATRIX.fullmatch, _letters)
    return any(read(normalized) is not None for read in readers)


def _without_courtesy(text):
    """text (right-stripped) without up to 3 closing courtesy sentences: "I hope this helps!"."""
    body = text[:-3 * MAX_SENTENCE]
    end = text[-3 * MAX_SENTENCE:]
    for _ in range(3):
        piece = SENTENCE_END.split(end[-MAX_SENTENCE:])[-1]
        if COURTESY.fullmatch(piece) and not TAKEBACK.search(piece):  # not "I may have slipped"
            end = end[:len(end) - len(piece)].rstrip()
    return body + end


def _leading_value(tail, choice):
    """Rule 5: an opening number that ends its sentence or line, else None."""
    if len(tail) > REACH:
        return None
    m = LEADING.match(tail[:80])  # "80. To get this, I added 51 and 29."
    if m is None or choice or re.search(STEPS, tail):
        return None
    if HEDGE_NUMBER.search(tail, m.end()) or _corrected(tail, m.end()):
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
    kept = s
    if choice:
        kept = _without_ruled_out(s)  # "C, certainly not A or D" -> "C"
    letters = [m for m in LETTER.finditer(kept)
               if LETTERS.index(m.group(1)) < choice and _is_letter(kept, m)]  # none if choice is 0
    if letters:
        return _final_letter(kept, letters, s)
    return _sole_value(s, need_conclusion)


def _without_ruled_out(s):
    """s without up to 3 closing tails that rule options out (RULED_OUT: "C, not A or D" -> "C"),
    as long as a letter is left before them."""
    for _ in range(3):
        m = RULED_OUT.search(s)
        if m is None or not LETTER.search(s, 0, m.start()):
            return s
        s = s[:m.start()]
    return s


def _final_letter(s, letters, sentence):
    """The last of the option letters (LETTER matches) of s (the sentence without a ruled-out tail),
    else None when the sentence hedges, is only letters or lists labelled options, or s offers
    several letters or negates the last one."""
    last = letters[-1]
    between = "x"  # one letter: nothing joins it to another
    if len(letters) > 1:
        between = s[letters[-2].end():last.start()]
    lone = not re.search(r"[^\W\d_]{2}|^\*\*", sentence)  # no word: a lone letter, unless bold
    several = re.fullmatch(LETTER_JOINER, between)  # "C or D", "A, C"
    if HEDGE.search(sentence) or lone or _lists_options(sentence) or several:
        return None
    if not _asserted(s, *last.span()):
        return None
    return last.group(1)


def _sole_value(s, need_conclusion):
    """The one value sentence s states (see the module docstring, rule 9), else None."""
    subject = _value_subject(s)
    if subject is not None:
        return subject
    clause_starts = [_clause_start(s, m.start()) for m in CONCLUSION.finditer(s)]
    result_ends = [m.end() for m in RESULT.finditer(s)]
    stating_ends = [m.end() for m in STATING_VERB.finditer(s)]
    starts = sorted(clause_starts + result_ends + stating_ends)
    values, equals = _counted_values(s, starts)
    if len(values) != 1 or HEDGE_NUMBER.search(s) or _points_at_a_number(s, need_conclusion):
        return None
    if need_conclusion and not (starts or equals or BOLD.search(s)):
        return None
    start, end, text = values[0]
    if not _asserted(s, start, end):
        return None
    return text.strip()


def _value_subject(s):
    """The value that opens sentence s as its subject ("96 is the product of 12 and 8"), unless s
    hedges, negates, bounds or points at a number; else None."""
    m = VALUE_SUBJECT.match(s)
    if m is None or HEDGE_NUMBER.search(s) or NEGATION.search(s) or _points_at_a_number(s, True):
        return None
    return m.group(1).strip()


def _points_at_a_number(s, need_conclusion):
    """True if sentence s examines a number (EXAMINING) or, where it must conclude, names one by
    position without concluding (POSITIONAL): "Take 8 first.", "The second value is 6."."""
    if EXAMINING.search(s):
        return True
    return need_conclusion and bool(POSITIONAL.search(s)) and not CONCLUSION.search(s)


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
        if expr.value(value.rstrip("%")) is not None:
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
    if None not in (expr.value(lhs.strip()), expr.value(rhs)):  # 51 + 29 = 80
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
# a matrix: pmatrix, bmatrix and kin, or an array (its column spec dropped) in brackets or not
MATRIX = re.compile(r"[(\[]?\s*\\begin\{(?:[pbvB]?matrix\}|array\}\{[lcr|\s]*\})(.*)"
                    r"\\end\{(?:[pbvB]?matrix|array)\}\s*[)\]]?", re.S)
MULTI = re.compile(r"\s(?:or)\s|\\(?:text|mbox)\{\s*or\s*\}|\\lor")  # several answers
FUNCTION = re.compile(r"[\s$]*([A-Za-z])\(\s*([a-z])\s*\)\s*=")
DECIMAL_COMMA_NUMBER = r"[-+]?\d+,(?:\d{1,2}|\d{4,})%?"  # 3,5 but not 3,500
DECIMAL = r"[-+]?\d*\.\d+%?"  # a reference written with a decimal point: 3.75
# a decimal comma in any language, against a DECIMAL: 3,75 or 0,5 or 3,1416 (3,5 and 3,4 read as
# lists, 3,500 as grouping)
DECIMAL_COMMA_PLAIN = r"[-+]?(?:\d+,(?:\d{2}|\d{4,})|0,\d+)%?"
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
        equal = expr.values_equal(p, g)
        if equal is None:
            equal = expr.polynomials_equal(p, g)
        return bool(equal)
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


def _decimal_comma(pred, answer, response):
    """pred with a decimal comma read as a point (3,5 -> 3.5) when it is a DECIMAL_COMMA_NUMBER, the
    reference is no list, and the response's last REACH characters show a language that writes
    decimal commas (DECIMAL_COMMA_TEXT), or it is a DECIMAL_COMMA_PLAIN and the reference a
    DECIMAL (3,75 against 3.75); else pred."""
    p = _normalize(pred)
    if not re.fullmatch(DECIMAL_COMMA_NUMBER, p):
        return pred
    g = _normalize(str(answer))
    in_language = _sequence(g) is None and DECIMAL_COMMA_TEXT.search(response[-REACH:])
    plain = re.fullmatch(DECIMAL_COMMA_PLAIN, p) and re.fullmatch(DECIMAL, g)
    if in_language or plain:
        return p.replace(",", ".")
    return pred


def reward(response, answer, options=None):
    """1.0 if the response's extracted answer is equivalent to `answer`, else 0.0. Never raises:
    extract_with_rule and is_equivalent (which the tests call) do, and an odd response must cost its
    reward, not the training run hours in."""
    try:
        choice = _choice_count(answer, options)
        pred = extract_answer(response, choice)
        if pred is not None and not choice and len(pred) <= MAX_EXPR:
            pred = _decimal_comma(pred, answer, response)
        return float(pred is not None and is_equivalent(pred, answer, options))
    except Exception:  # odd text must cost a reward, never a training run
        return 0.0


# ----------------------------------------------------------------------------- command line
def main():
    from cli import ArgumentParser, UserError, fail, read_jsonl
    p = ArgumentParser(description="Score a response against a reference answer (1 or 0).")
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
                reference = reference_answer(row["answer"])
                correct += reward(row["response"], reference, row.get("options"))
        except UserError as e:
            fail(str(e))
        print(f"accuracy {correct / max(total, 1):.4f} ({int(correct)}/{total})")
        return
    if args.response is None or args.answer is None:
        p.error("give RESPONSE ANSWER, or --jsonl FILE")
    reference = reference_answer(args.answer)
    pred, rule = extract_with_rule(args.response, _choice_count(reference, args.options))
    print(int(reward(args.response, reference, args.options)))
    print(f"extracted {pred!r} by rule {rule}; reference {reference!r}")


if __name__ == "__main__":
    main()

"""The values of math answers, without eval: numbers and closed forms (a bounded evaluator), and
polynomial normal forms. verify.py's equivalence reads them.

  value(s): (exact Fraction or None, float) of a plain number, a/b, \\frac{a}{b}, or a closed form
    (\\sqrt, \\pi, ^, n!, implicit products such as 2\\sqrt{3}) of at most MAX_EXPR characters.
  values_equal(p, g): integers exactly, others within 1e-6 relative; x% also equals x and x/100
    (but against y%, only y); a decimal with 4+ significant digits equals a value that is no plain
    decimal and rounds to it at its places (2.6667 = 8/3; 0.333 != 1/3).
  polynomials_equal(p, g): the same polynomial in one-letter variables (\\frac{y}{5} + \\frac{3}{5}
    = \\frac{y+3}{5}), or the same polynomial equation up to a nonzero factor.

Standard library only; bounded work on any input (powers, factorials, exponents and term counts are
capped)."""
import math
import re
from fractions import Fraction


# ----------------------------------------------------------------------------- numbers
MAX_EXPR = 200  # the number parser and the evaluator see at most this many characters
COMMA_GROUPED = r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?"  # 1,000 and 12,345.5
NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
TOKEN = re.compile(r"\s*(\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+|\\[a-zA-Z]+|[-+*/^(){}\[\]!])")
PRODUCTS = ("*", "/", "\\cdot", "\\times", "\\div")
IMPLICIT_PRODUCTS = ("(", "{", "\\pi", "\\sqrt", "\\frac")  # 2\sqrt{3}, 3(4); never "3 4"
CLOSING = {"(": ")", "{": "}", "[": "]"}


def value(s):
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


def values_equal(p, g):
    """Numeric equality, x% meaning x or x/100, and a rounded decimal equal to its exact value (see
    _rounded); None if either side is no value."""
    readings = []  # per side: its value, and its value / 100 when it ends with "%"
    both_percent = p.endswith("%") and g.endswith("%")  # then x% equals x% only (0.25% != 25%)
    for s in (p, g):
        if len(s) > MAX_EXPR:
            return None
        number = value(s.rstrip("%").strip())
        if number is None:
            return None
        side = [number]
        if s.endswith("%") and not both_percent:
            exact, approx = number
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


# ----------------------------------------------------------------------------- polynomials
# a token of a polynomial (_polynomial): a number, a one-letter variable, an operator or bracket
POLY_TOKEN = re.compile(r"\s*(\d+\.?\d*|\.\d+|\\frac|\\cdot|\\times|[A-Za-z]|[-+*/^(){}])")
POLY_OPERATOR = re.compile(r"[-+*/^()]|\\frac|\\cdot|\\times|\d[A-Za-z]")  # not "ab" alone
MAX_TERMS = 64  # a polynomial normal form keeps at most this many terms
MAX_POWER = 12  # and raises to at most this power


def polynomials_equal(p, g):
    """True if p and g are the same polynomial (\\frac{y}{5} + \\frac{3}{5} = \\frac{y+3}{5}),
    or the same polynomial equation up to a nonzero factor (-x^2 + 3x - 2 = 0 is x^2 - 3x + 2 = 0);
    None if either is no polynomial (see _polynomial) or has no operator (ab is not ba)."""
    p_sides = p.split("=")
    g_sides = g.split("=")
    if len(p_sides) != len(g_sides) or len(p_sides) > 2:
        return None
    if not (POLY_OPERATOR.search(p) and POLY_OPERATOR.search(g)):
        return None
    polynomials = [_polynomial(side) for side in p_sides + g_sides]
    if None in polynomials:
        return None
    if len(p_sides) == 1:
        return polynomials[0] == polynomials[1]
    p_zero = _poly_sum(polynomials[0], polynomials[1], -1)  # lhs - rhs = 0
    g_zero = _poly_sum(polynomials[2], polynomials[3], -1)
    if not (p_zero and g_zero):
        return None  # 0 = 0: no equation to compare
    monomial = next(iter(g_zero))
    factor = p_zero.get(monomial, 0) / g_zero[monomial]
    return bool(factor) and p_zero == {m: factor * c for m, c in g_zero.items()}


def _polynomial(s):
    """The normal form of a polynomial in one-letter variables ({monomial: Fraction coefficient},
    a monomial a sorted tuple of (letter, power)), of POLY_TOKENs with +, -, products (2x, xy,
    x(x+1)), division by a number, \\frac and a power by an integer up to MAX_POWER; else None
    (also for a run of 3 letters, a word, and past MAX_TERMS terms). A recursive-descent parser
    like _evaluate's."""
    if len(s) > MAX_EXPR or POLY_TOKEN.sub("", s).strip():
        return None
    if re.search(r"(?<!\\)[A-Za-z]{3}", re.sub(r"\\(?:frac|cdot|times)", " ", s)):
        return None  # a word
    tokens = [""] + POLY_TOKEN.findall(s)[::-1]  # reversed: tokens[-1] is the next one
    take = tokens.pop

    def expr():
        v = term()
        while tokens[-1] in ("+", "-"):
            sign = 1
            if take() == "-":
                sign = -1
            v = _poly_sum(v, term(), sign)
        return v

    def term():
        v = unary()
        while tokens[-1] in ("*", "/", "\\cdot", "\\times") or _implicit(tokens[-1]):
            if _implicit(tokens[-1]):
                v = _poly_product(v, power())
            elif take() == "/":
                v = _poly_quotient(v, unary())
            else:
                v = _poly_product(v, unary())
        return v

    def unary():
        if tokens[-1] in ("-", "+"):
            if take() == "-":
                return _poly_product({(): Fraction(-1)}, unary())
            return unary()
        return power()

    def power():
        base = atom()
        if tokens[-1] != "^":
            return base
        take()
        exponent = atom()
        n = exponent.get((), 0)
        if set(exponent) - {()} or n != int(n) or not 0 <= n <= MAX_POWER:
            raise ValueError  # x^y, x^{1/2}, x^{99}
        v = {(): Fraction(1)}
        for _ in range(int(n)):
            v = _poly_product(v, base)
        return v

    def atom():
        t = take()
        if t and (t[0].isdigit() or t[0] == "."):
            return {(): Fraction(t)}
        if t.isalpha():
            return {((t, 1),): Fraction(1)}
        if t in ("(", "{"):
            v = expr()
            if take() != CLOSING[t]:
                raise ValueError  # unclosed
            return v
        if t == "\\frac":
            return _poly_quotient(atom(), atom())
        raise ValueError

    try:
        v = expr()
        if tokens != [""]:
            return None  # tokens left over
        return v
    except (ValueError, ZeroDivisionError, RecursionError):
        return None


def _implicit(token):
    """True if token starts an implicit product after a factor: a letter, "(", "{" or \\frac."""
    return token.isalpha() or token in ("(", "{", "\\frac")


def _poly_sum(a, b, sign=1):
    """a + sign * b of two polynomial normal forms, without zero terms."""
    total = dict(a)
    for monomial, c in b.items():
        total[monomial] = total.get(monomial, 0) + sign * c
    return {m: c for m, c in total.items() if c}


def _poly_product(a, b):
    """a * b of two polynomial normal forms; ValueError past MAX_TERMS terms."""
    if len(a) * len(b) > MAX_TERMS * MAX_TERMS:
        raise ValueError
    product = {}
    for ma, ca in a.items():
        for mb, cb in b.items():
            powers = dict(ma)
            for letter, n in mb:
                powers[letter] = powers.get(letter, 0) + n
            monomial = tuple(sorted(powers.items()))
            product[monomial] = product.get(monomial, 0) + ca * cb
    product = {m: c for m, c in product.items() if c}
    if len(product) > MAX_TERMS:
        raise ValueError
    return product


def _poly_quotient(a, b):
    """a / b of two polynomial normal forms, b a nonzero number (else ValueError)."""
    if set(b) != {()}:
        raise ValueError  # division by a variable: no polynomial
    return {m: c / b[()] for m, c in a.items()}

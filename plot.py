"""Training curves and token-credit heatmaps, drawn with pillow (no matplotlib).

python plot.py RUN_DIR [RUN_DIR ...] -o curves.png [--keys k1 k2 ...] draws each run's metrics.jsonl against "step",
one panel per key, one line per run; null/NaN values are skipped, a sparse key (as eval/accuracy) gets markers too.

credit_html / credit_png draw one response's token credit (the paper's case-study figure): each token on a box
coloured by its weight w_t = exp(sign(A) Delta_t) (blue > 1: more of the advantage, red < 1: less), Delta_t under it."""
import argparse
import functools
import html
import math
import os
import statistics

from PIL import Image, ImageDraw, ImageFont

from cli import UserError, entry_point, read_jsonl

DEFAULT_KEYS = ["train/reward", "eval/accuracy", "policy/entropy", "train/response_len"]
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
PANEL_W, PANEL_H = 480, 300  # one panel of the curves figure
MARGIN = (64, 30, 16, 44)  # plot area inside a panel: left, top, right, bottom
LEGEND_ROW = 28  # height of one row of the legend band above the panels
GRID, AXES = (225, 225, 225), (90, 90, 90)
UP, DOWN, NO_WEIGHT = (33, 102, 172), (178, 24, 43), (200, 200, 200)  # w > 1, w < 1, w nan or <= 0
LOG_W_CAP = math.log(2.0)  # the colour saturates at w >= 2 or w <= 0.5
CREDIT_W, HEADER_H, CELL_H, PAD = 900, 64, 38, 12  # credit PNG: width, header, token box height, margin


@functools.lru_cache(maxsize=None)
def font(size):
    """Pillow's default font at `size` px (scalable in pillow >= 10.1), else its fixed bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def drawable(text, fnt):
    """`text`, with '?' for what the font cannot encode (the old bitmap font is latin-1 only)."""
    try:
        fnt.getlength(text)
        return text
    except UnicodeError:
        return text.encode("latin-1", "replace").decode("latin-1")


# ---- curves

def read_metrics(run_dir):
    """Records of <run_dir>/metrics.jsonl (or of run_dir itself, a file) in file order; UserError if missing or bad."""
    path = run_dir if os.path.isfile(run_dir) else os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        why = "no metrics.jsonl in it" if os.path.exists(run_dir) else "no such run directory"
        raise UserError(f"{run_dir}: {why}")
    return [row for _, row in read_jsonl(path)]


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def series(records, key, smooth=0):
    """(steps, values) of `key`'s finite numbers, by step; smooth > 0: each the mean of the last `smooth` points."""
    pts = sorted((r.get("step", i), r[key]) for i, r in enumerate(records)
                 if is_number(r.get(key)) and is_number(r.get("step", i)))
    ys = [y for _, y in pts]
    if smooth > 0:
        ys = [statistics.fmean(ys[max(0, i - smooth + 1):i + 1]) for i in range(len(ys))]
    return [x for x, _ in pts], ys


def limits(values, pad=0.05):
    """(lo, hi) of the values plus a margin; a flat range is widened so that it keeps a height."""
    lo, hi = min(values), max(values)
    margin = (hi - lo) * pad if lo != hi else (abs(lo) * 0.1 or 1)
    return lo - margin, hi + margin


def nice_ticks(lo, hi, n=5, integer=False):
    """About n round ticks (1, 2 or 5 x 10^k apart) inside [lo, hi], and the decimals to print them."""
    raw = (hi - lo) / n
    mag = 10.0 ** math.floor(math.log10(raw))
    # the smallest round step that gives at most about n ticks; at least 1 on an integer axis
    step = max(next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw * (1 - 1e-9)), 1 if integer else 0)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return [k * step for k in range(math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) + 1)], decimals


def draw_panel(draw, x0, y0, key, lines):
    """One panel at (x0, y0): key as title, ticked axes, the lines [(colour, steps, values, markers)] or "no data"."""
    fnt, small = font(14), font(12)
    left, top, right, bottom = x0 + MARGIN[0], y0 + MARGIN[1], x0 + PANEL_W - MARGIN[2], y0 + PANEL_H - MARGIN[3]
    draw.text((x0 + PANEL_W / 2, y0 + 8), drawable(key, fnt), font=fnt, fill="black", anchor="ma")
    draw.text(((left + right) / 2, bottom + 24), "step", font=small, fill=AXES, anchor="ma")
    if not lines:
        draw.rectangle((left, top, right, bottom), outline=AXES)
        draw.text(((left + right) / 2, (top + bottom) / 2), "no data", font=fnt, fill=AXES, anchor="mm")
        return
    xlo, xhi = limits([x for _, xs, _, _ in lines for x in xs])
    ylo, yhi = limits([y for _, _, ys, _ in lines for y in ys])
    px = lambda x: left + (x - xlo) / (xhi - xlo) * (right - left)  # noqa: E731
    py = lambda y: bottom - (y - ylo) / (yhi - ylo) * (bottom - top)  # noqa: E731
    (xticks, xdecimals), (yticks, ydecimals) = nice_ticks(xlo, xhi, integer=True), nice_ticks(ylo, yhi)
    for t in xticks:
        draw.line((px(t), top, px(t), bottom), fill=GRID)
        draw.text((px(t), bottom + 5), f"{t:.{xdecimals}f}", font=small, fill="black", anchor="ma")
    for t in yticks:
        draw.line((left, py(t), right, py(t)), fill=GRID)
        draw.text((left - 5, py(t)), f"{t:.{ydecimals}f}", font=small, fill="black", anchor="rm")
    draw.rectangle((left, top, right, bottom), outline=AXES)
    for colour, xs, ys, markers in lines:
        pts = [(px(x), py(y)) for x, y in zip(xs, ys)]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2, joint="curve")
        if markers or len(pts) == 1:
            for x, y in pts:
                draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)


def draw_curves(runs, keys, path, smooth=0):
    """PNG at `path` of runs = {label: [records]}: one panel per key (two columns), one line per run. Returns path."""
    if not keys:
        raise ValueError("no keys to draw")
    colours = {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(runs)}
    cols, fnt = min(2, len(keys)), font(14)
    anchors, x, y = [], 12, 0  # the legend: left middle of each entry (swatch and label), rows wrapped at the width
    for label in runs:
        w = 34 + fnt.getlength(drawable(label, fnt)) + 24
        if x + w > cols * PANEL_W and x > 12:
            x, y = 12, y + LEGEND_ROW
        anchors.append((x, y + LEGEND_ROW / 2))
        x += w
    legend_h = y + LEGEND_ROW
    img = Image.new("RGB", (cols * PANEL_W, legend_h + math.ceil(len(keys) / cols) * PANEL_H), "white")
    draw = ImageDraw.Draw(img)
    for (x, y), label in zip(anchors, runs):
        draw.line((x, y, x + 28, y), fill=colours[label], width=3)
        draw.text((x + 34, y), drawable(label, fnt), font=fnt, fill="black", anchor="lm")
    for i, key in enumerate(keys):
        xys = {label: series(records, key, smooth) for label, records in runs.items()}
        # a sparse key (in at most half of a run's records) gets markers
        lines = [(colours[label], xs, ys, 2 * len(xs) <= len(runs[label])) for label, (xs, ys) in xys.items() if xs]
        draw_panel(draw, (i % cols) * PANEL_W, legend_h + (i // cols) * PANEL_H, key, lines)
    img.save(path, format="PNG")
    return path


# ---- token credit

def as_floats(tokens, weights, deltas):
    if not len(tokens) == len(weights) == len(deltas):
        raise ValueError(f"tokens, weights, deltas differ in length: {len(tokens)}, {len(weights)}, {len(deltas)}")
    return [float(w) for w in weights], [float(d) for d in deltas]


def weight_colour(w):
    if not w > 0:
        return NO_WEIGHT
    t = min(abs(math.log(w)) / LOG_W_CAP, 1.0) ** 0.5
    return tuple(round(255 + t * (c - 255)) for c in (UP if w > 1 else DOWN))


def ink(rgb):
    return "white" if sum(rgb) < 420 else "black"


def visible(tok, newline="\u21b5"):
    """Token text with whitespace shown: a newline as `newline`, other control characters escaped (\\t)."""
    return "".join(newline if c == "\n" else c if c.isprintable() else c.encode("unicode_escape").decode() for c in tok)


CSS = """body{font-family:sans-serif;margin:2em;max-width:72em} .resp{font-family:monospace;font-size:15px}
.tok{display:inline-block;white-space:pre;margin:2px 1px;padding:1px 3px;border-radius:3px;vertical-align:top;
 box-shadow:inset 0 0 0 1px rgba(0,0,0,.08)} .tok .d{display:block;font-size:10px;opacity:.8}"""


def credit_html(tokens, weights, deltas, title="", advantage=None):
    """Self-contained HTML page: each token a <span> coloured by its weight, Delta_t under it, w and Delta on hover."""
    weights, deltas = as_floats(tokens, weights, deltas)

    def cell(text, w, d, title=True):
        rgb = weight_colour(w)
        hover = f' title="w={w:.3f}, \u0394={d:+.3f}"' if title else ""
        return (f'<span class="tok" style="background:#{bytes(rgb).hex()};color:{ink(rgb)}"{hover}>'
                f'<span class="txt">{html.escape(text)}</span><span class="d">{d:+.2f}</span></span>')

    head = f"<h1>{html.escape(title)}</h1>" if title else ""
    adv = f"advantage A = {advantage:+.3f} &middot; " if advantage is not None else ""
    body = "".join(cell(visible(t), w, d) + "<br>" * ("\n" in t) for t, w, d in zip(tokens, weights, deltas))
    legend = "".join(cell(f"w={w:g}", w, math.log(w), title=False) for w in (0.5, 0.8, 0.9, 1, 1.1, 1.25, 2))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title or "credit")}'
            f"</title><style>{CSS}</style></head><body>{head}<p>{adv}{len(tokens)} response tokens</p>"
            f'<div class="resp">{body}</div><p>{legend}<br>Colour: the RLSD weight w<sub>t</sub> = exp(sign(A) '
            f"&Delta;<sub>t</sub>); blue w &gt; 1 (more of the advantage on this token), red w &lt; 1 (less), white "
            f"w = 1, full colour at w &ge; 2 or &le; 0.5. Small numbers: &Delta;<sub>t</sub> = log p<sub>T</sub> "
            f"&minus; log p<sub>S</sub>. Hover a token for both.</p></body></html>\n")


def png_text(tok):
    return drawable(visible(tok, "\\n"), font(16))


def credit_layout(tokens, deltas, width=CREDIT_W):
    """(x0, y0, x1, y1) of each token's box in the credit PNG, rows wrapped at `width` and after a newline."""
    boxes, x, y, newline = [], PAD, HEADER_H, False
    for tok, d in zip(tokens, deltas):
        w = max(font(16).getlength(png_text(tok)), font(11).getlength(f"{d:+.2f}")) + 8
        if newline or (x + w > width - PAD and x > PAD):
            x, y = PAD, y + CELL_H + 6
        boxes.append((x, y, x + w, y + CELL_H))
        x, newline = x + w + 2, "\n" in tok
    return boxes


def credit_png(tokens, weights, deltas, path, title="", advantage=None):
    """The credit heatmap as a PNG at `path`: title, advantage, token boxes with Delta_t, a colour bar. Returns path."""
    weights, deltas = as_floats(tokens, weights, deltas)
    boxes = credit_layout(tokens, deltas)
    bar_y = (boxes[-1][3] if boxes else HEADER_H) + 24
    img = Image.new("RGB", (CREDIT_W, bar_y + 60), "white")
    draw = ImageDraw.Draw(img)
    draw.text((PAD, 10), drawable(title or "token credit", font(18)), font=font(18), fill="black")
    adv = f"advantage A = {advantage:+.3f}   " if advantage is not None else ""
    draw.text((PAD, 36), f"{adv}{len(tokens)} response tokens", font=font(13), fill=AXES)
    for tok, w, d, (x0, y0, x1, y1) in zip(tokens, weights, deltas, boxes):
        rgb = weight_colour(w)
        draw.rectangle((x0, y0, x1, y1), fill=rgb)
        draw.text((x0 + 4, y0 + 3), png_text(tok), font=font(16), fill=ink(rgb))
        draw.text((x0 + 4, y1 - 3), f"{d:+.2f}", font=font(11), fill=ink(rgb), anchor="ld")
    draw_colour_bar(draw, PAD, bar_y)
    img.save(path, format="PNG")
    return path


def draw_colour_bar(draw, x0, y0, width=300):
    """The legend of the credit PNG: weight colours for log w in [-1.2, 1.2] x LOG_W_CAP, ticked, explained."""
    pos = lambda w: x0 + (math.log(w) / (1.2 * LOG_W_CAP) + 1) / 2 * width  # noqa: E731
    for i in range(width):
        draw.line((x0 + i, y0, x0 + i, y0 + 14), fill=weight_colour(math.exp(1.2 * LOG_W_CAP * (2 * i / width - 1))))
    for w in (0.5, 0.8, 1, 1.25, 2):
        draw.line((pos(w), y0 + 14, pos(w), y0 + 18), fill="black")
        draw.text((pos(w), y0 + 20), f"{w:g}", font=font(11), fill="black", anchor="ma")
    draw.text((x0 + width + 16, y0 - 2), "w_t = exp(sign(A) Delta_t): blue > 1 more credit, red < 1 less, white = 1",
              font=font(12), fill="black")
    draw.text((x0 + width + 16, y0 + 16), "small numbers: Delta_t = log p_T - log p_S", font=font(12), fill="black")


# ---- CLI

@entry_point
def main(argv=None):
    p = argparse.ArgumentParser(description="Training curves of runs (their metrics.jsonl) as a PNG.")
    p.add_argument("runs", nargs="+", help="run directories (or metrics .jsonl files)")
    p.add_argument("-o", "--out", default="curves.png")
    p.add_argument("--keys", nargs="+", default=DEFAULT_KEYS)
    p.add_argument("--smooth", type=int, default=0, help="trailing moving average over N points")
    p.add_argument("--labels", nargs="+", help="one per run (default: the run directory's name)")
    args = p.parse_args(argv)
    names = [os.path.basename(os.path.normpath(d)) for d in args.runs]
    labels = args.labels or (names if len(set(names)) == len(names) else args.runs)  # same names: tell apart by path
    if len(labels) != len(args.runs) or len(set(labels)) < len(labels):
        raise UserError(f"need {len(args.runs)} distinct labels, got {labels}")
    runs = {label: read_metrics(d) for label, d in zip(labels, args.runs)}
    try:
        print(draw_curves(runs, args.keys, args.out, args.smooth))
    except OSError as e:
        raise UserError(f"{args.out}: {e.strerror or e}") from None


if __name__ == "__main__":
    main()

"""Training curves and token-credit heatmaps, drawn with pillow (no matplotlib).

python plot.py RUN_DIR [RUN_DIR ...] -o curves.png [--keys k1 k2 ...] draws each run's metrics.jsonl
against "step", one panel per key, one line per run; null/NaN values are skipped, a sparse key (as
eval/accuracy) gets markers too.

credit_html / credit_png draw one response's token credit (the paper's case-study figure): each
token on a box coloured by its weight w_t = exp(sign(A) Delta_t) (blue > 1: more of the advantage,
red < 1: less), Delta_t under it."""
import functools
import html
import math
import os
import statistics

from PIL import Image, ImageDraw, ImageFont

from cli import ArgumentParser, UserError, entry_point, read_jsonl

DEFAULT_KEYS = ["train/reward", "eval/accuracy", "policy/entropy", "train/response_len"]
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]

# the curves figure
PANEL_W = 480  # one panel's width
PANEL_H = 300  # one panel's height
MARGIN = (64, 30, 16, 44)  # plot area inside a panel: left, top, right, bottom
LEGEND_ROW = 28  # height of one row of the legend band above the panels
LEGEND_X = 12  # where each row of the legend starts
GRID = (225, 225, 225)
AXES = (90, 90, 90)  # the frame, "step", "no data", the credit PNG's subtitle

# the token credit
UP = (33, 102, 172)  # w > 1: blue
DOWN = (178, 24, 43)  # w < 1: red
NO_WEIGHT = (200, 200, 200)  # w nan or <= 0
LOG_W_CAP = math.log(2.0)  # the colour saturates at w >= 2 or w <= 0.5
CREDIT_W = 900  # the credit PNG's width
HEADER_H = 64  # its title and subtitle, above the token boxes
CELL_H = 38  # the height of a token box
PAD = 12  # its margin


@functools.lru_cache(maxsize=None)
def font(size):
    """Pillow's default font at `size` px (scalable in pillow >= 10.1), else its bitmap font."""
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
    """Records of <run_dir>/metrics.jsonl (or of run_dir itself, a file) in file order.

    UserError if it is missing or not JSON lines."""
    path = run_dir if os.path.isfile(run_dir) else os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        why = "no metrics.jsonl in it" if os.path.exists(run_dir) else "no such run directory"
        raise UserError(f"{run_dir}: {why}")
    return [row for _, row in read_jsonl(path)]


PLOTTABLE = 1e300  # a larger |value| is drawn as inf is, not at all: the axes' range would overflow


def is_number(v):
    """A plottable int or float: not a bool, None, NaN, inf, nor beyond +-PLOTTABLE."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    return abs(v) < PLOTTABLE


def trailing_mean(values, n):
    """Each value replaced by the mean of the last n values up to it (fewer at the start)."""
    return [statistics.fmean(values[max(0, i - n + 1):i + 1]) for i in range(len(values))]


def series(records, key, smooth=0):
    """(steps, values) of `key`'s finite numbers, by step.

    A record without "step" counts as step = its index. smooth > 0: each value the mean of the last
    `smooth` points."""
    points = []
    for i, record in enumerate(records):
        step = record.get("step", i)
        if is_number(record.get(key)) and is_number(step):
            points.append((step, record[key]))
    points.sort()
    steps = [step for step, _ in points]
    values = [value for _, value in points]
    if smooth > 0:
        values = trailing_mean(values, smooth)
    return steps, values


def limits(values, pad=0.05):
    """(lo, hi) of the values plus a margin; a flat range is widened so that it keeps a height."""
    lo = min(values)
    hi = max(values)
    if lo != hi:
        margin = (hi - lo) * pad
    else:
        margin = abs(lo) * 0.1 or 1
    return lo - margin, hi + margin


def nice_ticks(lo, hi, n=5, integer=False):
    """About n round ticks (1, 2 or 5 x 10^k apart) inside [lo, hi], and the decimals to print."""
    raw_step = (hi - lo) / n
    magnitude = 10.0 ** math.floor(math.log10(raw_step))
    # the smallest round step that gives at most about n ticks
    round_steps = [m * magnitude for m in (1, 2, 5, 10)]
    step = next(s for s in round_steps if s >= raw_step * (1 - 1e-9))
    if integer:
        step = max(step, 1)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    ticks = [k * step for k in range(first, last + 1)]
    return ticks, decimals


def plot_area(x0, y0):
    """(left, top, right, bottom) of the plot area of the panel with top left corner (x0, y0)."""
    left = x0 + MARGIN[0]
    top = y0 + MARGIN[1]
    right = x0 + PANEL_W - MARGIN[2]
    bottom = y0 + PANEL_H - MARGIN[3]
    return left, top, right, bottom


def draw_panel(draw, x0, y0, title, lines):
    """One panel at (x0, y0): its title, ticked axes, and the lines or "no data".

    lines: [(colour, steps, values, markers, width)], markers True to draw a dot at each point, in
    the order drawn (the last on top)."""
    title_font = font(14)
    left, top, right, bottom = plot_area(x0, y0)
    draw.text((x0 + PANEL_W / 2, y0 + 8), drawable(title, title_font), font=title_font,
              fill="black", anchor="ma")
    draw.text(((left + right) / 2, bottom + 24), "step", font=font(12), fill=AXES, anchor="ma")
    if not lines:
        draw.rectangle((left, top, right, bottom), outline=AXES)
        centre = ((left + right) / 2, (top + bottom) / 2)
        draw.text(centre, "no data", font=title_font, fill=AXES, anchor="mm")
        return
    xlo, xhi = limits([x for _, xs, _, _, _ in lines for x in xs])
    ylo, yhi = limits([y for _, _, ys, _, _ in lines for y in ys])

    def px(x):
        """The image x of a step."""
        return left + (x - xlo) / (xhi - xlo) * (right - left)

    def py(y):
        """The image y of a value (image y grows downwards)."""
        return bottom - (y - ylo) / (yhi - ylo) * (bottom - top)

    draw_grid(draw, (left, top, right, bottom), nice_ticks(xlo, xhi, integer=True), px,
              nice_ticks(ylo, yhi), py)
    for colour, xs, ys, markers, width in lines:
        draw_line(draw, colour, [(px(x), py(y)) for x, y in zip(xs, ys)], markers, width)


def draw_grid(draw, area, xticks, px, yticks, py):
    """Grid lines and tick labels of both axes, then the frame of the plot area.

    xticks, yticks: (ticks, decimals) of nice_ticks; px, py: step / value -> image coordinate."""
    left, top, right, bottom = area
    small = font(12)
    ticks, decimals = xticks
    for t in ticks:
        draw.line((px(t), top, px(t), bottom), fill=GRID)
        label = f"{t:.{decimals}f}"
        draw.text((px(t), bottom + 5), label, font=small, fill="black", anchor="ma")
    ticks, decimals = yticks
    for t in ticks:
        draw.line((left, py(t), right, py(t)), fill=GRID)
        label = f"{t:.{decimals}f}"
        draw.text((left - 5, py(t)), label, font=small, fill="black", anchor="rm")
    draw.rectangle(area, outline=AXES)


def draw_line(draw, colour, points, markers, width=2):
    """A run's line through `points` (image coordinates), with a dot at each if markers or alone."""
    if len(points) > 1:
        draw.line(points, fill=colour, width=width, joint="curve")
    if markers or len(points) == 1:
        r = width + 1  # the dot's radius
        for x, y in points:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)


def legend_layout(labels, width):
    """(anchors, height) of the legend band: the left middle of each entry (a swatch and its label),
    rows wrapped at `width`."""
    fnt = font(14)
    anchors = []
    x = LEGEND_X
    y = 0  # top of the current row
    for label in labels:
        entry_w = 34 + fnt.getlength(drawable(label, fnt)) + 24  # swatch and gap, label, gap
        if x + entry_w > width and x > LEGEND_X:
            x = LEGEND_X
            y = y + LEGEND_ROW
        anchors.append((x, y + LEGEND_ROW / 2))
        x += entry_w
    return anchors, y + LEGEND_ROW


def draw_legend(draw, anchors, colours):
    """Each run's swatch (a short line in its colour) and label, at anchors from legend_layout."""
    fnt = font(14)
    for (x, y), (label, colour) in zip(anchors, colours.items()):
        draw.line((x, y, x + 28, y), fill=colour, width=3)
        draw.text((x + 34, y), drawable(label, fnt), font=fnt, fill="black", anchor="lm")


def panel_lines(runs, key, colours, smooth):
    """The lines of one key's panel: (colour, steps, values, markers, width) of each run that has
    the key.

    A sparse key (in at most half of a run's records) gets markers."""
    lines = []
    for label, records in runs.items():
        steps, values = series(records, key, smooth)
        if steps:
            sparse = 2 * len(steps) <= len(records)
            lines.append((colours[label], steps, values, sparse, 2))
    return lines


def draw_curves(runs, keys, path, smooth=0):
    """PNG at `path` of runs = {label: [records]}: one panel per key (two columns), one line per
    run. Returns path."""
    if not keys:
        raise ValueError("no keys to draw")
    colours = {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(runs)}
    cols = min(2, len(keys))
    rows = math.ceil(len(keys) / cols)
    anchors, legend_h = legend_layout(runs, cols * PANEL_W)
    img = Image.new("RGB", (cols * PANEL_W, legend_h + rows * PANEL_H), "white")
    draw = ImageDraw.Draw(img)
    draw_legend(draw, anchors, colours)
    for i, key in enumerate(keys):
        x0 = (i % cols) * PANEL_W
        y0 = legend_h + (i // cols) * PANEL_H
        draw_panel(draw, x0, y0, key, panel_lines(runs, key, colours, smooth))
    img.save(path, format="PNG")
    return path


# ---- token credit

def as_floats(tokens, weights, deltas):
    """(weights, deltas) as lists of floats; ValueError unless all three have one per token."""
    if not len(tokens) == len(weights) == len(deltas):
        raise ValueError(f"tokens, weights, deltas differ in length: "
                         f"{len(tokens)}, {len(weights)}, {len(deltas)}")
    return [float(w) for w in weights], [float(d) for d in deltas]


def weight_colour(w):
    """RGB of a weight: white at w = 1, towards blue (w > 1) or red (w < 1), full at w >= 2 or
    w <= 0.5; grey where w is NaN or <= 0."""
    if not w > 0:
        return NO_WEIGHT
    strength = min(abs(math.log(w)) / LOG_W_CAP, 1.0) ** 0.5  # 0 at w = 1, 1 at the cap
    full = UP if w > 1 else DOWN
    return tuple(round(255 + strength * (c - 255)) for c in full)


def ink(rgb):
    """The text colour that reads on a box of colour `rgb`."""
    return "white" if sum(rgb) < 420 else "black"


def visible_char(c, newline):
    """One character as shown: a newline as `newline`, another control character escaped (\\t)."""
    if c == "\n":
        return newline
    if c.isprintable():
        return c
    return c.encode("unicode_escape").decode()


def visible(tok, newline="\u21b5"):
    """Token text with whitespace shown: a newline as `newline`, other control characters
    escaped (\\t)."""
    return "".join(visible_char(c, newline) for c in tok)


CSS = ("body{font-family:sans-serif;margin:2em;max-width:72em} "
       ".resp{font-family:monospace;font-size:15px}\n"
       ".tok{display:inline-block;white-space:pre;margin:2px 1px;padding:1px 3px;border-radius:3px;"
       "vertical-align:top;\n"
       " box-shadow:inset 0 0 0 1px rgba(0,0,0,.08)} "
       ".tok .d{display:block;font-size:10px;opacity:.8}")

HTML_EXPLANATION = (
    "Colour: the RLSD weight w<sub>t</sub> = exp(sign(A) &Delta;<sub>t</sub>); "
    "blue w &gt; 1 (more of the advantage on this token), red w &lt; 1 (less), white w = 1, "
    "full colour at w &ge; 2 or &le; 0.5. "
    "Small numbers: &Delta;<sub>t</sub> = log p<sub>T</sub> &minus; log p<sub>S</sub>. "
    "Hover a token for both.")


def html_cell(text, w, d, hover=True):
    """A token's <span>: `text` on the colour of weight w, Delta d under it; w and d on hover."""
    rgb = weight_colour(w)
    style = f"background:#{bytes(rgb).hex()};color:{ink(rgb)}"
    title = f' title="w={w:.3f}, \u0394={d:+.3f}"' if hover else ""
    return (f'<span class="tok" style="{style}"{title}>'
            f'<span class="txt">{html.escape(text)}</span>'
            f'<span class="d">{d:+.2f}</span></span>')


def credit_html(tokens, weights, deltas, title="", advantage=None):
    """Self-contained HTML page: each token a <span> coloured by its weight, Delta_t under it, w and
    Delta on hover."""
    weights, deltas = as_floats(tokens, weights, deltas)
    cells = []
    for tok, w, d in zip(tokens, weights, deltas):
        cells.append(html_cell(visible(tok), w, d))
        if "\n" in tok:
            cells.append("<br>")
    legend_weights = (0.5, 0.8, 0.9, 1, 1.1, 1.25, 2)
    legend = "".join(html_cell(f"w={w:g}", w, math.log(w), hover=False) for w in legend_weights)
    heading = f"<h1>{html.escape(title)}</h1>" if title else ""
    adv = f"advantage A = {advantage:+.3f} &middot; " if advantage is not None else ""
    page_title = html.escape(title or "credit")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{page_title}</title><style>{CSS}</style></head>"
            f"<body>{heading}<p>{adv}{len(tokens)} response tokens</p>"
            f'<div class="resp">{"".join(cells)}</div>'
            f"<p>{legend}<br>{HTML_EXPLANATION}</p></body></html>\n")


def png_text(tok):
    """A token's text as drawn in the credit PNG: a newline as \\n, '?' for what the font lacks."""
    return drawable(visible(tok, "\\n"), font(16))


def credit_layout(tokens, deltas, width=CREDIT_W):
    """(x0, y0, x1, y1) of each token's box in the credit PNG, rows wrapped at `width` and after a
    newline."""
    boxes = []
    x = PAD
    y = HEADER_H
    after_newline = False
    for tok, d in zip(tokens, deltas):
        text_w = font(16).getlength(png_text(tok))
        delta_w = font(11).getlength(f"{d:+.2f}")
        w = max(text_w, delta_w) + 8
        row_full = x + w > width - PAD and x > PAD
        if after_newline or row_full:
            x = PAD
            y = y + CELL_H + 6
        boxes.append((x, y, x + w, y + CELL_H))
        x = x + w + 2
        after_newline = "\n" in tok
    return boxes


def credit_png(tokens, weights, deltas, path, title="", advantage=None):
    """The credit heatmap as a PNG at `path`: title, advantage, token boxes with Delta_t, a colour
    bar. Returns path."""
    weights, deltas = as_floats(tokens, weights, deltas)
    boxes = credit_layout(tokens, deltas)
    last_row_bottom = boxes[-1][3] if boxes else HEADER_H
    bar_y = last_row_bottom + 24
    img = Image.new("RGB", (CREDIT_W, bar_y + 60), "white")
    draw = ImageDraw.Draw(img)
    draw_credit_header(draw, title, advantage, len(tokens))
    for tok, w, d, box in zip(tokens, weights, deltas, boxes):
        draw_token(draw, tok, w, d, box)
    draw_colour_bar(draw, PAD, bar_y)
    img.save(path, format="PNG")
    return path


def draw_credit_header(draw, title, advantage, n_tokens):
    """The credit PNG's title and, under it, the advantage and the number of tokens."""
    title_font = font(18)
    title = drawable(title or "token credit", title_font)
    draw.text((PAD, 10), title, font=title_font, fill="black")
    adv = f"advantage A = {advantage:+.3f}   " if advantage is not None else ""
    draw.text((PAD, 36), f"{adv}{n_tokens} response tokens", font=font(13), fill=AXES)


def draw_token(draw, tok, w, d, box):
    """One token's box in the colour of its weight w: its text at the top, its Delta d below."""
    x0, y0, _, y1 = box
    rgb = weight_colour(w)
    draw.rectangle(box, fill=rgb)
    draw.text((x0 + 4, y0 + 3), png_text(tok), font=font(16), fill=ink(rgb))
    draw.text((x0 + 4, y1 - 3), f"{d:+.2f}", font=font(11), fill=ink(rgb), anchor="ld")


def draw_colour_bar(draw, x0, y0, width=300):
    """The legend of the credit PNG: weight colours for log w in [-1.2, 1.2] x LOG_W_CAP, ticked,
    explained."""
    log_w_max = 1.2 * LOG_W_CAP

    def pos(w):
        """The x of weight w on the bar."""
        return x0 + (math.log(w) / log_w_max + 1) / 2 * width

    for i in range(width):
        w = math.exp(log_w_max * (2 * i / width - 1))
        draw.line((x0 + i, y0, x0 + i, y0 + 14), fill=weight_colour(w))
    for w in (0.5, 0.8, 1, 1.25, 2):
        draw.line((pos(w), y0 + 14, pos(w), y0 + 18), fill="black")
        draw.text((pos(w), y0 + 20), f"{w:g}", font=font(11), fill="black", anchor="ma")
    text_x = x0 + width + 16
    meaning = "w_t = exp(sign(A) Delta_t): blue > 1 more credit, red < 1 less, white = 1"
    draw.text((text_x, y0 - 2), meaning, font=font(12), fill="black")
    numbers = "small numbers: Delta_t = log p_T - log p_S"
    draw.text((text_x, y0 + 16), numbers, font=font(12), fill="black")


# ---- CLI

def run_labels(run_dirs, labels):
    """The legend label of each run: `labels` if given, else each directory's name, or its path
    where two names are the same. UserError unless one distinct label per run."""
    names = [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    if not labels:
        if len(set(names)) == len(names):
            labels = names
        else:
            labels = run_dirs
    if len(labels) != len(run_dirs) or len(set(labels)) < len(labels):
        raise UserError(f"need {len(run_dirs)} distinct labels, got {labels}")
    return labels


@entry_point
def main(argv=None):
    description = "Training curves of runs (their metrics.jsonl) as a PNG."
    p = ArgumentParser(description=description)
    p.add_argument("runs", nargs="+", help="run directories (or metrics .jsonl files)")
    p.add_argument("-o", "--out", default="curves.png")
    p.add_argument("--keys", nargs="+", default=DEFAULT_KEYS)
    p.add_argument("--smooth", type=int, default=0, help="trailing moving average over N points")
    p.add_argument("--labels", nargs="+", help="one per run (default: the run directory's name)")
    args = p.parse_args(argv)
    labels = run_labels(args.runs, args.labels)
    runs = {label: read_metrics(d) for label, d in zip(labels, args.runs)}
    try:
        print(draw_curves(runs, args.keys, args.out, args.smooth))
    except OSError as e:
        raise UserError(f"{args.out}: {e.strerror or e}") from None


if __name__ == "__main__":
    main()

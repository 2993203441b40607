"""A report as plain data (sections of paragraphs, lists, notes, tables, figures, folds and
cards) and its three renderings: a self-contained HTML page, Markdown (figures as PNG files
beside it) and LaTeX tables. Renderings are pure functions of the data, so equal data give
equal bytes."""

from __future__ import annotations

import base64
import html
import re
import textwrap
from dataclasses import dataclass, field


@dataclass
class Cell:
    text: str
    bold: bool = False


@dataclass
class Table:
    label: str  # unique among the document's tables; HTML id "tab-<label>", LaTeX "tab:<label>"
    caption: str
    header: list[str]
    rows: list[list[Cell]]
    latex: bool = True  # also written to the LaTeX file
    lead: int = 1  # leading columns that identify a row (repeated when LaTeX splits the table)


@dataclass
class Figure:
    name: str  # file stem, unique; HTML id "fig-<name>"
    png: bytes
    caption: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Note:
    """A boxed aside (the Caveats box)."""

    title: str
    blocks: list  # paragraphs and Bullets


@dataclass
class Fold:
    """Blocks hidden until opened (HTML/Markdown ``<details>``); their tables stay in LaTeX."""

    summary: str
    blocks: list


@dataclass
class Card:
    """A provenance card: a field table, sub-tables, and the raw JSON behind a fold."""

    id: str  # unique; HTML id "card-<id>"
    title: str
    fields: list[tuple[str, str]]
    tables: list[Table] = field(default_factory=list)
    raw: str = ""  # JSON text, shown only folded


Block = str | Bullets | Note | Fold | Table | Figure | Card  # a str is a paragraph


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)


def _walk(blocks):
    for b in blocks:
        yield b
        if isinstance(b, (Note, Fold)):
            yield from _walk(b.blocks)
        elif isinstance(b, Card):
            yield from b.tables


@dataclass
class Document:
    title: str
    subtitle: str
    sections: list[Section]

    def blocks(self) -> list:
        return [b for s in self.sections for b in _walk(s.blocks)]

    def tables(self) -> list[Table]:
        return [b for b in self.blocks() if isinstance(b, Table)]

    def figures(self) -> list[Figure]:
        return [b for b in self.blocks() if isinstance(b, Figure)]

    def ids(self) -> list[str]:
        """Every HTML id of the page, in document order."""
        out = []
        for s in self.sections:
            out.append(s.id)
            for b in _walk(s.blocks):
                if isinstance(b, Table):
                    out.append(f"tab-{b.label}")
                elif isinstance(b, Figure):
                    out.append(f"fig-{b.name}")
                elif isinstance(b, Card):
                    out.append(f"card-{b.id}")
        return out


ID_RE = re.compile(r"^[a-z][a-z0-9-]*$")


def check_ids(doc: Document) -> None:
    """Ids must be valid and unique (links and the LaTeX labels rely on it): a report with a
    clash is a bug in the builder, so it stops rather than writing a broken page."""
    seen: set[str] = set()
    for i in doc.ids():
        if not ID_RE.match(i) or i in seen:
            raise ValueError(f"report id {i!r} is {'duplicated' if i in seen else 'invalid'}")
        seen.add(i)


# -- HTML ----------------------------------------------------------------------------------------

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0 auto;
max-width:1300px;padding:1.5em 1.5em;color:#1a1a1a;line-height:1.45}
h1{margin-bottom:.1em}.subtitle{color:#555;margin-top:0}
h2{border-bottom:2px solid #333;padding-bottom:.15em;margin-top:2em}
h3{margin:1.4em 0 .4em}
nav ol{columns:2;padding-left:1.4em}
table{border-collapse:collapse;margin:.6em 0 1.4em;font-size:.86em}
caption{caption-side:top;text-align:left;font-weight:600;padding-bottom:.35em}
.tw{overflow-x:auto;max-width:100%}
th,td{padding:.28em .55em;text-align:right;white-space:nowrap}thead th{white-space:normal}
th:first-child,td:first-child,th.l,td.l{text-align:left}
th.t,td.t{text-align:left;white-space:normal;min-width:14em}
thead th{border-top:2px solid #000;border-bottom:1px solid #000}
tbody tr:last-child td{border-bottom:2px solid #000}
tbody tr:nth-child(even){background:#f3f3f3}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.88em;color:#333}
code{background:#f0f0f0;padding:0 .25em;border-radius:3px}
ul.findings li{margin:.25em 0}
aside.note{border:2px solid #b26b00;background:#fff8ec;border-radius:6px;padding:.2em 1em;
margin:1em 0}aside.note h3{margin:.5em 0 .2em;color:#7a4a00}
details{border:1px solid #ccc;border-radius:4px;padding:.3em .7em;margin:.5em 0}
summary{cursor:pointer;font-weight:600}
.card{border:1px solid #bbb;border-radius:6px;padding:.2em 1em .6em;margin:1em 0}
.card table.fields td{text-align:left;white-space:normal;vertical-align:top}
.card table.fields td:first-child{font-weight:600;white-space:nowrap}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.8em}
"""


def _inline_html(text: str) -> str:
    parts = text.split("`")
    return "".join(html.escape(p) if i % 2 == 0 else f"<code>{html.escape(p)}</code>"
                   for i, p in enumerate(parts))


def _text_column(t: Table, j: int) -> bool:
    """A column of sentences (claims, verdicts): left-aligned and wrapped, not a number."""
    return any(j < len(r) and _visible(r[j].text) > TEX_TEXT_COLUMN for r in t.rows)


def _html_table(t: Table) -> str:
    # lead columns name the row and text columns hold sentences: both read left-aligned
    kinds = [' class="l"' if j < t.lead else ' class="t"' if _text_column(t, j) else ""
             for j in range(len(t.header))]
    head = "".join(f"<th{k}>{html.escape(h)}</th>" for k, h in zip(kinds, t.header))
    body = "".join("<tr>" + "".join(
        f"<td{k}><strong>{html.escape(c.text)}</strong></td>" if c.bold
        else f"<td{k}>{html.escape(c.text)}</td>" for k, c in zip(kinds, row)) + "</tr>\n"
        for row in t.rows)
    return (f'<div class="tw"><table id="tab-{t.label}"><caption>{_inline_html(t.caption)}'
            f"</caption>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody></table></div>")


def _html_block(b: Block) -> str:
    if isinstance(b, str):
        return f"<p>{_inline_html(b)}</p>"
    if isinstance(b, Bullets):
        items = "".join(f"<li>{_inline_html(x)}</li>\n" for x in b.items)
        return f'<ul class="findings">\n{items}</ul>'
    if isinstance(b, Note):
        inner = "\n".join(_html_block(x) for x in b.blocks)
        return f'<aside class="note"><h3>{html.escape(b.title)}</h3>\n{inner}\n</aside>'
    if isinstance(b, Fold):
        inner = "\n".join(_html_block(x) for x in b.blocks)
        return f"<details><summary>{_inline_html(b.summary)}</summary>\n{inner}\n</details>"
    if isinstance(b, Table):
        return _html_table(b)
    if isinstance(b, Figure):
        data = base64.b64encode(b.png).decode("ascii")
        return (f'<figure id="fig-{b.name}"><img alt="{html.escape(b.caption)}" '
                f'src="data:image/png;base64,{data}"><figcaption>{_inline_html(b.caption)}'
                "</figcaption></figure>")
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_inline_html(v)}</td></tr>\n"
                   for k, v in b.fields)
    tables = "\n".join(_html_table(t) for t in b.tables)
    raw = (f"<details><summary>Raw provenance (JSON)</summary><pre>{html.escape(b.raw)}</pre>"
           "</details>") if b.raw else ""
    return (f'<div class="card" id="card-{b.id}"><h3>{html.escape(b.title)}</h3>\n'
            f'<table class="fields"><tbody>\n{rows}</tbody></table>\n{tables}\n{raw}</div>')


def to_html(doc: Document) -> str:
    """A single page with inline CSS and base64 figures: no external resource, no script."""
    check_ids(doc)
    nav = "".join(f'<li><a href="#{s.id}">{html.escape(s.title)}</a></li>' for s in doc.sections)
    body = "\n".join(
        f'<section id="{s.id}">\n<h2>{html.escape(s.title)}</h2>\n'
        + "\n".join(_html_block(b) for b in s.blocks) + "\n</section>" for s in doc.sections)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(doc.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f'<h1>{html.escape(doc.title)}</h1>\n<p class="subtitle">{_inline_html(doc.subtitle)}'
            f"</p>\n<nav><ol>{nav}</ol></nav>\n{body}\n</body>\n</html>\n")


# -- Markdown ------------------------------------------------------------------------------------

def _md_cell(c: Cell) -> str:
    text = c.text.replace("|", "\\|")
    return f"**{text}**" if c.bold and text else text


def _md_table(t: Table) -> str:
    lines = [f"**{t.caption}**", "", "| " + " | ".join(h.replace("|", "\\|")
                                                         for h in t.header) + " |",
             "|" + "|".join(":--" if i < t.lead else "--:" for i in range(len(t.header))) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    return "\n".join(lines)


def _md_block(b: Block, figure_dir: str) -> str:
    if isinstance(b, str):
        return b
    if isinstance(b, Bullets):
        return "\n".join(f"- {x}" for x in b.items)
    if isinstance(b, Note):
        inner = "\n\n".join(_md_block(x, figure_dir) for x in b.blocks)
        return "\n".join(f"> {line}".rstrip() for line in [f"**{b.title}**", "",
                                                             *inner.splitlines()])
    if isinstance(b, Fold):
        inner = "\n\n".join(_md_block(x, figure_dir) for x in b.blocks)
        return f"<details><summary>{html.escape(b.summary)}</summary>\n\n{inner}\n\n</details>"
    if isinstance(b, Table):
        return _md_table(b)
    if isinstance(b, Figure):
        return f"![{b.caption}]({figure_dir}/{b.name}.png)\n\n*{b.caption}*"
    rows = "\n".join(f"| {k} | {_md_cell(Cell(v))} |" for k, v in b.fields)
    parts = [f"### {b.title}", "", "| field | value |\n|:--|:--|\n" + rows]
    parts += [_md_table(t) for t in b.tables]
    if b.raw:
        parts.append(f"<details><summary>Raw provenance (JSON)</summary>\n\n```json\n{b.raw}\n"
                     "```\n\n</details>")
    return "\n\n".join(parts)


def to_markdown(doc: Document, figure_dir: str = "figures") -> str:
    """GitHub-flavoured Markdown; figures are linked as ``<figure_dir>/<name>.png``."""
    check_ids(doc)
    out = [f"# {doc.title}", "", doc.subtitle, ""]
    out += [f"{i}. [{s.title}](#{s.id})" for i, s in enumerate(doc.sections, 1)]
    for s in doc.sections:
        out += ["", f'<a id="{s.id}"></a>', "", f"## {s.title}", ""]
        out += [x for b in s.blocks for x in (_md_block(b, figure_dir), "")]
    return "\n".join(out).rstrip() + "\n"


# -- LaTeX ---------------------------------------------------------------------------------------

_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        "±": r"$\pm$", "Δ": r"$\Delta$", "≤": r"$\leq$", "≥": r"$\geq$", "×": r"$\times$",
        "→": r"$\rightarrow$", "−": "$-$", "—": "---", "–": "--", "…": r"\dots{}", "`": ""}

# Page geometry the tables are sized for: \footnotesize digits are about 4 pt wide, and a
# column costs 2 x \tabcolsep (6 pt) besides its text; 345 pt is \textwidth of the standard
# article class at 10 pt, the narrowest common single-column page.
TEX_WIDTH_PT = 345.0
TEX_CHAR_PT = 4.0
TEX_PAD_PT = 12.0
TEX_LONG_ROWS = 30  # more rows than this: a longtable, which breaks across pages
TEX_TEXT_COLUMN = 36  # a column with cells longer than this wraps (a p{} column)
TEX_HEADER_LINE = 14  # header cells wrap at spaces into lines of about this many characters


def tex_escape(text: str) -> str:
    escaped = re.sub("|".join(re.escape(k) for k in _TEX), lambda m: _TEX[m.group()], text)
    return re.sub(r"(?<![\w.])-(?=\d)", "$-$", escaped)  # a negative number: a minus, not a hyphen


def _visible(text: str) -> int:
    """Printed width of a cell in characters (a ± or Δ prints as one)."""
    return len(text.replace("`", ""))


def _header_lines(text: str) -> list[str]:
    return textwrap.wrap(text, TEX_HEADER_LINE, break_long_words=False) or [""]


def _column_widths(t: Table) -> list[float]:
    """Each column's printed width in pt (before splitting); wrapping columns are capped."""
    widths = []
    for j, h in enumerate(t.header):
        # bold digits are about 15% wider than regular ones
        cells = [_visible(r[j].text) * (1.15 if r[j].bold else 1.0) for r in t.rows if j < len(r)]
        chars = max([max(len(x) for x in _header_lines(h)), *cells])
        widths.append(min(chars, TEX_TEXT_COLUMN) * TEX_CHAR_PT + TEX_PAD_PT)
    return widths


def latex_parts(t: Table, width_pt: float = TEX_WIDTH_PT) -> list[list[int]]:
    """The column indices of each printed part: the lead columns, then as many of the others
    as fit the width (at least one per part)."""
    widths = _column_widths(t)
    lead = list(range(min(t.lead, len(t.header))))
    base = sum(widths[j] for j in lead)
    parts: list[list[int]] = []
    current: list[int] = []
    for j in range(len(lead), len(t.header)):
        if current and base + sum(widths[k] for k in current) + widths[j] > width_pt:
            parts.append(lead + current)
            current = []
        current.append(j)
    if current or not parts:
        parts.append(lead + current)
    return parts


def table_width_pt(t: Table, columns: list[int]) -> float:
    widths = _column_widths(t)
    return sum(widths[j] for j in columns)


def _tex_header(text: str) -> str:
    lines = _header_lines(text)
    if len(lines) == 1:
        return tex_escape(lines[0])
    # "\\{}" ends the line break, so a line starting with "[" is not read as its argument
    return "\\begin{tabular}[b]{@{}c@{}}" + "\\\\{}".join(tex_escape(x) for x in lines) + \
        "\\end{tabular}"


def _tex_part(t: Table, columns: list[int], part: int, n_parts: int) -> list[str]:
    widths = _column_widths(t)
    spec = "".join((f"p{{{widths[j] - TEX_PAD_PT:.0f}pt}}" if _text_column(t, j)
                    else "l" if j < t.lead else "r") for j in columns)
    caption = tex_escape(t.caption) + (f" (part {part} of {n_parts})" if n_parts > 1 else "")
    label = f"tab:{t.label}" + (f"-{part}" if n_parts > 1 else "")
    head = " & ".join(_tex_header(t.header[j]) for j in columns) + r" \\"
    body = [" & ".join((f"\\textbf{{{tex_escape(r[j].text)}}}" if r[j].bold
                        else tex_escape(r[j].text)) for j in columns) + r" \\" for r in t.rows]
    if len(t.rows) > TEX_LONG_ROWS:
        return ["{\\footnotesize", f"\\begin{{longtable}}{{@{{}}{spec}@{{}}}}",
                f"\\caption{{{caption}}}\\label{{{label}}}\\\\", "\\toprule", head, "\\midrule",
                "\\endfirsthead", "\\toprule", head, "\\midrule", "\\endhead",
                "\\bottomrule", "\\endlastfoot", *body, "\\end{longtable}}", ""]
    return ["\\begin{table}[htbp]", "\\centering", "\\footnotesize",
            f"\\caption{{{caption}}}", f"\\label{{{label}}}",
            f"\\begin{{tabular}}{{@{{}}{spec}@{{}}}}", "\\toprule", head, "\\midrule", *body,
            "\\bottomrule", "\\end{tabular}", "\\end{table}", ""]


def to_latex(doc: Document, width_pt: float = TEX_WIDTH_PT) -> str:
    """Every table at ``\\footnotesize`` (never scaled): a table wider than ``width_pt`` is
    split into parts that repeat its lead columns, a long one is a ``longtable``; needs
    ``\\usepackage{booktabs,longtable}``."""
    out = [(f"% {doc.title}: tables generated by `bench report`; needs "
            "\\usepackage{booktabs,longtable}."),
           (f"% Sized for a {width_pt:.0f} pt text width at \\footnotesize: wider tables are "
            "split into parts repeating their first column(s)."), ""]
    for t in (t for t in doc.tables() if t.latex):
        parts = latex_parts(t, width_pt)
        for i, columns in enumerate(parts, 1):
            out += _tex_part(t, columns, i, len(parts))
    return "\n".join(out)

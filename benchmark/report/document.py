"""A report as plain data (sections of paragraphs, tables, figures and cards) and its three
renderings: a self-contained HTML page, Markdown (figures as PNG files beside it) and LaTeX
``booktabs`` tables. Renderings are pure functions of the data, so equal data give equal bytes."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field


@dataclass
class Cell:
    text: str
    bold: bool = False


@dataclass
class Table:
    label: str  # unique id, also the LaTeX label
    caption: str
    header: list[str]
    rows: list[list[Cell]]
    latex: bool = True  # also written to the LaTeX file


@dataclass
class Figure:
    name: str  # file stem, unique
    png: bytes
    caption: str


@dataclass
class Card:
    title: str
    fields: list[tuple[str, str]]
    config: str  # JSON text


Block = str | Table | Figure | Card  # a str is a paragraph; `code` spans are rendered as code


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Document:
    title: str
    subtitle: str
    sections: list[Section]

    def tables(self) -> list[Table]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Table)]

    def figures(self) -> list[Figure]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Figure)]


# -- HTML ----------------------------------------------------------------------------------------

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0 auto;
max-width:1300px;padding:1.5em 1.5em;color:#1a1a1a;line-height:1.45}
h1{margin-bottom:.1em}.subtitle{color:#555;margin-top:0}
h2{border-bottom:2px solid #333;padding-bottom:.15em;margin-top:2em}
nav ol{columns:2;padding-left:1.4em}
table{border-collapse:collapse;margin:.6em 0 1.4em;font-size:.86em}
caption{caption-side:top;text-align:left;font-weight:600;padding-bottom:.35em}
.tw{overflow-x:auto;max-width:100%}
th,td{padding:.28em .55em;text-align:right;white-space:nowrap}thead th{white-space:normal}
th:first-child,td:first-child{text-align:left}
thead th{border-top:2px solid #000;border-bottom:1px solid #000}
tbody tr:last-child td{border-bottom:2px solid #000}
tbody tr:nth-child(even){background:#f3f3f3}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.88em;color:#333}
code{background:#f0f0f0;padding:0 .25em;border-radius:3px}
details{border:1px solid #ccc;border-radius:4px;padding:.3em .7em;margin:.3em 0}
summary{cursor:pointer;font-weight:600}
details table{font-size:.82em}details td{text-align:left;white-space:normal}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.8em}
"""


def _inline_html(text: str) -> str:
    parts = text.split("`")
    return "".join(html.escape(p) if i % 2 == 0 else f"<code>{html.escape(p)}</code>"
                   for i, p in enumerate(parts))


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.header)
    body = "".join(
        "<tr>" + "".join(f"<td><strong>{html.escape(c.text)}</strong></td>" if c.bold
                         else f"<td>{html.escape(c.text)}</td>" for c in row) + "</tr>\n"
        for row in t.rows)
    return (f'<div class="tw"><table id="{t.label}"><caption>{_inline_html(t.caption)}</caption>\n'
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody></table></div>")


def _html_block(b: Block) -> str:
    if isinstance(b, str):
        return f"<p>{_inline_html(b)}</p>"
    if isinstance(b, Table):
        return _html_table(b)
    if isinstance(b, Figure):
        data = base64.b64encode(b.png).decode("ascii")
        return (f'<figure id="fig-{b.name}"><img alt="{html.escape(b.caption)}" '
                f'src="data:image/png;base64,{data}"><figcaption>{_inline_html(b.caption)}'
                "</figcaption></figure>")
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
                   for k, v in b.fields)
    return (f"<details><summary>{html.escape(b.title)}</summary><table><tbody>{rows}</tbody>"
            f"</table><pre>{html.escape(b.config)}</pre></details>")


def to_html(doc: Document) -> str:
    """A single page with inline CSS and base64 figures: no external resource, no script."""
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


def _md_block(b: Block, figure_dir: str) -> str:
    if isinstance(b, str):
        return b
    if isinstance(b, Table):
        lines = [f"**{b.caption}**", "", "| " + " | ".join(h.replace("|", "\\|")
                                                             for h in b.header) + " |",
                 "|" + "|".join(":--" if i == 0 else "--:" for i in range(len(b.header))) + "|"]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
        return "\n".join(lines)
    if isinstance(b, Figure):
        return f"![{b.caption}]({figure_dir}/{b.name}.png)\n\n*{b.caption}*"
    rows = "\n".join(f"| {k} | {_md_cell(Cell(v))} |" for k, v in b.fields)
    return (f"<details><summary>{html.escape(b.title)}</summary>\n\n| field | value |\n|:--|:--|\n"
            f"{rows}\n\n```json\n{b.config}\n```\n\n</details>")


def to_markdown(doc: Document, figure_dir: str = "figures") -> str:
    """GitHub-flavoured Markdown; figures are linked as ``<figure_dir>/<name>.png``."""
    out = [f"# {doc.title}", "", doc.subtitle, ""]
    out += [f"{i}. [{s.title}](#{s.id})" for i, s in enumerate(doc.sections, 1)]
    for s in doc.sections:
        out += ["", f'<a id="{s.id}"></a>', "", f"## {s.title}", ""]
        out += [x for b in s.blocks for x in (_md_block(b, figure_dir), "")]
    return "\n".join(out).rstrip() + "\n"


# -- LaTeX ---------------------------------------------------------------------------------------

_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        "±": r"$\pm$", "Δ": r"$\Delta$", "≤": r"$\leq$", "—": "---", "–": "--", "`": ""}


def tex_escape(text: str) -> str:
    return re.sub("|".join(re.escape(k) for k in _TEX), lambda m: _TEX[m.group()], text)


def to_latex(doc: Document) -> str:
    """Every table as a LaTeX ``table`` float (needs ``booktabs`` and ``graphicx``)."""
    out = [(f"% {doc.title}: tables generated by `bench report`; needs "
           "\\usepackage{booktabs,graphicx}"), ""]
    for t in (t for t in doc.tables() if t.latex):
        cells = [[f"\\textbf{{{tex_escape(c.text)}}}" if c.bold else tex_escape(c.text)
                  for c in row] for row in t.rows]
        out += ["\\begin{table}[t]", "\\centering", f"\\caption{{{tex_escape(t.caption)}}}",
                f"\\label{{tab:{t.label}}}", "\\resizebox{\\linewidth}{!}{%",
                f"\\begin{{tabular}}{{l{'r' * (len(t.header) - 1)}}}", "\\toprule",
                " & ".join(tex_escape(h) for h in t.header) + r" \\", "\\midrule",
                *(" & ".join(r) + r" \\" for r in cells), "\\bottomrule", "\\end{tabular}}",
                "\\end{table}", ""]
    return "\n".join(out)

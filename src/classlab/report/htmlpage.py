"""Blocks -> report.html: self-contained (images as base64 data URIs, inline CSS, no
scripts), and a small Markdown subset for sections written as Markdown."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from classlab.report.blocks import Block, Code, H, Img, Md, P, Table

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
max-width:1150px;margin:2em auto;padding:0 1em;color:#1f2328;line-height:1.5}
h1{border-bottom:2px solid #d0d7de;padding-bottom:.3em}
h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}
th,td{border:1px solid #d0d7de;padding:.25em .6em}
th{background:#f6f8fa}
tr:nth-child(even) td{background:#fbfbfc}
td.r,th.r{text-align:right;font-variant-numeric:tabular-nums}
td.l,th.l{text-align:left}
td:first-child{white-space:nowrap}
code{background:#f2f4f6;padding:.1em .3em;border-radius:4px;font-size:.9em}
pre{background:#f6f8fa;padding:1em;overflow:auto;border-radius:6px}
pre code{background:none;padding:0}
figure{margin:1em 0}
figure img{max-width:100%;height:auto;border:1px solid #eaeef2}
figcaption{color:#57606a;font-size:.9em;font-style:italic}
details{margin:1em 0}
summary{cursor:pointer;font-weight:600}
.missing{color:#9a6700}
blockquote{border-left:4px solid #d0d7de;margin:0;padding:0 1em;color:#57606a}
"""

_INLINE_IMG = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def _inline(text: str) -> str:
    """Escape, then the inline markdown used here: `code`, **bold**, *italic*."""
    out = []
    for i, part in enumerate(re.split(r"(`[^`]+`)", text)):
        if i % 2:
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
        else:
            s = html.escape(part)
            s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
            s = re.sub(r"(?<![*\w])\*(?!\s)(.+?)(?<!\s)\*(?![*\w])", r"<em>\1</em>", s)
            out.append(s)
    return "".join(out)


def _data_uri(path: Path) -> str:
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
            ".svg": "image/svg+xml", ".gif": "image/gif"}.get(path.suffix.lower(), "image/png")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _figure(caption: str, path: Path) -> str:
    if not path.is_file():
        return f'<p class="missing">{html.escape(caption)}: image missing</p>'
    cap = html.escape(caption)
    return (f'<figure><img src="{_data_uri(path)}" alt="{cap}">'
            f"<figcaption>{cap}</figcaption></figure>")


def _html_table(header: list[str], rows: list[list[str]], align: str = "") -> str:
    align = align or "l" + "r" * (len(header) - 1)

    def cls(i: int) -> str:
        return "r" if i < len(align) and align[i] == "r" else "l"

    out = ["<table><thead><tr>"
           + "".join(f'<th class="{cls(i)}">{_inline(h)}</th>' for i, h in enumerate(header))
           + "</tr></thead><tbody>"]
    for r in rows:
        out.append("<tr>" + "".join(f'<td class="{cls(i)}">{_inline(str(c))}</td>'
                                    for i, c in enumerate(r)) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


_TABLE_RULE = re.compile(r"\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?")
_LIST_ITEM = re.compile(r"\s*([-*+]|\d+[.)])\s+")


def _fence(lines: list[str], i: int) -> tuple[str, int]:
    """A fenced code block starting at line ``i``: (html, index after its closing fence)."""
    j = i + 1
    while j < len(lines) and not lines[j].strip().startswith("```"):
        j += 1
    return f"<pre><code>{html.escape(chr(10).join(lines[i + 1:j]))}</code></pre>", j + 1


def _pipe_table(lines: list[str], i: int) -> tuple[str, int]:
    """A pipe table (header row, rule row, body rows) starting at line ``i``."""
    header = _split_row(lines[i].strip())
    align = "".join("r" if c.endswith(":") and not c.startswith(":") else "l"
                    for c in _split_row(lines[i + 1].strip()))
    rows, i = [], i + 2
    while i < len(lines) and lines[i].strip().startswith("|"):
        rows.append(_split_row(lines[i].strip()))
        i += 1
    return _html_table(header, rows, align), i


def _list(lines: list[str], i: int, run_dir: Path) -> tuple[str, int]:
    """A bullet or numbered list starting at line ``i``."""
    tag = "ol" if re.match(r"\s*\d", lines[i]) else "ul"
    items = []
    while i < len(lines) and _LIST_ITEM.match(lines[i]):
        items.append(_LIST_ITEM.sub("", lines[i], count=1))
        i += 1
    return (f"<{tag}>" + "".join(f"<li>{_para_html(t, run_dir)}</li>" for t in items)
            + f"</{tag}>"), i


def _quote(lines: list[str], i: int, run_dir: Path) -> tuple[str, int]:
    """A block quote (consecutive ``>`` lines) starting at line ``i``."""
    quote = []
    while i < len(lines) and lines[i].strip().startswith(">"):
        quote.append(lines[i].strip()[1:].strip())
        i += 1
    return f"<blockquote><p>{_para_html(' '.join(quote), run_dir)}</p></blockquote>", i


def _block_at(lines: list[str], i: int, run_dir: Path) -> tuple[str, int] | None:
    """The multi-line or heading block that starts at line ``i``, if one does."""
    s = lines[i].strip()
    if s.startswith("```"):
        return _fence(lines, i)
    m = re.match(r"(#{1,6})\s+(.*?)\s*#*$", s)
    if m:
        level = len(m.group(1))
        return f"<h{level}>{_inline(m.group(2))}</h{level}>", i + 1
    if s.startswith("|") and i + 1 < len(lines) and _TABLE_RULE.fullmatch(lines[i + 1].strip()):
        return _pipe_table(lines, i)
    if re.match(r"([-*+]|\d+[.)])\s+", s):
        return _list(lines, i, run_dir)
    if s.startswith(">"):
        return _quote(lines, i, run_dir)
    return None


def md_to_html(text: str, run_dir: Path) -> str:
    """A small Markdown subset for text written by other modules: headings, paragraphs,
    bullet/numbered lists, pipe tables, fenced code, block quotes and images (embedded).
    Everything else is escaped text; raw HTML is shown, never interpreted."""
    lines, out, para, i = text.splitlines(), [], [], 0

    def flush() -> None:
        if para:
            out.append(f"<p>{_para_html(' '.join(para), run_dir)}</p>")
            para.clear()

    while i < len(lines):
        block = _block_at(lines, i, run_dir)
        if block is not None:
            flush()
            out.append(block[0])
            i = block[1]
            continue
        if lines[i].strip():
            para.append(lines[i].strip())
        else:
            flush()
        i += 1
    flush()
    return "\n".join(out)


def _split_row(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [c.strip().replace("\\|", "|") for c in cells]


def _para_html(text: str, run_dir: Path) -> str:
    """Inline markdown plus images, which are embedded when the file is in the run folder's
    reach and dropped to their alt text otherwise (no external resources in the report)."""
    out, pos = [], 0
    for m in _INLINE_IMG.finditer(text):
        out.append(_inline(text[pos:m.start()]))
        alt, src = m.group(1), m.group(2)
        path = Path(src) if Path(src).is_absolute() else run_dir / src
        if "://" not in src and path.is_file():
            out.append(f'<img src="{_data_uri(path)}" alt="{html.escape(alt)}" '
                       'style="max-width:100%;height:auto">')
        else:
            out.append(f'<span class="missing">[image: {html.escape(alt or src)}]</span>')
        pos = m.end()
    out.append(_inline(text[pos:]))
    return "".join(out)


def to_html(blocks: list[Block], run_dir: Path, title: str) -> str:
    return ("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + body_html(blocks, run_dir) + "\n</body>\n</html>\n")


def body_html(blocks: list[Block], run_dir: Path) -> str:
    """The blocks as HTML elements, without the page around them (a notebook shows them
    inside its own page)."""
    body: list[str] = []
    for b in blocks:
        if isinstance(b, H):
            body.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, P):
            body.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Table):
            body.append(_html_table(b.header, b.rows, b.align))
        elif isinstance(b, Img):
            body.append(_figure(b.caption, b.path))
        elif isinstance(b, Code):
            body.append(f"<details><summary>{html.escape(b.summary)}</summary>"
                        f"<pre><code>{html.escape(b.text.rstrip())}</code></pre></details>")
        elif isinstance(b, Md):
            body.append(md_to_html(b.text, run_dir))
    return "\n".join(body)

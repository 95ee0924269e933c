"""A tiny document model rendered to both Markdown and HTML, so the two never disagree."""

from __future__ import annotations

import html
from dataclasses import dataclass, field


@dataclass
class Doc:
    title: str
    blocks: list[tuple] = field(default_factory=list)

    def h(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def missing(self, text: str) -> None:
        self.blocks.append(("missing", text))

    def table(self, headers: list[str], rows: list[list]) -> None:
        self.blocks.append(("table", headers, [[("" if c is None else str(c)) for c in r] for r in rows]))

    def img(self, name: str, alt: str) -> None:
        self.blocks.append(("img", name, alt))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for b in self.blocks:
            kind = b[0]
            if kind == "h":
                out += [f"{'#' * b[1]} {b[2]}", ""]
            elif kind == "p":
                out += [b[1], ""]
            elif kind == "missing":
                out += [f"> **Not available:** {b[1]}", ""]
            elif kind == "table":
                esc = [[c.replace("|", "\\|").replace("\n", " ") for c in r] for r in b[2]]
                out.append("| " + " | ".join(b[1]) + " |")
                out.append("|" + "|".join("---" for _ in b[1]) + "|")
                out += ["| " + " | ".join(r) + " |" for r in esc]
                out.append("")
            elif kind == "img":
                out += [f"![{b[2]}]({b[1]})", ""]
            elif kind == "code":
                fence = "````" if "```" in b[1] else "```"
                out += [fence, b[1], fence, ""]
        return "\n".join(out).rstrip() + "\n"

    def html(self) -> str:
        e = html.escape
        out = ["<!doctype html>", "<html><head><meta charset='utf-8'>", f"<title>{e(self.title)}</title>",
               ("<style>body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
               "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
               "text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%}"
               "pre{background:#f6f6f6;padding:8px;white-space:pre-wrap}"
               ".missing{background:#fff4e0;border-left:4px solid #e8a33d;padding:6px 10px}</style>"),
               "</head><body>", f"<h1>{e(self.title)}</h1>"]
        for b in self.blocks:
            kind = b[0]
            if kind == "h":
                out.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
            elif kind == "p":
                out.append(f"<p>{e(b[1])}</p>")
            elif kind == "missing":
                out.append(f"<p class='missing'><b>Not available:</b> {e(b[1])}</p>")
            elif kind == "table":
                out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in b[1]) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b[2]]
                out.append("</table>")
            elif kind == "img":
                out.append(f"<p><img src='{e(b[1])}' alt='{e(b[2])}'></p>")
            elif kind == "code":
                out.append(f"<pre>{e(b[1])}</pre>")
        out.append("</body></html>")
        return "\n".join(out) + "\n"

"""MkDocs hook: render the TeX of the pages to MathML at build time.

``pymdownx.arithmatex`` (in ``generic`` mode) turns ``$...$`` into
``<span class="arithmatex">\\(...\\)</span>`` and ``$$...$$`` into
``<div class="arithmatex">\\[...\\]</div>``. This hook replaces each of them, in the final HTML
of every page (Markdown pages and the API pages mkdocstrings renders from docstrings alike), by
the MathML that ``latex2mathml`` produces, so the built site shows formulas without JavaScript
or network access. TeX that cannot be converted is shown as code and reported as a warning
(which fails ``mkdocs build --strict``).
"""

from __future__ import annotations

import html
import logging
import re

from latex2mathml.converter import convert

log = logging.getLogger("mkdocs.hooks.mathml")

_MATH = re.compile(
    r'<(?P<tag>span|div) class="arithmatex">(?P<tex>.*?)</(?P=tag)>',
    re.DOTALL,
)
# the argument of a text command, whose escaped characters latex2mathml would print verbatim
_TEXT_ARG = re.compile(r"\\(?:text|texttt|textrm|textit|textbf|mathrm|operatorname)\{([^{}]*)\}")
_TEXT_ESCAPE = re.compile(r"\\([_%&#$])")
# a TeX command left verbatim in the MathML text means it was not understood
_LEFTOVER = re.compile(r">[^<]*\\[A-Za-z|][^<]*<")


def _strip_delimiters(tex: str) -> str:
    tex = tex.strip()
    for left, right in (("\\(", "\\)"), ("\\[", "\\]"), ("$$", "$$"), ("$", "$")):
        if tex.startswith(left) and tex.endswith(right) and len(tex) >= len(left) + len(right):
            return tex[len(left) : len(tex) - len(right)].strip()
    return tex  # an environment such as \begin{align} ... \end{align}


def _unescape_text(match: re.Match) -> str:
    start = match.start(1) - match.start(0)
    return match.group(0)[:start] + _TEXT_ESCAPE.sub(r"\1", match.group(1)) + "}"


def tex_to_mathml(tex: str, display: str) -> str:
    """MathML for one formula (without delimiters); raises ``ValueError`` if not convertible."""
    tex = _TEXT_ARG.sub(_unescape_text, tex)
    try:
        mathml = convert(tex, display=display)
    except Exception as err:  # latex2mathml raises assorted exceptions on bad input
        raise ValueError(f"{type(err).__name__}: {err}") from err
    leftover = _LEFTOVER.search(mathml)
    if leftover:
        raise ValueError(f"unsupported command left verbatim: {leftover.group(0)[1:-1]!r}")
    return mathml


def render_math(content: str, where: str = "") -> str:
    """Replace every arithmatex span and div of an HTML string by MathML."""

    def replace(match: re.Match) -> str:
        block = match["tag"] == "div"
        tex = _strip_delimiters(html.unescape(match["tex"]))
        try:
            mathml = tex_to_mathml(tex, "block" if block else "inline")
        except ValueError as err:
            log.warning("%s: cannot render the TeX %r as MathML (%s)", where, tex, err)
            code = f'<code class="math-tex">{html.escape(tex)}</code>'
            return f"<pre>{code}</pre>" if block else code
        return mathml

    return _MATH.sub(replace, content)


def on_page_content(html_content, page, config, files):
    return render_math(html_content, page.file.src_uri)

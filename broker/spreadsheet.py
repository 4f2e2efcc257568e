"""Cells a spreadsheet reads as text, never as a formula: every CSV the broker writes (feeds,
audit exports, the DPIA register) goes through :func:`csv_cell`. Pure, so the pure core's
renderers (``broker/dpia``) use it without importing a transport."""

from __future__ import annotations

import unicodedata
from typing import Any

CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        value = ";".join(str(v) for v in value)
    text = str(value)
    return "'" + text if formula_like(text) else text


def formula_like(text: str) -> bool:
    """Threat: CSV injection (OWASP) - a cell a spreadsheet reads as a formula (=HYPERLINK(...),
    +cmd|..., @SUM). Spreadsheets skip leading whitespace before looking for the formula sign
    (" =1+1" is a formula in LibreOffice and Excel), and some fold compatibility forms: a
    fullwidth "＝" (U+FF1D) or "﹦" (U+FE66) is "=" after NFKC, as read by tools that normalise on
    import. So: drop leading whitespace, normalise the first character, then look. A cell that
    starts with a tab or a carriage return is quoted in any case (OWASP's list)."""
    if text.startswith(CSV_FORMULA_START):
        return True
    stripped = text.lstrip()  # str.lstrip: every Unicode whitespace, incl. \n, \v, \f, NBSP, U+3000
    if not stripped:
        return False
    # NFKC of one character can be several characters (e.g. "⁼" -> "="); look at its first.
    first = unicodedata.normalize("NFKC", stripped[0])
    return first.startswith(CSV_FORMULA_START) or (
        # A whitespace-like character NFKC does not fold (rare): keep looking past it.
        first != stripped[0] and formula_like(first + stripped[1:])
    )

"""Small text helpers shared by the pages and the CLI: Markdown escaping of user-supplied names, durations."""
from __future__ import annotations

import re

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~<>$:])")


def md_escape(text: str) -> str:
    """Backslash-escape Markdown in user-supplied text (file names) so st.markdown/st.error show it literally."""
    return _MD_SPECIAL.sub(r"\\\1", str(text))


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "estimating..."
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds}s"

"""Widgets shared by the pages: one widget per config field (core.training.config.FormField), so the Train and
Compress forms are generated from their dataclasses' metadata like the CLI's flags."""
from __future__ import annotations

from typing import Any, Callable

from core.training.config import FormField

# Widgets keep their values across page switches (persist_state) and browser reloads (bound to the URL).
KEEP = {"persist_state": "session", "bind": "query-params"}


def field_widget(spec: FormField, where: Any, key: str, keep: dict | None = None, options: list | None = None,
                 checkbox: bool = False) -> Any:
    """The widget for one field, chosen by its kind, in `where` (a column, a form, st); returns its value.
    `options` replaces a choice field's list (e.g. the devices this machine has); `checkbox` draws a bool as a
    checkbox instead of a toggle (inside a form, where the two read alike)."""
    kw = {"help": spec.help, **(keep or {})}
    if spec.kind == "choice":
        options = options or list(spec.choices)
        index = options.index(spec.default) if spec.default in options else 0
        return where.selectbox(spec.label, options, index=index, key=key,
                               format_func=lambda v: f"{v:g}" if isinstance(v, float) else str(v), **kw)
    if spec.kind == "bool":
        return (where.checkbox if checkbox else where.toggle)(spec.label, value=bool(spec.default), key=key, **kw)
    if spec.kind in ("int", "float"):
        cast = int if spec.kind == "int" else float
        return where.number_input(spec.label, min_value=cast(spec.low), max_value=cast(spec.high) if spec.high else None,
                                  value=cast(spec.default), step=cast(spec.step or 1), key=key, **kw)
    return where.text_input(spec.label, value=spec.default or "", key=key, **kw)


def field_rows(specs: list[FormField], values: dict, draw: Callable[[FormField, Any], Any], per_row: int = 3) -> None:
    """Lay fields out `per_row` to a row (at four, labels such as "Augment" were cut to "A..." at 1400 px), each
    drawn by `draw(spec, column)`, putting each value into `values` by field name."""
    import streamlit as st

    for i in range(0, len(specs), per_row):
        for col, spec in zip(st.columns(per_row), specs[i:i + per_row]):
            values[spec.name] = draw(spec, col)

"""Architecture tables behind the Architectures page and the study: parameters vs width for every family, the study's
reference points, where a model's convolution weights sit, and the depthwise-separable argument in its own numbers."""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterable

import pandas as pd

from core.models import archs

WIDTH_GRID: tuple[float, ...] = (0.125, 0.25, 0.375, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)


@lru_cache(maxsize=4096)
def _params_at(arch: str, width: float) -> int:
    import torch

    with torch.device("meta"):  # parameter count only: no weights allocated, no FLOP counting
        model = archs.build(arch, width=width)
    return sum(p.numel() for p in model.parameters())


def params_vs_width(arch_names: Iterable[str] | None = None, widths: Iterable[float] = WIDTH_GRID) -> pd.DataFrame:
    """One row per (family, width): arch, family title, width, params, depthwise."""
    rows = []
    for name in arch_names or archs.list_archs():
        fam = archs.get_family(name)
        for w in widths:
            rows.append({"arch": name, "family": fam.title, "width": float(w), "params": _params_at(name, float(w)),
                         "depthwise": fam.depthwise})
    return pd.DataFrame(rows, columns=["arch", "family", "width", "params", "depthwise"])


def reference_points() -> pd.DataFrame:
    """The study's two models at width 1.0: arch, label, params, public and private accuracy."""
    rows = []
    for name in archs.list_archs():
        ref = archs.get_family(name).reference
        if ref:
            rows.append({"arch": name, "family": archs.get_family(name).title, "width": 1.0, "params": ref["params"],
                         "public": ref["public"], "private": ref["private"],
                         "label": f"study: {name} ({ref['params']:,} params, {ref['public']:.3f} public)"})
    return pd.DataFrame(rows, columns=["arch", "family", "width", "params", "public", "private", "label"])


@lru_cache(maxsize=256)
def _conv_rows(arch: str, knob_items: tuple[tuple[str, float], ...]) -> tuple[tuple, ...]:
    import torch
    from torch import nn

    with torch.device("meta"):
        model = archs.build(arch, **dict(knob_items))
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            rows.append((name, m.in_channels, m.out_channels, k, m.groups, m.weight.numel()))
    return tuple(rows)


def conv_breakdown(arch: str, **knobs: float) -> dict[str, Any]:
    """Where a model's convolution weights sit, and what the other kind of convolution would cost.

    Depthwise convs (groups == channels) filter space with k*k weights per channel; pointwise (1x1) convs mix
    channels with Cin*Cout weights; a standard k x k conv does both at once for k*k*Cin*Cout. Returns totals per
    kind, the depthwise-separable pairs (depthwise followed by pointwise) with the standard conv they replace,
    and the standard k x k convs with the separable pair that would replace them."""
    resolved = archs.get_family(arch).resolve(**knobs)
    rows = _conv_rows(arch, tuple(sorted(resolved.items())))
    kinds = {"depthwise": 0, "pointwise": 0, "standard": 0, "grouped": 0}
    pairs, standards = [], []
    for i, (name, cin, cout, k, groups, n) in enumerate(rows):
        if groups > 1 and groups == cin:
            kinds["depthwise"] += n
            nxt = rows[i + 1] if i + 1 < len(rows) else None
            if nxt is not None and nxt[3] == 1 and nxt[4] == 1 and nxt[1] == cout:
                pairs.append({"depthwise": name, "pointwise": nxt[0], "cin": cin, "cout": nxt[2], "k": k,
                              "separable": n + nxt[5], "depthwise_weights": n, "standard": k * cin * nxt[2]})
        elif groups > 1:
            kinds["grouped"] += n
        elif k == 1:
            kinds["pointwise"] += n
        else:
            kinds["standard"] += n
            standards.append({"conv": name, "cin": cin, "cout": cout, "k": k, "standard": n,
                              "separable": k * cin + cin * cout})
    total = sum(kinds.values())
    return {
        "arch": arch, "knobs": resolved, "conv_params": total, **{f"{k}_params": v for k, v in kinds.items()},
        "pairs": pairs, "standard_convs": standards,
        "pairs_separable": sum(p["separable"] for p in pairs), "pairs_standard": sum(p["standard"] for p in pairs),
        "pairs_depthwise": sum(p["depthwise_weights"] for p in pairs),
        "standard_total": sum(s["standard"] for s in standards),
        "standard_as_separable": sum(s["separable"] for s in standards),
    }


def _pairs_text(title: str, width: float, b: dict[str, Any]) -> str:
    biggest = max(b["pairs"], key=lambda p: p["standard"])
    k = int(round(biggest["k"] ** 0.5))
    share = b["pointwise_params"] / max(1, b["conv_params"])
    return (
        f"**This {title} at width {width:g}:** its {len(b['pairs'])} depthwise-separable blocks hold "
        f"{b['pairs_separable']:,} weights ({b['pairs_depthwise']:,} depthwise + "
        f"{b['pairs_separable'] - b['pairs_depthwise']:,} pointwise). The 1x1 pointwise "
        f"convolutions carry {share:.0%} of all convolution weights ({b['pointwise_params']:,} of "
        f"{b['conv_params']:,}). As standard {k}x{k} convolutions with the same channels the blocks would need "
        f"**{b['pairs_standard']:,}** weights, {b['pairs_standard'] / max(1, b['pairs_separable']):.1f}x more. "
        f"Largest block, {biggest['cin']} -> {biggest['cout']} channels: {k}·{k}·{biggest['cin']}·{biggest['cout']} = "
        f"{biggest['standard']:,} standard vs {k}·{k}·{biggest['cin']} + {biggest['cin']}·{biggest['cout']} = "
        f"{biggest['separable']:,} separable.")


def _standard_text(title: str, width: float, b: dict[str, Any], linear: int, params: int) -> str:
    biggest = max(b["standard_convs"], key=lambda c: c["standard"])
    head = ("" if linear <= 0.3 * params else
            f" Its fully connected layers add another {linear:,} parameters ({linear / params:.0%} of the model): "
            "in a small-image CNN the classifier head, not the convolutions, is often the biggest cost.")
    return (
        f"**This {title} at width {width:g}** uses standard convolutions: its "
        f"{len(b['standard_convs'])} k x k convolutions hold {b['standard_total']:,} weights; depthwise-separable "
        f"versions with the same channels would need **{b['standard_as_separable']:,}**, "
        f"{b['standard_total'] / max(1, b['standard_as_separable']):.1f}x fewer. Largest, {biggest['cin']} -> "
        f"{biggest['cout']} channels: {biggest['standard']:,} standard vs {biggest['separable']:,} separable." + head)


def depthwise_explainer(arch: str, **knobs: float) -> str | None:
    """The depthwise-separable argument in this model's own numbers (Markdown), or None if it has no convs."""
    from core.models.summary import summarize

    b = conv_breakdown(arch, **knobs)
    s = summarize(arch, **knobs)
    title, width = archs.get_family(arch).title, float(b["knobs"]["width"])
    if b["pairs"]:
        return _pairs_text(title, width, b)
    if b["standard_convs"]:
        linear = int(s.layers.loc[s.layers["type"] == "Linear", "params"].sum())
        return _standard_text(title, width, b, linear, s.params)
    return None

"""The documents quote the shipped models' accuracies as their records give them (checkpoints/*/run.json)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "docs" / "study.md", ROOT / "docs" / "benchmarks.md"]


def _shipped() -> dict[str, float]:
    out = {}
    for path in sorted((ROOT / "checkpoints").glob("*/run.json")):
        acc = json.loads(path.read_text())["final"]["accuracy"]
        out[path.parent.name] = acc.get("public", acc.get("val"))
    return out


def _figures(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"(?<![\d.])0\.\d{3,4}(?!\d)", text)]


def _quotes(value: float, figures: list[float]) -> bool:
    """A figure quotes `value` when it is `value` rounded to its own number of decimals (3 or 4)."""
    return any(abs(f - value) <= 0.0005 + 1e-9 for f in figures)


SHIPPED = _shipped()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_table_rows_quote_their_runs_accuracy(doc: Path) -> None:
    checked = 0
    for line in doc.read_text().splitlines():
        m = re.match(r"\|\s*`([\w.-]+)`\s*\|", line)
        if not m or m.group(1) not in SHIPPED:
            continue
        assert _quotes(SHIPPED[m.group(1)], _figures(line)), f"{doc.name}: {line[:120]} does not quote {SHIPPED[m.group(1)]:.4f}"
        checked += 1
    if doc.name != "benchmarks.md":
        assert checked >= 8, f"{doc.name}: expected a table of shipped runs"


def test_int8_rows_quote_the_shipped_fp32_accuracy() -> None:
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    rows = re.findall(r"\| (\w+) batch 1, static int8[^\n]*?([\d.]+) int8 vs ([\d.]+) fp32 \(shipped weights\)", text)
    assert rows, "benchmarks.md lost its int8 rows"
    for arch, _int8, fp32 in rows:
        # ONNX Runtime on the shipped graph vs the record's PyTorch evaluation: equal to the third decimal
        assert abs(float(fp32) - SHIPPED[f"{arch}-w1"]) <= 0.0015, f"int8 row for {arch} quotes {fp32}"


def test_readme_target_sentence() -> None:
    text = (ROOT / "README.md").read_text()
    for label, run in (("MobileNet w1.0", "mobilenet-w1"), ("plain CNN w1.0", "plain_cnn-w1")):
        for quoted in re.findall(re.escape(label) + r" (0\.\d{3})", text):
            assert abs(float(quoted) - SHIPPED[run]) <= 0.0005, f"README quotes {label} {quoted}"


def test_readme_says_what_the_tests_need_and_uses_one_data_path() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for need in ("apt-get install\nchromium chromium-driver", "/usr/bin/chromedriver", "`$FER_PHOTOS`",
                 "`../shared/photos`", "pytest-xdist", "-n 0"):
        assert need in readme, need
    cli_block = readme.split("## CLI", 1)[1].split("```", 2)[1]
    assert "../shared/data" not in cli_block and cli_block.count("data/fer2013") >= 5


def _recorded_accuracies() -> set[float]:
    """Every final accuracy a record holds (shipped runs and campaign trials, each split), and the study's two
    reference models. Not the per-epoch ones: thousands of them would let almost any figure pass."""
    from core.views.archviews import reference_points

    values: set[float] = set()
    for path in [*ROOT.glob("checkpoints/*/run.json"), *ROOT.glob("campaign/trials/*/run.json")]:
        record = json.loads(path.read_text())
        values.update(v for v in ((record.get("final") or {}).get("accuracy") or {}).values() if isinstance(v, float))
    for _, row in reference_points().iterrows():
        values.update((float(row["public"]), float(row["private"])))
    return values


@pytest.mark.parametrize("doc", [ROOT / "README.md", ROOT / "docs" / "study.md"], ids=lambda p: p.name)
def test_running_text_quotes_only_recorded_accuracies(doc: Path) -> None:
    """Tables are checked row by row above; here every accuracy-like figure (0.xxx) in the prose must round from a
    value some record holds, so a number typed from memory, or left behind by a retrained model, fails. Width
    multipliers (0.125, ...) are the one other kind of such figure, and are said after the word "width"; figures in
    code (`--ema-decay 0.999`) are settings."""
    values = _recorded_accuracies()
    blank = lambda m: re.sub(r"[^\n]", " ", m.group())  # noqa: E731 - code is settings, not results; lines kept
    prose = re.sub(r"`[^`]+`", blank, re.sub(r"```.*?```", blank, doc.read_text(), flags=re.S))
    checked = 0
    for n, line in enumerate(prose.splitlines(), 1):
        if line.lstrip().startswith("|"):
            continue
        for m in re.finditer(r"(?<![\d.])0\.(\d{3,4})(?!\d)", line):
            if "width" in line[max(0, m.start() - 25):m.start()]:
                continue
            figure, places = float(m.group()), len(m.group(1))
            assert any(abs(v - figure) <= 0.5 * 10**-places + 1e-9 for v in values), \
                f"{doc.name}:{n}: {m.group()} matches no recorded accuracy ({line.strip()[:100]})"
            checked += 1
    assert checked >= (10 if doc.name == "README.md" else 3), f"{doc.name}: too few figures found: {checked}"


def _levers_script():  # noqa: ANN202
    import importlib.util

    spec = importlib.util.spec_from_file_location("compression_levers", ROOT / "scripts" / "compression_levers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_compression_doc_is_rendered_from_its_json() -> None:
    """docs/compression.md's tables are scripts/compression_levers.py's rendering of docs/compression.json, exactly,
    and its prose quotes no accuracy that is not in a generated section or a shipped record."""
    levers = _levers_script()
    text = (ROOT / "docs" / "compression.md").read_text()
    data = json.loads((ROOT / "docs" / "compression.json").read_text())
    assert levers.render_doc(text, data) == text, "run: python scripts/compression_levers.py --render"
    generated = re.findall(r"<!-- generated by .*?<!-- end of generated section", text, re.S)
    assert len(generated) == 5
    prose = re.sub(r"<!-- generated by .*?<!-- end of generated section: \w+ -->", "", text, flags=re.S)
    sourced = set(_figures(" ".join(generated))) | {round(v, 4) for v in SHIPPED.values()}
    # the pre-reduce_range variant's record, kept in git history: `git show 6a44a52:checkpoints/mobilenet-w1--int8/run.json`
    sourced.add(0.6046)
    unsourced = [f for f in _figures(prose) if not _quotes(f, list(sourced))]
    assert not unsourced, f"compression.md prose quotes {unsourced} with no source"


def test_compression_json_covers_every_large_shipped_model() -> None:
    levers = _levers_script()
    data = json.loads((ROOT / "docs" / "compression.json").read_text())
    assert sorted(data["models"]) == levers.models_to_check()
    # the recipe the JSON calls shipped is the one `python -m core compress --int8` uses today
    assert data["shipped_recipe"] == levers.shipped_recipe()
    for name, m in data["models"].items():
        shipped = [r for r in m["rows"] if levers._is_shipped(r, data)]
        assert len(shipped) == 1, name
        variant = ROOT / "checkpoints" / f"{name}--int8" / "run.json"
        if variant.is_file():  # the script's shipped-recipe row is the shipped variant, measured the same way
            measured = json.loads(variant.read_text())["variant"]["measured"]
            if measured.get("cpu_vnni") == data["machine"]["cpu_vnni"]:
                assert abs(shipped[0]["public"] - measured["accuracy"]) < 1e-6, name

"""House rules that keep the codebase tidy: core never imports streamlit."""
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_core_does_not_import_streamlit() -> None:
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                     for p in (ROOT / "core").rglob("*.py") if p.stem != "__main__")
    assert "core.training.rundir" in modules and "core.views" in modules
    code = ("import sys, importlib\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "assert 'streamlit' not in sys.modules, 'core imported streamlit'\n"
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    for path in (ROOT / "core").rglob("*.py"):
        text = Path(path).read_text()
        assert "import streamlit" not in text and "from streamlit" not in text, path


def test_background_work_starts_in_one_place() -> None:
    """Trainings, compressions, sweeps and campaigns all start through core.util.procs.spawn_detached."""
    starters = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "core").rglob("*.py") if "Popen(" in p.read_text())
    assert starters == ["core/util/procs.py"]


def test_run_folder_file_names_are_spelled_only_in_rundir() -> None:
    """core.training.rundir names a run folder's files (WEIGHTS, ONNX, RECORD, RESUME, ...); code elsewhere says
    rundir.ONNX, never "model.onnx" (prose in help texts and docstrings may still mention them)."""
    import ast

    names = {"model.pt", "model.onnx", "run.json", "resume.pt", "train.log"}
    files = [*(ROOT / "core").rglob("*.py"), *(ROOT / "pages").glob("*.py"), *(ROOT / "bench").glob("*.py"),
             *(ROOT / "scripts").glob("*.py"), ROOT / "streamlit_app.py"]
    found = [f"{p.relative_to(ROOT)}:{node.lineno} {node.value!r}" for p in files if p.name != "rundir.py"
             for node in ast.walk(ast.parse(p.read_text())) if isinstance(node, ast.Constant) and node.value in names]
    assert not found, "run-folder file names spelled outside core/training/rundir.py: " + ", ".join(found)


def test_icons_need_no_emoji_font() -> None:
    """Icons are Material Symbols, which Streamlit bundles, so they draw offline on a machine without an emoji font
    (Debian's Chromium without fonts-noto-color-emoji showed empty boxes); no emoji is used as an icon."""
    import re

    icon = re.compile(r"""\b(?:page_)?icon\s*=\s*["']([^"']*)["']""")
    for path in [ROOT / "streamlit_app.py", *sorted((ROOT / "pages").glob("*.py"))]:
        for value in icon.findall(path.read_text()):
            assert re.fullmatch(r":material/[a-z0-9_]+:", value), f"{path.name}: icon {value!r} needs an emoji font"


def test_code_cites_no_issue_numbers() -> None:
    """A comment says why in its own words: an issue number means nothing to a reader of the code, and outlives
    the tracker it points to."""
    import re

    cite = re.compile(r"\bissue\s*#?\d+", re.IGNORECASE)
    files = [ROOT / "streamlit_app.py", *(p for d in ("core", "components", "pages", "bench", "scripts", "tests")
                                         for p in (ROOT / d).rglob("*.py"))]
    found = [f"{p.relative_to(ROOT)}:{i}" for p in files for i, line in enumerate(p.read_text().splitlines(), 1)
             if cite.search(line) and p.name != "test_layout.py"]
    assert not found, found

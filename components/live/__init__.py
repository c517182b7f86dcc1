"""The Live component: webcam -> face detection -> expression model(s), all in the visitor's browser
(onnxruntime-web), declared from its committed build in components/live/frontend/build."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit.components.v1 as components

BUILD_DIR = Path(__file__).resolve().parent / "frontend" / "build"
# Statuses the frontend reports when live mode cannot run; the page then offers snapshot mode.
FAILED = {"no-camera": "no camera", "denied": "camera permission denied", "no-wasm": "no WebAssembly",
          "model-error": "the model cannot run in the browser", "error": "live inference stopped",
          "unsupported": "this browser lacks Web Workers"}
# What may come back from the browser: a status, one message and a few numbers per model. Anything else is dropped,
# and a value whose JSON is bigger than this is refused: no frame, crop or image is ever accepted from the page.
MAX_VALUE_CHARS = 4096
_KEYS = {"status", "message", "fps", "detect_ms", "faces", "models"}

_component = components.declare_component("fer_live", path=str(BUILD_DIR))


def clean_value(value: Any) -> dict | None:
    """The component's value reduced to what the page uses (status, message, fps, detect_ms, faces, models);
    None for anything that is not a small dict of those."""
    import json

    if not isinstance(value, dict):
        return None
    if len(json.dumps(value, default=str)) > MAX_VALUE_CHARS:
        return None
    out = {k: v for k, v in value.items() if k in _KEYS}
    models = out.get("models")
    out["models"] = [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []
    return out


def live_stream(model_a: tuple[str, str, Path], model_b: tuple[str, str, Path] | None, mtcnn: dict[str, bytes],
                min_face: int = 40, key: str = "live") -> dict | None:
    """Show the live component. Each model is (id, label, path of its model.onnx); `id` changes when the file does.

    How the ONNX bytes get to the browser: as component arguments. Streamlit sends `bytes` arguments as binary (no
    base64), and its message cache sends an unchanged element again only as a hash reference, so a rerun does not
    resend the models; a new pick sends the new file over the page's own connection, where static serving would need
    a config switch, a copy of every model under static/, and would put any model file behind a public URL."""
    args: dict[str, Any] = {"model_a_id": model_a[0], "model_a_label": model_a[1], "model_a": model_a[2].read_bytes(),
                            "model_b_id": model_b[0] if model_b else None, "model_b_label": model_b[1] if model_b else None,
                            "model_b": model_b[2].read_bytes() if model_b else None, "min_face": int(min_face)}
    args.update(mtcnn)
    return clean_value(_component(key=key, default=None, **args))

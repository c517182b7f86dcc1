"""Live page: webcam expressions in real time, detected and classified in the visitor's own browser
(ONNX Runtime Web, in a Streamlit component); one model or two side by side; snapshot mode through the Predict
pipeline as the fallback."""
import streamlit as st

from components.live import FAILED, live_stream
from components.live.catalog import (
    SIDE_BY_SIDE_DEFAULT,
    analyze_photo,
    default_model,
    draw_boxes,
    left_out_text,
    live_models,
    model_label,
    mtcnn_net_bytes,
    onnx_of,
)


def pick(label: str, key: str, models: list, default, help: str) -> str:  # noqa: ANN001 - RunStatus
    paths = [str(m.path) for m in models]
    labels = {str(m.path): model_label(m) for m in models}
    return st.selectbox(label, paths, index=paths.index(str(default.path)), key=key, help=help, format_func=labels.get)


def model_arg(run) -> tuple[str, str, object]:  # noqa: ANN001 - RunStatus
    onnx = onnx_of(run)
    return f"{run.path}@{onnx.stat().st_mtime_ns}", run.name, onnx


def snapshot_mode(run) -> None:  # noqa: ANN001 - RunStatus
    """st.camera_input through the Predict page's pipeline (server-side detection and ONNX Runtime)."""
    st.subheader("Snapshot mode")
    shot = st.camera_input("Take a photo", key="live_camera")
    st.page_link("pages/5_Predict.py", label="Predict: upload photos, see the crops and where the model looks",
                 icon=":material/sentiment_satisfied:")
    if shot is None:
        return
    try:
        result = analyze_photo(shot.getvalue(), "camera photo", onnx_of(run))
    except ValueError as exc:
        st.error(str(exc))
        return
    found = "no face found (the centre square was classified)" if result.no_face else f"{len(result.faces)} face(s)"
    st.image(draw_boxes(result), caption=f"{found} · " + ", ".join(f"{f.top} {f.confidence:.0%}" for f in result.faces),
             width=640)


def live(run_a, run_b, small_faces: bool) -> None:  # noqa: ANN001 - RunStatus, RunStatus or None
    try:
        value = live_stream(model_arg(run_a), model_arg(run_b) if run_b else None, mtcnn_net_bytes(),
                            min_face=20 if small_faces else 40, key="live_stream")
    except (OSError, RuntimeError) as exc:  # a model file deleted since the list was made; the MTCNN package missing
        st.error(f"Live mode cannot start: {exc}")
        value = {"status": "error"}
    if value and value.get("status") in FAILED:
        st.warning(f"Live mode is not available here ({FAILED[value['status']]}). Snapshot mode below takes one photo "
                   "at a time and classifies it on the server instead.")
        snapshot_mode(run_a)
    elif value and value.get("status") == "running" and value.get("fps"):
        st.caption("Measured in your browser: " + f"{value['fps']:.1f} fps, face detection "
                   f"{value.get('detect_ms', 0):.0f} ms; "
                   + "; ".join(f"{m.get('id', '').split('/')[-1].split('@')[0]} {m.get('ms', 0):.1f} ms per frame"
                               for m in value["models"]))


def main() -> None:
    st.title("Live")
    st.caption("Your webcam, with each face boxed and labelled as you move. Faces are found with the same MTCNN nets as "
               "on **Predict**, cropped the same way (48x48 gray, eyes level), and classified by the ONNX model you "
               "pick, all in this browser with ONNX Runtime Web. Try two model sizes side by side and watch the frame "
               "rate.")
    st.info("🔒 Private: the video never leaves this browser tab; the server gets back only a status and a few "
            "numbers (frame rate, timings, top class).", icon=None)
    models, left_out = live_models()
    if left_out:
        st.warning(left_out_text(left_out))
    if not models:
        st.info("No model with an ONNX export yet. Train one on the **Train** page or put shipped checkpoints in "
                "`checkpoints/`; it appears here when it finishes.")
        return
    by_path = {str(m.path): m for m in models}
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    with c1:
        run_a = by_path[pick("Model", "live_model", models, default_model(models), "every checkpoint and compression "
                             "variant with an ONNX export, shipped or trained; a new pick runs from the next frame, "
                             "with no reload")]
    run_b = None
    if c2.toggle("Side by side", key="live_side_by_side", help="a second model on the same frames"):
        run_b = by_path[pick("Second model", "live_model_b", models, default_model(models, SIDE_BY_SIDE_DEFAULT),
                             "runs on the same frames and the same face crops as the first")]
    small_faces = st.toggle("Find small faces too (slower)", key="live_small_faces",
                            help="the detector looks for faces down to 20 px (as on Predict) instead of 40 px at 320 px")
    if st.toggle("Snapshot mode (one photo at a time, classified on the server)", key="live_snapshot",
                 help="for browsers or devices where live mode does not run"):
        snapshot_mode(run_a)
    else:
        live(run_a, run_b, small_faces)


if __name__ == "__main__":
    main()

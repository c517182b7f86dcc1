"""Predict page: photos (upload, camera or the bundled sample) -> face boxes, 48x48 crops as the model sees them,
expression probabilities from an ONNX model; a results table with CSV download."""
from pathlib import Path

import streamlit as st

from components.cached import occlusion
from core.inference.photo import (
    MAX_FILE_BYTES,
    PhotoResult,
    analyze_photo,
    classify_box,
    draw_boxes,
    face_grid,
    face_label,
    label_summary,
    manual_box,
    overlay_heatmap,
    parse_label,
)
from core.training.config import form_fields
from core.training.rundir import ONNX, WEIGHTS, RunStatus, list_runs
from core.util.fsutil import PROJECT_ROOT, runs_dir
from core.views import charts, inside, runviews
from core.views.dataviews import upscale
from core.views.photoviews import UPLOAD_TYPES, photo_rows
from core.views.text import md_escape

SAMPLE = PROJECT_ROOT / "assets" / "astronaut.jpg"
# the Train form's time budget, said where a newcomer with no model yet is sent there
QUICK_BUDGET_S = next(f.default for f in form_fields() if f.name == "time_budget_s")
KEPT = "predict_kept_photos"  # [(name, bytes)]: the uploads, kept for a trip to Inside and back
VIEWS = {"none": "none", "flip": "mirror (2 views)", "tencrop": "ten crops (10 views)"}  # core.data.augment.TTA_MODES


@st.cache_data(max_entries=64, show_spinner=False)
def analyze(data: bytes, name: str, model_path: str, stamp: float):  # noqa: ANN201 - core.inference.photo.PhotoResult
    # `stamp` (the model file's mtime) keys the cache so a re-exported model is used at once.
    return analyze_photo(data, name, model_path)


def pick_model() -> RunStatus | None:
    runs = list_runs(runs_dir())
    models = [r for r in runs if r.has_onnx]
    if left_out := [r for r in runs if r.ok and r.onnx_problem]:
        st.warning(runviews.left_out_text(left_out))
    if not models:
        st.info("No model with an ONNX export yet. Train one on the **Train** page (its quick defaults train "
                f"for a {QUICK_BUDGET_S:g}-second budget on the built-in synthetic data) or put shipped checkpoints in `checkpoints/`; it appears here when it finishes.")
        return None
    by_path = {str(r.path): r for r in models}
    paths = list(by_path)
    if st.session_state.get("predict_model") not in by_path:  # first visit, or the chosen run was deleted since
        st.session_state.pop("predict_model", None)
    # persist_state: the choice survives a trip to Inside and back (a widget's state ends with its page otherwise)
    path = st.selectbox("Model", paths, index=paths.index(str(runviews.best_model(models).path)), key="predict_model",
                        format_func=lambda p: runviews.model_label(by_path[p]), persist_state="session",
                        help="every checkpoint with an ONNX export; the default is the best shipped one")
    if by_path[path].record.synthetic:
        st.warning("This model was trained on the synthetic cartoon faces, so its guesses on real photos only "
                   "demonstrate the pipeline. Pick a model trained on FER2013 for meaningful predictions.")
    return by_path[path]


def pick_graph(model: RunStatus) -> Path | None:
    """The ONNX graph to classify with: the run's own, or its weights with test-time augmentation folded into a copy
    (core.training.runs.tta_graph); None, with the reason shown, when that copy cannot be made."""
    own = model.path / ONNX
    weights = model.record.variant is None and (model.path / WEIGHTS).is_file()
    views = st.radio("Test-time augmentation", list(VIEWS), format_func=VIEWS.get, horizontal=True, key="predict_tta",
                     disabled=not weights, persist_state="session", help="Averages the model's answers over views of each face: the face and "
                     "its mirror, or ten crops and their mirrors, folded into a copy of its ONNX graph (the model's "
                     "own files are not changed). On FER2013's public test, ten crops added 1.7 to 3.0 points on "
                     "average over the campaign's models (docs/tta.md); classifying takes about as many times "
                     "longer as there are views. A compressed variant has no weights to re-export, so it runs as is.")
    if views == "none" or not weights:
        return own
    from core.training.runs import tta_graph  # torch: loaded only when views are asked for

    try:
        with st.spinner("Folding the views into a copy of the model's graph..."):
            return tta_graph(model.path, views)
    except (ValueError, OSError) as exc:
        st.error(f"{md_escape(exc)}. Pick 'none' to use the model's own graph.")
        return None


def keep_uploads() -> None:
    """Called only when the user changes the uploader (adds or removes photos), never when the page is left: the
    uploader itself forgets its files on a page switch, so the page shows these instead until they are replaced."""
    st.session_state[KEPT] = [(u.name, u.getvalue()) for u in st.session_state.get("predict_upload") or []]


def photo_inputs() -> tuple[list[tuple[str, bytes]], str | None]:
    """The photos to analyse, (name, bytes) each, and the expected expression typed (or None)."""
    uploads = st.file_uploader("Photos (JPEG, PNG, WebP, BMP, GIF, TIFF; several at once)", type=UPLOAD_TYPES,
                               accept_multiple_files=True, key="predict_upload", on_change=keep_uploads,
                               help=f"up to {MAX_FILE_BYTES // 2**20} MB each")
    kept = [] if uploads else st.session_state.get(KEPT) or []
    if kept:
        k1, k2 = st.columns([3, 1], vertical_alignment="center")
        k1.caption(f"Still here from before: {', '.join(md_escape(n) for n, _ in kept)}. Upload others to replace them.")
        if k2.button("Remove these", key="predict_kept_remove"):
            st.session_state[KEPT], kept = [], []
    c1, c2, c3 = st.columns([1, 1, 2], vertical_alignment="center")
    if c1.button("Try a sample photo", key="predict_sample", icon=":material/image:"):
        st.session_state["predict_show_sample"] = True
    if st.session_state.get("predict_show_sample") and c2.button("Remove sample", key="predict_sample_remove"):
        st.session_state["predict_show_sample"] = False
    camera_on = c3.toggle("Take a photo with the camera", key="predict_camera_on", persist_state="session",
                          help="the browser asks for camera access only when this is on")
    shot = st.camera_input("Camera", key="predict_camera") if camera_on else None
    typed = st.text_input("Expected expression (optional)", key="predict_label", placeholder="e.g. happy",
                          persist_state="session",
                          help="checked against every photo whose file name names no expression; a name like "
                               "'anna__angry__1.jpg' carries its own label")
    try:
        label = parse_label(typed)
    except ValueError as exc:
        st.warning(str(exc))
        label = None
    photos = [(f"sample: {SAMPLE.name}", SAMPLE.read_bytes())] if st.session_state.get("predict_show_sample") else []
    photos += [(up.name, up.getvalue()) for up in uploads or []] or kept
    if shot is not None:
        photos.append(("camera photo", shot.getvalue()))
    return photos, label


def analyse_all(photos: list[tuple[str, bytes]], onnx_file: Path, stamp: float) -> list[PhotoResult]:
    results: list[PhotoResult] = []
    bar = st.progress(0.0, text="Analysing...") if len(photos) > 1 else None
    for n, (name, data) in enumerate(photos, 1):
        try:
            with st.spinner(f"Analysing {md_escape(name)}..."):
                results.append(analyze(data, name, str(onnx_file), stamp))
        except ValueError as exc:
            st.error(md_escape(exc))  # core names the file and says what is allowed; names are shown literally
        if bar is not None:
            bar.progress(n / len(photos), text=f"Analysed {n} of {len(photos)} photos")
    if bar is not None:
        bar.empty()
    return results


def hand_box(k: int, r: PhotoResult, onnx_file: Path) -> PhotoResult:
    """No face found: sliders place a square by hand; the photo is classified on that square instead."""
    st.warning(f"No face found in {md_escape(r.name)}. The orange square (the centre) was classified; move "
               "the sliders until the square covers the face, and the prediction follows it.")
    c1, c2, c3 = st.columns(3)
    cx = c1.slider("Left - right", 0.0, 1.0, 0.5, 0.01, key=f"predict_box_x_{k}")
    cy = c2.slider("Up - down", 0.0, 1.0, 0.5, 0.01, key=f"predict_box_y_{k}")
    side = c3.slider("Size", 0.05, 1.0, 1.0, 0.01, key=f"predict_box_size_{k}")
    if (cx, cy, side) == (0.5, 0.5, 1.0):
        return r  # untouched: the centre square already classified
    return classify_box(r, manual_box(r.size, cx, cy, side), onnx_file)


def show_face(k: int, r: PhotoResult, i: int, face, model: RunStatus, onnx_file: Path,  # noqa: ANN001 - a Face
              stamp: float) -> None:
    crop_col, chart_col = st.columns([1, 2], vertical_alignment="center")
    crop_col.image(upscale(face.crop, 3), caption=f"face {i}: 48x48, as the model sees it")
    heat, _ = occlusion(face.crop.tobytes(), str(onnx_file), stamp)
    crop_col.image(overlay_heatmap(face.crop, heat, 144),
                   caption=f"where it looks: hiding the bright areas lowers '{face.top}' most")
    chart_col.metric(f"Face {i}", f"{face.top} {face.confidence:.0%}", help=face_label(i, face))
    chart_col.altair_chart(charts.probabilities_chart(face.probs), width="stretch")
    if crop_col.button("Look inside", key=f"inside_{k}_{i}", help="this face through the model, layer by layer, "
                       "with Grad-CAM beside the occlusion map"):
        st.session_state.update({inside.FACE_KEY: face.crop, inside.MODEL_KEY: str(model.path),
                                 inside.PHOTO_KEY: (r, i - 1)})
        st.switch_page("pages/6_Inside.py")


def photo_details(results: list[PhotoResult], model: RunStatus, onnx_file: Path, stamp: float) -> None:
    """An expander per photo: boxes, each face's crop, occlusion map and probabilities; a hand-placed box where no
    face was found (which replaces that photo's result in `results`)."""
    for k, r in enumerate(results):
        detected = "no face found" if r.no_face else f"{len(r.faces)} face(s)"
        summary = ", ".join(f"{f.top} {f.confidence:.0%}" for f in r.faces[:3]) + ("..." if len(r.faces) > 3 else "")
        with st.expander(f"{md_escape(r.name)} · {detected} · {summary}", expanded=len(results) == 1):
            if r.no_face:
                r = results[k] = hand_box(k, r, onnx_file)
                detected += " · " + ("your box" if r.faces[0].source == "manual" else "centre square")
            photo_col, faces_col = st.columns([1, 1], gap="large")
            photo_col.image(draw_boxes(r), width="stretch",
                            caption=f"{'x'.join(map(str, r.file_size or r.size))} px · {detected} · detect "
                                    f"{r.timings_ms['detect']:.0f} ms · classify {r.timings_ms['classify']:.1f} ms")
            with faces_col:
                for i, face in enumerate(r.faces, 1):
                    show_face(k, r, i, face, model, onnx_file, stamp)


def overview(results: list[PhotoResult], label: str | None, model: RunStatus, onnx_file: Path) -> None:
    st.subheader("Results")
    grid = face_grid(results, label)
    matches = label_summary(grid)
    if matches:
        st.info(matches)
    # what a phone shows without scrolling sideways comes first: the face, its expression, confidence and match
    order = ["crop", "expression", "confidence", *(["matches", "label"] if matches else []), "face", "photo", "found by"]
    st.dataframe(grid, hide_index=True, key="predict_grid", row_height=56, column_order=order, column_config={
        "crop": st.column_config.ImageColumn("face", width="small"),
        "confidence": st.column_config.ProgressColumn("confidence", format="percent", min_value=0.0, max_value=1.0),
        "matches": st.column_config.CheckboxColumn("matches label"),
    })
    rows = photo_rows(results)
    st.download_button("Download results as CSV", rows.to_csv(index=False).encode(), file_name="fer_predictions.csv",
                       mime="text/csv", key="predict_csv", icon=":material/download:")
    with st.expander("All probabilities (the CSV's table)"):
        st.dataframe(rows, hide_index=True, key="predict_table")
    own = model.path / ONNX
    shown = f"`{own.relative_to(PROJECT_ROOT) if own.is_relative_to(PROJECT_ROOT) else own}`"
    if onnx_file != own:  # a cached copy of the run's weights with the views folded in (pick_graph)
        shown = (f"test-time augmentation: {VIEWS.get(st.session_state.get('predict_tta'), 'views')}, in a copy "
                 f"of {shown}")
    st.caption(f"Model: {runviews.model_label(model)} · {shown} · details of each photo below")


def main() -> None:
    st.title("Predict")
    st.caption("Faces are found with MTCNN (OpenCV's Haar detector where it finds none), turned so the eyes are "
               "level and cropped to 48x48 grayscale the way FER2013's faces are, and classified by an ONNX model in "
               "ONNX Runtime. Photos stay on this machine.")
    model = pick_model()
    if model is None:
        return
    onnx_file = pick_graph(model)
    photos, label = photo_inputs()
    if onnx_file is None:
        return
    if not photos:
        st.info("Upload photos, take one with the camera, or press **Try a sample photo**.")
        return
    try:
        stamp = onnx_file.stat().st_mtime
    except OSError as exc:  # the run was deleted or re-exported since the list above was made
        st.error(f"{onnx_file}: the model file is gone ({exc.strerror}); pick another model.")
        return
    results = analyse_all(photos, onnx_file, stamp)
    if not results:
        return
    summary = st.container()  # filled last: boxes placed by hand below can change what it lists
    photo_details(results, model, onnx_file, stamp)
    with summary:
        overview(results, label, model, onnx_file)


if __name__ == "__main__":
    main()

"""Inside page: one face through one model, layer by layer (feature maps, first-layer filters, where depthwise convs
filter and pointwise convs mix), and Grad-CAM beside the occlusion map for any class."""
import math
from dataclasses import dataclass
from typing import Any

import streamlit as st

from components.cached import occlusion
from core.data import SPLIT_TITLES
from core.explain import cam, featuremaps, gallery
from core.inference.photo import overlay_heatmap
from core.training.checkpoint import load_model
from core.training.rundir import ONNX, WEIGHTS, RunStatus, list_runs
from core.util.classes import CLASSES
from core.util.fsutil import mtime, runs_dir
from core.views import inside, runviews
from core.views.dataviews import upscale
from core.views.photoviews import UPLOAD_TYPES
from core.views.text import md_escape

ROLE_COLOURS = {"depthwise": "blue", "pointwise": "orange", "standard conv": "gray", "grouped conv": "violet",
                "block": "violet", "fully connected": "gray", "pooling": "gray", "logits": "green", "input": "gray"}


@dataclass
class Face:
    """The face being explained: its 48x48 crop, its class where known, and the photo it came from (if any)."""
    crop: Any
    true_label: int | None = None
    photo: Any = None  # core.inference.photo.PhotoResult
    index: int = 0  # which face of the photo


@st.cache_resource(max_entries=4, show_spinner=False)
def model_for(path: str, stamp: float):  # noqa: ANN201 - (torch model, record); `stamp` = the weights' mtime
    return load_model(path)


@st.cache_resource(max_entries=3, show_spinner=False)
def dataset(source: str):  # noqa: ANN201 - core.data.FERData (FER2013 is cached on disk, synthetic is generated)
    return gallery.gallery_data(source)


@st.cache_data(max_entries=16, show_spinner=False)
def photo(data: bytes, name: str, onnx_path: str, stamp: float):  # noqa: ANN201 - core.inference.photo.PhotoResult
    return cam.photo_faces(data, name, onnx_path)


def pick_model():  # noqa: ANN201 - (RunStatus, torch model, RunRecord), or None (said why)
    runs = inside.openable(list_runs(runs_dir()))
    if not runs:
        st.info("No checkpoint with weights yet. Train one on the **Train** page, or put the shipped ones in "
                "`checkpoints/`.")
        return None
    by_path = {str(r.path): r for r in runs}
    handed = st.session_state.pop(inside.MODEL_KEY, None)  # Predict's one-click hand-off
    if handed in by_path:
        st.session_state["inside_model_pick"] = handed
        st.session_state["inside_source"] = "predict"
    if st.session_state.get("inside_model_pick") not in by_path:  # first visit, or the picked run was deleted
        st.session_state["inside_model_pick"] = str((runviews.best_model(runs) or runs[0]).path)
    path = st.selectbox("Model", list(by_path), key="inside_model_pick",
                        format_func=lambda p: runviews.model_label(by_path[p]))
    try:
        with st.spinner("Loading the model..."):
            model, record = model_for(path, mtime(by_path[path].path / WEIGHTS))
    except ValueError as exc:  # weights that do not fit the record, a damaged file...
        st.error(f"This checkpoint cannot be opened: {exc}. Pick another model.")
        return None
    return by_path[path], model, record


def dataset_face(record) -> Face:  # noqa: ANN001 - the model's RunRecord (its data is the default source)
    data = dataset(gallery.gallery_source(st.session_state.get("data_source"), record))
    if data.synthetic:
        st.info("FER2013 was not found, so the faces come from the built-in **synthetic** set (cartoon faces). "
                "Choose FER2013 on the **Data** page for real ones.")
    c1, c2 = st.columns([1, 2])
    split = c1.selectbox("Split", list(data.splits), index=list(data.splits).index(data.val_split),
                         key="inside_split", format_func=lambda s: SPLIT_TITLES.get(s, s))
    n = len(data.splits[split])
    index = c2.number_input(f"Image (0-{n - 1})", 0, max(0, n - 1), 0, key="inside_index")
    return Face(*inside.dataset_face(data, split, int(index)))


def photo_face(source: str, run: RunStatus) -> Face | None:
    """A face from the sample photo or an upload, found the way Predict finds it (None while nothing is uploaded)."""
    if source == "sample":
        name, raw = f"sample: {inside.SAMPLE_PHOTO.name}", inside.SAMPLE_PHOTO.read_bytes()
    else:
        up = st.file_uploader("Photo", type=UPLOAD_TYPES, key="inside_upload")
        if up is None:
            st.info("Upload a photo with a face.")
            return None
        name, raw = up.name, up.getvalue()
    if not run.has_onnx:
        raise ValueError(f"{run.name} has no usable ONNX export, which face detection uses; pick another model")
    result = photo(raw, name, str(run.path / ONNX), mtime(run.path / ONNX))
    index = 0
    if len(result.faces) > 1:
        index = st.selectbox("Face in the photo", range(len(result.faces)), key="inside_face_pick",
                             format_func=lambda i: f"face {i + 1}")
    return Face(result.faces[index].crop, None, result, index)


def pick_face(run: RunStatus, record) -> Face | None:  # noqa: ANN001 - a RunRecord
    sources = {"dataset": "Dataset image", "sample": "Sample photo", "upload": "Upload a photo"}
    if inside.FACE_KEY in st.session_state:
        sources = {"predict": "Face from Predict", **sources}
    if st.session_state.get("inside_source") not in sources:
        st.session_state["inside_source"] = next(iter(sources))
    source = st.radio("Face", list(sources), format_func=sources.get, horizontal=True, key="inside_source")
    try:
        if source == "predict":
            result, index = st.session_state.get(inside.PHOTO_KEY) or (None, 0)
            face = Face(inside.handed_face(st.session_state[inside.FACE_KEY]), None, result, index)
        else:
            face = dataset_face(record) if source == "dataset" else photo_face(source, run)
    except ValueError as exc:
        st.error(md_escape(exc))
        return None
    if face is not None and face.true_label is None and face.photo is not None:
        face.true_label = inside.label_index(face.photo.name)  # a file name like 'anna__happy__1.jpg' carries its class
    return face


def answer(rows: list, face: Face) -> int:
    """The prediction, the true class and the parameter count as cards; returns the predicted class."""
    probs = featuremaps.probabilities(rows)
    top = int(probs.argmax())
    m1, m2, m3 = st.columns(3)
    m1.metric("Prediction", CLASSES[top], f"{probs[top]:.0%} probability", delta_color="off", delta_arrow="off")
    m2.metric("True class", CLASSES[face.true_label] if face.true_label is not None else "unknown",
              help="from the dataset, or from the photo's file name (e.g. anna__happy__1.jpg)")
    m3.metric("Parameters", f"{sum(r.params for r in rows):,}", help="the sum of the rows below")
    return top


def grad_cam(model, face: Face, rows: list, top: int, run: RunStatus):  # noqa: ANN001, ANN201 - (chosen, predicted's)
    """Grad-CAM for the class picked (and for the predicted one, to compare with occlusion), or None (said why)."""
    c1, c2 = st.columns(2)
    target = c1.selectbox("Explain class", ["predicted", *CLASSES], key="inside_cam_class",
                          format_func=lambda c: f"predicted ({CLASSES[top]})" if c == "predicted" else c)
    layers = cam.cam_layers(rows)
    level = st.session_state.get("inside_level", "layers")
    layer = c2.selectbox("Grad-CAM layer", layers, index=layers.index(cam.default_cam_layer(rows)),
                         key=f"inside_cam_layer_{run.name}_{level}", help="the deepest conv map is the usual choice")
    try:
        chosen = cam.grad_cam(model, face.crop, layer, None if target == "predicted" else target)
        return chosen, chosen if chosen.target == top else cam.grad_cam(model, face.crop, layer, None), layer
    except ValueError as exc:
        st.error(md_escape(exc))
        return None


def where_it_looks(model, face: Face, rows: list, top: int, run: RunStatus) -> None:  # noqa: ANN001 - torch model
    st.subheader("Where it looks")
    found = grad_cam(model, face, rows, top, run)
    if found is None:
        return
    chosen, on_top, layer = found
    cls = CLASSES[chosen.target]
    r, c = cam.peak(chosen.heat)
    cols = st.columns(4 if face.photo is not None else 3)
    cols[0].image(upscale(face.crop, 4), caption="the 48x48 crop the model sees", width=192)
    cols[1].image(overlay_heatmap(face.crop, chosen.heat, 192), caption=f"Grad-CAM for '{cls}'", width=192)
    st.caption(f"Grad-CAM for '{cls}' (probability {chosen.probs[chosen.target]:.0%}) at {layer}, a "
               f"{chosen.layer_shape[0]}x{chosen.layer_shape[1]} map upsampled to the crop: strongest at row {r}, "
               f"column {c}.", help="Captum's LayerGradCam: the layer's activations weighted by the class score's "
               "gradients")
    if run.has_onnx:
        occ, _ = occlusion(face.crop.tobytes(), str(run.path / ONNX), mtime(run.path / ONNX))
        cols[2].image(overlay_heatmap(face.crop, occ, 192), width=192,
                      caption=f"occlusion: hiding the bright areas lowers '{CLASSES[top]}' most")
        rho = cam.agreement(on_top.heat, occ)
        st.metric("Grad-CAM vs occlusion (predicted class), correlation", "n/a" if math.isnan(rho) else f"{rho:.2f}",
                  help="Pearson correlation of the two 48x48 maps")
        st.caption(f"The two maps {cam.agreement_words(rho)}. Grad-CAM reads the gradients inside the network; "
                   "occlusion only watches the answer change as patches are hidden, so it also catches what "
                   "Grad-CAM's coarse map blurs.")
    else:
        cols[2].warning("No usable ONNX export, so no occlusion map for this run.")
    if face.photo is not None:
        cols[3].image(cam.overlay_on_photo(face.photo, face.index, chosen.heat),
                      caption=f"Grad-CAM for '{cls}' on the photo")


def layer_by_layer(model, rows: list) -> None:  # noqa: ANN001 - torch model
    st.subheader("Layer by layer")
    c1, c2 = st.columns(2)
    c1.radio("Rows", featuremaps.LEVELS, horizontal=True, key="inside_level",
             format_func=lambda v: {"layers": "every layer", "blocks": "one per block"}[v])
    shown = c2.slider("Channels per row (most active first)", 1, 64, 16, key="inside_channels")
    grid, caption = featuremaps.first_filters(model)
    with st.container(border=True):
        st.markdown("**First layer's filters**")
        st.image(grid, caption=caption, width="content")  # its own width, never wider than the screen (a phone's)
    st.caption("Blue rows are depthwise convolutions (each channel filtered alone, `groups == channels`); orange rows "
               "are pointwise 1x1 convolutions (channels mixed, no spatial filtering). Maps share one colour scale "
               "per row: brighter is more active.")
    for row in rows:
        with st.container(border=True):
            left, right = st.columns([1, 3])
            left.markdown(f"**{row.name}** · `{row.kind}`")
            left.badge(row.role, color=ROLE_COLOURS.get(row.role, "gray"))
            left.caption(f"output {' x '.join(map(str, row.shape))} · {row.params:,} parameters")
            right.image(featuremaps.channel_grid(row, shown))
            right.caption(f"{min(shown, len(row.order))} of {len(row.order)} channels. {row.caption}")


def main() -> None:
    st.title("Inside")
    st.caption("One face through one model: what every layer makes of it, which filters the first layer learned, "
               "and where the model looks (Grad-CAM beside the occlusion map).")
    picked = pick_model()
    if picked is None:
        return
    run, model, record = picked
    face = pick_face(run, record)
    if face is None:
        return
    with st.spinner("Running the face through the model..."):
        rows = featuremaps.feature_maps(model, face.crop, st.session_state.get("inside_level", "layers"))
    top = answer(rows, face)
    where_it_looks(model, face, rows, top, run)
    layer_by_layer(model, rows)


if __name__ == "__main__":
    main()

"""Inside page: one face through one model, layer by layer (feature maps, first-layer filters, where depthwise convs
filter and pointwise convs mix), and Grad-CAM beside the occlusion map for any class."""
import math

import streamlit as st

from core.data import SPLIT_TITLES
from core.explain import cam, featuremaps, gallery
from core.inference.photo import occlusion_map, overlay_heatmap
from core.training.checkpoint import load_model
from core.training.rundir import ONNX, WEIGHTS, list_runs
from core.util.classes import CLASSES
from core.util.fsutil import mtime, runs_dir
from core.views import inside, runviews
from core.views.dataviews import upscale
from core.views.text import md_escape

ROLE_COLOURS = {"depthwise": "blue", "pointwise": "orange", "standard conv": "gray", "grouped conv": "violet",
                "block": "violet", "fully connected": "gray", "pooling": "gray", "logits": "green", "input": "gray"}

st.title("Inside")
st.caption("One face through one model: what every layer makes of it, which filters the first layer learned, and "
           "where the model looks (Grad-CAM beside the occlusion map).")


@st.cache_resource(max_entries=4, show_spinner=False)
def model_for(path: str, stamp: float):  # noqa: ANN201 - (torch model, record); `stamp` = the weights' mtime
    return load_model(path)


@st.cache_resource(max_entries=3, show_spinner=False)
def dataset(source: str):  # noqa: ANN201 - core.data.FERData (FER2013 is cached on disk, synthetic is generated)
    return gallery.gallery_data(source)


@st.cache_data(max_entries=16, show_spinner=False)
def photo(data: bytes, name: str, onnx_path: str, stamp: float):  # noqa: ANN201 - core.inference.photo.PhotoResult
    return cam.photo_faces(data, name, onnx_path)


@st.cache_data(max_entries=64, show_spinner=False)
def occlusion(crop_bytes: bytes, onnx_path: str, stamp: float):  # noqa: ANN201 - (heat map, class index)
    import numpy as np

    return occlusion_map(np.frombuffer(crop_bytes, np.uint8).reshape(48, 48), onnx_path)


# --- model ------------------------------------------------------------------------------------------------------
infos = inside.openable(list_runs(runs_dir()))
if not infos:
    st.info("No checkpoint with weights yet. Train one on the **Train** page, or put the shipped ones in "
            "`checkpoints/`.")
    st.stop()
by_path = {str(i.path): i for i in infos}
handed_model = st.session_state.pop(inside.MODEL_KEY, None)  # Predict's one-click hand-off
if handed_model in by_path:
    st.session_state["inside_model_pick"] = handed_model
    st.session_state["inside_source"] = "predict"
if st.session_state.get("inside_model_pick") not in by_path:  # first visit, or the picked run was deleted
    st.session_state["inside_model_pick"] = str((runviews.best_model(infos) or infos[0]).path)
run_path = st.selectbox("Model", list(by_path), key="inside_model_pick",
                        format_func=lambda p: runviews.model_label(by_path[p]))
info = by_path[run_path]
onnx_file = info.path / ONNX
try:
    with st.spinner("Loading the model..."):
        model, record = model_for(run_path, mtime(info.path / WEIGHTS))
except ValueError as exc:  # weights that do not fit the record, a damaged file...
    st.error(f"This checkpoint cannot be opened: {exc}. Pick another model.")
    st.stop()

# --- face -------------------------------------------------------------------------------------------------------
sources = {"dataset": "Dataset image", "sample": "Sample photo", "upload": "Upload a photo"}
if inside.FACE_KEY in st.session_state:
    sources = {"predict": "Face from Predict", **sources}
if st.session_state.get("inside_source") not in sources:
    st.session_state["inside_source"] = next(iter(sources))
source = st.radio("Face", list(sources), format_func=sources.get, horizontal=True, key="inside_source")
crop, true_label, photo_result, face_index = None, None, None, 0
try:
    if source == "predict":
        crop = inside.handed_face(st.session_state[inside.FACE_KEY])
        photo_result, face_index = st.session_state.get(inside.PHOTO_KEY) or (None, 0)
    elif source == "dataset":
        data = dataset(gallery.gallery_source(st.session_state.get("data_source"), record))
        if data.synthetic:
            st.info("FER2013 was not found, so the faces come from the built-in **synthetic** set (cartoon faces). "
                    "Choose FER2013 on the **Data** page for real ones.")
        c1, c2 = st.columns([1, 2])
        split = c1.selectbox("Split", list(data.splits), index=list(data.splits).index(data.val_split),
                             key="inside_split", format_func=lambda s: SPLIT_TITLES.get(s, s))
        n = len(data.splits[split])
        index = c2.number_input(f"Image (0-{n - 1})", 0, max(0, n - 1), 0, key="inside_index")
        crop, true_label = inside.dataset_face(data, split, int(index))
    else:
        if source == "sample":
            name, raw = f"sample: {inside.SAMPLE_PHOTO.name}", inside.SAMPLE_PHOTO.read_bytes()
        else:
            up = st.file_uploader("Photo", type=["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"],
                                  key="inside_upload")
            if up is None:
                st.info("Upload a photo with a face.")
                st.stop()
            name, raw = up.name, up.getvalue()
        if not info.has_onnx:
            raise ValueError(f"{info.name} has no usable ONNX export, which face detection uses; pick another model")
        photo_result = photo(raw, name, str(onnx_file), mtime(onnx_file))
        if len(photo_result.faces) > 1:
            face_index = st.selectbox("Face in the photo", range(len(photo_result.faces)), key="inside_face_pick",
                                      format_func=lambda i: f"face {i + 1}")
        crop = photo_result.faces[face_index].crop
except ValueError as exc:
    st.error(md_escape(exc))
    st.stop()
if true_label is None and photo_result is not None:  # a file name like 'anna__happy__1.jpg' carries its class
    true_label = inside.label_index(photo_result.name)

# --- the answer, Grad-CAM and occlusion -------------------------------------------------------------------------
level = st.session_state.get("inside_level", "layers")
with st.spinner("Running the face through the model..."):
    rows = featuremaps.feature_maps(model, crop, level)
probs = featuremaps.probabilities(rows)
top = int(probs.argmax())
m1, m2, m3 = st.columns(3)
m1.metric("Prediction", CLASSES[top], f"{probs[top]:.0%} probability", delta_color="off", delta_arrow="off")
m2.metric("True class", CLASSES[true_label] if true_label is not None else "unknown",
          help="from the dataset, or from the photo's file name (e.g. anna__happy__1.jpg)")
m3.metric("Parameters", f"{sum(r.params for r in rows):,}", help="the sum of the rows below")

st.subheader("Where it looks")
c1, c2 = st.columns(2)
target = c1.selectbox("Explain class", ["predicted", *CLASSES], key="inside_cam_class",
                      format_func=lambda c: f"predicted ({CLASSES[top]})" if c == "predicted" else c)
layers = cam.cam_layers(rows)
layer = c2.selectbox("Grad-CAM layer", layers, index=layers.index(cam.default_cam_layer(rows)),
                     key=f"inside_cam_layer_{info.name}_{level}", help="the deepest conv map is the usual choice")
try:
    chosen = cam.grad_cam(model, crop, layer, None if target == "predicted" else target)
    on_top = chosen if chosen.target == top else cam.grad_cam(model, crop, layer, None)
except ValueError as exc:
    st.error(md_escape(exc))
    st.stop()
cls = CLASSES[chosen.target]
r, c = cam.peak(chosen.heat)
cols = st.columns(4 if photo_result is not None else 3)
cols[0].image(upscale(crop, 4), caption="the 48x48 crop the model sees", width=192)
cols[1].image(overlay_heatmap(crop, chosen.heat, 192), caption=f"Grad-CAM for '{cls}'", width=192)
st.caption(f"Grad-CAM for '{cls}' (probability {chosen.probs[chosen.target]:.0%}) at {layer}, a "
           f"{chosen.layer_shape[0]}x{chosen.layer_shape[1]} map upsampled to the crop: strongest at row {r}, "
           f"column {c}.", help="Captum's LayerGradCam: the layer's activations weighted by the class score's gradients")
if info.has_onnx:
    occ, _ = occlusion(crop.tobytes(), str(onnx_file), mtime(onnx_file))
    cols[2].image(overlay_heatmap(crop, occ, 192), width=192,
                  caption=f"occlusion: hiding the bright areas lowers '{CLASSES[top]}' most")
    rho = cam.agreement(on_top.heat, occ)
    st.metric("Grad-CAM vs occlusion (predicted class), correlation", "n/a" if math.isnan(rho) else f"{rho:.2f}",
              help="Pearson correlation of the two 48x48 maps")
    st.caption(f"The two maps {cam.agreement_words(rho)}. Grad-CAM reads the gradients inside the network; occlusion "
               "only watches the answer change as patches are hidden, so it also catches what Grad-CAM's coarse map "
               "blurs.")
else:
    cols[2].warning("No usable ONNX export, so no occlusion map for this run.")
if photo_result is not None:
    cols[3].image(cam.overlay_on_photo(photo_result, face_index, chosen.heat), caption=f"Grad-CAM for '{cls}' on the photo")

# --- layer by layer ---------------------------------------------------------------------------------------------
st.subheader("Layer by layer")
c1, c2 = st.columns(2)
c1.radio("Rows", featuremaps.LEVELS, horizontal=True, key="inside_level",
         format_func=lambda v: {"layers": "every layer", "blocks": "one per block"}[v])
shown = c2.slider("Channels per row (most active first)", 1, 64, 16, key="inside_channels")
grid, caption = featuremaps.first_filters(model)
with st.container(border=True):
    st.markdown("**First layer's filters**")
    st.image(grid, caption=caption, width="content")  # its own width, never wider than the screen (a phone's)
st.caption("Blue rows are depthwise convolutions (each channel filtered alone, `groups == channels`); orange rows are "
           "pointwise 1x1 convolutions (channels mixed, no spatial filtering). Maps share one colour scale per row: "
           "brighter is more active.")
for row in rows:
    with st.container(border=True):
        left, right = st.columns([1, 3])
        left.markdown(f"**{row.name}** · `{row.kind}`")
        left.badge(row.role, color=ROLE_COLOURS.get(row.role, "gray"))
        left.caption(f"output {' x '.join(map(str, row.shape))} · {row.params:,} parameters")
        right.image(featuremaps.channel_grid(row, shown))
        right.caption(f"{min(shown, len(row.order))} of {len(row.order)} channels. {row.caption}")

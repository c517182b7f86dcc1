"""Data page: which dataset is in use (built-in synthetic set or FER2013 on disk), split sizes, class balance,
a gallery of samples per class, and the data's known quirks."""

import altair as alt
import streamlit as st

from components.widgets import KEEP
from core.data import SPLIT_TITLES, find_fer, load_data
from core.data.synthetic import CLASS_WEIGHTS
from core.util.classes import CLASSES
from core.util.fsutil import mtime
from core.views.dataviews import class_balance, gallery

SYNTHETIC_SIZE = 3000  # the Train page's default for quick demos


@st.cache_resource(show_spinner=False, max_entries=4)
def load(source: str, stamp: float, synthetic_size: int):  # noqa: ANN201 - core.data.FERData
    # `stamp` (the path's mtime) keys the cache so a replaced file is read again; core caches decoded arrays on disk.
    return load_data(source, synthetic_size=synthetic_size)


def choose_source() -> str | None:
    """'synthetic' or the FER2013 path typed (or found), None while there is none."""
    # both widgets KEEP their values, so switching to synthetic and back keeps the typed FER2013 path
    choice = st.radio("Dataset", ["synthetic", "fer2013"], horizontal=True, key="data_choice", **KEEP,
                      format_func=lambda o: {"synthetic": "Built-in synthetic faces",
                                             "fer2013": "FER2013 from disk"}[o])
    if choice == "synthetic":
        st.info("**Synthetic data.** Procedurally drawn 48x48 cartoon faces, one prototype expression per class with "
                "random pose, lighting, occluders and noise. It exists so that everything works offline on a fresh "
                "machine; accuracies on it say nothing about real faces.")
        return "synthetic"
    detected = find_fer()
    source = st.text_input("Path to FER2013", value=str(detected) if detected else "", key="data_path", **KEEP,
                           placeholder="data/fer2013, .../fer2013.csv, .../train.csv or a folder holding train/<class>/",
                           help="fer2013.csv, icml_face_data.csv, Kaggle train.csv (+test.csv), course train.csv "
                                "(label,feature), image folders train/<class>/*.jpg (+test/), or torchvision's "
                                "ROOT/fer2013/ layout.").strip()
    if detected:
        st.caption(f"Found FER2013 at `{detected}` (`$FER_DATA`, else the project's `data/` folder).")
    if not source:
        st.info("Enter the path to a FER2013 copy. Nothing found at `$FER_DATA` or in the project's `data/` folder.")
        return None
    return source


def splits(data) -> None:  # noqa: ANN001 - core.data.FERData
    st.subheader("Splits")
    cols = st.columns(len(data.splits) + 1)
    cols[0].metric("Source", "synthetic" if data.synthetic else "FER2013", help=data.source, border=True)
    for col, (name, split) in zip(cols[1:], data.splits.items()):
        col.metric(f"{name} images", f"{len(split):,}", help=SPLIT_TITLES.get(name, name), border=True)
    st.caption(f"Format: {data.kind}. Source: {data.source}. Validation during training uses the "
               f"**{data.val_split}** split.")
    for warning in data.warnings:
        st.warning(f"Data quirk: {warning}")


def balance(data) -> None:  # noqa: ANN001 - core.data.FERData
    st.subheader("Class balance")
    chart = alt.Chart(class_balance(data)).mark_bar().encode(
        y=alt.Y("class:N", sort=list(CLASSES), title=None),
        yOffset=alt.YOffset("split:N"),
        x=alt.X("share:Q", axis=alt.Axis(format="%"), title="share of the split"),
        color=alt.Color("split:N", legend=alt.Legend(orient="bottom")),
        tooltip=["split", "class", alt.Tooltip("count:Q", format=","), alt.Tooltip("share:Q", format=".1%")],
    ).properties(height=420)
    st.altair_chart(chart, width="stretch")
    st.caption(f"FER2013 is imbalanced (disgust has about 1.5% of the images). The synthetic set keeps disgust rare "
               f"on purpose ({CLASS_WEIGHTS[1]:.0%} of its faces, enough to learn it from), so imbalance shows there too.")


def samples(data) -> None:  # noqa: ANN001 - core.data.FERData
    st.subheader("Samples per class")
    split_name = "train" if "train" in data.splits else next(iter(data.splits))
    faces = gallery(data.splits[split_name], per_class=7, seed=0, factor=2)
    st.caption(f"Random {split_name} images, exactly as the models see them: 48x48 grayscale (shown at 2x).")
    for cls in CLASSES:
        label_col, images_col = st.columns([1, 6], vertical_alignment="center")
        label_col.markdown(f"**{cls}**")
        if faces[cls]:
            images_col.image(faces[cls], width=64)
        else:
            images_col.caption("no images of this class")


def main() -> None:
    st.title("Data")
    st.caption("Training and evaluation data. The built-in synthetic set works offline at once; point the app at "
               "FER2013 on disk (any released format) for real results.")
    source = choose_source()
    if source is None:
        return
    try:
        with st.spinner("Loading the dataset (the first read of FER2013 takes a few seconds; later ones use a cache)..."):
            data = load(source, mtime(source) if source != "synthetic" else 0.0, SYNTHETIC_SIZE)
    except (ValueError, OSError) as exc:  # OSError: unreadable file or folder (permissions, I/O)
        st.error(f"Cannot use this data: {exc}")
        return
    st.session_state["data_source"] = source  # the Train page reads this: the dataset chosen here is its default
    splits(data)
    balance_col, gallery_col = st.columns([2, 3], gap="large")
    with balance_col:
        balance(data)
    with gallery_col:
        samples(data)


if __name__ == "__main__":
    main()

"""Architectures page: pick a family and its knobs; parameters, MACs, size, layer table, and where the choice sits
on every family's parameters-vs-width curve."""
import pandas as pd
import streamlit as st

from core.models import archs
from core.models.summary import summarize
from core.views import archviews, charts


@st.cache_data(show_spinner=False)
def width_grid() -> pd.DataFrame:
    return archviews.params_vs_width()


def choose() -> tuple[str, dict[str, float]]:
    """The family and its knobs' values, from the widgets."""
    names = archs.list_archs()
    arch = st.selectbox("Family", names, index=names.index("mobilenet"), format_func=lambda n: archs.get_family(n).title,
                        key="arch_family", persist_state="session")
    family = archs.get_family(arch)
    st.caption(family.description)
    knobs = {}
    for knob in family.knobs:
        # the width is shared; other knobs get a key per family, so each family starts at its own default (dropout
        # 0.5 for the plain CNN, 0.1 for MobileNet); three decimals, so the slider shows the same width as the text
        # below (2.125, not 2.13)
        knobs[knob.name] = st.slider(knob.name.capitalize(), min_value=float(knob.low), max_value=float(knob.high),
                                     value=float(knob.default), step=float(knob.step), help=knob.help, format="%.3f",
                                     key="arch_width" if knob.name == "width" else f"arch_{arch}_{knob.name}",
                                     persist_state="session")
    return arch, knobs


def cost_cards(arch: str, knobs: dict[str, float], s) -> None:  # noqa: ANN001 - core.models.summary.Summary
    # two cards a row: a 13,349,127-parameter count fits whole even on a laptop screen
    c1, c2 = st.columns(2)
    c3, _ = st.columns(2)
    ref = archs.get_family(arch).reference
    c1.metric("Parameters", f"{s.params:,}", border=True,
              help=f"the study's model: {ref['params']:,}" if ref else "all learned weights and biases")
    c2.metric("MACs per image", f"{s.macs / 1e6:,.2f} M", border=True,
              help=f"{s.macs:,} multiply-accumulates for one 48x48 face")
    c3.metric("fp32 size", f"{s.size_bytes / 2**20:,.2f} MiB", border=True,
              help=f"parameters + {s.buffers:,} BatchNorm statistics, 4 bytes each")
    if ref and knobs.get("width") == 1.0:
        st.success(f"Width 1.0 is the study's {arch}: {ref['params']:,} parameters, "
                   f"{ref['public']:.3f} public / {ref['private']:.3f} private accuracy on FER2013.")


def width_curve(arch: str, knobs: dict[str, float], params: int) -> None:
    st.subheader("Parameters vs width")
    with st.spinner("Counting parameters for every family and width..."):
        grid = width_grid()
    current = pd.DataFrame([{"family": archs.get_family(arch).title, "width": knobs["width"], "params": params,
                             "label": f"your choice ({params:,})"}])
    st.altair_chart(charts.params_width_chart(grid, current), width="stretch")
    st.caption("Solid lines: depthwise-separable families; dashed: standard convolutions. Red diamonds: the study's "
               "two models at width 1.0. Parameters grow roughly with width squared, so the curves are near-parallel "
               "on a log scale; the vertical gap between them is the architecture's price.")


def depthwise_and_layers(arch: str, knobs: dict[str, float], s) -> None:  # noqa: ANN001 - a Summary
    st.subheader("Why depthwise-separable convolutions save parameters")
    st.markdown(
        "A standard k x k convolution from C_in to C_out channels learns **k·k·C_in·C_out** weights: every output "
        "channel looks at every input channel at every kernel position. A depthwise-separable block splits that into "
        "a depthwise k x k convolution (**k·k·C_in**: one small spatial filter per channel) and a pointwise 1x1 "
        "convolution (**C_in·C_out**: all the channel mixing). The ratio is 1/C_out + 1/k², so a 3x3 block costs "
        "8-9 times fewer weights, and nearly all of what remains sits in the 1x1 convolutions, which do the heavy "
        "lifting at a fraction of the price.")
    if explained := archviews.depthwise_explainer(arch, **knobs):
        st.info(explained)
    st.subheader("Layers")
    st.caption(f"{len(s.layers)} layers with parameters or activations; MACs per 48x48 image.")
    st.dataframe(s.layers, hide_index=True, height=360, key="arch_layers", column_config={
        "params": st.column_config.NumberColumn("params", format="localized"),
        "macs": st.column_config.NumberColumn("MACs", format="localized"),
    })


def main() -> None:
    st.title("Architectures")
    st.caption("How many parameters does an expression classifier need? Move the sliders and watch the cost "
               "change. Counts are exact, computed from shapes alone (no weights are allocated).")
    pick, numbers = st.columns([1, 2], gap="large")
    with pick:
        arch, knobs = choose()
    try:
        s = summarize(arch, **knobs)
    except ValueError as exc:
        st.error(str(exc))
        return
    with numbers:
        cost_cards(arch, knobs, s)
    width_curve(arch, knobs, s.params)
    depthwise_and_layers(arch, knobs, s)


if __name__ == "__main__":
    main()

"""FER Compact-CNN Explorer: the Streamlit router. Each page lives in pages/ and calls into core."""
import streamlit as st

from components import identity

# Material Symbols icons: Streamlit bundles their font, so the menu draws offline; emoji would need a system emoji
# font, and Debian's Chromium without fonts-noto-color-emoji showed them as empty boxes.
st.set_page_config(page_title="FER Compact-CNN Explorer", page_icon=":material/sentiment_satisfied:", layout="wide")

ARCHITECTURES = st.Page("pages/1_Architectures.py", title="Architectures", icon=":material/account_tree:", url_path="architectures")


def home() -> None:
    # Streamlit serves the default page at "/" and gives it no URL of its own, so a link to /architectures would
    # say "Page not found". Instead, "/" is this hidden page, which opens Architectures under its own URL.
    st.switch_page(ARCHITECTURES)


PAGES = [
    st.Page(home, title="Home", default=True, visibility="hidden"),
    ARCHITECTURES,
    st.Page("pages/2_Data.py", title="Data", icon=":material/dataset:", url_path="data"),
    st.Page("pages/3_Train.py", title="Train", icon=":material/fitness_center:", url_path="train"),
    st.Page("pages/4_Compare.py", title="Compare", icon=":material/bar_chart:", url_path="compare"),
    st.Page("pages/5_Predict.py", title="Predict", icon=":material/sentiment_satisfied:", url_path="predict"),
    st.Page("pages/6_Inside.py", title="Inside", icon=":material/biotech:", url_path="inside"),
    st.Page("pages/7_Compress.py", title="Compress", icon=":material/compress:", url_path="compress"),
    st.Page("pages/8_Live.py", title="Live", icon=":material/videocam:", url_path="live"),
]

page = st.navigation(PAGES)
st.sidebar.markdown("**FER Compact-CNN Explorer**")
st.sidebar.caption("How small can a facial-expression classifier get, and what does it cost in accuracy?")
# Every page first: the browser's identity (a cookie) is set on whichever page a visitor opens first, and an
# ?operator= secret leaves the address bar at once.
identity.current_user()
if identity.operator():
    st.sidebar.caption(":material/admin_panel_settings: Operator: you may stop, resume and delete every run.")
page.run()

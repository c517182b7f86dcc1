"""FER Compact-CNN Explorer: the Streamlit router. Each page lives in pages/ and calls into core.

Streamlit runs this script only when a browser session connects, so a scheduler started by the script alone would
leave the training queue standing still after a restart until someone opened a page. Instead `streamlit run
streamlit_app.py` finds the st.App at the bottom (Streamlit's app discovery) and serves it, importing this file
once as a module: the App's lifespan hook starts the queue's scheduler with the server process, before any session.
Each session then runs this same file as __main__, which is the router."""
from contextlib import asynccontextmanager

import streamlit as st

from components import identity


@asynccontextmanager
async def start_queue(app):  # noqa: ANN001, ANN201 - Streamlit's App and its lifespan context manager
    from core.service import jobs

    jobs.ensure_scheduler()  # once per server process: waiting runs start as slots free, with no page open
    yield


def router() -> None:
    # Material Symbols icons: Streamlit bundles their font, so the menu draws offline; emoji would need a system emoji
    # font, and Debian's Chromium without fonts-noto-color-emoji showed them as empty boxes.
    st.set_page_config(page_title="FER Compact-CNN Explorer", page_icon=":material/sentiment_satisfied:", layout="wide")
    architectures = st.Page("pages/1_Architectures.py", title="Architectures", icon=":material/account_tree:",
                            url_path="architectures")

    def home() -> None:
        # Streamlit serves the default page at "/" and gives it no URL of its own, so a link to /architectures would
        # say "Page not found". Instead, "/" is this hidden page, which opens Architectures under its own URL.
        st.switch_page(architectures)

    pages = [
        st.Page(home, title="Home", default=True, visibility="hidden"),
        architectures,
        st.Page("pages/2_Data.py", title="Data", icon=":material/dataset:", url_path="data"),
        st.Page("pages/3_Train.py", title="Train", icon=":material/fitness_center:", url_path="train"),
        st.Page("pages/4_Compare.py", title="Compare", icon=":material/bar_chart:", url_path="compare"),
        st.Page("pages/5_Predict.py", title="Predict", icon=":material/sentiment_satisfied:", url_path="predict"),
        st.Page("pages/6_Inside.py", title="Inside", icon=":material/biotech:", url_path="inside"),
        st.Page("pages/7_Compress.py", title="Compress", icon=":material/compress:", url_path="compress"),
        st.Page("pages/8_Live.py", title="Live", icon=":material/videocam:", url_path="live"),
    ]
    page = st.navigation(pages)
    st.sidebar.markdown("**FER Compact-CNN Explorer**")
    st.sidebar.caption("How small can a facial-expression classifier get, and what does it cost in accuracy?")
    from core.service import jobs

    # Also from the script: the server started some other way (AppTest, an ASGI host without the lifespan) gets its
    # scheduler with the first session; where the lifespan started it, this finds it running.
    jobs.ensure_scheduler()
    # Every page first: the browser's identity (a cookie) is set on whichever page a visitor opens first, and an
    # ?operator= secret leaves the address bar at once.
    identity.current_user()
    if identity.operator():
        st.sidebar.caption(":material/admin_panel_settings: Operator: you may stop, resume and delete every run.")
    page.run()


if __name__ == "__main__":  # a session's run of the script
    router()
else:  # imported by `streamlit run` to serve the app: the server process itself
    from streamlit.runtime.pages_manager import PagesManager

    # Streamlit treats a folder named pages/ beside the script as its older multipage mode until a session's run
    # calls st.navigation. So the first session after a server start looked its URL up among pages/'s file names, and
    # a shared deep link such as /predict opened with a "Page not found" dialog. The router is st.navigation's alone:
    # that mode is off before any session. (A private flag; tests/test_browser.py checks the first deep link.)
    PagesManager.uses_pages_directory = False
    app = st.App(__file__, lifespan=start_queue)

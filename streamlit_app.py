"""FER Compact-CNN Explorer: the Streamlit router. Each page lives in pages/ and calls into core."""
import streamlit as st

st.set_page_config(page_title="FER Compact-CNN Explorer", page_icon=":material/face:", layout="wide")

PAGES = [
    # the default page is served at "/" (Streamlit ignores a url_path on it, and /architectures would not exist)
    st.Page("pages/1_Architectures.py", title="Architectures", icon=":material/account_tree:", default=True),
    st.Page("pages/2_Data.py", title="Data", icon=":material/photo_library:", url_path="data"),
    st.Page("pages/3_Train.py", title="Train", icon=":material/model_training:", url_path="train"),
    st.Page("pages/4_Compare.py", title="Compare", icon=":material/scatter_plot:", url_path="compare"),
    st.Page("pages/5_Predict.py", title="Predict", icon=":material/sentiment_satisfied:", url_path="predict"),
    st.Page("pages/6_Inside.py", title="Inside", icon=":material/visibility:", url_path="inside"),
    st.Page("pages/7_Compress.py", title="Compress", icon=":material/compress:", url_path="compress"),
]

page = st.navigation(PAGES)
st.sidebar.markdown("**FER Compact-CNN Explorer**")
st.sidebar.caption("How small can a facial-expression classifier get, and what does it cost in accuracy?")
page.run()

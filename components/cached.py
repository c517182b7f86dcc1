"""Streamlit caches shared by several pages (one cache, so a face explained on Predict is not recomputed on Inside)."""
from __future__ import annotations

import numpy as np
import streamlit as st

from core.inference.photo import occlusion_map


@st.cache_data(max_entries=256, show_spinner=False)
def occlusion(crop_bytes: bytes, model_path: str, stamp: float):  # noqa: ANN201 - (heat map, class index)
    """The occlusion map of a 48x48 crop. Bytes in, so the cache key is cheap to hash; `stamp` (the ONNX file's
    mtime) invalidates it on re-export."""
    return occlusion_map(np.frombuffer(crop_bytes, np.uint8).reshape(48, 48), model_path)

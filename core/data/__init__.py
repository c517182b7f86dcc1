"""Data: FER2013 in every format users have and the built-in synthetic set, behind one entry point (loader), with
the types (dataset), the readers (csv_reader, image_folder), the disk cache (data_cache), the synthetic set
(synthetic) and augmentation (augment).

`from core.data import load_data, FERData, ...` reads the loader's public names. Imports core.models and core.util.
"""
from core.data.loader import *  # noqa: F403 - the package's public face is the loader's __all__
from core.data.loader import __all__  # noqa: F401

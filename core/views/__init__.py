"""Views: the tables, charts and texts the pages show, tested without Streamlit (archviews, runviews, dataviews,
photoviews, charts, text), the Inside page's helpers (inside) and the study document (study).

The top layer of core: pages -> views -> service/compression/explain/training/inference -> data/models -> util.
"""

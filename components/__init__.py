"""Streamlit custom components of the app (each with its frontend source and committed build)."""

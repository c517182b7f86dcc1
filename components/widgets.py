"""Widget settings shared by the pages."""

# Widgets keep their values across page switches (persist_state) and browser reloads (bound to the URL).
KEEP = {"persist_state": "session", "bind": "query-params"}

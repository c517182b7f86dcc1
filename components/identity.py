"""This browser's identity on a shared server (see core.service.owners), kept across reloads and tabs.

Streamlit's session ends with every reload, so the token lives in a cookie: read from the request through
st.context.cookies, written by a one-line script. Where a browser blocks cookies, the token rides in the URL as
`?user=` instead (a reload keeps it); it leaves the URL once the cookie is back, so a shared link never carries it.
A teacher opens the app once with `?operator=SECRET` ($FER_OPERATOR_TOKEN); that too is kept in a cookie and taken
out of the address bar at once.
"""
from __future__ import annotations

import json

import streamlit as st

from core.service import owners

USER_COOKIE = "fer_user"
OPERATOR_COOKIE = "fer_operator"
MAX_AGE_S = 365 * 24 * 3600


def _set_cookie(name: str, value: str) -> None:
    # st.html runs the script in the page itself (not a sandboxed frame), so the cookie is the app's own;
    # SameSite=Strict keeps other sites from sending it. The sidebar holds it, out of every page's layout.
    js_value = json.dumps(f"{name}={value}; path=/; max-age={MAX_AGE_S}; SameSite=Strict")
    st.sidebar.html(f"<script>document.cookie = {js_value};</script>", unsafe_allow_javascript=True)


def current_user() -> str:
    """This browser's token: this session's, else its cookie's, else the URL's `?user=`, else a new one."""
    user = st.session_state.get("fer_user")
    if not owners.valid_token(user):
        found = (st.context.cookies.get(USER_COOKIE), st.query_params.get("user"))
        user = next((t for t in found if owners.valid_token(t)), None) or owners.new_token()
        st.session_state["fer_user"] = user
    if st.context.cookies.get(USER_COOKIE) == user:
        if "user" in st.query_params:
            del st.query_params["user"]
    else:
        _set_cookie(USER_COOKIE, user)
        st.query_params["user"] = user
    return user


def _checked_operator(candidate: str | None) -> bool:
    try:
        return owners.is_operator(candidate)
    except ValueError as exc:  # a mistyped $FER_OPERATOR_TOKEN: nobody is operator until it is fixed
        st.warning(f"This server's settings need fixing by its administrator: {exc}")
        return False


def operator() -> bool:
    """Whether this browser holds the operator's token (from `?operator=` once, then from its cookie)."""
    if "operator" in st.query_params:
        candidate = st.query_params.get("operator")
        del st.query_params["operator"]  # a secret: out of the address bar, the history and shared links
        st.session_state["fer_operator"] = _checked_operator(candidate)
        if st.session_state["fer_operator"]:
            _set_cookie(OPERATOR_COOKIE, candidate)
        else:  # said for the whole session: the first page may hand over to another at once (Home does)
            st.session_state["fer_operator_refused"] = True
    if st.session_state.get("fer_operator_refused"):
        st.sidebar.warning("That operator link is not valid on this server: you act on your own runs only.")
    if st.session_state.get("fer_operator") is None:
        st.session_state["fer_operator"] = _checked_operator(st.context.cookies.get(OPERATOR_COOKIE))
    return bool(st.session_state["fer_operator"])

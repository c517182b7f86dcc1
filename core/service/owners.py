"""Who may act on a run: each run started from the app records its owner, a per-browser identity token.

On a shared classroom server any browser sees every run, but only the browser that started a run may Stop, Cancel,
Resume or Delete it; an operator (a teacher holding $FER_OPERATOR_TOKEN) may act on all of them. Runs with no
owner on record (started from the CLI, by a sweep, or before owners were recorded) belong to the operator when one
is configured, and to everyone otherwise, so a single user's local app behaves as it always did.

The token is no password: it only keeps one student's clicks off another's runs. The app keeps it in a cookie, so
it survives reloads and new tabs, and falls back to a `?user=` URL parameter where cookies are blocked.
"""
from __future__ import annotations

import hmac
import json
import os
import re
import uuid
from pathlib import Path

from core.util import settings
from core.util.fsutil import atomic_write_json

OWNER_FILE = "owner.json"
# uuid4().hex, or any id an operator hands out: short, URL- and cookie-safe, so it never needs escaping
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{8,64}")


def new_token() -> str:
    return uuid.uuid4().hex


def valid_token(token: object) -> bool:
    return isinstance(token, str) and TOKEN_RE.fullmatch(token) is not None


def check_token(token: object) -> str:
    if not valid_token(token):
        raise ValueError(f"user token {token!r} is not valid: 8 to 64 letters, digits, '-' or '_'")
    return token  # type: ignore[return-value]


def is_operator(candidate: str | None) -> bool:
    """Whether `candidate` is this server's operator token (compared in constant time: it is a secret)."""
    token = settings.operator_token()
    return bool(token and candidate and hmac.compare_digest(token.encode(), str(candidate).encode()))


def owner_entry(user: str) -> dict[str, str]:
    """What OWNER_FILE holds: written once, by the queue as it accepts the run (core.service.jobs.start_run's
    `owner`), and never changed by the trainer. ValueError for a token that is not one."""
    return {"user": check_token(user)}


def record_owner(run_dir: str | os.PathLike, user: str) -> None:
    """Give an existing run folder an owner (an operator's repair; the app records owners through start_run)."""
    atomic_write_json(Path(run_dir) / OWNER_FILE, owner_entry(user))


def owner_of(run_dir: str | os.PathLike) -> str | None:
    """The run's owner, or None when none is on record (or the file is unreadable: then it is nobody's)."""
    try:
        user = json.loads((Path(run_dir) / OWNER_FILE).read_text()).get("user")
    except (OSError, ValueError, AttributeError):
        return None
    return user if valid_token(user) else None


def may_control(run_dir: str | os.PathLike, user: str | None, operator: bool = False) -> bool:
    """Whether `user` may Stop, Cancel, Resume or Delete the run (see the module's docstring)."""
    return may_act(owner_of(run_dir), user, operator)


def may_act(owner: str | None, user: str | None, operator: bool = False) -> bool:
    """The rule for any job (a run, a queued compression or sweep) whose owner is `owner` (None: none on record)."""
    if operator:
        return True
    if owner is None:
        try:
            return settings.operator_token() is None
        except ValueError:  # a mistyped token still says this server has an operator: unowned runs are theirs
            return False
    return user is not None and hmac.compare_digest(owner, user)


def check_control(run_dir: str | os.PathLike, user: str | None, operator: bool = False) -> None:
    """ValueError unless `user` may act on the run: a stale button pressed after the page changed is refused too."""
    if not may_control(run_dir, user, operator):
        raise ValueError(f"{Path(run_dir).name} was started by another user: only they "
                         "(or the server's operator) may stop, resume or delete it")

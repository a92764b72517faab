"""One held mail's release, deletion, or its sender allowed or blocked with it, said in words: the one wording of the
portal's quarantine, the end user's (``/q``) and the tracking center.

A leaf module: it imports none of the audience packages. The caller checks who may do what, audits and commits.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from tenants import quarantine as q
from tenants.platform.config import Config

#: The actions :func:`perform` carries out.
ACTIONS = ("release", "delete", "allow_release", "block_delete")


def perform(session: Session, cfg: Config, message_id: str, action: str, *, actor: str, admin: bool = False,
            rcpts: Sequence[str] | None = None, user_id: int | None = None) -> str:
    """Carry out one of :data:`ACTIONS` on a held mail (for ``rcpts`` only, when given) in the caller's session; what
    it did, in words. ``admin``: the actor administers the tenant (a virus may be released). The sender goes on the
    list of the user ``user_id`` ("your list"), without one on the tenant's."""
    if action == "release":
        return f"Message {q.release(session, cfg, message_id, actor=actor, rcpts=rcpts, actor_is_admin=admin)}."
    if action == "delete":
        return f"Message deleted for {', '.join(q.delete(session, message_id, actor=actor, rcpts=rcpts, cfg=cfg))}."
    whose = "the tenant's" if user_id is None else "your"
    if action == "allow_release":
        entry, result = q.allow_sender_and_release(session, cfg, message_id, actor=actor, rcpts=rcpts,
                                                   user_id=user_id, actor_is_admin=admin)
        return f"{entry.value} is on {whose} allow list; message {result}."
    if action == "block_delete":
        entry, gone = q.block_sender_and_delete(session, cfg, message_id, actor=actor, rcpts=rcpts, user_id=user_id)
        return f"{entry.value} is on {whose} block list; message deleted for {', '.join(gone)}."
    raise ValueError(f"not an action on held mail: {action!r}")

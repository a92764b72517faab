"""Raw message storage behind a small interface, so an object store can replace the database table later."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sqlalchemy import delete as sa_delete
from sqlalchemy.orm import Session

from tenants.models import Blob
from tenants.scope import load


class BlobStore(Protocol):
    def put(self, session: Session, blob_id: str, tenant_id: int, data: bytes) -> None: ...

    def get(self, session: Session, blob_id: str) -> bytes: ...

    def delete(self, session: Session, blob_ids: Sequence[str]) -> int: ...


class SqlBlobStore:
    """Blobs as rows of the ``blob`` table, written in the caller's transaction (so commit covers them)."""

    def put(self, session: Session, blob_id: str, tenant_id: int, data: bytes) -> None:
        session.add(Blob(id=blob_id, tenant_id=tenant_id, data=data))

    def get(self, session: Session, blob_id: str) -> bytes:
        return load(session, Blob, blob_id).data

    def delete(self, session: Session, blob_ids: Sequence[str]) -> int:
        """Remove blobs (of the current scope) in the caller's transaction; returns how many went."""
        if not blob_ids:
            return 0
        done = session.execute(sa_delete(Blob).where(Blob.id.in_(list(blob_ids)))
                               .execution_options(synchronize_session=False))
        return int(done.rowcount)  # type: ignore[attr-defined]


blob_store: BlobStore = SqlBlobStore()

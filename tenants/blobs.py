"""Raw message storage behind a small interface, so an object store can replace the database table later."""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.orm import Session

from tenants.models import Blob
from tenants.scope import load


class BlobStore(Protocol):
    def put(self, session: Session, blob_id: str, tenant_id: int, data: bytes) -> None: ...

    def get(self, session: Session, blob_id: str) -> bytes: ...


class SqlBlobStore:
    """Blobs as rows of the ``blob`` table, written in the caller's transaction (so commit covers them)."""

    def put(self, session: Session, blob_id: str, tenant_id: int, data: bytes) -> None:
        session.add(Blob(id=blob_id, tenant_id=tenant_id, data=data))

    def get(self, session: Session, blob_id: str) -> bytes:
        return load(session, Blob, blob_id).data


blob_store: BlobStore = SqlBlobStore()

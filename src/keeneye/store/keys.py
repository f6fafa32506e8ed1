"""API keys: only a key's SHA-256 is stored; the secret is shown once, at creation.

Each key has one :class:`~keeneye.domain.Role`; the serving layer decides what a role may do.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select, update

from keeneye.domain import Role
from keeneye.store.engine import Database, rowcount, utcnow
from keeneye.store.records import ApiKeyRecord
from keeneye.store.schema import ApiKeyRow


def _key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeyRepository(Database):
    """API key reads and writes of :class:`~keeneye.store.ResultsDB`."""

    def create_api_key(self, name: str, role: Role = Role.operator) -> tuple[int, str]:
        """A new key for ``name`` with ``role``; returns ``(id, secret)``. The secret is never stored."""
        secret = "ke_" + secrets.token_urlsafe(32)
        row = ApiKeyRow(
            name=name,
            prefix=secret[:10],
            key_hash=_key_hash(secret),
            created_at=utcnow(),
            revoked_at=None,
            role=Role(role).value,
        )
        with self.session() as s:
            s.add(row)
            s.flush()
            return row.id, secret

    def verify_api_key(self, secret: str) -> int | None:
        """The id of the active key with this secret, else ``None``."""
        key = self.find_api_key(secret)
        return key.id if key else None

    def find_api_key(self, secret: str) -> ApiKeyRecord | None:
        """The active key with this secret (its name and role), else ``None``."""
        stmt = select(ApiKeyRow).where(
            ApiKeyRow.key_hash == _key_hash(secret), ApiKeyRow.revoked_at.is_(None)
        )
        with self.session() as s:
            row = s.scalars(stmt).one_or_none()
            return _record(row) if row else None

    def list_api_keys(self) -> list[ApiKeyRecord]:
        with self.session() as s:
            return [_record(r) for r in s.scalars(select(ApiKeyRow).order_by(ApiKeyRow.id))]

    def revoke_api_key(self, key_id: int) -> bool:
        stmt = (
            update(ApiKeyRow)
            .where(ApiKeyRow.id == key_id, ApiKeyRow.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        with self.session() as s:
            return rowcount(s.execute(stmt)) == 1


def _record(row: ApiKeyRow) -> ApiKeyRecord:
    return ApiKeyRecord(row.id, row.name, row.prefix, row.created_at, row.revoked_at, Role(row.role))

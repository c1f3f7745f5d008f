"""The service's access: tokens with roles and the audit log."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import TYPE_CHECKING

from orchestra.records import AuditPage, NewToken, TokenInfo

if TYPE_CHECKING:
    from orchestra.access.tokens import TokenStore
    from orchestra.config import Settings
    from orchestra.service.backend import Backend


class Access:
    """Tokens and the audit log, for any front end."""

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.settings = settings
        self._backend = backend
        self._tokens: TokenStore | None = None
        self._lock = threading.Lock()

    @property
    def tokens(self) -> TokenStore:
        """The token store (with ``ORCHESTRA_API_TOKEN`` as the admin token ``bootstrap``)."""
        with self._lock:
            if self._tokens is None:
                from orchestra.access.tokens import TokenStore

                self._tokens = TokenStore(self._backend.db, self.settings.api_token)
            return self._tokens

    def create_token(self, name: str, *, role: str, expires_days: float | None = None) -> NewToken:
        """Make a token; its secret is shown in the answer only."""
        return self.tokens.create(name, role, expires_days)

    def list_tokens(self) -> list[TokenInfo]:
        """The tokens not revoked: names, roles, creation, last use, expiry; never a secret."""
        return self.tokens.list()

    def revoke_token(self, name: str) -> TokenInfo:
        """Revoke a token at once, on every server sharing the database."""
        return self.tokens.revoke(name)

    def audit_log(
        self,
        *,
        who: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
        cursor: str | None = None,
    ) -> AuditPage:
        """Audit entries newest first, filtered and paginated."""
        from orchestra.access import audit

        return audit.page(
            self._backend.db, who=who, action=action, since=since, limit=limit, offset=offset,
            cursor=cursor,
        )  # fmt: skip

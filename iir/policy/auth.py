"""Bearer-key authentication.

Keys are kept only as SHA-256 digests and compared with :func:`hmac.compare_digest` against every
configured key, so neither timing nor an early exit tells an attacker how close a guess was.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from iir.core.errors import ApiError

#: The key id of a request forwarded by another box of the fleet (``IIR_PEER_KEY``): that box
#: already authenticated, limited, scrubbed and admitted it (see ``docs/fleet.md``).
PEER = "fleet-peer"
#: The header that marks a peer hop; accepted only with the peer key, and the peer key only with it.
PEER_HEADER = "x-iir-peer"


def key_id(key: str) -> str:
    """A stable, non-reversible identifier for a key (for rate-limit buckets and job ownership)."""
    return hashlib.sha256(b"iir-key-id:" + key.encode()).hexdigest()[:32]


class KeyRing:
    def __init__(self, keys: Iterable[str]) -> None:
        # (digest, id) per key: the id is derived once here, not per request.
        self._keys = [(hashlib.sha256(k.encode()).digest(), key_id(k)) for k in keys]

    def authenticate(self, authorization: str | None, api_key: str | None = None) -> str:
        """Returns the key's id, or raises 401 (no usable header) / 403 (unknown key).

        ``api_key`` is the value of a route's key header (``x-api-key``, as Anthropic's clients
        send it), used when there is no ``Authorization`` header."""
        challenge = [("www-authenticate", 'Bearer realm="iir"')]
        if not authorization and api_key is not None:
            token = api_key.strip()
            if not token or " " in token:
                raise ApiError(401, "Malformed x-api-key header", headers=challenge)
            return self._check(token)
        if not authorization:
            raise ApiError(
                401, "Missing Authorization header (expected 'Bearer <API_KEY>')", headers=challenge
            )
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            raise ApiError(
                401,
                "Malformed Authorization header (expected 'Bearer <API_KEY>')",
                headers=challenge,
            )
        return self._check(token)

    def _check(self, token: str) -> str:
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found = None
        for known, ident in self._keys:  # every key is compared: no early exit
            if hmac.compare_digest(digest, known):
                found = ident
        if found is None:
            raise ApiError(403, "Invalid API key", code="invalid_api_key")
        return found

    def accepts(self, authorization: str | None) -> bool:
        """Whether the header carries one of the keys (for answers that only add detail)."""
        try:
            self.authenticate(authorization)
        except ApiError:
            return False
        return True

"""OIDC sign-in: authorization code flow with PKCE, state and nonce (authlib, joserfc).

What the browser must bring back (state, nonce, PKCE verifier, where to go next) travels
in a short-lived cookie, encrypted and authenticated with a key derived from SECRET_KEY,
so a callback that did not start here, or was altered, is refused without any write.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from authlib.common.security import generate_token
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import OAuth2Client
from authlib.oauth2.rfc6749.errors import OAuth2Error
from cryptography.fernet import Fernet, InvalidToken
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from core.identity import OIDC, ExternalPerson, check_username
from core.settings import Settings

# How long a person may take at the identity provider before the sign-in must restart.
PENDING_SECONDS = 600
# Asymmetric signatures only: "none" and HS* (signed with the client secret) are refused.
ID_TOKEN_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384"]
DISCOVERY_TTL_SECONDS = 300
HTTP_TIMEOUT_SECONDS = 10.0
CLOCK_LEEWAY_SECONDS = 60


class SsoError(Exception):
    """The single sign-on attempt is refused; the message is safe to show."""


@dataclass(frozen=True)
class Provider:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None


@dataclass(frozen=True)
class Started:
    authorization_url: str
    pending_cookie: str


_discovered: dict[str, tuple[float, Provider, dict[str, Any]]] = {}


def _fetch_json(url: str) -> dict[str, Any]:
    try:
        response = httpx.get(url, timeout=HTTP_TIMEOUT_SECONDS)
        response.raise_for_status()
        body = response.json()
    except (httpx.HTTPError, ValueError):
        raise SsoError("the identity provider cannot be reached; try again later") from None
    if not isinstance(body, dict):
        raise SsoError("the identity provider answered with something unexpected")
    return body


def _provider(settings: Settings, *, fresh: bool = False) -> tuple[Provider, dict[str, Any]]:
    """The provider's metadata and signing keys, cached for a few minutes."""
    issuer = (settings.oidc_issuer or "").rstrip("/")
    cached = _discovered.get(issuer)
    if cached is not None and not fresh and cached[0] > time.monotonic():
        return cached[1], cached[2]
    meta = _fetch_json(f"{issuer}/.well-known/openid-configuration")
    if str(meta.get("issuer", "")).rstrip("/") != issuer:
        raise SsoError("the identity provider's metadata names another issuer")
    try:
        provider = Provider(
            issuer=str(meta["issuer"]),
            authorization_endpoint=str(meta["authorization_endpoint"]),
            token_endpoint=str(meta["token_endpoint"]),
            jwks_uri=str(meta["jwks_uri"]),
            userinfo_endpoint=meta.get("userinfo_endpoint"),
        )
    except KeyError as missing:
        raise SsoError(f"the identity provider's metadata lacks {missing}") from None
    keys = _fetch_json(provider.jwks_uri)
    _discovered[issuer] = (time.monotonic() + DISCOVERY_TTL_SECONDS, provider, keys)
    return provider, keys


def _fernet(settings: Settings) -> Fernet:
    digest = hashlib.sha256(b"oidc-pending:" + settings.secret_key.get_secret_value().encode())
    return Fernet(base64.urlsafe_b64encode(digest.digest()))


def _client(settings: Settings, redirect_uri: str) -> OAuth2Client:
    assert settings.oidc_client_secret is not None
    return OAuth2Client(
        client_id=settings.oidc_client_id,
        client_secret=settings.oidc_client_secret.get_secret_value(),
        token_endpoint_auth_method="client_secret_basic",
        scope="openid profile email",
        redirect_uri=redirect_uri,
        code_challenge_method="S256",
        timeout=HTTP_TIMEOUT_SECONDS,
    )


def start(settings: Settings, redirect_uri: str, next_url: str) -> Started:
    """Where to send the browser, and the cookie that must come back with it."""
    provider, _ = _provider(settings)
    state, nonce, verifier = generate_token(32), generate_token(32), generate_token(64)
    with _client(settings, redirect_uri) as client:
        url, _ = client.create_authorization_url(
            provider.authorization_endpoint, state=state, code_verifier=verifier, nonce=nonce
        )
    pending = {"state": state, "nonce": nonce, "verifier": verifier, "next": next_url}
    sealed = _fernet(settings).encrypt(json.dumps(pending).encode()).decode()
    return Started(url, sealed)


def pending_next(settings: Settings, pending_cookie: str | None) -> str | None:
    """Where the person was going, from a pending cookie that is still good."""
    try:
        return str(_unseal(settings, pending_cookie)["next"])
    except SsoError:
        return None


def _unseal(settings: Settings, pending_cookie: str | None) -> dict[str, Any]:
    if not pending_cookie:
        raise SsoError("this sign-in did not start here, or your browser dropped its cookie")
    try:
        opened = _fernet(settings).decrypt(pending_cookie.encode(), ttl=PENDING_SECONDS)
    except InvalidToken:
        raise SsoError("the sign-in took too long or its cookie was altered") from None
    pending: dict[str, Any] = json.loads(opened)
    return pending


def finish(
    settings: Settings, pending_cookie: str | None, params: dict[str, str], redirect_uri: str
) -> ExternalPerson:
    """Check the provider's answer, trade the code, verify the ID token: who signed in."""
    if "error" in params:
        # Only the error code, never the free text: the URL could come from anyone.
        reason = "".join(c for c in params["error"][:40] if c.isalnum() or c == "_")
        raise SsoError(f"the identity provider did not sign you in ({reason})")
    pending = _unseal(settings, pending_cookie)
    if not hmac.compare_digest(params.get("state", "").encode(), pending["state"].encode()):
        raise SsoError("the answer does not belong to the sign-in you started (state mismatch)")
    code = params.get("code")
    if not code:
        raise SsoError("the identity provider sent no authorization code")
    provider, keys = _provider(settings)
    try:
        with _client(settings, redirect_uri) as client:
            token = client.fetch_token(
                provider.token_endpoint,
                grant_type="authorization_code",
                code=code,
                code_verifier=pending["verifier"],
            )
    except (OAuth2Error, OAuthError):
        raise SsoError(
            "the identity provider did not accept the sign-in code (already used or expired)"
        ) from None
    except httpx.HTTPError:
        raise SsoError("the identity provider cannot be reached; try again later") from None
    id_token = token.get("id_token")
    if not isinstance(id_token, str):
        raise SsoError("the identity provider sent no ID token")
    try:
        claims = verify_id_token(settings, provider, keys, id_token, pending["nonce"])
    except SsoError:
        # The provider may have rotated its signing key since it was cached: ask once more.
        provider, keys = _provider(settings, fresh=True)
        claims = verify_id_token(settings, provider, keys, id_token, pending["nonce"])
    groups = claims.get(settings.oidc_groups_claim)
    if groups is None and provider.userinfo_endpoint:
        groups = _userinfo(provider.userinfo_endpoint, token).get(settings.oidc_groups_claim)
    if groups is not None and (
        not isinstance(groups, list) or not all(isinstance(g, str) for g in groups)
    ):
        groups = []
    username = check_username(claims.get("preferred_username"))
    return ExternalPerson(
        source=OIDC,
        external_id=f"{provider.issuer}|{claims['sub']}",
        username=username,
        display_name=str(claims.get("name") or username)[:128],
        groups=None if groups is None else tuple(groups),
        mfa_at=second_factor_time(claims),
    )


LONG_AGO = datetime(1970, 1, 1, tzinfo=UTC)
# RFC 8176 methods that are a second factor on their own ("pwd" is not; "swk" alone is not).
_SECOND_FACTOR_METHODS = frozenset({"mfa", "otp", "hwk", "sms", "fpt", "face", "iris"})


def second_factor_time(claims: dict[str, Any]) -> datetime | None:
    """When the provider checked a second factor, by the ID token's `amr` and `auth_time`."""
    methods = claims.get("amr")
    if not isinstance(methods, list) or not _SECOND_FACTOR_METHODS & set(map(str, methods)):
        return None
    auth_time = claims.get("auth_time")
    if isinstance(auth_time, int) and not isinstance(auth_time, bool):
        return min(datetime.fromtimestamp(auth_time, UTC), datetime.now(UTC))
    # A second factor at some unknown time (a silent sign-in may reuse a days-old one):
    # enough for a role needing MFA, never fresh enough for a step-up.
    return LONG_AGO


def verify_id_token(
    settings: Settings, provider: Provider, keys: dict[str, Any], id_token: str, nonce: str
) -> dict[str, Any]:
    assert settings.oidc_client_id is not None
    try:
        decoded = jwt.decode(id_token, KeySet.import_key_set(keys), ID_TOKEN_ALGORITHMS)  # type: ignore[arg-type]
        jwt.JWTClaimsRegistry(
            leeway=CLOCK_LEEWAY_SECONDS,
            iss={"essential": True, "value": provider.issuer},
            aud={"essential": True, "value": settings.oidc_client_id},
            sub={"essential": True},
            exp={"essential": True},
            nonce={"essential": True, "value": nonce},
        ).validate(decoded.claims)
    except (JoseError, ValueError) as exc:
        raise SsoError(f"the ID token was refused: {exc}") from None
    return dict(decoded.claims)


def _userinfo(endpoint: str, token: dict[str, Any]) -> dict[str, Any]:
    try:
        response = httpx.get(
            endpoint,
            headers={"Authorization": f"Bearer {token['access_token']}"},
            timeout=HTTP_TIMEOUT_SECONDS,
        )
        response.raise_for_status()
        body = response.json()
    except (httpx.HTTPError, ValueError, KeyError):
        raise SsoError("the identity provider's user information cannot be read") from None
    return body if isinstance(body, dict) else {}

"""``intunnel login``'s device authorizations in the database, over the rules of ``device_auth``.

    start(settings, client_name, address)   -> (row, device code)   POST /api/device/code
    redeem(device_code)                     -> (row, token secret)  POST /api/device/token
    find_pending(user_code)                 -> row or None          the /device page
    approve(row, user) / deny(row, user)                            its two buttons

Approval creates the API token (named after the machine, listed on /tokens at once) with a
hash of a secret nobody knows; the redemption gives it a fresh secret and hands that to the
client, once: the one UPDATE that flips ``consumed`` wins, a second redemption gets
EXPIRED_TOKEN.  Revoking that token before the client picks it up makes the redemption
ACCESS_DENIED.  Expired rows are pruned whenever a new code is asked for.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional

from . import apitokens, device_auth
from .errors import AccessDenied, AuthorizationPending, ExpiredToken, RateLimited, SlowDown, ValidationError
from .models import ApiToken, DeviceAuthorization, User, database, write_transaction
from .security import new_api_token, sha256_hex
from .timeutil import utcnow

MAX_ADDRESS = 64
USER_CODE_ATTEMPTS = 5  # fresh user codes tried on a (very unlikely) collision with a live one


VERDICT_ERRORS = {device_auth.PENDING: AuthorizationPending, device_auth.SLOW_DOWN: SlowDown,
                  device_auth.EXPIRED: ExpiredToken, device_auth.DENIED: AccessDenied}


def _precise_now() -> datetime:
    """Poll times keep their microseconds: the slow_down rule compares them with the interval."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _state(row: DeviceAuthorization) -> device_auth.Pending:
    return device_auth.Pending(expires_at=row.expires_at, interval=row.interval, last_poll_at=row.last_poll_at,
                               approved=row.approved_by_id is not None, denied=bool(row.denied),
                               consumed=bool(row.consumed))


def start(settings, client_name, address: str) -> tuple[DeviceAuthorization, str]:
    name = device_auth.clean_client_name(client_name, settings.device_max_client_name)
    if name is None:
        raise ValidationError(f"client_name must be 1-{settings.device_max_client_name} printable characters",
                              field="client_name")
    address = (address or "unknown")[:MAX_ADDRESS]
    now = utcnow()
    DeviceAuthorization.delete().where(DeviceAuthorization.expires_at <= now).execute()  # housekeeping
    pending = (DeviceAuthorization.select()
               .where(DeviceAuthorization.client_address == address, ~DeviceAuthorization.consumed,
                      ~DeviceAuthorization.denied, DeviceAuthorization.approved_by.is_null()).count())
    if pending >= settings.device_max_pending_per_address:
        raise RateLimited(f"Too many login codes waiting for approval from this address "
                          f"(at most {settings.device_max_pending_per_address}); approve or let them expire",
                          retry_after=max(1, settings.device_code_lifetime))
    device_code = device_auth.new_device_code()
    for _ in range(USER_CODE_ATTEMPTS):
        user_code = device_auth.new_user_code()
        if DeviceAuthorization.get_or_none(DeviceAuthorization.user_code == user_code) is None:
            break
    row = DeviceAuthorization.create(
        device_code_hash=sha256_hex(device_code), user_code=user_code, client_name=name, client_address=address,
        created_at=now, expires_at=device_auth.expires_at(now, settings.device_code_lifetime),
        interval=max(1, settings.device_poll_interval))
    return row, device_code


def redeem(device_code) -> tuple[DeviceAuthorization, str]:
    """The API token's secret for an approved device code (once), else the poll's error."""
    if not isinstance(device_code, str) or not device_code or len(device_code) > 128:
        raise ValidationError("device_code must be the device_code from POST /api/device/code", field="device_code")
    digest = sha256_hex(device_code)
    with write_transaction():
        row = DeviceAuthorization.get_or_none(DeviceAuthorization.device_code_hash == digest)
        if row is None:
            raise ExpiredToken("This login code is unknown or has expired")
        now = _precise_now()
        verdict = device_auth.poll_verdict(_state(row), now)
        # Every poll is recorded, the refused ones too (slow_down is measured from the last poll).
        (DeviceAuthorization.update(last_poll_at=now, interval=verdict.interval)
         .where(DeviceAuthorization.id == row.id).execute())
        if verdict.code == device_auth.APPROVED:
            secret = _hand_over(row)
    if verdict.code != device_auth.APPROVED:
        raise VERDICT_ERRORS[verdict.code]()
    if secret is None:
        raise AccessDenied("The API token of this login was revoked before the client received it")
    return row, secret


def _hand_over(row: DeviceAuthorization) -> Optional[str]:
    """Consume the row and give its token a fresh secret (None: the token was revoked meanwhile)."""
    # The one redemption: a concurrent second poll finds consumed already set and updates nothing.
    won = (DeviceAuthorization.update(consumed=True)
           .where(DeviceAuthorization.id == row.id, ~DeviceAuthorization.consumed).execute())
    if won != 1:
        raise ExpiredToken()
    if row.api_token_id is None:
        return None
    secret = new_api_token()
    changed = (ApiToken.update(token_hash=sha256_hex(secret), prefix=secret[:apitokens.PREFIX_LENGTH])
               .where(ApiToken.id == row.api_token_id).execute())
    return secret if changed == 1 else None


def find_pending(user_code) -> Optional[DeviceAuthorization]:
    """The live, undecided authorization with this user code (as typed), or None."""
    code = device_auth.normalize_user_code(user_code)
    if code is None:
        return None
    row = DeviceAuthorization.get_or_none(DeviceAuthorization.user_code == code)
    if row is None or not device_auth.codes_equal(row.user_code, code):
        return None
    return row if device_auth.approvable(_state(row), utcnow()) else None


def approve(row: DeviceAuthorization, user: User) -> ApiToken:
    """The person approved: create the token (unusable until redeemed) and mark the row;
    ExpiredToken when it was decided (or redeemed) meanwhile, and then no token is left behind."""
    with database.atomic():
        token, _unknown_secret = apitokens.create(user, device_auth.token_name(row.client_name))
        decided = (DeviceAuthorization.update(approved_by=user, api_token=token)
                   .where(DeviceAuthorization.id == row.id, DeviceAuthorization.approved_by.is_null(),
                          ~DeviceAuthorization.denied, ~DeviceAuthorization.consumed).execute())
        if decided != 1:
            raise ExpiredToken("This login code was already approved or denied")
    return token


def deny(row: DeviceAuthorization, user: User) -> None:
    (DeviceAuthorization.update(denied=True)
     .where(DeviceAuthorization.id == row.id, DeviceAuthorization.approved_by.is_null(),
            ~DeviceAuthorization.consumed).execute())

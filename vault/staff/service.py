"""Staff accounts and their web sessions.

    issued = await staff.create("clinic", "dpo@clinic.example", "dpo", request_id=rid)  # link shown once
    form = await staff.enrolment(token)               # opening the link: nothing consumed
    await staff.enrol(token, password=..., code=...)  # consumes the link
    pending = await staff.login("clinic", email, password)      # -> PENDING session id
    session_id = await staff.second_factor(pending, code)       # -> a new, ACTIVE session id
    current = await staff.resolve(session_id)                    # every request

A session id is 256 random bits held only in the browser's cookie; the database keeps its
SHA-256. A pending session (password done, second factor not given) resolves only for the
second-factor form: :meth:`resolve` refuses it like no session at all.

The service is put together from its parts, one concern each: :mod:`vault.staff.accounts`
(create, list, disable, reset, enrolment), :mod:`vault.staff.logins` (password, second
factor, re-authentication, lockout) and :mod:`vault.staff.sessions` (resolve, log out);
:mod:`vault.staff.base` holds what they share.
"""

from __future__ import annotations

from vault.errors import Forbidden
from vault.staff.accounts import Accounts
from vault.staff.base import (ACTIVE, FRESH_AUTH, MAX_FAILURES, PENDING, SESSION_CACHE_SECONDS, CurrentSession,
                              EnrolmentForm, FreshAuthRequired, IssuedEnrolment, LockedOut, StaffInfo, actor_id)
from vault.staff.logins import Logins


class StaffService(Accounts, Logins):
    """Staff accounts and their web sessions (see the module's docstring)."""


__all__ = ["ACTIVE", "FRESH_AUTH", "MAX_FAILURES", "PENDING", "SESSION_CACHE_SECONDS", "CurrentSession", "EnrolmentForm",
           "Forbidden", "FreshAuthRequired", "IssuedEnrolment", "LockedOut", "StaffInfo", "StaffService", "actor_id"]

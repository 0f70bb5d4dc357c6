"""The one application error: a stable ``code``, a human ``detail``, an HTTP ``status``.

Services raise it; the REST exception handler (``config.errors``) turns it into
``{"code", "detail", ...extra}`` with its status once, and the admin, the commands and the
MCP server show the same code. The status comes from :data:`STATUS_BY_CODE` unless the raiser
names one (``http_status``), so one code always means one status everywhere.
"""

from __future__ import annotations

from typing import Any

STATUS_BY_CODE: dict[str, int] = {
    # 400: the request itself is wrong
    "invalid_request": 400,
    "invalid_inputs": 400,
    "invalid_constraints": 400,
    "unknown_job_type": 400,
    "malformed_json": 400,
    "invalid_draft_rules": 400,
    "callback_url_forbidden": 400,
    "bad_request": 400,
    # validation at the edge (common.validation)
    "invalid_characters": 400,
    "invalid_type": 400,
    "out_of_range": 400,
    "unknown_field": 400,
    "too_deep": 400,
    # 401: who is asking is unknown
    "not_authenticated": 401,
    "authentication_failed": 401,
    # 429: too much at once from one caller
    "too_many_streams": 429,
    # 403: who is asking may not do this
    "permission_denied": 403,
    "missing_permission": 403,
    "self_approval": 403,
    "policy_blocked": 403,
    # 404: nothing this principal may see
    "not_found": 404,
    # 409: the state does not allow it (now)
    "idempotency_conflict": 409,
    "already_decided": 409,
    "already_voted": 409,
    "expired": 409,
    "not_cancellable": 409,
    "not_dead_lettered": 409,
    "not_rollbackable": 409,
    "already_rolled_back": 409,
    # the request's form or volume
    "method_not_allowed": 405,
    "not_acceptable": 406,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "throttled": 429,
    "database_unavailable": 503,
}


class DomainError(Exception):
    """A refusal with a stable code. ``extra`` fields are added to the error body as they are."""

    def __init__(self, code: str, detail: str, *, http_status: int | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = http_status if http_status is not None else STATUS_BY_CODE.get(code, 400)
        self.extra = extra

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "detail": self.detail, **self.extra}

"""Typed errors. A `UserError` is the caller's fault and becomes an error reply with
category "user" (the server maps it to a 4xx); anything else is a server fault. Every code, with
its HTTP status, is listed in `error_codes.py`."""

from __future__ import annotations


class WorkerError(Exception):
    """Base class. `code` is a stable machine-readable name, `message` is for humans."""

    category = "server"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def to_reply(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "category": self.category}


class UserError(WorkerError):
    """Bad input: unknown adapter, out-of-vocabulary token, wrong shape, NaN, too long, ..."""

    category = "user"


class ModelNotFoundError(UserError):
    def __init__(self, name: str, looked_in: list[str]) -> None:
        where = ", ".join(looked_in) if looked_in else "(nowhere)"
        super().__init__(
            "unknown_model",
            f"model {name!r} is neither built in nor found locally; looked in: {where}",
        )

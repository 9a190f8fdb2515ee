"""The one exception a user sees: bad input. The CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """Input the user can fix (a flag, a path, a cluster address). Raised before anything is written."""


def require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)

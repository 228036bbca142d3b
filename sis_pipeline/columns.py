"""The file's column vocabulary (PRODUCT.md §3): canonical names, aliases and header normalisation.

Shared by the registry (extra-field column names are normalised like headers) and the file contract.
"""

from __future__ import annotations

import re

FIRST_NAME = "first_name"
LAST_NAME = "last_name"
EMAIL = "email"
USER_ID = "user_id"
USER_LOGIN = "user_login"
USER_TYPE = "user_type"
GRADUATION = "graduation"
EMAIL_OPT_OUT = "email_opt_out"
DELETE = "delete"

#: Columns with a meaning of their own; every other column is an extra field.
CORE_COLUMNS: tuple[str, ...] = (
    FIRST_NAME,
    LAST_NAME,
    EMAIL,
    USER_ID,
    USER_LOGIN,
    USER_TYPE,
    GRADUATION,
    EMAIL_OPT_OUT,
    DELETE,
)

#: Header aliases, applied after normalisation.
ALIASES: dict[str, str] = {
    "email_address": EMAIL,
    "student_id": USER_ID,
    "userid": USER_ID,
    "sso_login_name": USER_LOGIN,
    "login": USER_LOGIN,
    "study_level": USER_TYPE,
    "graduation_year": GRADUATION,
    "class_year": GRADUATION,
    "opt_out": EMAIL_OPT_OUT,
    "unsubscribe": EMAIL_OPT_OUT,
    "delete_user": DELETE,
    "deleted": DELETE,
}

#: Characters that show as nothing: byte order mark (also the zero-width no-break space), zero-width space,
#: non-joiner and joiner, word joiner, soft hyphen. Removed from headers wherever they are, and from the
#: ends of values, so a header or value copied from a web page or a spreadsheet reads as it looks.
INVISIBLE_CHARACTERS = "\ufeff\u200b\u200c\u200d\u2060\u00ad"
_INVISIBLE = re.compile(f"[{INVISIBLE_CHARACTERS}]")
# Any Unicode white space (a no-break space U+00A0 or U+202F, an ideographic space, a tab) counts as a
# space: a header that looks like "First Name" must match whatever space character the export used.
_SEPARATORS = re.compile(r"[\s\-]")


def normalise_header(name: str) -> str:
    """Trim, strip BOM and zero-width characters, lower-case, white space and hyphens to `_`, then alias."""
    cleaned = _INVISIBLE.sub("", name).strip().lower()
    cleaned = _SEPARATORS.sub("_", cleaned)
    return ALIASES.get(cleaned, cleaned)


def normalise_value(value: str) -> str:
    """How mapped values (user types, extra-field values) are compared: trimmed, case-insensitive."""
    return value.strip().casefold()

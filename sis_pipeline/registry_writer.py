"""Adds clients to `clients.yaml` without losing what operators wrote in it (PRODUCT.md §2, §9).

The file is edited with ruamel.yaml's round-trip mode so comments, key order and quoting survive, the result
is validated with the same `parse_registry` every reader uses, and only then does it replace the old file
(temp file in the same folder + `os.replace`, so readers see the old file or the new one, never half of one).
A lock file serialises concurrent writers so two onboardings cannot lose each other's entry.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError

from sis_pipeline import settings
from sis_pipeline.registry import Registry, RegistryError, parse_registry

NEW_FILE_HEADER = (
    "sis-pipeline client registry (PRODUCT.md §2). One entry per school, keyed by client id.\n"
    "Set auto_sync_enabled: true once the school's first file has been reviewed."
)

try:  # POSIX advisory locks; on other systems concurrent writers are the operator's to avoid.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def _round_trip_yaml() -> YAML:
    yaml = YAML()  # round-trip: keeps comments, order and quoting
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096  # never re-wrap an operator's long lines
    return yaml


@contextlib.contextmanager
def registry_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `<registry>.lock` while reading, editing and replacing the registry."""
    lock_path = path.with_name(path.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _load_document(path: Path) -> Any:
    """The registry as a round-trip document; a fresh one (with a header comment) when the file is absent."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        document = CommentedMap()
        document["clients"] = CommentedMap()
        document.yaml_set_start_comment(NEW_FILE_HEADER)
        return document
    try:
        document = _round_trip_yaml().load(text)
    except YAMLError as exc:
        raise RegistryError(str(path), [f"not valid YAML: {exc}"]) from None
    if document is None:
        document = CommentedMap()
    if not isinstance(document, CommentedMap):
        raise RegistryError(str(path), ["the file must be a mapping with a single top-level key 'clients'"])
    if document.get("clients") is None:
        document["clients"] = CommentedMap()
    return document


def _dump(document: Any) -> str:
    buffer = io.StringIO()
    _round_trip_yaml().dump(document, buffer)
    return buffer.getvalue()


def _validated(text: str, source: str) -> Registry:
    """Parse the text exactly as `load_registry` will, so what we write is what readers accept."""
    try:
        plain = YAML(typ="safe", pure=True).load(text)
    except YAMLError as exc:  # pragma: no cover - ruamel dumps what it loads
        raise RegistryError(source, [f"the edited registry is not valid YAML: {exc}"]) from None
    return parse_registry(plain, source)


def _with_client(document: Any, client_id: str, entry: Mapping[str, Any], source: str) -> Any:
    clients = document["clients"]
    if not isinstance(clients, Mapping):
        raise RegistryError(source, ["'clients' must map client ids to their settings"])
    # Compare as strings: `22:` in the file is the int 22 but the same client as "22".
    if any(str(existing) == client_id for existing in clients):
        raise RegistryError(source, [f"client {client_id!r} is already in the registry"])
    new_entry = CommentedMap()
    for field, value in entry.items():
        new_entry[field] = value
    clients[client_id] = new_entry
    return document


def check_client_can_be_added(client_id: str, entry: Mapping[str, Any], path: Path | None = None) -> Registry:
    """Validate, without writing, the registry that adding this client would produce (raises RegistryError)."""
    file = Path(path) if path is not None else settings.clients_file()
    document = _with_client(_load_document(file), client_id, entry, str(file))
    return _validated(_dump(document), str(file))


def add_client(client_id: str, entry: Mapping[str, Any], path: Path | None = None) -> Registry:
    """Add `client_id` with the settings in `entry` to the registry file and return the new registry.

    Raises RegistryError (and leaves the file untouched) when the client exists or the result is invalid.
    """
    file = Path(path) if path is not None else settings.clients_file()
    source = str(file)
    with registry_lock(file):
        document = _with_client(_load_document(file), client_id, entry, source)
        text = _dump(document)
        registry = _validated(text, source)
        _atomic_write(file, text)
    return registry


def _atomic_write(file: Path, text: str) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = file.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    fd, temp_name = tempfile.mkstemp(prefix=f".{file.name}.", suffix=".tmp", dir=file.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, mode)
        os.replace(temp_name, file)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise

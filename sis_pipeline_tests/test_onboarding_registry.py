"""Adding a client to clients.yaml: comments kept, validated before replacing, atomic, no lost updates."""

from __future__ import annotations

import stat
import threading

import pytest

from sis_pipeline.registry import RegistryError, load_registry
from sis_pipeline.registry_writer import NEW_FILE_HEADER, add_client

ORIGINAL = """\
# Header comment: who owns this file.
clients:
  # pilot school, reviewed
  22:   # an unquoted id: YAML reads it as the number 22
    name: 'Lincoln High'
    bucket: sis-22-bucket
    auto_sync_enabled: true   # reviewed 2024-09
    guard:
      max_fraction: 0.2
  # end of list
"""

ENTRY = {
    "name": "Roosevelt Middle",
    "bucket": "sis-23-bucket",
    "key": "student_feed.csv",
    "region": "us-east-1",
    "sync": "weekly",
    "auto_sync_enabled": False,
}


@pytest.fixture
def registry_file(tmp_path):
    path = tmp_path / "clients.yaml"
    path.write_text(ORIGINAL, encoding="utf-8")
    return path


def test_adding_a_client_keeps_every_comment_and_the_existing_entry_verbatim(registry_file):
    add_client("23", ENTRY, registry_file)
    text = registry_file.read_text(encoding="utf-8")
    for line in ORIGINAL.splitlines()[:8]:
        assert line in text
    assert "# end of list" in text
    registry = load_registry(registry_file)
    assert list(registry) == ["22", "23"]
    assert registry["23"].auto_sync_enabled is False
    assert registry["22"].guard.max_fraction == 0.2


def test_new_client_id_is_written_as_a_string_key(registry_file):
    add_client("0042", {**ENTRY, "bucket": "sis-0042-bucket"}, registry_file)
    assert "'0042':" in registry_file.read_text(encoding="utf-8")
    assert "0042" in load_registry(registry_file)  # not the number 42


def test_adding_an_existing_client_is_refused_even_when_its_key_is_a_yaml_number(registry_file):
    with pytest.raises(RegistryError, match="'22' is already in the registry"):
        add_client("22", ENTRY, registry_file)
    assert registry_file.read_text(encoding="utf-8") == ORIGINAL


def test_an_entry_the_registry_would_reject_is_not_written(registry_file):
    duplicate_place = {**ENTRY, "bucket": "sis-22-bucket"}  # same bucket/key as client 22
    with pytest.raises(RegistryError, match="also the upload location of client '22'"):
        add_client("23", duplicate_place, registry_file)
    with pytest.raises(RegistryError, match="field 'sync'"):
        add_client("24", {**ENTRY, "sync": "hourly"}, registry_file)
    assert registry_file.read_text(encoding="utf-8") == ORIGINAL


def test_a_missing_registry_file_is_created_with_a_header(tmp_path):
    path = tmp_path / "conf" / "clients.yaml"
    add_client("23", ENTRY, path)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# " + NEW_FILE_HEADER.splitlines()[0])
    assert list(load_registry(path)) == ["23"]


def test_the_write_replaces_the_file_atomically_and_keeps_its_permissions(registry_file):
    registry_file.chmod(0o640)
    add_client("23", ENTRY, registry_file)
    assert stat.S_IMODE(registry_file.stat().st_mode) == 0o640
    leftovers = {p.name for p in registry_file.parent.iterdir()} - {"clients.yaml", "clients.yaml.lock"}
    assert leftovers == set()


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(registry_file, monkeypatch):
    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("sis_pipeline.registry_writer.os.replace", fail)
    with pytest.raises(OSError):
        add_client("23", ENTRY, registry_file)
    assert registry_file.read_text(encoding="utf-8") == ORIGINAL
    assert {p.name for p in registry_file.parent.iterdir()} == {"clients.yaml", "clients.yaml.lock"}


def test_concurrent_writers_do_not_lose_each_others_clients(registry_file):
    ids = [f"c{i}" for i in range(8)]
    errors: list[BaseException] = []

    def add(client_id: str) -> None:
        try:
            add_client(client_id, {**ENTRY, "bucket": f"sis-{client_id}-bucket"}, registry_file)
        except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert set(load_registry(registry_file)) == {"22", *ids}

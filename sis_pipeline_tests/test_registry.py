"""The client registry (PRODUCT.md §2): defaults, every config error named by client and field, the example."""

from __future__ import annotations

from pathlib import Path

import pytest

from sis_pipeline.registry import ClientConfig, RegistryError, load_registry, parse_registry

ROOT = Path(__file__).resolve().parents[1]


def _load(clients: dict):
    return parse_registry({"clients": clients}, "test.yaml")


def _problems(clients: dict) -> list[str]:
    with pytest.raises(RegistryError) as caught:
        _load(clients)
    return caught.value.problems


def _base(**fields) -> dict:
    return {"name": "School", "bucket": "sis-test-bucket", **fields}


def test_example_clients_yaml_loads_with_every_field_shown():
    registry = load_registry(ROOT / "clients.yaml")
    assert len(registry) >= 3
    identifiers = {client.identifier for client in registry.values()}
    assert {"email", "user_id", "user_login"} <= identifiers
    assert any(client.user_types and client.extra_fields for client in registry.values())
    full = registry["22"]
    set_fields = set(full.model_fields_set)
    assert set(ClientConfig.model_fields) - {"id"} <= set_fields


def test_defaults_follow_product_table():
    client = _load({"7": _base()})["7"]
    assert client.key == "student_feed.csv"
    assert client.region == "us-east-1"
    assert client.sync == "weekly"
    assert client.schedule_cron == "0 23 * * 6"
    assert client.timezone == "America/New_York"
    assert client.auto_sync_enabled is False
    assert client.identifier == "email"
    assert client.auto_deprovision is False
    assert client.deprovision_after_missing_files == 1
    assert (client.guard.max_fraction, client.guard.max_count, client.guard.min_active) == (0.10, None, 100)
    assert client.class_year_tags is False
    assert client.user_types == {} and client.extra_fields == {}


def test_daily_sync_defaults_to_two_am():
    assert _load({"7": _base(sync="daily")})["7"].schedule_cron == "0 2 * * *"


def test_required_columns_follow_identifier_and_class_year_tags():
    client = _load({"7": _base(identifier="user_login", class_year_tags=True)})["7"]
    assert client.required_columns == ("first_name", "last_name", "email", "user_login", "graduation")


def test_two_extra_columns_mapped_to_one_group_is_an_error_naming_client_and_field():
    problems = _problems(
        {"9": _base(extra_fields={"Program": {"group": "Majors"}, "Major": {"group": "Majors"}})}
    )
    assert any("'9'" in p and "extra_fields" in p and "Majors" in p for p in problems)


def test_extra_value_mapped_to_two_communities_is_an_error():
    problems = _problems(
        {
            "9": _base(
                extra_fields={"Program": {"group": "Majors", "values": {"Bio": "Biology", " bio ": "Life"}}}
            )
        }
    )
    assert any("'9'" in p and "extra_fields" in p and "two communities" in p for p in problems)


def test_user_type_mapped_to_two_communities_is_an_error():
    problems = _problems({"9": _base(user_types={"Grad": "Graduates", "GRAD": "Alumni"})})
    assert any("'9'" in p and "user_types" in p and "two communities" in p for p in problems)


def test_value_mapped_to_a_list_of_communities_is_an_error():
    problems = _problems({"9": _base(user_types={"Grad": ["Graduates", "Alumni"]})})
    assert any("'9'" in p and "user_types" in p for p in problems)


def test_unknown_sync_is_an_error_naming_client_and_field():
    problems = _problems({"9": _base(sync="hourly")})
    assert any("'9'" in p and "'sync'" in p for p in problems)


def test_unknown_identifier_is_an_error_naming_client_and_field():
    problems = _problems({"9": _base(identifier="student_number")})
    assert any("'9'" in p and "'identifier'" in p for p in problems)


def test_duplicate_bucket_key_pair_across_clients_is_an_error():
    problems = _problems({"1": _base(), "2": _base(name="Other")})
    assert any("'2'" in p and "bucket" in p and "'1'" in p for p in problems)


def test_same_bucket_with_different_keys_is_allowed():
    registry = _load({"1": _base(), "2": _base(key="other.csv")})
    assert list(registry) == ["1", "2"]


def test_client_id_with_unsafe_characters_is_an_error():
    problems = _problems({"a/b": _base()})
    assert any("'a/b'" in p and "'id'" in p for p in problems)


def test_unknown_field_is_an_error_naming_it():
    problems = _problems({"9": _base(auto_sync=True)})
    assert any("'9'" in p and "auto_sync" in p for p in problems)


def test_every_problem_is_reported_and_nothing_is_half_loaded():
    problems = _problems({"ok": _base(bucket="sis-ok"), "1": _base(sync="never"), "2": _base(identifier="x")})
    assert len(problems) == 2
    assert any("'1'" in p for p in problems) and any("'2'" in p for p in problems)


def test_duplicate_client_ids_in_yaml_are_an_error(tmp_path):
    path = tmp_path / "clients.yaml"
    path.write_text("clients:\n  '1': {name: A, bucket: sis-a}\n  '1': {name: B, bucket: sis-b}\n")
    with pytest.raises(RegistryError):
        load_registry(path)


def test_registry_file_from_environment(tmp_path, monkeypatch):
    path = tmp_path / "elsewhere.yaml"
    path.write_text("clients:\n  '5': {name: Five, bucket: sis-five}\n")
    monkeypatch.setenv("SIS_CLIENTS_FILE", str(path))
    assert list(load_registry()) == ["5"]


def test_missing_registry_file_is_a_registry_error(tmp_path):
    with pytest.raises(RegistryError, match="no registry file"):
        load_registry(tmp_path / "absent.yaml")


def test_extra_field_columns_are_normalised_like_headers():
    client = _load(
        {"9": _base(extra_fields={" Program Name ": {"group": "Majors", "values": {" Bio ": "B"}}})}
    )["9"]
    assert list(client.extra_fields) == ["program_name"]
    assert client.extra_fields["program_name"].values == {"bio": "B"}


def test_the_code_location_and_the_registry_resource_share_one_parse_per_version_of_the_file(
    tmp_path, monkeypatch
):
    from sis_pipeline import resources

    path = tmp_path / "clients.yaml"
    path.write_text("clients:\n  '5': {name: Five, bucket: sis-five}\n")
    parses = []
    monkeypatch.setattr(resources, "load_registry", lambda p: parses.append(p) or load_registry(p))
    first = resources.registry_at(path)  # what sis_pipeline.definitions does at import
    assert resources.RegistryResource(path=str(path)).load() is first  # a sensor tick, a run
    assert len(parses) == 1
    path.write_text("clients:\n  '5': {name: Five, bucket: sis-five}\n  '6': {name: Six, bucket: sis-six}\n")
    assert list(resources.RegistryResource(path=str(path)).load()) == ["5", "6"]  # edited: read again
    assert len(parses) == 2
    with pytest.raises(RegistryError, match="no registry file"):
        resources.registry_at(tmp_path / "absent.yaml")

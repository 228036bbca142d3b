"""What a data engineer sees on each materialisation: counts, versions, reasons and a short summary.

Only counts, ids, line numbers and mapping values (user types, extra-field values, graduation texts that are
not a year) appear here, never a student's personal data. A mapping value that holds an `@` is shown as
withheld: it is an email address in the wrong column, not a value to map.
"""

from __future__ import annotations

from typing import Any

from dagster import MetadataValue

from sis_pipeline.file_version import FileVersion
from sis_pipeline.sisfile.result import MappedFile, ValidatedFile

FIRST_REJECTED_LINES = 20
WITHHELD = "(withheld: looks like an email address)"


def shown_value(value: str | None) -> str:
    """A warning's value as the UI may show it: mapping vocabulary, never an email address."""
    if value is None:
        return ""
    return WITHHELD if "@" in value else value


def file_metadata(version: FileVersion, archived_at: str) -> dict[str, Any]:
    return {
        "bucket": version.bucket,
        "key": version.key,
        "etag": (version.etag or "").strip('"'),
        "version_id": version.version_id or "(unversioned bucket)",
        "last_modified": version.last_modified.isoformat() if version.last_modified else "unknown",
        "size_bytes": MetadataValue.int(version.size),
        "sha256": version.sha256,
        "archived_at": archived_at,
    }


def _warning_table(validated: ValidatedFile) -> str:
    if not validated.warnings:
        return "none"
    lines = ["| warning | column | value | rows |", "|---|---|---|---|"]
    for w in validated.warnings:
        lines.append(f"| {w.code} | {w.column_name or ''} | {shown_value(w.value)} | {w.count} |")
    return "\n".join(lines)


def unmapped_values(validated: ValidatedFile) -> dict[str, int]:
    """`column=value -> rows` for user types and extra-field values the client has not mapped."""
    counts: dict[str, int] = {}
    for w in validated.warnings:
        if w.code in ("user_type_unmapped", "extra_value_unmapped"):
            value = "(more values, not listed)" if w.value is None else shown_value(w.value)
            key = f"{w.column_name}={value}"
            counts[key] = counts.get(key, 0) + w.count
    return counts


def first_rejected(validated: ValidatedFile, limit: int = FIRST_REJECTED_LINES) -> list[str]:
    rows = validated.rejected.sort_values("line_number").head(limit)
    return [
        f"line {int(r.line_number)}: {r.reason_code}"
        + (f" ({r.column_name})" if isinstance(r.column_name, str) else "")
        for r in rows.itertuples()
    ]


def validation_metadata(validated: ValidatedFile) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "status": "ignored" if validated.ignored else "accepted",
        "encoding": validated.encoding,
        "rows_read": MetadataValue.int(validated.rows_total),
        "rows_valid": MetadataValue.int(validated.rows_valid),
        "rows_rejected": MetadataValue.int(validated.rows_rejected),
        "rows_warned": MetadataValue.int(validated.rows_warned),
        "rejected_by_reason": MetadataValue.json(validated.rejected_by_reason()),
        "first_rejected_lines": MetadataValue.json(first_rejected(validated)),
        "warnings": MetadataValue.md(_warning_table(validated)),
    }
    if validated.problem is not None:
        meta["ignored_because"] = validated.problem.message
    return meta


def mapping_metadata(mapped: MappedFile, validated: ValidatedFile) -> dict[str, Any]:
    by_group = mapped.memberships.groupby("community_group").size() if len(mapped.memberships) else {}
    return {
        "subscribers": MetadataValue.int(len(mapped.subscribers)),
        "memberships": MetadataValue.int(len(mapped.memberships)),
        "memberships_by_group": MetadataValue.json({str(k): int(v) for k, v in dict(by_group).items()}),
        "delete_flags": MetadataValue.int(int(mapped.subscribers["delete"].sum())),
        "opt_out_flags": MetadataValue.int(int(mapped.subscribers["email_opt_out"].sum())),
        "protected_identities": MetadataValue.int(len(mapped.protected_keys)),
        "unmapped_values": MetadataValue.json(unmapped_values(validated)),
    }


def plan_metadata(counts: dict[str, int], guard: Any, summary: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        f"planned_{name}": MetadataValue.int(int(value)) for name, value in counts.items()
    }
    meta["guard_blocked"] = bool(guard.blocked)
    meta["guard"] = guard.reason
    meta["active_before"] = MetadataValue.int(int(guard.active_before))
    meta["summary"] = MetadataValue.md(summary)
    return meta


def summary_markdown(
    client_id: str,
    version: FileVersion,
    validated: ValidatedFile | None,
    counts: dict[str, int] | None,
    status: str,
    message: str = "",
) -> str:
    """A link-free Markdown summary of one sync, for the UI and the command line."""
    lines = [f"**Client {client_id}** — `{status}`", ""]
    lines.append(
        f"- file: `{version.uri}` version `{version.version_id or version.etag}`, {version.size} bytes"
    )
    if validated is not None:
        lines.append(
            f"- rows: {validated.rows_total} read, {validated.rows_valid} valid, "
            f"{validated.rows_rejected} rejected, {validated.rows_warned} warned"
        )
        for reason, count in validated.rejected_by_reason().items():
            lines.append(f"  - rejected `{reason}`: {count}")
    if counts:
        lines.append("- changes: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if message:
        lines.append(f"- {message}")
    return "\n".join(lines)

"""`sis-pipeline validate FILE [--client ID] [--errors-out PATH] [--json]` (PRODUCT.md §8).

What a school's IT runs before uploading: the summary, each rejected line with its reason, and an errors
CSV on request. Exit 0 clean, 1 rows rejected, 2 the file would be ignored (or cannot be opened).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import pandas as pd

from sis_pipeline.registry import ClientConfig, load_registry
from sis_pipeline.sisfile.result import REJECTED_COLUMNS, ValidatedFile
from sis_pipeline.sisfile.schema import validate_file

EXIT_CLEAN, EXIT_REJECTED, EXIT_IGNORED = 0, 1, 2

#: A spreadsheet treats a cell starting with one of these as a formula (CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cell(value: object) -> object:
    """Prefix a formula-like text cell with `'` so a spreadsheet shows it instead of running it."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def _client(client_id: str | None) -> ClientConfig:
    if client_id is None:
        return ClientConfig.default_rules()
    return load_registry()[client_id]  # an unknown id raises KeyError naming the known clients


def _rejected_rows(result: ValidatedFile) -> pd.DataFrame:
    """The rejected rows, or for an ignored file one row stating why."""
    if result.problem is None:
        return result.rejected
    problem = result.problem
    return pd.DataFrame(
        [[problem.line_number, problem.column_name, problem.code, problem.message]],
        columns=list(REJECTED_COLUMNS),
    )


def write_errors_csv(result: ValidatedFile, path: str | Path) -> int:
    """Write the rejected rows (or the reason a file is ignored) as CSV, formula-like cells neutralised."""
    rows = _rejected_rows(result)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(REJECTED_COLUMNS)
        for row in rows.itertuples(index=False):  # only the rejected rows, already few
            writer.writerow(["" if pd.isna(v) else neutralise_cell(v) for v in row])
    return len(rows)


def summary(result: ValidatedFile, client: ClientConfig, default_rules: bool) -> dict:
    """The result as plain data (what --json prints)."""
    rejected = result.rejected
    status = "ignored" if result.ignored else ("rejected" if result.rows_rejected else "clean")
    return {
        "file": result.source,
        "client": None if default_rules else client.id,
        "status": status,
        "encoding": result.encoding,
        "rows_total": result.rows_total,
        "rows_valid": result.rows_valid,
        "rows_rejected": result.rows_rejected,
        "rows_warned": result.rows_warned,
        "rejected_by_reason": result.rejected_by_reason(),
        "problem": None
        if result.problem is None
        else {
            "code": result.problem.code,
            "message": result.problem.message,
            "line_number": result.problem.line_number,
            "column_name": result.problem.column_name,
            "byte_offset": result.problem.byte_offset,
        },
        "warnings": [
            {
                "code": w.code,
                "message": w.message,
                "column_name": w.column_name,
                "value": w.value,
                "count": w.count,
            }
            for w in result.warnings
        ],
        "rejected": [
            {"line_number": line, "column_name": column, "reason_code": code, "message": message}
            for line, column, code, message in zip(
                rejected["line_number"].astype("int64").tolist(),
                rejected["column_name"].astype(object).where(rejected["column_name"].notna(), None).tolist(),
                rejected["reason_code"].astype(str).tolist(),
                rejected["message"].astype(str).tolist(),
                strict=True,
            )
        ],
    }


def _print_text(data: dict, out) -> None:
    rules = f"client {data['client']}" if data["client"] else "default rules (identifier email, no mappings)"
    print(f"{data['file']}: checked with {rules}", file=out)
    if data["problem"]:
        print(f"FILE WOULD BE IGNORED ({data['problem']['code']}): {data['problem']['message']}", file=out)
        print("Nothing in it would be applied and no user would be deprovisioned or deleted.", file=out)
    print(
        f"rows read: {data['rows_total']}  valid: {data['rows_valid']}  rejected: {data['rows_rejected']}  "
        f"imported with a value dropped: {data['rows_warned']}  (encoding {data['encoding']})",
        file=out,
    )
    if data["rejected_by_reason"]:
        print("rejected by reason:", file=out)
        for code, count in data["rejected_by_reason"].items():
            print(f"  {code}: {count}", file=out)
    if data["warnings"]:
        print("warnings:", file=out)
        for warning in data["warnings"]:
            print(f"  [{warning['code']}] {warning['message']}", file=out)
    if data["rejected"] and not data["problem"]:
        print("rejected lines:", file=out)
        for row in data["rejected"]:
            column = row["column_name"] or "(whole line)"
            print(f"  line {row['line_number']}: {column}: {row['reason_code']}: {row['message']}", file=out)
    verdict = {
        "clean": "OK: every row would import.",
        "rejected": "Rows would be rejected; the rest of the file would import.",
        "ignored": "The file would be ignored.",
    }[data["status"]]
    print(verdict, file=out)


def run(args: argparse.Namespace) -> int:
    """Entry point of `sis-pipeline validate` (wired in cli.py)."""
    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        print(f"sis-pipeline validate: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_IGNORED
    try:
        client = _client(args.client)
    except KeyError as exc:
        print(f"sis-pipeline validate: {exc.args[0]}", file=sys.stderr)
        return EXIT_IGNORED
    result = validate_file(data, client, str(path), report_only=True)
    data_out = summary(result, client, default_rules=args.client is None)
    if args.errors_out:
        write_errors_csv(result, args.errors_out)
    if args.json:
        json.dump(data_out, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_text(data_out, sys.stdout)
        if args.errors_out:
            print(f"rejected rows written to {args.errors_out}", file=sys.stdout)
    if result.ignored:
        return EXIT_IGNORED
    return EXIT_REJECTED if result.rows_rejected else EXIT_CLEAN

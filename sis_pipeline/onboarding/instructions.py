"""The setup instructions a school's IT needs (PRODUCT.md §9; wording after the original help article).

Pure text from the client's registry entry: no AWS calls and never a secret, so `clients instructions ID`
can be re-sent at any time ("Resend Instructions").
"""

from __future__ import annotations

import posixpath
import shlex

from sis_pipeline.registry import ClientConfig

_DAY_NAMES = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
_DAY_LONG = {
    "SUN": "Sundays",
    "MON": "Mondays",
    "TUE": "Tuesdays",
    "WED": "Wednesdays",
    "THU": "Thursdays",
    "FRI": "Fridays",
    "SAT": "Saturdays",
}
#: Upload this long before the sync so a slow export or a retry still lands in time.
_LEAD_MINUTES = 2 * 60 + 55
#: When a client has no schedule (on_upload, manual): the original article's example, Saturdays 08:05.
_FALLBACK = (5, 8, "6")


def aws_profile(client: ClientConfig) -> str:
    """A named AWS CLI profile, so the school's keys never replace whatever else the server uses AWS for."""
    return f"sis-{client.id}"


def _day_number(field: str) -> int | None:
    if field.isdigit() and 0 <= int(field) <= 7:
        return int(field) % 7
    upper = field.upper()[:3]
    return _DAY_NAMES.index(upper) if upper in _DAY_NAMES else None


def upload_time(client: ClientConfig) -> tuple[int, int, str]:
    """(minute, hour, day-of-week field) for the school's upload: `_LEAD_MINUTES` before the client's sync.

    Only simple crons (one minute, one hour, any day of month/month `*`, one weekday or `*`) are shifted;
    anything else falls back to Saturdays 08:05 and the text tells the school when the sync runs.
    """
    cron = client.schedule_cron
    if cron is None:
        return _FALLBACK
    minute, hour, dom, month, dow = cron.split()
    if not (minute.isdigit() and hour.isdigit() and dom == "*" and month == "*"):
        return _FALLBACK
    day = None if dow == "*" else _day_number(dow)
    if dow != "*" and day is None:
        return _FALLBACK
    at = int(hour) * 60 + int(minute) - _LEAD_MINUTES
    if at < 0:  # the day before
        at += 24 * 60
        day = None if day is None else (day - 1) % 7
    return at % 60, at // 60, "*" if day is None else str(day)


def _schtasks_schedule(minute: int, hour: int, dow: str) -> str:
    when = f"/ST {hour:02d}:{minute:02d}"
    if dow == "*":
        return f"/SC DAILY {when}"
    return f"/SC WEEKLY /D {_DAY_NAMES[int(dow)]} {when}"


def _sync_sentence(client: ClientConfig) -> str:
    if client.sync == "on_upload":
        return "Your file is imported within minutes of each upload."
    if client.sync == "manual":
        return "Your file is imported when your administrator starts an import."
    return (
        f"Your file is imported {client.sync} (cron '{client.schedule_cron}', time zone {client.timezone})."
    )


def render_instructions(client: ClientConfig) -> str:
    """The full setup text for one school: where, how (CLI, cron, Task Scheduler), what the file must be."""
    bucket, key, region = client.bucket, client.key, client.region
    profile = aws_profile(client)
    file_name = posixpath.basename(key)
    target = shlex.quote(f"s3://{bucket}/{key}")  # a key with spaces still pastes into a shell
    flags = f"--region {region} --profile {profile}"
    unix_upload = f"aws s3 cp {shlex.quote('/path/to/' + file_name)} {target} {flags}"
    windows_upload = f"aws s3 cp C:\\Data\\{file_name} s3://{bucket}/{key} {flags}"
    verify = f"aws s3 ls {target} {flags}"
    minute, hour, dow = upload_time(client)
    day_text = "every day" if dow == "*" else _DAY_LONG[_DAY_NAMES[int(dow)]]
    cron_line = f"{minute} {hour} * * {dow} {unix_upload}"
    schtasks_line = (
        f'schtasks /Create /TN "sis-pipeline upload {client.id}" {_schtasks_schedule(minute, hour, dow)} '
        f'/TR "{windows_upload}"'
    )
    columns = ", ".join(client.required_columns)
    return f"""\
Automated subscriber uploads for {client.name} (client {client.id})
{"=" * 60}

Where your file goes
  Bucket:    {bucket}
  Region:    {region}
  File name: {key}
  Credentials: the Access Key ID and Secret Access Key sent to you separately. They reach only this
  bucket (upload, read back, list). Keep them secret; ask your administrator to rotate them if staff
  changes. The secret is shown only once: if it is lost, ask for new credentials.

1. Install the AWS CLI (https://aws.amazon.com/cli/) and configure a profile for these keys:
     aws configure --profile {profile}
       AWS Access Key ID:     <your Access Key ID>
       AWS Secret Access Key: <your Secret Access Key>
       Default region name:   {region}
       Default output format: json

2. Upload the file. Always overwrite the same name ({key}) with the full file:
     Linux/macOS:  {unix_upload}
     Windows:      {windows_upload}

3. Verify it arrived (the listing shows the file with its new time and size):
     {verify}

4. Schedule the upload ({day_text} at {hour:02d}:{minute:02d}, before the import runs; times are in
   {client.timezone}, shift them if your server's clock is in another time zone).
   {_sync_sentence(client)}
     Linux/macOS (crontab -e; cron has a short PATH, so write aws's full path from `command -v aws`):
       {cron_line}
     Windows (Task Scheduler, from a Command Prompt as the user whose AWS profile you configured):
       {schtasks_line}
   Point-and-click tools that support S3 (FileZilla Pro, Cyberduck) work too for one-off uploads:
   use the same keys and region, and choose Overwrite when asked.

File requirements
  - One CSV file, UTF-8, following standard CSV rules (RFC 4180): a field containing a comma, a
    double quote or a line break is wrapped in double quotes, and a double quote inside it is doubled.
  - A header row, then one row per user. Required columns: {columns}.
  - Every upload is the full list of users, never only the changes: users missing from the file can
    be deprovisioned.
  - Records with a blank or invalid email are not imported; a user must not appear on two rows.

Check the file before uploading
  With sis-pipeline installed (pip install sis-pipeline), run:
     sis-pipeline validate /path/to/{file_name}
  It prints a summary and every rejected line with its reason (exit code 0: clean, 1: some rows
  rejected, 2: the file would be ignored). Your administrator can check it with your exact
  settings: sis-pipeline validate /path/to/{file_name} --client {client.id}
"""

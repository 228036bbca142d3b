"""The identity of one uploaded object version, as read and as logged."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime


@dataclass(frozen=True)
class FileVersion:
    """Exactly which bytes a sync used: where they came from and their content hash."""

    bucket: str
    key: str
    etag: str | None
    version_id: str | None
    sha256: str
    size: int
    last_modified: datetime | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def as_dict(self) -> dict:
        data = asdict(self)
        data["last_modified"] = self.last_modified.isoformat() if self.last_modified else None
        return data

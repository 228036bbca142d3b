"""sis-pipeline: schools' SIS roster files from per-school S3 buckets into a subscriber warehouse."""

__version__ = "0.1.0"

"""The file contract (PRODUCT.md §3–4): bytes -> parsed frame -> validated rows -> mapped subscribers.

Free of Dagster and of the warehouse, so every rule is tested as a plain function.
"""

from sis_pipeline.sisfile.mapping import map_file
from sis_pipeline.sisfile.result import FileProblem, FileWarning, MappedFile, ValidatedFile
from sis_pipeline.sisfile.schema import validate_file

__all__ = ["FileProblem", "FileWarning", "MappedFile", "ValidatedFile", "map_file", "validate_file"]

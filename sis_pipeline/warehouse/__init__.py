"""The subscriber warehouse (PRODUCT.md §5–6): tables, migrations, and applying a sync in one transaction.

`Warehouse` is the only entry point the rest of the project uses; `tables` is the schema the Alembic
migrations build; `bulk` holds the dialect-specific fast paths.
"""

from sis_pipeline.warehouse.store import SyncOutcome, Warehouse

__all__ = ["SyncOutcome", "Warehouse"]

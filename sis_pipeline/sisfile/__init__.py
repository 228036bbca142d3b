"""The file contract (PRODUCT.md §3–4): bytes -> parsed frame -> validated rows -> mapped subscribers.

Free of Dagster and of the warehouse, so every rule is tested as a plain function.
"""

"""Test-only start-up hook: a `sis-pipeline` process started with this folder on PYTHONPATH and
`SIS_TEST_KILL_AFTER=<BulkWriter method>` kills itself with SIGKILL right after that method has written its
rows, i.e. in the middle of the warehouse transaction. Nothing of the project imports this module.
"""

import os

_AFTER = os.environ.get("SIS_TEST_KILL_AFTER")

if _AFTER:
    import signal

    from sis_pipeline.warehouse import bulk

    def _killing(method):
        def write_then_die(self, *args, **kwargs):
            method(self, *args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)

        return write_then_die

    for _writer in (bulk.SqliteBulkWriter, bulk.PostgresBulkWriter):
        setattr(_writer, _AFTER, _killing(getattr(_writer, _AFTER)))

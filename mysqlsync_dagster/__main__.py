"""The `mysqlsync-dagster` console script (also `python -m mysqlsync_dagster`).

A one-shot sync is a short process that mostly starts up: importing Dagster, dlt, SQLAlchemy
and pyarrow creates about a million objects, and the cyclic garbage collector walks them again
and again while they are created, and once more at exit. Here it is paused while the CLI's
modules import, those objects are then frozen (never walked again: they live as long as the
process), and the final collection at exit is skipped. Measured on a 1%-changed incremental
sync of the 1M-row benchmark table: about 1.3 s of a 4 s process. For `sync` the pause lasts
until the definitions and the Dagster instance are built (their imports are the bulk). Objects
are still released by reference counting, and atexit handlers (log flushing) still run.
"""

import gc
import sys


def startup_done() -> None:
    gc.freeze()  # everything imported and built so far lives as long as the process
    gc.set_threshold(10_000, 10, 10)  # fewer young-generation passes over the run's objects
    gc.enable()


def syncs(argv: list[str]) -> bool:
    """Does this command line sync tables (its command, the first word that is not an
    option or an option's value, is `sync`)?"""
    words = iter(argv)
    for word in words:
        if word == "--config":
            next(words, None)
        elif not word.startswith("-"):
            return word == "sync"
    return False


def run() -> None:
    gc.disable()
    source_stream = None
    if syncs(sys.argv[1:]):  # the source reader starts up beside the CLI's own start-up
        from mysqlsync_dagster.pipeline import source_stream

        source_stream.prestart()
    from mysqlsync_dagster.tools import cli

    code = cli.main(ready=startup_done)
    if source_stream is not None:
        source_stream.discard_idle()
    gc.freeze()  # nothing left to collect that the exit would not free anyway
    sys.exit(code)


if __name__ == "__main__":
    run()

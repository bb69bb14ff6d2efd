"""Streaming ingestion: sources that follow their upstream live (`SourcePlugin.stream`).

lease.py       who streams a source: one owner across processes, through its run's lease
runner.py      one source's stream: micro-batches committed with their checkpoint
supervisor.py  every enabled stream source of a process (the worker, `kasparro up`)
"""

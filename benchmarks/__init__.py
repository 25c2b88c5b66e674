"""Benchmarks of ``ideogram_async`` against a hand-written aiohttp loop and httpx.

``python -m benchmarks`` runs every workload and prints one table; ``--quick`` is the
smoke test that ``.ci/run`` calls. See ``benchmarks/README.md``.
"""

"""Files shipped with the package.

``nats-tss-v1_0-3ffb9-simple/``: the real NATS-Bench topology-space records (the NAS-Bench-201 space) of
architectures 0, 11 and 284, with the benchmark's meta file, in the lazily loaded ``*-simple`` format
(MIT licensed, see its LICENSE.md). They are the embedded offline default of ``ahps run reevaluate``.
"""

from pathlib import Path

NATS_TSS_FIXTURE = Path(__file__).resolve().parent / "nats-tss-v1_0-3ffb9-simple"

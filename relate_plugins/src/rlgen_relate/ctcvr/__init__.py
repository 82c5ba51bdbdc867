"""The CTCVR reward model of RELATE (paper 3.3.3): shared-bottom ESMM on frozen text embeddings.

- :mod:`.model`: the network, saving and loading (safetensors + JSON), scoring raw text;
- :mod:`.data`: reading impression logs (JSONL / Parquet; per impression or aggregated);
- :mod:`.losses`: the ESMM entire-space loss and the optional within-group objectives;
- :mod:`.train`, :mod:`.metrics`: fitting with early stopping, and the report;
- :mod:`.score`, :mod:`.cli`: ``rlgen-relate ctcvr train|score``;
- :mod:`.reward`: the ``relate.ctcvr`` reward provider (entry point ``relate_ctcvr``).

Importing this package is cheap; torch-heavy modules load when used.
"""

from __future__ import annotations

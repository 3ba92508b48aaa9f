"""medtailor: a reproducible pipeline for medical-imaging transfer learning and NAS.

The package mirrors the pipeline: one subpackage per stage (``synth``, ``ingest``,
``resample``, ...), each exposed as ``medtailor <stage>`` and as one Snakemake rule.
"""

__version__ = "0.1.0"

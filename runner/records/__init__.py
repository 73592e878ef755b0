"""The run directory, used by every stage: atomic writes, run.json, checkpoints' completeness markers, the claim on
a directory, the report and model card, secret redaction."""

"""Keep tokens and keys out of run records, reports and logs.

Two sources of secrets: the environment (any variable whose name says TOKEN, KEY, SECRET or
PASSWORD, e.g. HF_TOKEN, WANDB_API_KEY) and strings that look like well-known key formats.
"""
from __future__ import annotations

import os
import re

SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)
KEY_SHAPES = re.compile(r"\b(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,}|ghp_[A-Za-z0-9]{20,}|xox[bp]-[A-Za-z0-9-]{10,})")
MASK = "***"
MIN_SECRET_LENGTH = 8  # shorter values ("1", "true") would mask ordinary text


def environment_secrets() -> list[str]:
    values = [v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= MIN_SECRET_LENGTH]
    return sorted(set(values), key=len, reverse=True)  # longest first, so a secret inside another is masked whole


def redact(value, secrets: list[str] | None = None):
    """A copy of a JSON-like value with every secret string masked."""
    secrets = environment_secrets() if secrets is None else secrets
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, MASK)
        return KEY_SHAPES.sub(MASK, value)
    if isinstance(value, dict):
        return {k: redact(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, secrets) for v in value]
    return value

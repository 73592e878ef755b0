"""Keep tokens and keys out of run records, reports and logs.

Two sources of secrets: the environment (any variable whose name says TOKEN, KEY, SECRET or
PASSWORD, e.g. HF_TOKEN, WANDB_API_KEY) and strings that look like well-known key formats
(KEY_SHAPES), wherever they were pasted: a description, a --set value, a URL in a path.
"""
from __future__ import annotations

import os
import re

SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)
# Prefixed formats: the prefix makes them unambiguous, so they are masked wherever they appear.
KEY_SHAPES = re.compile(r"\b(" + "|".join([
    r"hf_[A-Za-z0-9]{20,}",  # Hugging Face
    r"sk-[A-Za-z0-9_-]{20,}",  # OpenAI (sk-..., sk-proj-...), Anthropic (sk-ant-...)
    r"gh[pousr]_[A-Za-z0-9]{20,}",  # GitHub classic, OAuth, user-to-server, server-to-server, refresh tokens
    r"github_pat_[A-Za-z0-9_]{20,}",  # GitHub fine-grained
    r"glpat-[A-Za-z0-9_-]{20,}",  # GitLab
    r"xox[abposr]-[A-Za-z0-9-]{10,}",  # Slack
    r"(?:AKIA|ASIA)[A-Z0-9]{16}",  # AWS access key id
    r"AIza[A-Za-z0-9_-]{35}",  # Google API key
    r"npm_[A-Za-z0-9]{36}",  # npm
    r"[rs]k_live_[A-Za-z0-9]{20,}",  # Stripe
    r"eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}",  # a JWT: base64 '{"' header and payload
]) + r")\b")
# https://user:password@host: only the password goes; the user and the host say where the data came from.
URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@]+:)([^\s/@]+)(@)")
# A bare 40-hex string is a W&B API key, an AWS secret's cousin, or a git commit: the shape cannot tell. Commits
# matter to a run's records (a pinned `revision`, a snapshot folder in a Hugging Face cache path such as
# .../snapshots/<40 hex>/config.json), so the rule skips them: values under a key that names a revision, commit or
# hash (REVISION_KEY), and a hex string that is a path component (next to '/' or '\'). Anywhere else (a
# description, a --set value, an error message) it is masked: a commit mentioned in free text is the lesser loss.
BARE_HEX = re.compile(r"(?<![/\\])\b[0-9a-fA-F]{40}\b(?![/\\])")
REVISION_KEY = re.compile(r"(^|_)(revision|commit|sha|sha1|sha256|hash|fingerprint)s?($|_)", re.IGNORECASE)
MASK = "***"
MIN_SECRET_LENGTH = 8  # shorter values ("1", "true") would mask ordinary text


def environment_secrets() -> list[str]:
    values = [v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= MIN_SECRET_LENGTH]
    return sorted(set(values), key=len, reverse=True)  # longest first, so a secret inside another is masked whole


def redact(value, secrets: list[str] | None = None, _revision: bool = False):
    """A copy of a JSON-like value with every secret string masked (`_revision`: the value sits under a key that
    names a revision or hash, whose 40-hex commits are kept)."""
    secrets = environment_secrets() if secrets is None else secrets
    if isinstance(value, str):
        return mask_text(value, secrets, keep_hex=_revision)
    if isinstance(value, dict):
        return {k: redact(v, secrets, _revision or bool(REVISION_KEY.search(str(k)))) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, secrets, _revision) for v in value]
    return value


def mask_text(text: str, secrets: list[str], keep_hex: bool = False) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    text = URL_PASSWORD.sub(lambda m: m.group(1) + MASK + m.group(3), text)
    text = KEY_SHAPES.sub(MASK, text)
    return text if keep_hex else BARE_HEX.sub(MASK, text)

"""Every data source a recipe names, with its recipe path: for the checks and records that treat them alike (file
existence, the tokenization cache's key, files changing under a resumed run, the cache's location)."""
from __future__ import annotations

SPLITS = ("train", "eval")  # data.<split>: one source, or a list of them (a mixture)


def split_sources(data: dict, split: str) -> list[tuple[str, dict]]:
    """(recipe path, source) of each source of data.<split>; [] when it is null."""
    value = data.get(split)
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [(f"/data/{split}/{index}", source) for index, source in enumerate(value)]
    return [(f"/data/{split}", value)]


def all_sources(doc: dict) -> list[tuple[str, dict]]:
    """(recipe path, source) of every source: the training and evaluation data, evaluation.data, the retention set."""
    found = [pair for split in SPLITS for pair in split_sources(doc["data"], split)]
    for key in ("data", "retention"):
        if doc["evaluation"].get(key) is not None:
            found.append((f"/evaluation/{key}", doc["evaluation"][key]))
    return found


def local_files(doc: dict) -> list[str]:
    """The local files among them, each once, in recipe order."""
    return list(dict.fromkeys(source["path"] for _, source in all_sources(doc) if "path" in source))

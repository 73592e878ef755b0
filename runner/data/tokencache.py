"""Tokenization cache: the datasets a trainer prepares, kept on disk under a key of everything that shapes them.

TRL's SFTTrainer and DPOTrainer tokenize (and truncate, build labels, pack, shuffle) in their own
`_prepare_dataset`; the classification task tokenizes in runner.train.classification. Both go through
`prepared(dataset, build)`: a hit loads the stored result with datasets' load_from_disk (memory-mapped,
no tokenization); a miss runs the library's own preparation and stores what it returned. So the cache
holds exactly what the trainer would have built, and a cached run trains on the same rows in the same order.

The key hashes: the runner's version (and the source of runner/data/chat_masks.py, which renders and masks
conversations) and the versions of trl, transformers, tokenizers and datasets;
the task and data format; the recipe's data section (and evaluation/retention sources); the contents
of every local data file (sha256, never the modification time); the tokenizer as saved (its files,
special tokens and chat template, including the recipe's template); every trainer setting that can
change preparation (max_length, packing, loss masks, seed, ...: all but a list of known-irrelevant ones);
and which split it is. Any change misses.

Location: data.tokenization_cache, else $RECIPE_RUNNER_CACHE/tokenized, else ~/.cache/recipe-runner/tokenized;
never beside the user's data. An entry is written to a private temporary directory and renamed into place
once complete; an entry without its record, or whose files do not match it, is deleted and rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import re
import os
import shutil
import sys
import tempfile
import uuid
import weakref
from pathlib import Path

from runner import __version__, compat
from runner.plan.cache_location import cache_root
from runner.recipe.sources import all_sources, local_files
from runner.records.checkpoints import sha256

RECORD = "entry.json"  # written last, inside the entry: its presence means the entry is complete
LIBRARIES = ("trl", "transformers", "tokenizers", "datasets")
# Trainer settings that never change what preparation produces: changing them still hits the cache.
NOT_DATA = frozenset({
    "output_dir", "num_train_epochs", "max_steps", "per_device_train_batch_size", "per_device_eval_batch_size",
    "gradient_accumulation_steps", "learning_rate", "optim", "weight_decay", "adam_beta1", "adam_beta2",
    "adam_epsilon", "max_grad_norm", "lr_scheduler_type", "warmup_steps", "bf16", "fp16", "use_cpu",
    "activation_checkpointing", "logging_strategy", "logging_steps", "logging_first_step", "logging_nan_inf_filter",
    "eval_strategy", "eval_steps", "eval_on_start", "save_strategy", "save_steps", "save_total_limit",
    "dataloader_num_workers", "ddp_find_unused_parameters", "report_to", "torch_compile", "neftune_noise_alpha",
    "dataset_num_proc", "beta", "loss_type", "label_smoothing", "disable_dropout", "class_weights",
    "center_rewards_coefficient",
    # collator and model settings (TRL 1.16 reads them after preparation): the launch-time fast defaults decide
    # them per machine, and a run on another GPU should still find the same prepared data
    "use_liger_kernel", "pad_to_multiple_of", "padding_free",
})
STATS = {"hits": 0, "misses": 0}  # this process's lookups, for the log and the tests


class TokenCache:
    def __init__(self, root: Path, plan: dict, splits, tokenizer, settings: dict):
        self.root, self.plan, self.tokenizer, self.settings = root, plan, tokenizer, settings
        # the run's datasets by identity: the trainer is handed these very objects
        self.names = {id(d): (weakref.ref(d), name) for name in ("train", "eval", "evaluation", "retention")
                      if (d := getattr(splits, name, None)) is not None}
        self._splits = splits
        self._base: dict | None = None  # computed at the first lookup (hashing files and the tokenizer)

    def name_of(self, dataset) -> str | None:
        found = self.names.get(id(dataset))
        return found[1] if found and found[0]() is dataset else None

    def key(self, name: str) -> str:
        if self._base is None:
            self._base = key_inputs(self.plan, self._splits, self.tokenizer, self.settings)
        text = json.dumps({**self._base, "split": name}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def prepared(self, dataset, build, accelerator=None):
        """The stored preparation of `dataset`, or build() stored for next time. Other datasets: build().

        Under several processes (`accelerator` given) they agree: all load, or all build, since the
        library's preparation holds barriers that every process must reach.
        """
        import datasets

        name = self.name_of(dataset)
        if name is None or not isinstance(dataset, datasets.Dataset):
            return build()
        key = self.key(name)
        found = load(self.root / key)
        if accelerator is not None and accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            if not all(gather_object([found is not None])):
                found = None
        if found is not None:
            STATS["hits"] += 1
            _say(f"tokenization cache: hit for {name} ({len(found)} rows) in {self.root / key}")
            return found
        STATS["misses"] += 1
        result = build()
        main = accelerator is None or accelerator.is_main_process
        if main and store(self.root, key, result, {"split": name, "runner": __version__}):
            _say(f"tokenization cache: stored {name} ({len(result)} rows) in {self.root / key}")
            return load(self.root / key) or result
        return result


def for_run(plan: dict, splits, tokenizer, settings: dict) -> TokenCache | None:
    """The run's cache (None when the recipe turns it off)."""
    root = cache_root(plan["recipe"]["data"].get("tokenization_cache"))
    return TokenCache(root, plan, splits, tokenizer, settings) if root is not None else None


def cached(cache: TokenCache | None, dataset, build):
    """Preparation outside the trainer (classification) through the run's cache, when it has one."""
    return cache.prepared(dataset, build) if cache is not None else build()


def with_cache(trainer_class, plan: dict, splits, tokenizer, config: dict):
    """A subclass of a TRL trainer whose `_prepare_dataset` goes through the cache; the class itself when off."""
    cache = for_run(plan, splits, tokenizer, data_settings(config))
    if cache is None:
        return trainer_class

    def cached_prepare(prepare, dataset, *args, **kwargs):
        from accelerate import PartialState  # TRL prepares before Trainer.__init__ makes self.accelerator

        return cache.prepared(dataset, lambda: prepare(dataset), PartialState())

    return compat.around_prepare_dataset(trainer_class, cached_prepare)


def data_settings(config: dict) -> dict:
    """The trainer settings that may shape the prepared data (all but the known-irrelevant ones)."""
    return {k: v for k, v in config.items() if k not in NOT_DATA}


def key_inputs(plan: dict, splits, tokenizer, settings: dict) -> dict:
    from importlib.metadata import version

    recipe = plan["recipe"]
    data = {k: v for k, v in recipe["data"].items() if k != "tokenization_cache"}
    sources = [source for _, source in all_sources(recipe)]  # each source of a mixture too
    hub = {name: getattr(d, "_fingerprint", None) for name in ("train", "eval", "evaluation", "retention")
           if (d := getattr(splits, name, None)) is not None} if any("hub" in s for s in sources) else {}
    return {
        "runner": __version__,
        "libraries": {name: version(name) for name in LIBRARIES},
        "task": plan["task"], "format": plan["data"]["format"],
        "data": data, "sources": sources,
        "files": {path: sha256(Path(path)) for path in local_files(recipe)},
        "hub_fingerprints": hub,
        "settings": settings,
        "tokenizer": tokenizer_hash(tokenizer),
        # the runner renders and masks conversations itself: a change to that code must miss
        "chat_masks": sha256(Path(__file__).with_name("chat_masks.py")),
        "tool_calls": sha256(Path(__file__).with_name("tool_calls.py")),  # how tool calls reach the template
        "chat_template": sha256(Path(recipe["model"]["chat_template"])) if recipe["model"]["chat_template"] else None,
    }


def tokenizer_hash(tokenizer) -> str:
    """sha256 over the files save_pretrained writes: vocabulary, merges, special tokens, chat template."""
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def store(root: Path, key: str, dataset, about: dict) -> bool:
    """Write the entry under a private name, then rename it into place; False if it could not be written."""
    temporary = root / f".tmp-{key[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        remove_stale(root)
        dataset.save_to_disk(str(temporary))
        files = {p.name: p.stat().st_size for p in temporary.iterdir() if p.is_file()}
        record = {**about, "rows": len(dataset), "files": files}
        (temporary / RECORD).write_text(json.dumps(record, indent=2))
        try:
            os.rename(temporary, root / key)
        except OSError:  # another process stored the same entry first: keep theirs
            shutil.rmtree(temporary, ignore_errors=True)
        return True
    except Exception as exc:  # noqa: BLE001 - a full or read-only disk costs the cache, never the run
        _say(f"tokenization cache: could not store in {root}: {type(exc).__name__}: {exc}")
        shutil.rmtree(temporary, ignore_errors=True)
        return False


def remove_stale(root: Path, older_than_s: float = 86400) -> None:
    """Temporary directories a crashed writer left behind (a day old: no writer takes that long)."""
    import time

    own = re.compile(r"\.tmp-[0-9a-f]{16}-[0-9]+-[0-9a-f]{8}")  # the names store() gives them, nothing else
    for leftover in (p for p in root.glob(".tmp-*") if own.fullmatch(p.name)):
        try:
            if time.time() - leftover.stat().st_mtime > older_than_s:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


def load(entry: Path):
    """The stored dataset, or None; an incomplete or damaged entry is removed so it is rebuilt."""
    if not entry.is_dir():
        return None
    try:
        record = json.loads((entry / RECORD).read_text())
        sizes = {name: (entry / name).stat().st_size for name in record["files"]}
        if sizes != record["files"]:
            raise ValueError("file sizes differ from the entry's record")
        import datasets

        dataset = datasets.load_from_disk(str(entry))
        if len(dataset) != record["rows"]:
            raise ValueError("row count differs from the entry's record")
        return dataset
    except Exception as exc:  # noqa: BLE001 - any damage means: rebuild
        _say(f"tokenization cache: ignoring damaged entry {entry.name} ({type(exc).__name__}: {exc}); rebuilding")
        shutil.rmtree(entry, ignore_errors=True)
        return None


def _say(message: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr)

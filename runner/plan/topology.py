"""Where a run executes: how many processes, on how many machines, through which engine.

The recipe never says this (the same recipe runs on one GPU or sixty-four); the plan takes it
as an input (`plan --world-size N`, or the launcher's environment at run time) to reconcile the
batch and estimate memory per device.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Topology:
    world_size: int = 1          # processes in all (GPUs), across every machine
    num_machines: int = 1
    engine: str = "single"       # "single" | "ddp" | "deepspeed" | "fsdp"
    zero_stage: int | None = None  # DeepSpeed ZeRO stage, when engine == "deepspeed"
    offload_optimizer: bool = False
    offload_params: bool = False
    # DeepSpeed only: whether save_model gathers the shards into one 16-bit model (ZeRO-3 needs it for a whole save)
    zero3_save_16bit_model: bool | None = None
    deepspeed_config_file: str | None = None  # the DeepSpeed JSON, checked against the recipe (runner/plan/deepspeed_json.py)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def shards_weights(self) -> str | None:
        """The engine's name when it splits the weights themselves across processes (ZeRO-3, FSDP), else None."""
        if self.engine == "deepspeed" and self.zero_stage == 3:
            return "DeepSpeed ZeRO-3"
        return "FSDP" if self.engine == "fsdp" else None


# --- where a topology comes from: an Accelerate config file, or the launcher's environment -----

# deepspeed_config keys Accelerate 1.15 refuses beside a deepspeed_config_file (DeepSpeedPlugin._deepspeed_config_checks)
YAML_KEYS_IGNORED_WITH_A_FILE = frozenset({
    "gradient_accumulation_steps", "gradient_clipping", "zero_stage", "offload_optimizer_device",
    "offload_param_device", "offload_param_nvme_path", "offload_optimizer_nvme_path", "zero3_save_16bit_model"})
ENGINES = {"NO": "single", "MULTI_GPU": "ddp", "MULTI_CPU": "ddp", "DEEPSPEED": "deepspeed", "FSDP": "fsdp"}


def from_accelerate_config(path: str, world_size: int | None = None, num_machines: int | None = None) -> Topology:
    """The topology an `accelerate launch --config_file PATH` run gets; explicit counts win over the file's.

    Raises ValueError with a readable message for a file that is not an Accelerate config.
    """
    import yaml  # PyYAML comes with accelerate

    config = yaml.safe_load(Path(path).read_text())
    if not isinstance(config, dict) or "distributed_type" not in config:
        raise ValueError(f"{path} is not an Accelerate config (no distributed_type)")
    kind = str(config["distributed_type"])
    if kind not in ENGINES:
        raise ValueError(f"{path}: distributed_type {kind} is not one the runner supports ({', '.join(ENGINES)})")
    size = world_size or int(config.get("num_processes") or 1)
    machines = num_machines or int(config.get("num_machines") or 1)
    engine = ENGINES[kind] if size > 1 or kind in ("DEEPSPEED", "FSDP") else "single"
    if engine == "deepspeed":
        section = config.get("deepspeed_config") or {}
        ignored = sorted(set(section) & YAML_KEYS_IGNORED_WITH_A_FILE) if section.get("deepspeed_config_file") else []
        if ignored:
            raise ValueError(f"{path} names a deepspeed_config_file and also sets {', '.join(ignored)} under "
                             "deepspeed_config: Accelerate refuses that combination; set them in the DeepSpeed JSON")
        return Topology(size, machines, engine,
                        **_deepspeed_settings(section, path, _true(section.get("zero3_save_16bit_model"))))
    if engine == "fsdp":
        offload = _true((config.get("fsdp_config") or {}).get("fsdp_offload_params"))
        return Topology(size, machines, engine, offload_params=offload)
    return Topology(size, machines, engine)


def _deepspeed_settings(section: dict, yaml_path: str, save_16bit: bool) -> dict:
    """ZeRO stage, offloads and the 16-bit gather on save, from the DeepSpeed JSON the YAML names or from the YAML.

    `save_16bit`: Accelerate's zero3_save_16bit_model (the YAML without a JSON, or the launcher's environment;
    default false), which also fills an "auto" gather setting in the JSON; a JSON without the key gets DeepSpeed's
    default, false.
    """
    named = section.get("deepspeed_config_file")
    if named:
        file = deepspeed_file(named, yaml_path)
        if file is None:
            raise ValueError(f"{yaml_path} names deepspeed_config_file {named}, which does not exist")
        zero = json.loads(file.read_text()).get("zero_optimization", {})
        gather = zero.get("stage3_gather_16bit_weights_on_model_save",
                          zero.get("stage3_gather_fp16_weights_on_model_save", False))  # the older name
        return {"zero_stage": int(zero.get("stage", 0)),
                "offload_optimizer": (zero.get("offload_optimizer") or {}).get("device", "none") != "none",
                "offload_params": (zero.get("offload_param") or {}).get("device", "none") != "none",
                "zero3_save_16bit_model": save_16bit if gather == "auto" else _true(gather),
                "deepspeed_config_file": str(file)}
    return {"zero_stage": int(section.get("zero_stage", 0)),
            "offload_optimizer": str(section.get("offload_optimizer_device", "none")).lower() != "none",
            "offload_params": str(section.get("offload_param_device", "none")).lower() != "none",
            "zero3_save_16bit_model": save_16bit}


def deepspeed_file(named: str, yaml_path: str) -> Path | None:
    """The DeepSpeed JSON an Accelerate YAML names: relative to the launch directory as Accelerate reads it,
    else to the repository holding the YAML (accelerate_configs/deepspeed/zero3.json), else beside the YAML."""
    config_dir = Path(yaml_path).absolute().parent
    for candidate in (Path(named), config_dir.parent / named, config_dir / named, config_dir / Path(named).name):
        if candidate.is_file():
            return candidate.absolute()
    return None


def from_environment(env=None) -> Topology:
    """The topology of the running process, read from what `accelerate launch` / torchrun export.

    Without a launcher this is a single process; nothing here touches torch.
    """
    env = os.environ if env is None else env
    size = int(env.get("WORLD_SIZE", "1"))
    local = int(env.get("LOCAL_WORLD_SIZE", str(size)))
    machines = max(1, size // local) if local else 1
    if _true(env.get("ACCELERATE_USE_DEEPSPEED")):
        config_file = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
        save_16bit = _true(env.get("ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"))
        if config_file and config_file != "None" and Path(config_file).is_file():
            settings = _deepspeed_settings({"deepspeed_config_file": config_file}, config_file, save_16bit)
        else:
            settings = _deepspeed_settings({
                "zero_stage": env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"),
                "offload_optimizer_device": env.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none"),
                "offload_param_device": env.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "none")}, "", save_16bit)
        return Topology(size, machines, "deepspeed", **settings)
    if _true(env.get("ACCELERATE_USE_FSDP")):
        return Topology(size, machines, "fsdp", offload_params=_true(env.get("FSDP_OFFLOAD_PARAMS")))
    return Topology(size, machines, "ddp" if size > 1 else "single")


def _true(value) -> bool:
    """A flag as Accelerate reads it: only "true" (any case) is true; "1" or "yes" are not."""
    return str(value).strip().lower() == "true"

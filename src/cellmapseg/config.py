"""Typed configuration: YAML -> schema validation (defaults from the schema) -> dataclasses.

The schema (config_schema.yaml, beside this file) is the single source of defaults; the
dataclasses below carry no defaults of their own so the two can never disagree.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators

from cellmapseg import classes as classes_mod
from cellmapseg.atomic import write_text
from cellmapseg.classes import Ontology
from cellmapseg.errors import ConfigError
from cellmapseg.layout import RESULTS


@dataclass(frozen=True)
class SyntheticConfig:
    enabled: bool
    seed: int
    n_datasets: int
    n_train: int
    n_val: int
    shape: tuple[int, int, int]
    shape_jitter: float
    large_shape: tuple[int, int, int]
    small_shape: tuple[int, int, int]
    layout: str  # "nifti" or "zarr"

    @property
    def zarr(self) -> bool:
        return self.enabled and self.layout == "zarr"


@dataclass(frozen=True)
class ZarrConfig:
    """The challenge's Zarr data: a data root and crop manifests (the Zarr route)."""

    root: str | None
    train_manifest: str | None
    test_manifest: str | None
    validation_crops: tuple[int | str, ...]
    nifti_copy: bool  # NIfTI copies of the crops instead of references read in place

    @property
    def enabled(self) -> bool:
        return self.root is not None


@dataclass(frozen=True)
class DataConfig:
    datalist: str  # resolved: never None once loaded (`_resolve_datalist`)
    dataroot: str
    spacing_nm: tuple[float, float, float]
    spacing_tolerance: float
    pad_image: str | float
    padding_mask: str  # "none", "border" or "zeros" (data.padding)
    strict_annotations: bool
    zarr: ZarrConfig
    synthetic: SyntheticConfig


@dataclass(frozen=True)
class SubmissionConfig:
    model: str | None
    placement: str  # "exact" or "official" (data.resample.match_crop_space)


@dataclass(frozen=True)
class CachingConfig:
    strategy: str
    store_dir: str
    disk_dir: str
    d_threshold_mb: float
    ram_fraction: float
    rank_allowance_gb: float
    probe_crops: int
    probe_max_ranks: int
    probe_patches: int


@dataclass(frozen=True)
class InferenceConfig:
    overlap: float
    sigma_scale: float
    sw_batch_size: int
    block_size: int
    tta_flips: bool
    threshold: float | tuple[float, ...]

    def thresholds(self, n: int) -> list[float]:
        """One threshold per channel of an `n`-channel ontology (length checked on load)."""
        t = self.threshold
        return list(t) if isinstance(t, tuple) else [float(t)] * n


@dataclass(frozen=True)
class Allocation:
    """What one training job asks the scheduler for, per node (None: not set here)."""

    gpus: int | None
    cpus: int | None
    mem_gb: float | None
    nodes: int | None

    @property
    def mem_mb(self) -> int | None:
        return None if self.mem_gb is None else int(round(self.mem_gb * 1024))


@dataclass(frozen=True)
class TrainConfig:
    gpus: int
    cpu_ranks: int
    num_workers: int
    cpu_threads: int | None
    deterministic: bool
    tensorboard: bool
    mlflow: bool
    cuda_env: dict[str, str]
    allocation: Allocation  # every model's, unless the model sets its own

    @property
    def world_size(self) -> int:
        """Ranks of one node of a job with the default allocation (the models' own
        allocations: Config.world_size)."""
        return self.gpus if self.gpus > 0 else self.cpu_ranks


@dataclass(frozen=True)
class NetworkConfig:
    type: str
    args: dict[str, Any]  # backbone arguments, validated per type by the schema

    def as_dict(self) -> dict[str, Any]:
        """The network section as configured (what a checkpoint records and is checked against)."""
        return {"type": self.type, **copy.deepcopy(self.args)}


@dataclass(frozen=True)
class ModelConfig:
    name: str  # the key under `models`: results/{name}/, and the prefix of its config keys
    network: NetworkConfig
    roi_size: tuple[int, int, int]
    num_samples: int
    batch_size: int
    train_sub_epochs: int
    epochs: int
    eval_epochs: int
    optimizer: str
    lr: float
    weight_decay: float
    schedule: str
    warmup: float
    grad_accumulation: int
    clip_grad: float
    bf16: bool
    dice_weight: float
    ce_weight: float
    class_weights: tuple[float, ...] | dict[str, float] | str | None
    loss: str  # "dice" or "tversky"
    tversky_alpha: float
    tversky_beta: float
    ema_decay: float | None
    sampling: str  # "uniform" or "class_weighted"
    mixed_precision: bool
    syncbn: bool
    save_weights_only: bool
    save_only_last_ckpt: bool
    checkpoint_every: int
    mixup_p: float
    mixup_beta: float
    ds_weights: tuple[float, ...] | None
    lvl_weights: tuple[float, ...] | None
    allocation: Allocation  # its keys replace train.allocation's where set

    def class_weight_list(self, ontology: Ontology) -> list[float]:
        """One loss weight per atomic class, in channel order (names and length checked on
        load). A mapping may name a group: its weight goes to each member that the mapping
        does not name itself (so `nuc: 2` means the nucleus whether nuc is atomic or a group)."""
        w = self.class_weights
        if isinstance(w, str):
            raise ValueError(f"{self.key('class_weights')} = {w!r} is a rule: resolve it from "
                             "the inventory first (cellmapseg.train.preflight)")
        if not isinstance(w, dict):
            return [float(v) for v in w] if w else [1.0] * ontology.num_channels
        out = [1.0] * ontology.num_channels
        for name, weight in w.items():
            if ontology.is_group(name):
                for c in ontology.members(name):
                    if ontology.atomic[c] not in w:
                        out[c] = float(weight)
            else:
                out[ontology.channel(name)] = float(weight)
        return out

    def key(self, field: str) -> str:
        """The dotted config key of one of this model's fields, for messages."""
        return f"models.{self.name}.{field}"


@dataclass(frozen=True)
class TTAConfig:
    flips: bool
    rot90: bool

    def __bool__(self) -> bool:
        return self.flips or self.rot90


@dataclass(frozen=True)
class VariantConfig:
    enabled: bool
    model: str
    tta: TTAConfig  # false (no flips, no rot90): not a TTA variant
    thresholds: str  # "fixed" or "tuned"


@dataclass(frozen=True)
class EnsembleConfig:
    enabled: bool
    method: str  # "mean" or "per_class"
    members: tuple[str, ...]  # [] = every model (resolved by Config.entries)
    thresholds: str


@dataclass(frozen=True)
class TuningConfig:
    folds: int
    grid: tuple[float, ...]


@dataclass(frozen=True)
class BootstrapConfig:
    resamples: int
    confidence: float


@dataclass(frozen=True)
class Entry:
    """A row of the comparison: a trained model, a variant of one, or an ensemble.

    `network` entries (models and TTA variants) run a network and keep its probabilities; the
    others are derived from kept probabilities (`sources`, network entries) by `method`:
    "single" (one source), "mean" or "per_class"."""

    name: str
    kind: str  # "model", "tta", "tuned" or "ensemble"
    model: str | None  # the trained model whose checkpoint a network entry runs
    sources: tuple[str, ...]
    method: str
    thresholds: str  # "fixed" or "tuned"
    tta: TTAConfig | None = None

    @property
    def network(self) -> bool:
        return self.kind in ("model", "tta")

    @property
    def members(self) -> tuple[str, ...]:
        """The distinct sources, in order: the kept probabilities a derived entry reads."""
        return tuple(dict.fromkeys(self.sources))


@dataclass(frozen=True)
class Config:
    seed: int
    classes: Ontology
    data: DataConfig
    caching: CachingConfig
    train: TrainConfig
    inference: InferenceConfig
    submission: SubmissionConfig
    models: dict[str, ModelConfig]
    variants: dict[str, VariantConfig]
    ensembles: dict[str, EnsembleConfig]
    tuning: TuningConfig
    bootstrap: BootstrapConfig

    @property
    def entries(self) -> dict[str, Entry]:
        """Every row of the comparison in order: models, variants, ensembles (checked on
        load by `_check_entries`)."""
        out = {m: Entry(m, "model", m, (m,), "single", "fixed") for m in self.models}
        for name, v in self.variants.items():
            if not v.enabled:
                continue
            if v.tta:
                out[name] = Entry(name, "tta", v.model, (name,), "single", "fixed", v.tta)
            else:
                out[name] = Entry(name, "tuned", None, (v.model,), "single", "tuned")
        for name, e in self.ensembles.items():
            if not e.enabled:
                continue
            members = e.members or tuple(self.models)
            out[name] = Entry(name, "ensemble", None, tuple(members), e.method, e.thresholds)
        return out

    @property
    def network_entries(self) -> tuple[str, ...]:
        """Entries that run a network (models and TTA variants)."""
        return tuple(n for n, e in self.entries.items() if e.network)

    @property
    def derived_entries(self) -> tuple[str, ...]:
        """Entries predicted from kept probabilities (tuned variants and ensembles)."""
        return tuple(n for n, e in self.entries.items() if not e.network)

    def candidate_tables(self, name: str) -> dict[str, tuple[str, str]]:
        """What a derived entry's choices are made from: {member: (entry whose per-crop
        tables hold its candidates, "sweep" or "eval")}; a mean ensemble's averaged
        probabilities are the member "mean" (combine.choose.MEAN), swept as the ensemble."""
        e = self.entry(name)
        if e.method == "mean":
            return {"mean": (name, "sweep")} if e.thresholds == "tuned" else {}
        kind = "sweep" if e.thresholds == "tuned" else "eval"
        return {m: (m, kind) for m in e.members}

    @property
    def swept(self) -> tuple[str, ...]:
        """Entries whose validation crops are scored at every threshold of tuning.grid."""
        out = [owner for n in self.derived_entries
               for owner, kind in self.candidate_tables(n).values() if kind == "sweep"]
        return tuple(dict.fromkeys(out))

    def trained_model(self, name: str) -> str:
        """The trained model under an entry: its own, a variant's, an ensemble's first
        member's (whose training config holds the label values the report reads)."""
        e = self.entry(name)
        return e.model if e.model is not None else self.trained_model(e.members[0])

    def sweep_sources(self, name: str) -> tuple[str, ...]:
        """The network entries whose kept probabilities a sweep of `name` averages."""
        e = self.entry(name)
        return e.members if e.kind == "ensemble" else (name,)

    def entry(self, name: str) -> Entry:
        entries = self.entries
        if name not in entries:
            known = ", ".join(entries) or "none"
            raise ConfigError(f"config: unknown model, variant or ensemble '{name}' "
                              f"(configured: {known})")
        return entries[name]

    @property
    def submission_model(self) -> str:
        """The model whose test-crop predictions are submitted."""
        if self.submission.model is not None:
            self.entry(self.submission.model)  # a known entry, or one line naming the key
            return self.submission.model
        if not self.models:
            raise ConfigError("config: key 'submission.model': no models are configured")
        return next(iter(self.models))

    def model(self, name: str) -> ModelConfig:
        if name not in self.models:
            known = ", ".join(sorted(self.models)) or "none"
            raise ConfigError(f"config: unknown model key '{name}' (configured: {known})")
        return self.models[name]

    def allocation(self, name: str) -> Allocation:
        """Model `name`'s training job, per node: its own allocation's keys, else
        train.allocation's; GPUs default to train.gpus and nodes to 1."""
        own, shared = self.model(name).allocation, self.train.allocation

        def pick(key: str) -> Any:
            value = getattr(own, key)
            return getattr(shared, key) if value is None else value

        gpus, nodes = pick("gpus"), pick("nodes")
        return Allocation(gpus=self.train.gpus if gpus is None else gpus, cpus=pick("cpus"),
                          mem_gb=pick("mem_gb"), nodes=1 if nodes is None else nodes)

    def ranks_per_node(self, name: str) -> int:
        """Training ranks on each node: its GPUs (GPU training), or train.cpu_ranks."""
        return self.allocation(name).gpus if self.train.gpus > 0 else self.train.cpu_ranks

    def world_size(self, name: str) -> int:
        return self.ranks_per_node(name) * self.allocation(name).nodes

    @property
    def probe_allocation(self) -> Allocation:
        """The memory probe's job: one node as large as the largest training job's, on every
        key (the same node type; per-rank costs at the densest ranks per node)."""
        jobs = [self.allocation(n) for n in self.models]

        def most(key: str) -> Any:
            values = [getattr(a, key) for a in jobs if getattr(a, key) is not None]
            return max(values, default=None)

        return Allocation(gpus=most("gpus") or self.train.gpus, cpus=most("cpus"),
                          mem_gb=most("mem_gb") or self.train.allocation.mem_gb, nodes=1)

    @property
    def most_ranks_per_node(self) -> int:
        """The most ranks any model's job starts on one node (the densest node to plan for)."""
        return max((self.ranks_per_node(n) for n in self.models),
                   default=self.train.world_size)

    @property
    def probe_ranks(self) -> int:
        """Ranks of the memory probe: most_ranks_per_node capped by caching.probe_max_ranks, so
        that per-rank costs are measured at that density."""
        return max(1, min(self.most_ranks_per_node, self.caching.probe_max_ranks))


@cache
def schema() -> dict[str, Any]:
    text = resources.files("cellmapseg").joinpath("config_schema.yaml").read_text()
    return yaml.safe_load(text)


def _validator_with_defaults() -> type:
    """Draft 2020-12 validator that fills `default`s while it validates (jsonschema FAQ pattern)."""
    base = Draft202012Validator
    check_properties = base.VALIDATORS["properties"]

    def properties(validator, props, instance, sch):  # jsonschema callback
        if isinstance(instance, dict):
            for key, sub in props.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from check_properties(validator, props, instance, sch)

    return validators.extend(base, {"properties": properties})


def _dotted(path: typing.Iterable[Any]) -> str:
    return ".".join(str(p) for p in path) or "<root>"


_JSON_TYPES = {
    dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
    float: "number", type(None): "null",
}


def _describe(error) -> list[str]:  # jsonschema.ValidationError
    """One line per problem, naming the dotted key."""
    path = list(error.absolute_path)
    if "x-message" in error.schema:  # the schema's own wording (network-specific keys)
        return [f"config: key '{_dotted(path)}' {error.schema['x-message']}"]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed]
        return [f"config: unknown key '{_dotted([*path, k])}'" for k in extra]
    value = error.instance
    if error.validator == "type":
        got = _JSON_TYPES.get(type(value), type(value).__name__)
        return [
            f"config: key '{_dotted(path)}' has value {value!r} of type {got}; "
            f"expected {error.validator_value}"
        ]
    if error.validator in ("oneOf", "anyOf"):
        expected = " or ".join(_summarise(s) for s in error.validator_value)
        return [f"config: key '{_dotted(path)}' has value {value!r}; expected {expected}"]
    return [f"config: key '{_dotted(path)}' = {value!r}: {error.message}"]


def _summarise(sub: dict[str, Any]) -> str:
    if "enum" in sub:
        return "one of " + "/".join(map(str, sub["enum"]))
    if "$ref" in sub:
        return sub["$ref"].rsplit("/", 1)[-1]
    if sub.get("type") == "array" and "minItems" in sub and sub.get("minItems") == sub.get(
        "maxItems"
    ):
        return f"a list of {sub['minItems']} {sub.get('items', {}).get('type', 'value')}s"
    return str(sub.get("type", sub))


def validate(raw: dict[str, Any]) -> dict[str, Any]:
    """Return a validated deep copy of `raw` with every default filled in."""
    resolved = copy.deepcopy(raw) if raw is not None else {}
    if not isinstance(resolved, dict):
        raise ConfigError(f"config: top level must be a mapping, got {type(resolved).__name__}")
    validator = _validator_with_defaults()(schema())
    errors = sorted(validator.iter_errors(resolved), key=lambda e: list(map(str, e.path)))
    lines: list[str] = []
    for err in errors:
        lines.extend(_describe(err))
    if lines:
        raise ConfigError("\n".join(dict.fromkeys(lines)))
    return resolved


def _build(cls: type, value: Any) -> Any:
    """Construct nested frozen dataclasses (and tuples) from validated plain data."""
    if cls is Ontology:
        return classes_mod.from_config(value)
    if cls is NetworkConfig:
        args = {k: v for k, v in value.items() if k != "type"}
        return NetworkConfig(type=value["type"], args=args)
    if cls is ModelConfig:
        hints = typing.get_type_hints(cls)
        fields = [f.name for f in dataclasses.fields(cls) if f.name != "name"]
        return cls(name=value["name"], **{f: _build(hints[f], value["fields"][f]) for f in fields})
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        return cls(**{f.name: _build(hints[f.name], value[f.name])
                      for f in dataclasses.fields(cls)})
    origin = typing.get_origin(cls)
    if origin is dict:
        _, val_t = typing.get_args(cls)
        if val_t is ModelConfig:
            return {k: _build(val_t, {"name": k, "fields": v}) for k, v in value.items()}
        return {k: _build(val_t, v) for k, v in value.items()}
    if origin is tuple:
        return tuple(value)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        if isinstance(value, list):
            return tuple(value)
        if isinstance(value, dict):
            inner = [t for t in typing.get_args(cls) if dataclasses.is_dataclass(t)]
            return _build(inner[0], value) if inner else dict(value)
        return value
    return value


def from_dict(raw: dict[str, Any]) -> Config:
    cfg = _build(Config, validate(raw))
    _check_lengths(cfg)
    _check_route(cfg.data)
    _check_entries(cfg)
    return _resolve_datalist(cfg)


def _resolve_datalist(cfg: Config) -> Config:
    """data.datalist null -> where its route writes it (the layout's folders)."""
    if cfg.data.datalist is not None:
        return cfg
    folder = RESULTS.converted_dir if cfg.data.zarr.enabled else RESULTS.synthetic_dir
    data = dataclasses.replace(cfg.data, datalist=str(folder / "datalist.json"))
    return dataclasses.replace(cfg, data=data)


def _check_route(data: DataConfig) -> None:
    """The Zarr route needs its root and train manifest together; the embedded dataset is
    written in the layout its route reads."""
    z, syn = data.zarr, data.synthetic
    if z.enabled and z.train_manifest is None:
        raise ConfigError("config: key 'data.zarr.train_manifest' is required with data.zarr.root")
    if not z.enabled and (z.train_manifest or z.test_manifest):
        raise ConfigError("config: key 'data.zarr.root' is required with a data.zarr manifest")
    if syn.zarr and not (z.enabled and z.test_manifest):
        raise ConfigError("config: key 'data.synthetic.layout' is zarr: set data.zarr.root, "
                          "train_manifest and test_manifest (where the dataset is written)")
    if syn.enabled and syn.layout == "nifti" and z.enabled:
        raise ConfigError("config: key 'data.zarr.root' is set but data.synthetic writes NIfTI; "
                          "set data.synthetic.layout to zarr or data.synthetic.enabled to false")


def _check_entries(cfg: Config) -> None:
    """Variants and ensembles name what they are built from; every row has a name of its own;
    one line per problem."""
    lines = [f"config: key '{section}.{name}': the name is already a model"
             for section in ("variants", "ensembles") for name in getattr(cfg, section)
             if name in cfg.models]
    lines += [f"config: key 'ensembles.{name}': the name is already a variant"
              for name in cfg.ensembles if name in cfg.variants]
    tta = {n for n, v in cfg.variants.items() if v.tta and v.enabled}
    for name, v in cfg.variants.items():
        key = f"variants.{name}"
        if not v.enabled:
            continue
        if v.tta and v.thresholds == "tuned":
            lines.append(f"config: key '{key}': tta and tuned thresholds are two variants: "
                         f"tune a variant whose model is this one")
        elif not v.tta and v.thresholds == "fixed":
            lines.append(f"config: key '{key}': set tta or thresholds: tuned (as it is, it "
                         f"is model {v.model})")
        elif v.tta and v.model not in cfg.models:
            lines.append(f"config: key '{key}.model': '{v.model}' is not a key of models")
        elif not v.tta and v.model not in cfg.models and v.model not in tta:
            lines.append(f"config: key '{key}.model': '{v.model}' is not a key of models or "
                         f"of a tta variant")
    for name, e in cfg.ensembles.items():
        if not e.enabled:
            continue
        if "mean" in e.members:
            lines.append(f"config: key 'ensembles.{name}.members': 'mean' names a mean "
                         "ensemble's averaged probabilities; rename that model")
        lines += [f"config: key 'ensembles.{name}.members': '{m}' is not a key of models or "
                  f"of a tta variant" for m in e.members if m not in cfg.models and m not in tta]
        if not e.members and not cfg.models:
            lines.append(f"config: key 'ensembles.{name}.members': no models are configured")
    if lines:
        raise ConfigError("\n".join(lines))


def _check_lengths(cfg: Config) -> None:
    """Per-class lists must have one value per atomic class, and per-class mappings name
    atomic classes: one line per key that does not."""
    n = cfg.classes.num_channels
    lists = {"inference.threshold": cfg.inference.threshold,
             **{m.key("class_weights"): m.class_weights for m in cfg.models.values()}}
    lines = [f"config: key '{key}' has {len(v)} values; classes.atomic has {n} classes"
             for key, v in lists.items() if isinstance(v, tuple) and len(v) != n]
    lines += [f"config: key '{key}.{name}': '{name}' is not a class of classes.atomic/groups"
              for key, v in lists.items() if isinstance(v, dict)
              for name in v if name not in cfg.classes.names]
    if lines:
        raise ConfigError("\n".join(lines))


def to_dict(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) of a config or any part of it: what the schema
    validated, defaults included. A model's name is its key, not one of its fields."""
    if isinstance(obj, (NetworkConfig, Ontology)):
        return obj.as_dict()
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (isinstance(obj, ModelConfig) and f.name == "name")}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return copy.deepcopy(obj)


def with_allocation(cfg: Config, name: str, gpus: int, nodes: int = 1) -> Config:
    """The config with model `name`'s allocation as the job got it: `gpus` per node and
    `nodes` are the rule's resources, which the config sets (models.NAME.allocation, else
    train.allocation and train.gpus) and a --set-resources may change. A CPU config
    (train.gpus = 0) keeps train.cpu_ranks per node whatever GPUs the allocation holds, so the
    embedded default runs unchanged in a GPU allocation."""
    want = cfg.allocation(name)
    if cfg.train.gpus > 0 and gpus <= 0:
        raise ConfigError(f"config: key 'train.gpus' = {cfg.train.gpus} (GPU training) but the "
                          f"job's allocation has resources.gpu = {gpus}; give the rule GPUs "
                          f"(models.{name}.allocation.gpus) or set train.gpus to 0")
    if (want.gpus, want.nodes) == (gpus, nodes):
        return cfg
    m = cfg.model(name)
    got = dataclasses.replace(m.allocation, gpus=int(gpus), nodes=int(nodes))
    return dataclasses.replace(cfg, models={**cfg.models,
                                            name: dataclasses.replace(m, allocation=got)})


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, val in update.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], val)
        else:
            out[key] = copy.deepcopy(val)
    return out


def load(*paths: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Load YAML files (later ones deep-merged over earlier ones, as Snakemake does)."""
    merged: dict[str, Any] = {}
    for path in paths:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config: file not found: {path}") from None
        except yaml.YAMLError as exc:
            detail = str(exc).replace("\n", " ")
            raise ConfigError(f"config: {path} is not valid YAML: {detail}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config: {path} must hold a mapping at the top level")
        merged = _deep_merge(merged, data)
    return from_dict(_deep_merge(merged, overrides or {}))


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def write_resolved(cfg: Config, path: str | Path) -> None:
    """Write the fully resolved config (defaults included) beside a stage's outputs."""
    write_text(path, "# Resolved configuration (defaults filled from the schema)\n" + to_yaml(cfg))

"""One home for every default: a frozen config, YAML presets, and strict `key=value` overrides."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

# Presets ship inside the package: the repository's configs/ folder is the import package
# `sidpipe.configs` (pyproject.toml maps it), read through importlib.resources so that an installed
# wheel works without the source tree.
PRESETS = "sidpipe.configs"


def preset_files() -> dict[str, Traversable]:
    """Every bundled preset, by name."""
    return {f.name[:-5]: f for f in resources.files(PRESETS).iterdir() if f.name.endswith(".yaml") and f.is_file()}


@dataclass(frozen=True)
class Config:
    """Everything that decides what `sidpipe run` computes. Precedence: CLI > preset > these defaults."""

    # Patches and the closed-form denoiser (paper Sec. 3.1, 3.6).
    patch_size: int = 15          # p: patches are p x p, d = C*p*p
    rho: float = 0.2              # fold window std on patch coords in [-1, 1]; inf = uniform average
    fold_truncate: float = 3.0    # the fold window is cut at this many stds (radius in px = floor(truncate*rho*(p-1)/2))
    # Sampling (Alg. 1-2).
    steps: int = 10               # T, flow-matching steps per scale
    eta: float = 0.0              # 0 = deterministic DDIM, 1 = fully stochastic
    blend_last_step: bool = False # the paper omits the two-scale blend on the last denoiser call
    warm_start: float = 1.0       # scales finer than the coarsest start at this noise level from the upsampled
                                  # coarser result (1 = from pure noise, the paper's Alg. 2; fewer steps below)
    # Pyramid (Alg. 2).
    num_scales: int = 0           # 0 = auto: coarsest reference short side ~= coarsest_ratio * p
    coarsest_ratio: float = 1.7   # target coarsest short side / p when num_scales = 0
    scale_factor: float = 2.0     # size ratio between neighbouring scales
    # Compute.
    precision: str = "auto"       # auto | bf16 | fp32: dtype of the denoiser's matrix products
    index: str = "auto"           # auto | exact | ivf (auto: exact below ivf_threshold patches, IVF above)
    index_scales: str = ""        # per-scale override, finest first, e.g. "ivf,ivf,exact" (missing = index)
    ivf_threshold: int = 0        # auto switches to IVF at this many reference patches (0 = device default)
    knn: int = 5                  # k: neighbours the IVF denoiser's softmax runs over
    nlist: int = 0                # IVF cells (0 = sqrt(N))
    nprobe: int = 1               # IVF cells visited per query (see benchmarks/ann_quality.py)
    nprobe_last: int = 8          # IVF cells visited at the last step t = 1, whose estimate is the output (0 = nprobe)
    pca: int = 0                  # PCA pre-transform of IVF descriptors to this many dims (0 = off)
    pq: int = 0                   # IVF-PQ sub-quantizers (0 = IVF-Flat)
    train_factor: int = 64        # IVF training points per cell
    index_memory: float = 3.0     # GiB one scale's IVF index may take while built (~1.5x its size); else PCA 64/32, then PQ
    rerank: int = 4               # with PCA/PQ, rerank * knn candidates are re-ranked by true distance
    rerank_last: int = 0          # rerank at the last step t = 1 (0 = auto: 16 for a refined index, else rerank)
    refine_pca: int = 128         # CPU: an IVF scale whose full vectors fit index_memory searches PCA-reduced
                                  # descriptors and faiss re-ranks by true distance (0 = plain IVF-Flat)
    query_stride: int = 0         # denoise every s-th patch position (1 = all, as in the paper; 0 = auto by size)
    dataset_stride: int = 1       # index every s-th reference patch (IVF only)
    device: str = "auto"          # auto | cpu | cuda
    query_block: int = 32         # queries are batched in fixed blocks of query_block^2 patch positions
    # Latent mode (sidpipe.codec; README "Latent mode").
    codec: str = "pixel"          # pixel | vae: sample a VAE's latents (needs --vae), decode in tiles
    vae_tile: int = 0             # encode/decode tile side in latent px (8x that in output px); 0 = auto:
                                  # 128 for a tiny decoder (AutoencoderTiny), 64 for AutoencoderKL (memory)
    vae_stats_tile: int = 128     # GroupNorm statistics tiles (latent px): a fixed grid, whatever vae_tile is;
                                  # a latent within one such tile gets exact statistics in one plain pass
    vae_stats_tiles: int = 16     # exact statistics over at most this many statistics tiles, else a stratified sample
    vae_attention_tokens: int = 16384  # exact global mid-block attention up to this many latent px, else strided keys
    # Output.
    seed: int = 0                 # sample k uses seed + k
    samples: int = 1
    width: int = 0                # 0 = reference width (with height 0: reference size)
    height: int = 0

    def __post_init__(self) -> None:
        _check(self.patch_size >= 3 and self.patch_size % 2 == 1, "patch_size must be an odd integer >= 3")
        _check(self.rho > 0, "rho must be > 0 (use inf for a uniform fold)")
        _check(self.fold_truncate > 0, "fold_truncate must be > 0")
        _check(self.steps >= 1, "steps must be >= 1")
        _check(0.0 <= self.eta <= 1.0, "eta must be in [0, 1]")
        _check(0.0 < self.warm_start <= 1.0, "warm_start must be in (0, 1] (1 = finer scales start from noise)")
        _check(self.num_scales >= 0, "num_scales must be >= 0 (0 = auto)")
        _check(self.coarsest_ratio > 0, "coarsest_ratio must be > 0")
        _check(self.scale_factor > 1.0, "scale_factor must be > 1")
        _check(self.precision in ("auto", "bf16", "fp32"), "precision must be auto, bf16 or fp32")
        _check(self.index in ("auto", "exact", "ivf"), "index must be auto, exact or ivf")
        _check(all(k in ("auto", "exact", "ivf") for k in self.scale_indexes()),
               "index_scales must be a comma list of auto, exact or ivf")
        _check(self.ivf_threshold >= 0, "ivf_threshold must be >= 0 (0 = device default)")
        _check(self.knn >= 1, "knn must be >= 1")
        _check(self.nlist >= 0 and self.nprobe >= 1, "nlist must be >= 0 and nprobe >= 1")
        _check(self.nprobe_last >= 0, "nprobe_last must be >= 0 (0 = nprobe)")
        _check(self.pca >= 0 and self.pq >= 0, "pca and pq must be >= 0 (0 = off)")
        _check(self.train_factor >= 1, "train_factor must be >= 1")
        _check(self.index_memory > 0, "index_memory must be > 0 (GiB)")
        _check(self.rerank >= 1, "rerank must be >= 1")
        _check(self.rerank_last >= 0 and self.refine_pca >= 0, "rerank_last and refine_pca must be >= 0 (0 = off)")
        _check(self.query_stride >= 0, "query_stride must be >= 0 (0 = auto by output size)")
        _check(self.dataset_stride >= 1, "dataset_stride must be >= 1")
        _check(self.device in ("auto", "cpu", "cuda"), "device must be auto, cpu or cuda")
        _check(self.query_block >= 1, "query_block must be >= 1")
        _check(self.codec in ("pixel", "vae"), "codec must be pixel or vae")
        _check((self.vae_tile == 0 or self.vae_tile >= 8) and self.vae_stats_tile >= 8,
               "vae_tile (0 = auto) and vae_stats_tile must be >= 8 (latent px)")
        _check(self.vae_stats_tiles >= 1 and self.vae_attention_tokens >= 1,
               "vae_stats_tiles and vae_attention_tokens must be >= 1")
        _check(self.samples >= 1, "samples must be >= 1")
        _check(self.seed >= 0, "seed must be >= 0")
        _check(self.width >= 0 and self.height >= 0, "width and height must be >= 0")

    def scale_indexes(self) -> list[str]:
        """The per-scale index kinds of `index_scales` (finest first); empty when not set."""
        return [k.strip() for k in self.index_scales.split(",")] if self.index_scales.strip() else []

    def replace(self, **changes: Any) -> Config:
        """Return a copy with `changes` applied; unknown keys or wrong types raise ConfigError."""
        known = {f.name: f for f in fields(self)}
        clean = {}
        for key, value in changes.items():
            if key not in known:
                raise ConfigError(f"unknown config key: {key!r} (known: {', '.join(sorted(known))})")
            clean[key] = _coerce(key, value, type(getattr(self, key)))
        try:
            return dataclasses.replace(self, **clean)
        except TypeError as exc:  # pragma: no cover - guarded by the checks above
            raise ConfigError(str(exc)) from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _coerce(key: str, value: Any, kind: type) -> Any:
    """Convert `value` (possibly a string from --set) to the type of the default; refuse mismatches."""
    if isinstance(value, str) and kind is not str:
        text = value.strip().lower()
        try:
            if kind is bool:
                if text in ("1", "true", "yes", "on"):
                    return True
                if text in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            if kind is int:
                return int(text)
            if kind is float:
                return float(text)
        except ValueError:
            raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected bool, got {value!r}")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected int, got {value!r}")
    if not isinstance(value, kind):
        raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}")
    return value


def preset_names() -> list[str]:
    return sorted(preset_files())


def load_preset(name_or_path: str) -> dict[str, Any]:
    """Read a preset by name (configs/NAME.yaml) or by path; returns its key/value mapping."""
    data = read_preset(name_or_path)
    data.pop("description", None)
    data.pop("cluster", None)  # Slurm settings, not the computation's (sidpipe.cluster.settings)
    return data


def preset_cluster(name_or_path: str) -> dict[str, Any]:
    """A preset's `cluster:` section (empty when it has none)."""
    section = read_preset(name_or_path).get("cluster") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"preset {name_or_path}: cluster must be a mapping of cluster settings")
    return section


def read_preset(name_or_path: str) -> dict[str, Any]:
    """A preset's YAML mapping as written, `description` included (see `load_preset`)."""
    path: Path | Traversable = Path(name_or_path)
    if not path.suffix:
        path = preset_files().get(name_or_path, path)
    if not path.is_file():
        raise ConfigError(f"unknown preset {name_or_path!r} (available: {', '.join(preset_names())})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"preset {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"preset {path} must be a mapping of config keys")
    return {k: (math.inf if v in ("inf", ".inf") else v) for k, v in data.items()}


def parse_set(items: list[str]) -> dict[str, str]:
    """Parse `--set key=value` strings (values stay strings; Config.replace converts them)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def load_config(preset: str = "default", overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the preset, then overrides (CLI), each checked key by key."""
    cfg = Config().replace(**load_preset(preset))
    return cfg.replace(**(overrides or {}))

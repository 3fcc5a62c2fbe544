"""A Stable Diffusion ONNX folder on ONNX Runtime: the only place edgeinv calls a model.

`OnnxStableDiffusion(folder)` checks the folder (files present, sizes as the manifest says,
shapes that fit together), opens one ONNX Runtime session per graph on demand, and exposes
the forward passes inversion and generation need, on numpy arrays:

    tokens -> token vectors (table lookup, with learned vectors appended) -> text encoder
    (latents, timesteps, text states) -> UNet;  latents <-> VAE
"""

from __future__ import annotations

import ctypes
import json
import os
from pathlib import Path

import numpy as np

from edgeinv import manifest
from edgeinv.errors import UserError
from edgeinv.tokenizer import ClipTokenizer

DEFAULT_MODEL_NAME = "tiny-sd-shapes-onnx"


def packaged_model_dir(name: str) -> Path | None:
    """A model shipped inside the installed package (package data), in any install mode."""
    from importlib.resources import files

    try:
        return Path(str(files("edgeinv") / name))
    except (ModuleNotFoundError, TypeError):
        return None


def default_model_dir() -> Path:
    """The shipped default model: $EDGEINV_MODEL, a source checkout's models/, or the installed package's copy."""
    if os.environ.get("EDGEINV_MODEL"):
        return Path(os.environ["EDGEINV_MODEL"])
    candidates = [c for c in (Path(__file__).resolve().parent.parent / "models" / DEFAULT_MODEL_NAME, packaged_model_dir("default_model")) if c is not None]
    for candidate in candidates:
        if (candidate / manifest.MANIFEST_NAME).is_file():
            return candidate
    return candidates[0]


MMAP_THRESHOLD_BYTES = 2**20
_allocator_tuned = False


def fix_mmap_threshold() -> None:
    """Serve allocations of 1 MiB and more from their own mappings, returned on free (glibc only).

    glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), so
    after the first UNet call the activations come from the heap, which keeps the freed
    pages and fragments: at SD 1.5's shape that is ~180 MB more peak (1954 vs 1773 MiB,
    one int8 UNet call) at the same speed; the default model runs as fast either way. A fixed
    threshold (glibc's M_MMAP_THRESHOLD, as MALLOC_MMAP_THRESHOLD_ would set it) turns the
    raising off. Process-wide, set once; other C libraries are unaffected."""
    global _allocator_tuned
    if _allocator_tuned or os.environ.get("MALLOC_MMAP_THRESHOLD_"):  # a user's own setting wins
        return
    _allocator_tuned = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, MMAP_THRESHOLD_BYTES)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): nothing to tune
        pass


def session_options(threads: int | None = None, arena: bool = False):
    """ONNX Runtime options for edgeinv's sessions.

    The CPU memory arena is off: it keeps freed activation blocks for reuse (reported to
    cost 0.25-0.5 GB at an SD 1.5-shaped UNet call; benchmarks/lean_unet.py has an arena-on
    row to confirm it). Prepacking stays on (the default): a prepacked weight replaces its
    original instead of doubling it. External weights are memory-mapped."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = arena
    if threads:
        options.intra_op_num_threads = threads
    return options


# Chunk sizing: resident memory of one UNet call ~ weights + BASE + rows x per-row activations.
# Per row, measured on SD 1.5's shape at 64x64 latents (fused attention): ~0.23 GB, i.e. about
# ACTIVATION_FACTOR x (latent pixels x first block width x 4 bytes); unfused attention adds the
# [heads, tokens, tokens] score matrix of the first level.
ACTIVATION_FACTOR = 48
# Interpreter, numpy, ONNX Runtime, the token table and the run's arrays: SD 1.5-shaped int8,
# `invert` at chunk 2 peaked at 2.03 GiB with 0.96 GB of graphs (benchmarks/lean_unet.py).
BASE_BYTES = 700 * 2**20
MAX_CHUNK = 64


def chunk_rows(weight_bytes: int, per_row_bytes: int, max_memory_bytes: int) -> int:
    """UNet rows per call so that weights + base + rows x per-row stays under `max_memory_bytes`."""
    room = max_memory_bytes - weight_bytes - BASE_BYTES
    return int(max(1, min(MAX_CHUNK, room // max(per_row_bytes, 1))))


DEVICES = ("auto", "cpu", "cuda", "openvino")


def openvino_options(threads: int | None = None) -> dict:
    """OpenVINO on the CPU with bf16 inference precision: at SD 1.5's shape 1.07 s per 64x64
    UNet sample against ONNX Runtime's CPU provider's 3.43 s on the same graph and PyTorch
    eager's 3.16 s (cosine 0.99973; benchmarks/results/openvino_ep.md). On CPUs without bf16
    OpenVINO computes in fp32."""
    options = {"device_type": "CPU", "load_config": json.dumps({"CPU": {"INFERENCE_PRECISION_HINT": "bf16"}})}
    if threads:
        options["num_of_threads"] = str(threads)
    return options


def available_providers(device: str = "auto", threads: int | None = None) -> list:
    """ONNX Runtime providers for `device` (auto: CUDA when onnxruntime-gpu sees a GPU), as
    InferenceSession takes them: names, or (name, options) pairs."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise UserError("--device cuda: ONNX Runtime has no CUDA provider; `pip uninstall onnxruntime && pip install onnxruntime-gpu` (installing both hides CUDA)")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "openvino":
        if "OpenVINOExecutionProvider" not in available:
            raise UserError("--device openvino: ONNX Runtime has no OpenVINO provider; `pip uninstall -y onnxruntime && pip install \"edgeinv[openvino]\"` "
                            "(both packages install the same module)")
        return [("OpenVINOExecutionProvider", openvino_options(threads)), "CPUExecutionProvider"]
    if device != "auto":
        raise UserError(f"--device {device}: unknown; choose one of {', '.join(DEVICES)}")
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]


class OnnxStableDiffusion:
    def __init__(self, folder: str | Path | None = None, device: str = "auto", threads: int | None = None):
        fix_mmap_threshold()
        self.folder = Path(folder) if folder is not None else default_model_dir()
        self.manifest = self._check_folder(self.folder)
        arch = self.manifest["architecture"]
        self.hidden_size = arch["hidden_size"]
        self.vocab_size = arch["vocab_size"]
        self.latent_channels = arch["latent_channels"]
        self.latent_size = arch["latent_size"]
        self.image_size = arch["image_size"]
        self.prediction_type = self.manifest["prediction_type"]
        self.vae_scaling_factor = self.manifest["vae_scaling_factor"]
        self.scheduler_config = read_json_config(self.folder / manifest.SCHEDULER_CONFIG)
        self.tokenizer = ClipTokenizer(self.folder / manifest.TOKENIZER_DIR)
        self.providers = available_providers(device, threads)
        self.threads = threads
        self._sessions: dict = {}
        self._table: np.ndarray | None = None
        self.learned: dict[int, np.ndarray] = {}  # token id -> vector, for tokens added at run time

    # ------------------------------------------------------------ checks

    @staticmethod
    def _check_folder(folder: Path) -> dict:
        if not folder.is_dir():
            raise UserError(f"{folder}: no such model folder; run `edgeinv export CHECKPOINT --out {folder}` first")
        record = manifest.read_manifest(folder)
        if record is None:
            if (folder / manifest.TEXT_ENCODER_IDS).is_file():
                raise UserError(f"{folder}: an ONNX export without edgeinv's additions; run `edgeinv export {folder}` once to adopt it (no torch needed)")
            if (folder / "model_index.json").is_file():
                raise UserError(f"{folder}: a PyTorch (diffusers) folder; convert it once with `edgeinv export {folder} --out {folder}-onnx`")
            raise UserError(f"{folder}: not a model folder (no {manifest.MANIFEST_NAME}); run `edgeinv export CHECKPOINT --out {folder}`")
        if record.get("format_version") != manifest.FORMAT_VERSION:
            raise UserError(f"{folder}/{manifest.MANIFEST_NAME}: format version {record.get('format_version')} is not {manifest.FORMAT_VERSION}; re-export with this edgeinv")
        _check_manifest_fields(folder, record)
        for entry in record["files"]:
            path = folder / entry["path"]
            if not path.is_file():
                raise UserError(f"{path}: missing from the model folder; re-export with `edgeinv export`")
            if not os.access(path, os.R_OK):
                raise UserError(f"{path}: not readable by this user (mode {path.stat().st_mode & 0o777:o}); ask its owner to run `chmod -R a+rX {folder}`")
            if path.stat().st_size != entry["bytes"]:
                raise UserError(f"{path}: {path.stat().st_size} bytes, the manifest says {entry['bytes']} (truncated or from another export); re-export with `edgeinv export`")
        for required in (manifest.SCHEDULER_CONFIG, f"{manifest.TOKENIZER_DIR}"):
            if not (folder / required).exists():
                raise UserError(f"{folder / required}: missing from the model folder; re-export with `edgeinv export`")
        arch = record["architecture"]
        if arch["cross_attention_dim"] != arch["hidden_size"]:
            raise UserError(f"{folder}: the UNet expects text states of width {arch['cross_attention_dim']} but the text encoder gives {arch['hidden_size']}; the files come from different models")
        unet_config = folder / "unet" / "config.json"
        if unet_config.is_file():
            sample_size = read_json_config(unet_config).get("sample_size")
            if isinstance(sample_size, int) and sample_size != arch["latent_size"]:
                raise UserError(f"{folder / manifest.MANIFEST_NAME}: latent_size {arch['latent_size']} but the UNet's config.json says {sample_size}; re-export (or adopt) the model instead of editing the manifest")
        if arch["image_size"] != arch["latent_size"] * arch["vae_scale_factor"]:
            raise UserError(f"{folder / manifest.MANIFEST_NAME}: image_size {arch['image_size']} is not latent_size x vae_scale_factor; re-export the model instead of editing the manifest")
        return record

    # ------------------------------------------------------------ sessions

    def session(self, relative: str):
        if relative not in self._sessions:
            import onnxruntime as ort

            if not os.access(self.folder / relative, os.R_OK):
                raise UserError(f"{self.folder / relative}: not readable by this user; ask its owner to run `chmod -R a+rX {self.folder}`")
            try:
                self._sessions[relative] = ort.InferenceSession(str(self.folder / relative), session_options(self.threads), providers=self.providers)
            except Exception as error:  # onnxruntime raises its own untyped errors
                raise UserError(f"{self.folder / relative}: ONNX Runtime cannot load it ({str(error).splitlines()[0][:200]}); re-export with `edgeinv export`") from None
        return self._sessions[relative]

    def graph_bytes(self, relative: str) -> int:
        """Bytes of one graph on disk, external data included (its weights in memory)."""
        path = self.folder / relative
        return sum(p.stat().st_size for p in path.parent.iterdir() if p.name == path.name or p.suffix == ".onnx_data") if path.is_file() else 0

    def unet_row_bytes(self) -> int:
        """Estimated activation memory of one UNet row at this model's latent size."""
        config_path = self.folder / "unet" / "config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        width = (config.get("block_out_channels") or [320])[0]
        pixels = self.latent_size**2
        per_row = ACTIVATION_FACTOR * pixels * width * 4
        if "MultiHeadAttention" not in str(self.manifest.get("exported_with", {}).get("attention", "")):
            heads = config.get("attention_head_dim", 8)
            heads = heads[0] if isinstance(heads, list) else heads
            per_row += heads * pixels * pixels * 4 * 2  # scores and softmax, materialised
        return per_row

    def chunk_size_for(self, max_memory_gb: float) -> int:
        """UNet rows per call that keep a run under `max_memory_gb` (at least 1)."""
        weights = self.graph_bytes(manifest.UNET) + self.graph_bytes(manifest.TEXT_ENCODER_EMBEDS)
        return chunk_rows(weights, self.unet_row_bytes(), int(max_memory_gb * 1e9))

    def weights_exceed(self, max_memory_gb: float) -> bool:
        return self.graph_bytes(manifest.UNET) + BASE_BYTES > max_memory_gb * 1e9

    def release(self, relative: str) -> None:
        """Drop a session and the memory its arena holds (the VAE encoder once latents are cached)."""
        self._sessions.pop(relative, None)

    @property
    def token_table(self) -> np.ndarray:
        """The vocabulary's token-embedding table [vocab_size, hidden_size] (memory-mapped read)."""
        if self._table is None:
            from safetensors import safe_open

            path = self.folder / manifest.TOKEN_EMBEDDINGS
            try:
                with safe_open(path, framework="numpy") as f:
                    self._table = f.get_tensor(manifest.TOKEN_EMBEDDINGS_KEY).astype(np.float32, copy=False)
            except PermissionError:
                raise UserError(f"{path}: not readable by this user; ask its owner to run `chmod -R a+rX {self.folder}`") from None
            except Exception as error:  # safetensors raises its own error types
                raise UserError(f"{path}: unreadable token table ({str(error)[:80]}); re-export with `edgeinv export`") from None
            if self._table.shape != (self.vocab_size, self.hidden_size):
                raise UserError(f"{self.folder / manifest.TOKEN_EMBEDDINGS}: shape {self._table.shape}, the manifest says {(self.vocab_size, self.hidden_size)}; re-export")
        return self._table

    # ------------------------------------------------------------ text

    def add_token(self, token: str, vector: np.ndarray) -> int:
        """Register a learned token and its vector; prompts may then use it."""
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.hidden_size:
            raise UserError(f"the embedding for {token!r} has width {vector.shape[0]}, this model's text encoder has {self.hidden_size} (an SD {'2.x' if vector.shape[0] == 1024 else '1.x'} embedding?)")
        token_id = self.tokenizer.add_token(token)
        self.learned[token_id] = vector
        return token_id

    def token_vectors(self, ids: np.ndarray, overrides: dict[int, np.ndarray] | None = None) -> np.ndarray:
        """Look ids up in the table; ids past the vocabulary take learned (or `overrides`) vectors."""
        return lookup_token_vectors(self.token_table, {**self.learned, **(overrides or {})}, ids)

    def encode_vectors(self, vectors: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
        """Token vectors [b, 77, d] -> text-encoder states [b, 77, d]."""
        session = self.session(manifest.TEXT_ENCODER_EMBEDS)
        feeds = {"inputs_embeds": vectors.astype(np.float32, copy=False)}
        if any(i.name == "input_ids" for i in session.get_inputs()):  # adopted optimum graphs
            feeds["input_ids"] = np.minimum(ids, self.vocab_size - 1).astype(_ids_dtype(session))
        return session.run(["last_hidden_state"], feeds)[0]

    def encode_prompts(self, prompts: list[str]) -> np.ndarray:
        ids = self.tokenizer(prompts)
        return self.encode_vectors(self.token_vectors(ids), ids)

    # ------------------------------------------------------------ image model

    def unet(self, latents: np.ndarray, timesteps: np.ndarray, text_states: np.ndarray) -> np.ndarray:
        session = self.session(manifest.UNET)
        timestep_input = next(i for i in session.get_inputs() if i.name == "timestep")
        timesteps = np.broadcast_to(np.asarray(timesteps, dtype=np.float32), (latents.shape[0],))
        if len(timestep_input.shape) == 0:  # scalar-timestep exports: one call per distinct step
            out = np.empty_like(latents)
            for t in np.unique(timesteps):
                rows = timesteps == t
                out[rows] = session.run(None, {"sample": latents[rows], "timestep": np.asarray(t, dtype=np.float32), "encoder_hidden_states": text_states[rows]})[0]
            return out
        dtype = np.int64 if "int64" in timestep_input.type else np.float32
        return session.run(None, {"sample": latents.astype(np.float32, copy=False), "timestep": timesteps.astype(dtype), "encoder_hidden_states": text_states.astype(np.float32, copy=False)})[0]

    def vae_encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images [b, 3, H, W] in [-1, 1] -> (mean, std) of the latent distribution, unscaled."""
        moments = self.session(manifest.VAE_ENCODER).run(None, {"sample": images.astype(np.float32, copy=False)})[0]
        mean, logvar = np.split(moments, 2, axis=1)
        return mean, np.exp(0.5 * np.clip(logvar, -30.0, 20.0))

    def vae_decode(self, latents: np.ndarray) -> np.ndarray:
        """Scaled latents -> images [b, 3, H, W] in [-1, 1]."""
        return self.session(manifest.VAE_DECODER).run(None, {"latent_sample": (latents / self.vae_scaling_factor).astype(np.float32)})[0]


def read_json_config(path: Path) -> dict:
    """A JSON object from a model folder, or a one-line error naming the file."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: missing from the model folder; re-export with `edgeinv export`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: unreadable ({type(error).__name__}: {str(error)[:80]}); re-export the model with `edgeinv export`") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a JSON object; re-export the model with `edgeinv export`")
    return data


def _check_manifest_fields(folder: Path, record: dict) -> None:
    """Every field a run reads, with the right type: a damaged or hand-edited manifest is one clear line."""
    path = folder / manifest.MANIFEST_NAME
    arch = record.get("architecture")
    wanted = ("vocab_size", "hidden_size", "cross_attention_dim", "latent_channels", "latent_size", "image_size", "vae_scale_factor")
    problems = []
    if not isinstance(arch, dict):
        problems.append("architecture")
    else:
        problems += [f"architecture.{k}" for k in wanted if not isinstance(arch.get(k), int) or isinstance(arch.get(k), bool) or arch.get(k) <= 0]
    if record.get("prediction_type") not in ("epsilon", "v_prediction"):
        problems.append("prediction_type")
    if not isinstance(record.get("vae_scaling_factor"), (int, float)) or not np.isfinite(record.get("vae_scaling_factor")) or record.get("vae_scaling_factor") <= 0:
        problems.append("vae_scaling_factor")
    files = record.get("files")
    if not isinstance(files, list) or not all(isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("bytes"), int) for f in files):
        problems.append("files")
    if problems:
        raise UserError(f"{path}: missing or invalid {', '.join(problems[:4])}; re-export the model with `edgeinv export`")


def lookup_token_vectors(table: np.ndarray, learned: dict[int, np.ndarray], ids: np.ndarray) -> np.ndarray:
    """Rows of `table` for `ids`; learned tokens (ids past the vocabulary) take their vectors."""
    vectors = table[np.minimum(ids, table.shape[0] - 1)]
    for token_id, vector in learned.items():
        vectors[ids == token_id] = vector
    return vectors


def _ids_dtype(session) -> type:
    ids_input = next(i for i in session.get_inputs() if i.name == "input_ids")
    return np.int32 if "int32" in ids_input.type else np.int64

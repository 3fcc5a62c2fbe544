"""Weight-only quantisation of an edgeinv ONNX folder (torch-free: onnx + onnxruntime).

    quantize_folder(fp32_folder, out, "int8")

Per graph (UNet, both text encoders, VAE encoder and decoder):
- MatMul weights -> `com.microsoft.MatMulNBits` (8 or 4 bits, symmetric, blocks along the
  input dimension; accuracy level 4 = int8 compute, the fastest on CPU). Gemm layers with a
  constant weight (the UNet's time embedding) are first rewritten as MatMul + Add.
- Conv weights -> int8 with one scale per output channel, dequantised by a `DequantizeLinear`
  in front of the Conv. ONNX Runtime does not constant-fold DequantizeLinear, so the weights
  stay int8 in memory (a quarter of fp32) and are expanded one layer at a time.
Activations stay fp32: attention (fused MultiHeadAttention), norms and softmax are unchanged.

Each quantised graph is run beside its fp32 original on seeded random inputs; the cosine of
the outputs is printed, recorded in the manifest, and a graph below `min_cosine` (0.999)
stops the whole export with a one-line `UserError` before anything is written to `out`.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeinv import manifest
from edgeinv.errors import UserError

MIN_COSINE = 0.999
TWO_GB = 2**31 - 1
GRAPHS = [manifest.UNET, manifest.TEXT_ENCODER_EMBEDS, manifest.TEXT_ENCODER_IDS, manifest.VAE_ENCODER, manifest.VAE_DECODER]


@dataclass(frozen=True)
class Scheme:
    """How one `--quantize` choice treats weights: UNet MatMuls at `unet_bits`; the text
    encoders' and VAE's at 8 bits (4-bit text encoders fall below cosine 0.999 on the default
    model, and they are a small part of the memory); Conv weights int8 everywhere."""

    name: str
    unet_bits: int
    unet_block_size: int
    other_bits: int = 8
    other_block_size: int = 128
    conv_bits: int = 8

    def matmul(self, relative: str) -> tuple[int, int]:
        return (self.unet_bits, self.unet_block_size) if relative == manifest.UNET else (self.other_bits, self.other_block_size)


SCHEMES = {
    "int8": Scheme("int8", unet_bits=8, unet_block_size=128),
    "int4": Scheme("int4", unet_bits=4, unet_block_size=32),
}


# ---------------------------------------------------------------- graph rewrites


def _initializers(model) -> dict:
    return {i.name: i for i in model.graph.initializer}


def gemm_to_matmul(model) -> int:
    """Rewrite Gemm(A, W[, C]) with a constant W, alpha = beta = 1, no transA as MatMul (+ Add),
    so the MatMul quantiser sees the weight. Returns how many were rewritten."""
    from onnx import helper, numpy_helper

    weights = _initializers(model)
    rewritten = 0
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in weights or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0
                or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        weight = weights[node.input[1]]
        if attrs.get("transB", 0):
            matrix = numpy_helper.to_array(weight).T
            new = numpy_helper.from_array(np.ascontiguousarray(matrix), f"{weight.name}_transposed")
            model.graph.initializer.append(new)
            weight_name = new.name
        else:
            weight_name = weight.name
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight_name], [product], name=f"{node.name}_matmul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_bias"))
        rewritten += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _drop_unused_initializers(model)
    return rewritten


def quantize_conv_weights(model, bits: int = 8) -> int:
    """Conv weights -> int8 initializer + per-output-channel DequantizeLinear. Returns bytes saved."""
    from onnx import TensorProto, helper, numpy_helper

    if bits != 8:
        raise ValueError("Conv weights: only 8 bits")
    weights = _initializers(model)
    uses = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    saved = 0
    nodes = []
    for node in model.graph.node:
        name = node.input[1] if node.op_type == "Conv" and len(node.input) > 1 else None
        if name not in weights or weights[name].data_type != TensorProto.FLOAT or uses[name] != 1:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weights[name]).astype(np.float32)
        peak = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
        scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        q = np.clip(np.rint(w / scale.reshape(-1, *[1] * (w.ndim - 1))), -127, 127).astype(np.int8)
        model.graph.initializer.remove(weights[name])
        model.graph.initializer.extend([numpy_helper.from_array(q, f"{name}_int8"), numpy_helper.from_array(scale, f"{name}_scale"),
                                        numpy_helper.from_array(np.zeros(w.shape[0], np.int8), f"{name}_zero")])
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale", f"{name}_zero"], [f"{name}_dequantized"],
                                      name=f"{name}_dequantize", axis=0))
        node.input[1] = f"{name}_dequantized"
        nodes.append(node)
        saved += w.nbytes - q.nbytes - scale.nbytes - w.shape[0]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return saved


def quantize_matmul_weights(model, bits: int, block_size: int):
    """MatMul with a constant 2-D weight -> MatMulNBits (onnxruntime's weight-only quantiser)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    import logging

    quiet = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level, quiet.level = quiet.level, logging.WARNING  # it logs every node at INFO
    try:
        config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, accuracy_level=4, op_types_to_quantize=("MatMul",), bits=bits)
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=True, accuracy_level=4, algo_config=config)
        quantizer.process()
    finally:
        quiet.level = level
    return quantizer.model.model


def _drop_unused_initializers(model) -> None:
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def quantize_graph(model, scheme: Scheme, relative: str = manifest.UNET) -> dict:
    """Quantise `model` (an onnx ModelProto with its weights loaded); returns what was done."""
    before = sum(_tensor_bytes(t) for t in model.graph.initializer)
    gemms = gemm_to_matmul(model)
    matmuls = sum(1 for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in _initializers(model))
    convs = sum(1 for n in model.graph.node if n.op_type == "Conv")
    quantize_conv_weights(model, scheme.conv_bits)
    bits, block_size = scheme.matmul(relative)
    model = quantize_matmul_weights(model, bits, block_size)
    after = sum(_tensor_bytes(t) for t in model.graph.initializer)
    return {"model": model, "matmul_bits": bits, "block_size": block_size, "matmul_layers": matmuls, "gemm_rewritten": gemms, "conv_layers": convs,
            "matmul_nbits": sum(1 for n in model.graph.node if n.op_type == "MatMulNBits"),
            "conv_int8": sum(1 for n in model.graph.node if n.op_type == "DequantizeLinear"),
            "weight_bytes_before": before, "weight_bytes_after": after}


def _tensor_bytes(tensor) -> int:
    if tensor.raw_data:
        return len(tensor.raw_data)
    for entry in tensor.external_data:
        if entry.key == "length":
            return int(entry.value)
    return 0


def save_graph(model, path: Path) -> None:
    """One protobuf when it fits; one external-data file beside it when over 2 GB."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    if sum(_tensor_bytes(t) for t in model.graph.initializer) > TWO_GB - (64 << 20):
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx_data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


# ---------------------------------------------------------------- accuracy check


def random_feeds(session, folder: Path, relative: str, seed: int = 0) -> dict:
    """Seeded random inputs of realistic scale for one of the folder's graphs."""
    record = manifest.read_manifest(folder)
    arch = record["architecture"]
    rng = np.random.default_rng(seed)
    latent = min(arch["latent_size"], 32)
    image = latent * arch["vae_scale_factor"]
    feeds = {}
    for graph_input in session.get_inputs():
        name = graph_input.name
        if name == "input_ids":
            ids = rng.integers(0, arch["vocab_size"] - 2, (2, arch["max_length"]))
            feeds[name] = ids.astype(np.int32 if "int32" in graph_input.type else np.int64)
        elif name == "inputs_embeds":
            from safetensors import safe_open

            with safe_open(folder / manifest.TOKEN_EMBEDDINGS, framework="numpy") as f:
                table = f.get_tensor(manifest.TOKEN_EMBEDDINGS_KEY)
            feeds[name] = table[rng.integers(0, arch["vocab_size"], (2, arch["max_length"]))].astype(np.float32)
        elif name == "timestep":
            scalar = len(graph_input.shape) == 0  # older exports take one timestep for the batch
            feeds[name] = np.float32(400.0) if scalar else np.array([100.0, 700.0], np.float32)
        elif name == "encoder_hidden_states":
            feeds[name] = rng.standard_normal((2, arch["max_length"], arch["cross_attention_dim"])).astype(np.float32)
        elif relative == manifest.VAE_ENCODER and name == "sample":
            feeds[name] = rng.uniform(-1, 1, (1, 3, image, image)).astype(np.float32)
        elif name in ("sample", "latent_sample"):
            batch = 2 if relative == manifest.UNET else 1
            feeds[name] = rng.standard_normal((batch, arch["latent_channels"], latent, latent)).astype(np.float32)
        else:
            raise UserError(f"{folder / relative}: unexpected input {name!r}; quantise an edgeinv export")
    return feeds


def _run(path: Path, feeds_from: Callable) -> tuple[list[np.ndarray], dict]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = False
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = feeds_from(session)
    return session.run(None, feeds), feeds


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


# ---------------------------------------------------------------- folders


def quantize_folder(source: Path, out: Path, scheme_name: str, min_cosine: float = MIN_COSINE, log: Callable[[str], None] = print,
                    source_label: str | None = None) -> dict:
    """Write a quantised copy of the edgeinv folder `source` to `out` (which must not exist).

    Everything goes to a temporary folder beside `out`, renamed into place only when every
    graph keeps `min_cosine`; otherwise `UserError` and nothing is left behind."""
    import onnx

    from edgeinv.onnx_surgery import point_initializer_at_safetensors

    scheme = SCHEMES[scheme_name]
    record = manifest.read_manifest(source)
    if record is None:
        raise UserError(f"{source}: not an edgeinv ONNX folder (no {manifest.MANIFEST_NAME}); export or adopt it first")
    if record.get("quantization"):
        raise UserError(f"{source}: already quantised ({record['quantization']['scheme']}); quantise the fp32 export instead")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: already exists and is not empty; choose a new --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        graphs = {}
        for path in source.rglob("*"):  # configs, tokenizer, scheduler, token table
            relative = path.relative_to(source)
            if path.is_file() and path.suffix not in (".onnx", ".onnx_data") and relative.name != manifest.MANIFEST_NAME:
                (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, tmp / relative)
        for relative in GRAPHS:
            start = time.time()
            model = onnx.load(str(source / relative), load_external_data=True)
            done = quantize_graph(model, scheme, relative)
            save_graph(done.pop("model"), tmp / relative)
            del model
            if relative == manifest.TEXT_ENCODER_IDS:  # keep reading the token table from the safetensors file
                from safetensors.numpy import load_file

                table = load_file(str(tmp / manifest.TOKEN_EMBEDDINGS))[manifest.TOKEN_EMBEDDINGS_KEY]
                point_initializer_at_safetensors(tmp / relative, tmp / manifest.TOKEN_EMBEDDINGS, table)
            # The fp32 reference first, its session closed before the quantised one opens.
            reference, feeds = _run(source / relative, lambda s: random_feeds(s, source, relative))
            quantised, _ = _run(tmp / relative, lambda s: feeds)
            done["cosine"] = round(min(cosine(a, b) for a, b in zip(reference, quantised)), 6)
            done["seconds"] = round(time.time() - start, 1)
            graphs[relative] = done
            log(f"{relative}: cosine {done['cosine']:.6f} to fp32, weights {done['weight_bytes_before'] / 2**20:.0f} -> "
                f"{done['weight_bytes_after'] / 2**20:.0f} MiB ({done['matmul_nbits']} MatMul -> {done['matmul_bits']}-bit, "
                f"{done['conv_int8']} Conv -> int8)")
            if done["cosine"] < min_cosine:
                raise UserError(f"{relative}: {scheme.name} output has cosine {done['cosine']:.5f} to fp32 on random inputs, below {min_cosine}; "
                                f"nothing written (use --quantize int8, or keep the fp32 export)")
        exported_with = {**record.get("exported_with", {})}
        exported_with.pop("edgeinv", None), exported_with.pop("onnx", None)
        new = manifest.write_manifest(tmp, source_label or str(source), exported_with, record.get("export_seconds"))
        new["quantization"] = {
            "scheme": scheme.name, "from": str(source), "weights": "weight-only; activations fp32",
            "matmul": {"op": "com.microsoft.MatMulNBits", "bits": {"unet": scheme.unet_bits, "others": scheme.other_bits},
                       "block_size": {"unet": scheme.unet_block_size, "others": scheme.other_block_size}, "symmetric": True, "accuracy_level": 4},
            "conv": {"op": "DequantizeLinear -> Conv", "bits": scheme.conv_bits, "granularity": "per output channel", "symmetric": True},
            "min_cosine": min_cosine,
            "graphs": graphs,
        }
        manifest.write_json_atomic(tmp / manifest.MANIFEST_NAME, new)
        tmp.chmod(0o755)  # mkdtemp makes it private
        if out.exists():
            out.rmdir()
        tmp.rename(out)
        return new
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def describe(record: dict) -> str:
    """One line for a quantised folder's manifest."""
    q = record.get("quantization")
    if not q:
        return "fp32"
    worst = min(g["cosine"] for g in q["graphs"].values())
    return f"{q['scheme']} (UNet MatMul {q['matmul']['bits']['unet']}-bit, Conv int8; worst cosine {worst:.5f})"

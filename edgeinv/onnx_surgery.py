"""Graph edits with the `onnx` package (torch-free).

- `point_initializer_at_safetensors`: make a graph read a weight from a safetensors file
  (raw little-endian data at a known offset), so the 49408-row token table is stored once.
- `adopt_optimum_folder`: give an existing optimum export (text encoder with `input_ids`
  only) what inversion needs: an embedding-input text encoder and the token table.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from safetensors.numpy import save_file

from edgeinv import manifest
from edgeinv.errors import UserError


def safetensors_data_offset(path: Path, key: str) -> tuple[int, int]:
    """(byte offset, byte length) of tensor `key`'s raw data inside a safetensors file."""
    with open(path, "rb") as f:
        header_length = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(header_length))
    begin, end = header[key]["data_offsets"]
    return 8 + header_length + begin, end - begin


def point_initializer_at_safetensors(onnx_path: Path, safetensors_path: Path, table: np.ndarray) -> None:
    """Replace the graph's copy of `table` by a reference into `safetensors_path` (same folder)."""
    model = onnx.load(str(onnx_path), load_external_data=True)
    _, initializer = _token_gather(model)
    stored = numpy_helper.to_array(initializer)
    if not np.array_equal(stored, table):
        raise ValueError("the graph's token table differs from the one being saved")
    offset, length = safetensors_data_offset(safetensors_path, manifest.TOKEN_EMBEDDINGS_KEY)
    initializer.ClearField("raw_data")
    initializer.data_location = onnx.TensorProto.EXTERNAL
    del initializer.external_data[:]
    for k, v in (("location", safetensors_path.name), ("offset", str(offset)), ("length", str(length))):
        entry = initializer.external_data.add()
        entry.key, entry.value = k, v
    onnx.save_model(model, str(onnx_path))


def _token_gather(model: onnx.ModelProto) -> tuple[onnx.NodeProto, onnx.TensorProto]:
    """The Gather that looks input_ids up in the token-embedding table."""
    ids_names = {i.name for i in model.graph.input if i.name == "input_ids"}
    if not ids_names:
        raise UserError("text_encoder/model.onnx has no `input_ids` input; is this an optimum Stable Diffusion export?")
    # Follow input_ids through dtype casts / reshapes to the Gather reading a 2-D weight.
    initializers = {i.name: i for i in model.graph.initializer}
    frontier = set(ids_names)
    for _ in range(6):
        for node in model.graph.node:
            if node.op_type == "Gather" and len(node.input) == 2 and node.input[1] in frontier and node.input[0] in initializers:
                weight = initializers[node.input[0]]
                if len(weight.dims) == 2:
                    return node, weight
        frontier |= {o for node in model.graph.node if any(i in frontier for i in node.input) and node.op_type in ("Cast", "Reshape", "View", "Flatten", "Squeeze", "Unsqueeze") for o in node.output}
    raise UserError("could not find the token-embedding lookup in text_encoder/model.onnx; re-export the checkpoint with `edgeinv export`")


def adopt_optimum_folder(folder: Path) -> None:
    """Add `inputs_embeds.onnx` and `token_embeddings.safetensors` to an optimum export."""
    ids_path = folder / manifest.TEXT_ENCODER_IDS
    if not ids_path.is_file():
        raise UserError(f"{folder}: no {manifest.TEXT_ENCODER_IDS}; expected an ONNX Stable Diffusion folder (optimum layout)")
    model = onnx.load(str(ids_path), load_external_data=True)
    gather, weight = _token_gather(model)
    table = numpy_helper.to_array(weight).astype(np.float32)
    save_file({manifest.TOKEN_EMBEDDINGS_KEY: np.ascontiguousarray(table)}, str(folder / manifest.TOKEN_EMBEDDINGS))

    embeds_name = gather.output[0]
    output_names = [o.name for o in model.graph.output if o.name == "last_hidden_state"] or [model.graph.output[0].name]
    extracted_path = folder / manifest.TEXT_ENCODER_EMBEDS
    # Keep input_ids as an input as well: exports use it for shapes and the pooled output.
    onnx.utils.extract_model(str(ids_path), str(extracted_path), ["input_ids", embeds_name], output_names, check_model=False)
    extracted = onnx.load(str(extracted_path), load_external_data=True)
    for graph_input in extracted.graph.input:
        if graph_input.name == embeds_name:
            graph_input.name = "inputs_embeds"
            graph_input.type.tensor_type.ClearField("shape")
            for dim in ("batch", "sequence", table.shape[1]):
                d = graph_input.type.tensor_type.shape.dim.add()
                if isinstance(dim, str):
                    d.dim_param = dim
                else:
                    d.dim_value = dim
    for node in extracted.graph.node:
        node.input[:] = ["inputs_embeds" if name == embeds_name else name for name in node.input]
    used = {name for node in extracted.graph.node for name in node.input}
    kept = [i for i in extracted.graph.input if i.name in used or i.name == "inputs_embeds"]
    del extracted.graph.input[:]
    extracted.graph.input.extend(kept)
    onnx.save_model(extracted, str(extracted_path))

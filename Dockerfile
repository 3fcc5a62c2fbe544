# edgeinv for CPU servers: inversion and generation on ONNX Runtime; no torch in the image.
#
#   docker build -t edgeinv .
#   docker run --rm -v "$PWD:/work" edgeinv generate "a photo of a red circle" --out /work/red.png
#   docker run --rm -v "$PWD/my-pictures:/pictures:ro" -v "$PWD/my-model-onnx:/model:ro" -v "$PWD/runs:/runs" \
#       edgeinv invert /pictures --model /model --token "<my-thing>" --out /runs/my-thing
#
# Two stages. The first installs the wheel (`pip install .`, as .ci/run tests it) into a venv at
# /opt/edgeinv, removes what generate and invert never load (pip, the gradient methods' PyTorch
# model, test suites, the Hugging Face hub client that tokenizers pulls in, ONNX Runtime's C-API
# library that its Python module does not link, and the `onnx` package, which only adopting an
# optimum export needs: adopt or export outside the image) and compiles only the modules that
# generate and invert import. The second is python:3.11-slim plus that one folder: no compiler,
# no build tools, no caches. Size breakdown: README "Docker".

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgeinv ./edgeinv
COPY export ./export
COPY models/tiny-sd-shapes-onnx ./models/tiny-sd-shapes-onnx
COPY models/tiny-sd-shapes ./models/tiny-sd-shapes
RUN python -m venv /opt/edgeinv \
 && /opt/edgeinv/bin/pip install -q --no-compile . \
 && /opt/edgeinv/bin/python -c "import importlib.util as u; assert u.find_spec('torch') is None, 'the base install pulled in torch'"
WORKDIR /opt/edgeinv/lib/python3.11/site-packages
RUN /opt/edgeinv/bin/pip uninstall -y -q onnx ml_dtypes huggingface_hub hf-xet fsspec httpx httpcore httpx2 httpcore2 h11 anyio sniffio idna certifi \
        requests urllib3 charset-normalizer truststore tqdm PyYAML filelock Pygments markdown-it-py mdurl setuptools wheel 2>/dev/null \
 && /opt/edgeinv/bin/python -m pip uninstall -y -q pip \
 && rm -rf edgeinv/default_torch_model onnxruntime/capi/libonnxruntime.so.* \
        onnxruntime/transformers onnxruntime/tools onnxruntime/quantization onnxruntime/backend onnxruntime/datasets \
        numpy/f2py numpy/_core/_simd.*.so numpy/_core/_*tests.*.so PIL/_avif.*.so pillow.libs/libavif-* \
 && find . -type d \( -name tests -o -name __pycache__ \) -prune -exec rm -rf {} + \
 && find . -name "*.pyi" -delete
COPY examples/orange-cross /tmp/pictures
# Byte-code for exactly the modules a run imports (and a check that the runtime still works).
RUN cd /tmp && /opt/edgeinv/bin/edgeinv --help >/dev/null \
 && /opt/edgeinv/bin/edgeinv generate "a red circle" --steps 1 -n 1 --out /tmp/x.png \
 && /opt/edgeinv/bin/edgeinv invert /tmp/pictures --budget 1 --dim 4 --popsize 4 --samples 1 --heldout 1 --init red --no-samples --out /tmp/run \
 && (/opt/edgeinv/bin/edgeinv invert /tmp/pictures --method ti --out /tmp/ti 2>&1 || true) | grep -q "needs the torch extra" \
 && rm -rf /tmp/*

FROM python:3.11-slim
# HOME=/tmp: ONNX Runtime keeps a small file under $HOME and warns when it cannot (docker run --user UID)
ENV PATH=/opt/edgeinv/bin:$PATH PYTHONUNBUFFERED=1 HOME=/tmp
COPY --from=build /opt/edgeinv /opt/edgeinv
WORKDIR /work
ENTRYPOINT ["edgeinv"]
CMD ["--help"]

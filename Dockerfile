# edgeinv for CPU servers: inversion and generation on ONNX Runtime, no torch in the image.
# The install step is the same `pip install .` that .ci/run exercises in a clean venv.
#   docker build -t edgeinv .
#   docker run --rm -v "$PWD:/work" edgeinv generate "a photo of a red circle" --out /work/red.png
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgeinv ./edgeinv
COPY export ./export
COPY models/tiny-sd-shapes-onnx ./models/tiny-sd-shapes-onnx
RUN pip install . && python -c "import importlib.util as u; assert u.find_spec('torch') is None" && rm -rf /src

WORKDIR /work
ENTRYPOINT ["edgeinv"]
CMD ["--help"]

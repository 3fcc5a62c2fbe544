"""Rebuild Stable Diffusion 1.x's CLIP tokenizer offline.

SD 1.x uses OpenAI CLIP ViT-L/14's byte-level BPE. Its merge list ships inside the
open-clip-torch wheel (`open_clip/bpe_simple_vocab_16e6.txt.gz`); the vocabulary is
derived from it exactly as CLIP does: 256 byte symbols, the same with `</w>`, one token per
merge (the first 48894 merges), then `<|startoftext|>` and `<|endoftext|>`. The result is
saved in both the transformers 4.x layout (vocab.json + merges.txt + configs) and as
`tokenizer.json`, so transformers 4.x, 5.x and the `tokenizers` library all load it.

    python models/build_tokenizer.py BPE_GZ OUT_DIR
"""

import gzip
import json
import sys
from pathlib import Path

N_MERGES = 49152 - 256 - 2  # CLIP keeps 48894 merges: 49408 tokens in all


def bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP's reversible byte -> printable-character map.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def build(bpe_gz: Path, out_dir: Path) -> None:
    lines = gzip.open(bpe_gz, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, "errors": "replace", **special}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))

    # transformers' fast CLIP tokenizer writes the equivalent `tokenizers` pipeline.
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(out_dir))
    tokenizer.backend_tokenizer.save(str(out_dir / "tokenizer.json"))
    ids = tokenizer("a photo of a cat")["input_ids"]
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407], ids


if __name__ == "__main__":
    build(Path(sys.argv[1]), Path(sys.argv[2]))

"""Stable Diffusion's CLIP tokenizer, torch-free, on the `tokenizers` library.

Reads the folder layout every SD checkpoint ships (`vocab.json` + `merges.txt`, as SD 1.5,
SD 2.x and optimum exports have it) or a `tokenizer.json`. Learned tokens are appended
after the vocabulary, exactly where diffusers' `load_textual_inversion` puts them, so the
ids agree between edgeinv and diffusers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from edgeinv.errors import UserError

# CLIP's pre-tokenisation: contractions, letter runs, single digits, other symbol runs.
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _clip_from_vocab_and_merges(folder: Path) -> Tokenizer:
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    merge_lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
    merges = [tuple(line.split()) for line in merge_lines if line and not line.startswith("#version")]
    bpe = models.BPE(vocab=vocab, merges=merges, unk_token="<|endoftext|>", continuing_subword_prefix="", end_of_word_suffix="</w>", fuse_unk=False)
    tokenizer = Tokenizer(bpe)
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    tokenizer.add_special_tokens([AddedToken(bos, normalized=False), AddedToken(eos, normalized=False)])
    tokenizer.post_processor = processors.RobertaProcessing((eos, vocab[eos]), (bos, vocab[bos]), trim_offsets=False, add_prefix_space=False)
    return tokenizer


class ClipTokenizer:
    """Prompts -> padded int64 ids [n, max_length], the way SD's pipelines tokenise."""

    def __init__(self, folder: str | Path, max_length: int = 77):
        folder = Path(folder)
        try:
            if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
                self._tokenizer = _clip_from_vocab_and_merges(folder)
            elif (folder / "tokenizer.json").is_file():
                self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
            else:
                raise UserError(f"{folder}: no tokenizer (expected vocab.json + merges.txt, or tokenizer.json); re-export the model with `edgeinv export`")
            config_path = folder / "tokenizer_config.json"
            config = json.loads(config_path.read_text()) if config_path.is_file() else {}
            if not isinstance(config, dict):
                raise ValueError("tokenizer_config.json is not a JSON object")
        except UserError:
            raise
        except Exception as error:  # JSON, permissions, or the tokenizers library's own errors
            raise UserError(f"{folder}: unreadable tokenizer ({type(error).__name__}: {str(error).splitlines()[0][:80] if str(error) else ''}); re-export the model with `edgeinv export`") from None
        self.max_length = int(min(config.get("model_max_length", max_length), max_length))
        pad = config.get("pad_token", "<|endoftext|>")
        pad = pad["content"] if isinstance(pad, dict) else pad
        self.pad_id = self._tokenizer.token_to_id(pad)
        self.eos_id = self._tokenizer.token_to_id("<|endoftext|>")
        self.bos_id = self._tokenizer.token_to_id("<|startoftext|>")
        self.base_vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self.added: list[str] = []

    @property
    def vocab_size(self) -> int:
        return self.base_vocab_size + len(self.added)

    def token_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tokenizer.id_to_token(token_id)

    def tokens(self, text: str) -> list[str]:
        return self._tokenizer.encode(text, add_special_tokens=False).tokens

    def add_token(self, token: str) -> int:
        """Add a learned token (e.g. "<my-cat>") as one unsplittable word; returns its id."""
        if self.in_vocabulary(token) or self._tokenizer.token_to_id(token) is not None:
            raise UserError(f"token {token!r} is already a word of the vocabulary; pick another, e.g. '<{token.strip('<>')}-v1>'")
        self._tokenizer.add_tokens([AddedToken(token, single_word=False, normalized=False)])
        self.added.append(token)
        token_id = self._tokenizer.token_to_id(token)
        assert token_id == self.vocab_size - 1, (token_id, self.vocab_size)
        return token_id

    def in_vocabulary(self, token: str) -> bool:
        if token in self.added:
            return True
        pieces = self.tokens(token)
        return len(pieces) == 1 and self._tokenizer.token_to_id(pieces[0]) is not None and token.lower() + "</w>" == pieces[0]

    def __call__(self, prompts: list[str] | str) -> np.ndarray:
        if isinstance(prompts, str):
            prompts = [prompts]
        ids = np.full((len(prompts), self.max_length), self.pad_id, dtype=np.int64)
        for row, encoding in enumerate(self._tokenizer.encode_batch(list(prompts))):
            tokens = encoding.ids
            if len(tokens) > self.max_length:  # truncate like CLIP: keep BOS ... EOS
                tokens = tokens[: self.max_length - 1] + [self.eos_id]
            ids[row, : len(tokens)] = tokens
        return ids

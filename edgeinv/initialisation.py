"""Where a search starts: the --init words' mean, or the vocabulary word whose loss on the
user's pictures is lowest (the visual initialisation). Shared by every method; `model` is any
model with a `tokenizer` and a `token_table` (ONNX or torch)."""

from __future__ import annotations

import numpy as np

from edgeinv.errors import UserError


def vocabulary_shortlist(model, count: int) -> np.ndarray:
    """Whole-word, alphabetic tokens in BPE merge order (roughly by frequency): model-agnostic."""
    tokens = []
    for token_id in range(512, model.tokenizer.base_vocab_size - 2):
        text = model.tokenizer.id_to_token(token_id)
        if text and text.endswith("</w>") and text[:-4].isalpha() and len(text) >= 7:
            tokens.append(token_id)
            if len(tokens) == count:
                break
    return np.array(tokens)


def word_vector(model, words: list[str]) -> np.ndarray:
    specials = (model.tokenizer.pad_id, model.tokenizer.eos_id, model.tokenizer.bos_id)
    ids = [i for word in words for i in model.tokenizer(word)[0] if i not in specials]
    if not ids:
        raise UserError(f"--init {' '.join(words)!r} gives no tokens; use ordinary words such as --init dog")
    return model.token_table[ids].mean(axis=0)


def visual_init(objective, model, frozen, count: int, batch: int = 64) -> tuple[np.ndarray, list[tuple[str, float]]]:
    """Rank vocabulary tokens by the frozen-set loss on the user's images; start from the best.
    A token of N vectors is ranked with the word in all N places and starts from the N best words [N, hidden]."""
    shortlist = vocabulary_shortlist(model, count)
    n_vectors = len(objective.token_ids)

    def candidates(ids):
        return np.repeat(model.token_table[ids][:, None], n_vectors, axis=1)

    losses = np.concatenate([objective.losses(candidates(shortlist[i : i + batch]), frozen) for i in range(0, len(shortlist), batch)])
    order = np.argsort(losses)
    best = [(model.tokenizer.id_to_token(int(shortlist[i]))[:-4], float(losses[i])) for i in order[:5]]
    return model.token_table[shortlist[order[:n_vectors]]].copy(), best


def initial_vectors(config, objective, model, frozen) -> tuple[np.ndarray, list[tuple[str, float]]]:
    """e0 [N, hidden]: N copies of the --init words' mean, or the visual initialisation's N best words."""
    if config.init:
        return np.repeat(word_vector(model, config.init)[None], config.vectors, axis=0), []
    return visual_init(objective, model, frozen, config.init_candidates)

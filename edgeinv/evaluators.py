"""Where candidates are scored: the evaluation backends `invert` calls by name.

An evaluator has what the loop uses of `edgeinv.objective.Objective`:

    losses(vectors [k, n_vec, hidden], evaluation_set) -> [k]   the denoising loss of each candidate
    unet_rows                                                   UNet sample-evaluations so far (the unit of cost)
    captions, token_ids                                         the caption templates and the token's ids
    close()                                                     release workers

"onnxruntime" is the in-process `Objective` itself. "ray" spreads each population over Ray
actors (edgeinv/ray_pool.py, the `ray` extra). A new backend is one function here that
builds such an object from the run's config and the driver's in-process objective.
"""

from __future__ import annotations


def in_process(config, objective):
    return objective


def ray_pool(config, objective):
    from edgeinv.ray_pool import RayPool  # the ray extra: imported only when asked for

    return RayPool(config, objective)


EVALUATORS = {"onnxruntime": in_process, "ray": ray_pool}


def evaluator_name(config) -> str:
    return "ray" if config.ray else "onnxruntime"

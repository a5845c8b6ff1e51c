"""One process of a 2-process Ulysses context-parallel run on CPU (gloo); see test_context_parallel.py."""

import json
import os
import sys

import torch
import torch.distributed as dist


def main(rank: int, world: int, port: int, out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.accelerator.device_count = lambda: 1  # diffusers divides by it; 0 on a CPU-only torch
    from diffusers import ContextParallelConfig

    import attnplug
    from attnplug.testing import forward, tiny_model

    results = {}
    for family in ("wan", "flux"):
        for order in ("cp_first", "apply_first"):
            model, inputs = tiny_model(family, text=8, batch=1)
            config = attnplug.NeighborhoodConfig(kernel_size=3)
            attnplug.apply(model, config)
            single = forward(model, inputs)  # every rank computes the single-process reference itself
            attnplug.remove(model)
            if order == "apply_first":
                attnplug.apply(model, config)
                model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
            else:
                model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
                attnplug.apply(model, config)
            out = forward(model, inputs)
            st = attnplug.stats(model)["self"]
            results[f"{family}/{order}"] = {"max_diff": (out - single).abs().max().item(), "method": st["method"],
                                            "calls": st["calls"]}
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])

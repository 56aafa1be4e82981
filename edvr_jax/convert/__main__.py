"""Convert a BasicSR EDVR checkpoint into an edvr-jax weights directory.

    python -m edvr_jax.convert EDVR_L_x4_SR_REDS_official-9f5f5039.pth OUT_DIR [--key params_ema]

reads a BasicSR ``.pth`` (``edvr_jax.pth``: no torch needed) or ``.safetensors`` file and writes an edvr-jax weights directory (``config.json`` +
Orbax ``params``, see ``edvr_jax.weights``), loadable with ``edvr_jax.load``.
"""

from __future__ import annotations

import argparse
import sys

import jax

from edvr_jax import weights
from edvr_jax.cli import exit_on_user_error, quiet_dependencies, underscore_flags
from edvr_jax.convert import from_basicsr, infer_config, read_state_dict
from edvr_jax.models.edvr import EDVR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edvr_jax.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="BasicSR checkpoint (.pth or .safetensors)")
    parser.add_argument("output", help="output directory (config.json + Orbax 'params')")
    parser.add_argument("--key", default=None, help="entry to read: params or params_ema (default: params, "
                        "falling back to params_ema)")
    parser.add_argument("--center_frame_idx", type=int, default=None, help="if the model used a non-default centre")
    parser.add_argument("--force", action="store_true", help="overwrite a non-empty output directory")
    parser.add_argument("--verbose", action="store_true", help="keep the dependencies' log lines")
    args = parser.parse_args(underscore_flags(argv))
    quiet_dependencies(args.verbose)

    def run():
        sd = read_state_dict(args.input, args.key)
        config = infer_config(sd)
        config["center_frame_idx"] = args.center_frame_idx
        model = EDVR(**config)
        variables = from_basicsr(sd, model)
        out = weights.save_weights(args.output, model, variables["params"], force=args.force)
        n = sum(v.size for v in jax.tree.leaves(variables))
        print(f"wrote {out}: EDVR({', '.join(f'{k}={v}' for k, v in config.items())}), {n:,} parameters")

    return exit_on_user_error(run)


if __name__ == "__main__":
    sys.exit(main())

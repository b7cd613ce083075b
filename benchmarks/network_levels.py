"""The network levels a plan records, against nnU-Net v2's own rule, over a grid of patches and spacings.

    pip install nnunetv2 --no-deps      # its topology function needs numpy only; a benchmark extra, never a dependency
    python benchmarks/network_levels.py [--sizes 8 12 16 ...] [--spacings 0.5 0.8 ...]

For every 2D and 3D patch drawn from ``--sizes`` and every spacing drawn from ``--spacings``, compares the kernel
sizes and pooling strides of ``nnunetv2.experiment_planning.experiment_planners.network_topology.
get_pool_and_conv_props`` (feature maps of at least 4, no pooling cap, as nnU-Net's default planner calls it) with
``medseg.train.network.dynunet_strides(rule="nnunet")`` uncapped, and counts how often the older rule
(``rule="finest"``, what plans without recorded levels build) pools as nnU-Net does within medseg's 5-level cap.
"""

from __future__ import annotations

import argparse
import itertools
import json

from medseg.train.network import dynunet_strides

SIZES = [8, 12, 16, 20, 24, 32, 40, 48, 56, 64, 80, 96, 128, 160, 192, 256, 320, 512]
SPACINGS = [0.5, 0.7, 0.8, 1.0, 1.5, 1.6, 2.5, 3.0, 5.0]


def compare(sizes, spacings) -> dict:
    """Counts of patch/spacing pairs whose levels equal nnU-Net's (``get_pool_and_conv_props``), and a few that
    differ."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    n = strides_equal = kernels_equal = old_equal = 0
    differ = []
    for dims in (2, 3):
        for patch in itertools.product(sizes, repeat=dims):
            for sp in itertools.product(spacings, repeat=dims):
                _, pools, convs, _, _ = get_pool_and_conv_props(list(sp), list(patch), 4, 999999)
                pools, convs = [list(p) for p in pools], [list(c) for c in convs]
                kernels, strides = dynunet_strides(patch, sp, rule="nnunet", max_levels=10**6)
                old = dynunet_strides(patch, sp, rule="finest")[1]
                n += 1
                strides_equal += strides == pools
                kernels_equal += kernels == convs
                old_equal += old == pools[:6]
                if (strides != pools or kernels != convs) and len(differ) < 5:
                    differ.append({"patch": patch, "spacing": sp, "nnunet": [pools, convs],
                                   "medseg": [strides, kernels]})
    return {"pairs": n, "strides_equal": strides_equal, "kernels_equal": kernels_equal,
            "older_rule_strides_equal_within_5_levels": old_equal, "first_differences": differ}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=SIZES, help="patch sizes per axis (voxels)")
    ap.add_argument("--spacings", type=float, nargs="+", default=SPACINGS, help="spacings per axis (mm)")
    args = ap.parse_args(argv)
    res = compare(args.sizes, args.spacings)
    n = res["pairs"]
    print(f"{n} patch/spacing pairs (2D and 3D): strides equal nnU-Net's in {res['strides_equal']}, kernel sizes in "
          f"{res['kernels_equal']}; the older rule pools as nnU-Net does (first 5 levels) in "
          f"{res['older_rule_strides_equal_within_5_levels']} ({res['older_rule_strides_equal_within_5_levels'] / n:.1%})")
    if res["first_differences"]:
        print(json.dumps(res["first_differences"]))
    return res


if __name__ == "__main__":
    main()

"""What SASHA's targeted state update tells HAFED, on synth-c16 and on its incoherent variant.

For each variant, with the environment's HAFED and f_S (or the ones given), prints the calibration's
state-update part (:mod:`wsigym.calibration.tsu_information`): how often a TSU-updated row is of the
zoomed patch's kind (tumour / mimic / other) against the slides' base rate, the error of the written
rows against ``V`` (f_S vs leaving ``Z`` vs copying ``V(a)``), and HAFED's test metrics after the same
fixed zooms under the TSU, global and no-update rules. The shipped calibration reports
(``wsigym/data/assets/<variant>-calibration.json``) were made with ``wsigym synth calibrate``.

    python examples/state_update_information.py --threads 1 \\
        --incoherent-hafed runs/hafed-synth-c16-incoherent --incoherent-tsu runs/tsu-synth-c16-incoherent
"""

from __future__ import annotations

import argparse

import torch

from wsigym.calibration.calibrate import state_update_report
from wsigym.calibration.tables import format_agreement, format_fixed_agents, format_references
from wsigym.data.dataset import open_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="random-agent seeds")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.1, 0.2])
    for variant in ("coherent", "incoherent"):
        parser.add_argument(f"--{variant}-hafed", default=None, help=f"HAFED for the {variant} variant")
        parser.add_argument(f"--{variant}-tsu", default=None, help=f"f_S for the {variant} variant")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for name, variant in (("synth-c16", "coherent"), ("synth-c16-incoherent", "incoherent")):
        hafed, tsu = getattr(args, f"{variant}_hafed"), getattr(args, f"{variant}_tsu")
        report = state_update_report(open_dataset(name), hafed, tsu, args.budgets, args.seeds, progress=False)
        print(f"== {name} (HAFED {report['hafed']}, f_S {report['tsu']}) ==")
        print(format_agreement(report["agreement"]))
        print(format_references(report["references"]))
        print(format_fixed_agents(report["fixed_agents"]))


if __name__ == "__main__":
    main()

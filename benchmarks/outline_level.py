"""Ablation of the outline rule's level (defaults.OUTLINE_LEVEL: where between the background ring and the
object's mean an outline is put; 0.5 = half maximum) on the DSB2018 dev images: benchmarks/real_quality.py
run with the runtime's constant replaced, in this process.

    python benchmarks/outline_level.py LEVEL -- [real_quality.py arguments]
    e.g. python benchmarks/outline_level.py 0.45 -- --model nuclei --model synth --name nuclei \
        --name synth --no-baseline --out /tmp/ol-045

The level is not a user option: this measures whether the default is the right one.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    if len(sys.argv) < 3 or sys.argv[2] != "--":
        raise SystemExit(__doc__)
    from cyclepose_deploy.runtime.dynamics import segment

    segment.OUTLINE_LEVEL = float(sys.argv[1])  # read by segment.segment at every call
    import real_quality

    return real_quality.main(sys.argv[3:])


if __name__ == "__main__":
    sys.exit(main())

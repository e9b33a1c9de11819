"""Ray job entry point: run a rank study.

    python jobs/study.py --spec jobs/specs/planted-cpu.yaml [--out DIR] [--resume]
    ray job submit --working-dir . -- python jobs/study.py --spec ...

It imports rankstudy and its report from the platform/ and dashboards/ folders beside it, so
a job submitted with --working-dir runs the code it was submitted with.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dashboards"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from rankstudy.commands.cli import main

if __name__ == "__main__":
    main(["study", *sys.argv[1:]])

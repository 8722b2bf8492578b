"""A process that runs the remediation engine of a site, for the lab tests that SIGKILL it.

    python -m tests.lab.remediation_proc SITE [INCIDENT_JSON]

Builds the engine as ``metalchain serve`` does (:func:`orchestrate.remediation.build_remediator`),
starts it (which picks up what a killed predecessor left), ingests the incident if one is
given (as the receiver would) and hands it to the engine, prints ``ready`` and runs until
killed or until stdin closes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from inventory.site import Site
from inventory.state.incidents import IncidentInput
from orchestrate.remediation import build_remediator


def main(argv: list[str]) -> int:
    site = Site.open(Path(argv[0]))
    engine = build_remediator(site)
    engine.start()
    if len(argv) > 1:
        item = IncidentInput(**json.loads(argv[1]))
        engine.on_ingested(site.state.ingest([item], "alertmanager"))
    print("ready", flush=True)
    sys.stdin.read()          # until the test closes our stdin (or kills us)
    engine.stop(10)
    site.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Describing an output in place: its dataset card and its run report, written under its lease.

This module owns `describe_output`, what `synth run` does after every run (and `synth card`
/ `synth report` do for an existing output): count the committed parts once
(`synth.export.stats`), then write README.md (`card`) and report.html (`report`) while
holding the output's lease, so that they never race a run writing the same output. A run
in `synth.pipeline` cannot call this itself (the pipeline sits below the exports), so the
`run` command does, and a crash between run.json and the card costs no row: rerunning the
command writes it.
"""

from __future__ import annotations

from synth.export.card import write_card
from synth.export.report import write_report
from synth.export.stats import collect
from synth.pipeline.output import dataset_store
from synth.store.lease import Lease


def describe_output(output_uri: str, *, card: bool = True, report: bool = True, license_id: str = "other",
                    lease_stale_seconds: float = 60.0, log=print) -> list[str]:
    """Write the card and/or the report of the dataset at `output_uri`; returns the names written."""
    output = dataset_store(output_uri, "a dataset card and report")
    written = []
    with Lease.acquire(output, stale_after_s=lease_stale_seconds, log=log) as lease:
        output.run_id = lease.run_id
        stats = collect(output)
        if card:
            written.append(write_card(output, stats, license_id=license_id, log=log))
        if report and _have_matplotlib(log):
            written.append(write_report(output, stats))
    log(f"synth: wrote {', '.join(written)} in {output.uri}")
    return written


def _have_matplotlib(log) -> bool:
    """The report needs matplotlib (the `export` extra); a run without it still writes its card."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log("synth: report.html not written: matplotlib is missing (pip install 'synth[export]')")
        return False
    return True

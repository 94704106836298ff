"""What identify and verify print beside their answers: a threshold's provenance, the open-set table."""

from __future__ import annotations

from typing import Any, Optional

from rich.markup import escape
from rich.table import Table

from .common import console


def _explain(threshold: Any) -> None:
    """Where a threshold came from, line by line (``--explain``)."""
    provenance = threshold.provenance or {}
    console.print(f"threshold {threshold.value:.4f} from {escape(threshold.source)}")
    data = provenance.get("data") or {}
    if data.get("path"):
        digest = f", sha256 {data['sha256'][:12]}" if data.get("sha256") else ""
        console.print(f"  data: {escape(str(data.get('kind') or 'folder'))} {escape(str(data['path']))}{digest}")
    if provenance.get("negatives") is not None:
        console.print(f"  pairs: {provenance.get('positives'):,} same-identity, {provenance['negatives']:,} different")
    if provenance.get("target_far") is not None:
        far = provenance.get("far")
        console.print(f"  FAR asked for {provenance['target_far']:g}; FAR held {far:g}" if far is not None
                      else f"  FAR asked for {provenance['target_far']:g}")
        if provenance.get("resolvable_far") is not None:
            console.print(f"  smallest FAR these pairs resolve: {provenance['resolvable_far']:.3g} (1 / negatives)")
        if provenance.get("note"):
            console.print(f"  {escape(provenance['note'])}")
    if provenance.get("given"):
        console.print(f"  given with {escape(provenance['given'])}: not measured by edgeface")


def _print_open_set(metrics: dict[str, Any]) -> None:
    def percent(value: Optional[float]) -> str:
        return "n/a" if value is None else f"{value:.2%}"

    table = Table(title=f"open-set identification: {metrics['probes']} probes ({metrics['enrolled_probes']} enrolled, "
                        f"{metrics['non_enrolled_probes']} not)")
    for column in ("metric", "value", "meaning"):
        table.add_column(column, overflow="fold")
    table.add_row("rank-1", percent(metrics["rank1"]), "enrolled probes whose best match is their identity")
    table.add_row("rank-5", percent(metrics["rank5"]), "... among the five best")
    table.add_row("dir@threshold", percent(metrics["dir_at_threshold"]), "enrolled probes ranked first and above the threshold")
    table.add_row("far@threshold", percent(metrics["far_at_threshold"]), "non-enrolled probes wrongly accepted")
    for far, entry in metrics["dir_at_far"].items():
        if entry is None or entry["dir"] is None:  # None: a report of an older edgeface
            why = entry["why"] if entry is not None else "needs enrolled and non-enrolled probes"
            table.add_row(f"dir@far={far}", f"not measurable ({escape(why)})",
                          "detection-and-identification rate at that false-alarm rate")
        else:
            table.add_row(f"dir@far={far}", percent(entry["dir"]),
                          f"detection-and-identification rate at threshold {entry['threshold']:.4f}")
    console.print(table)

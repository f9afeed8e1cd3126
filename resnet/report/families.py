"""A page's verdicts as families, each controlled by Holm's correction on its own
(``statistics.control_family``), and the table that shows each verdict's raw and adjusted p."""

from __future__ import annotations

from typing import Any

from .statistics import Verdict, control_family

# A page's verdicts as families, each controlled by Holm's correction on its own (statistics.control_family):
# the paper's claims are the primary family, the README's headline; an ablation's and each analysis's are
# families of their own. By claim key (DEGRADATION_CLAIMS, depth_claims).
PAPER_FAMILY = "the paper's claims"
ABLATION_FAMILY = "the initialisation ablation"
FAMILY_OF = {"degradation": PAPER_FAMILY, "shortcuts": PAPER_FAMILY, "depth": PAPER_FAMILY,
             "shortcuts-A": PAPER_FAMILY, "depth-A": PAPER_FAMILY, "shortcuts-B": PAPER_FAMILY,
             "depth-B": PAPER_FAMILY, "shortcuts-zero-init": ABLATION_FAMILY, "depth-zero-init": ABLATION_FAMILY,
             "zero-init": ABLATION_FAMILY}


def controlled(verdicts: dict[str, Verdict], family_of: dict[str, str], prefix: str = "") -> dict[str, Verdict]:
    """``verdicts`` (keyed ``prefix + claim key``) with each family of ``family_of`` controlled on its own, in
    their order."""
    families: dict[str, dict[str, Verdict]] = {}
    for key, verdict in verdicts.items():
        families.setdefault(family_of[key.removeprefix(prefix)], {})[key] = verdict
    found = {}
    for family, members in families.items():
        found.update(control_family(family, members))
    return {key: found[key] for key in verdicts}


FAMILY_HEADER = ["claim", "family (Holm's m)", "difference", "paired 95% CI", "raw p", "Holm-adjusted p",
                 "decision (adjusted)", "unpaired (Welch) 95% CI", "n"]


def family_table(verdicts: list[Verdict]) -> dict[str, Any]:
    """One row per verdict: its evidence, raw and adjusted p, the decision by the adjusted p, and the unpaired
    interval (marked where it reads the claim differently)."""
    def number(value: float, form: str) -> str:
        return "—" if value != value else format(value, form)

    rows = []
    for v in verdicts:
        d = v.difference
        welch = "—" if d.welch_low != d.welch_low else f"[{d.welch_low:.2f}, {d.welch_high:.2f}]"
        if v.readings_differ and welch != "—":
            welch += f" (reads {v.welch_answer})"
        paired = "—" if d.low != d.low else f"[{d.low:.2f}, {d.high:.2f}]"
        rows.append([v.claim, f"{v.family} ({v.family_size})" if v.family else "—", number(d.mean, "+.2f"), paired,
                     number(d.p_value, ".2g"), number(v.adjusted_p, ".2g"), v.answer, welch, str(d.n)])
    return {"header": FAMILY_HEADER, "rows": rows}

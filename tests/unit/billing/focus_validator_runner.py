"""Run the FinOps focus-validator CLI on a file and report the rules it really failed.

focus-validator 2.2.1 needs Python >= 3.12 while Corral's virtualenv is 3.11, so it lives
in its own virtualenv (``.venv/focus`` by default, or ``CORRAL_FOCUS_VALIDATOR`` naming
the ``focus-validator`` executable) and runs as a subprocess, offline (``--block-download``,
using the FOCUS 1.2 model it ships).

Two quirks of 2.2.1 are handled here. It exits 0 even when rules fail, so the report is
parsed. And it lists each alternative of an OR rule (InvoiceId must be null, or must not
be null) as its own failure even when the OR rule passes; a failed rule counts as an
error only if it is not an alternative of an OR rule that did not fail.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
_FAILURE = re.compile(r"^- (?P<rule>[A-Za-z]+-[A-Z]-\d{3}-[A-Z]): violations=")
_WHERE_IS_THE_PACKAGE = (
    "import focus_validator, pathlib; print(pathlib.Path(focus_validator.__file__).parent)"
)
_TOTAL = re.compile(r"^Total: (\d+) \| Pass: (\d+) \| Fail: (\d+) \| Skipped: (\d+)$", re.M)


@dataclass(frozen=True, slots=True)
class FocusReport:
    """What the validator said about one file."""

    passed: int
    failed_rules: frozenset[str]
    errors: frozenset[str]
    output: str


class FocusValidator:
    """The focus-validator executable and the FOCUS model file it ships."""

    def __init__(self, executable: Path) -> None:
        self.executable = executable
        site = subprocess.run(
            [str(executable.parent / "python"), "-c", _WHERE_IS_THE_PACKAGE],
            check=True, capture_output=True, text=True, timeout=60,
        ).stdout.strip()
        self.package_dir = Path(site)
        models = sorted((self.package_dir / "rules").glob("model-1.2*.json"))
        if not models:
            raise RuntimeError("focus-validator ships no FOCUS 1.2 model")
        self.or_alternatives = _or_alternatives(json.loads(models[-1].read_text()))

    @classmethod
    def locate(cls) -> FocusValidator | None:
        """Find the validator in ``CORRAL_FOCUS_VALIDATOR`` or ``.venv/focus``, if installed."""
        configured = os.environ.get("CORRAL_FOCUS_VALIDATOR")
        candidate = Path(configured) if configured else REPO / ".venv/focus/bin/focus-validator"
        return cls(candidate) if candidate.is_file() else None

    def validate(self, data_file: Path) -> FocusReport:
        """Validate a FOCUS 1.2 CSV file and return the parsed report."""
        result = subprocess.run(
            [str(self.executable), "--data-file", str(data_file.resolve()),
             "--validate-version", "1.2", "--block-download"],
            # 2.2.1 opens its currency list by a path relative to its site-packages folder.
            cwd=self.package_dir.parent,
            capture_output=True, text=True, timeout=120, check=False,
        )
        output = result.stdout + result.stderr
        total = _TOTAL.search(output)
        if result.returncode != 0 or total is None:
            raise RuntimeError(f"focus-validator did not produce a report:\n{output[-4000:]}")
        failed = frozenset(m.group("rule") for line in output.splitlines()
                           if (m := _FAILURE.match(line)))
        excused = {
            child for parent, children in self.or_alternatives.items()
            if parent not in failed for child in children
        }
        return FocusReport(int(total.group(2)), failed, failed - excused, output)


def _or_alternatives(model: dict[str, object]) -> dict[str, frozenset[str]]:
    rules = model["ModelRules"]
    assert isinstance(rules, dict)
    found: dict[str, frozenset[str]] = {}
    for rule_id, rule in rules.items():
        requirement = rule["ValidationCriteria"]["Requirement"]
        if requirement.get("CheckFunction") == "OR":
            found[rule_id] = frozenset(
                item["ModelRuleId"] for item in requirement.get("Items", [])
                if item.get("CheckFunction") == "CheckModelRule"
            )
    return found

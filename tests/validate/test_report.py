"""posctx.validate.report: checks, their verdict, the terminal summary and the JSON form."""

from __future__ import annotations

import json

import numpy as np
import pytest

from posctx.validate.report import Check, ValidationReport, _plain, _plural


def _report(*statuses: str, skipped: list[tuple[str, str]] | None = None) -> ValidationReport:
    names = ["schema", "labels", "completeness", "finite"]
    checks = [Check(names[i], s, f"detail {i}") for i, s in enumerate(statuses)]  # type: ignore[arg-type]
    return ValidationReport("s.zarr", checks, skipped or [])


@pytest.mark.parametrize(
    ("statuses", "ok", "verdict"),
    [
        (("ok", "ok"), True, "OK: all 2 checks passed"),
        (("ok", "warn"), True, "OK with 1 warning (labels)"),
        (("warn", "warn", "ok"), True, "OK with 2 warnings (schema, labels)"),
        (("ok", "fail", "warn"), False, "FAIL: 1 check failed (labels)"),
        (("fail", "ok", "fail", "warn"), False, "FAIL: 2 checks failed (schema, completeness)"),
    ],
)
def test_the_verdict_counts_failures_then_warnings(
    statuses: tuple[str, ...], ok: bool, verdict: str
) -> None:
    report = _report(*statuses)
    assert report.ok is ok and report.verdict() == verdict
    assert [c.name for c in report.failures] == [
        c.name for c in report.checks if c.status == "fail"
    ]
    assert [c.name for c in report.warnings] == [
        c.name for c in report.checks if c.status == "warn"
    ]


def test_a_check_is_found_by_name_or_the_error_lists_what_ran() -> None:
    report = _report("ok", "fail")
    assert report.check("labels").detail == "detail 1"
    with pytest.raises(KeyError) as info:
        report.check("rerun")
    assert info.value.args[0] == "no check 'rerun' in this report (ran: ['schema', 'labels'])"


def test_the_summary_aligns_names_and_lists_skipped_checks() -> None:
    report = _report(
        "ok", "warn", skipped=[("special_tokens", "cannot run: `token_id` is missing")]
    )
    assert report.format().splitlines() == [
        "store s.zarr",
        "OK    schema          detail 0",
        "WARN  labels          detail 1",
        "skip  special_tokens  cannot run: `token_id` is missing",
        "verdict: OK with 1 warning (labels)",
    ]
    short = ValidationReport("s.zarr", [Check("a", "ok", "x")])
    assert short.format().splitlines()[1] == "OK    a      x"  # names padded to at least 5


def test_the_json_form_is_plain_data() -> None:
    figures = {
        "max": np.float32(0.5),
        "holes": np.array([[4, 7]]),
        "ids": (np.int64(1), 2),
        3: np.bool_(True),
    }
    report = ValidationReport(
        "s.zarr", [Check("finite", "fail", "bad", figures)], [("rerun", "not requested")]
    )
    out = report.to_dict()
    assert out == {
        "path": "s.zarr",
        "ok": False,
        "verdict": "FAIL: 1 check failed (finite)",
        "checks": [
            {
                "name": "finite",
                "status": "fail",
                "detail": "bad",
                "figures": {"max": 0.5, "holes": [[4, 7]], "ids": [1, 2], "3": True},
            }
        ],
        "skipped": [{"name": "rerun", "reason": "not requested"}],
    }
    assert json.loads(json.dumps(out)) == out
    assert type(out["checks"][0]["figures"]["holes"][0][0]) is int


def test_plural_and_plain_helpers() -> None:
    assert (_plural(1, "block"), _plural(0, "block"), _plural(2, "block")) == (
        "1 block",
        "0 blocks",
        "2 blocks",
    )
    assert (_plural(1, "index", "indices"), _plural(3, "index", "indices")) == (
        "1 index",
        "3 indices",
    )
    assert _plain({"a": np.arange(2), "b": [np.float64(1.5), {"c": np.int8(3)}]}) == {
        "a": [0, 1],
        "b": [1.5, {"c": 3}],
    }

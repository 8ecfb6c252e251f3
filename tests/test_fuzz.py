"""The fuzz corpus (tests/fuzz_corpus.py) through `python -m inference`, in folders beside valid sentinels.

For every case, the outcome of its row of docs/input-policy.md: an answer is a uint8 output of the
image's shape with labels 0..k, with warnings naming the file exactly when something was repaired; a
refusal leaves no output and prints an error naming the file and the problem. Every folder's sentinels
are answered (no case stops the others), no hostile pickle creates its marker file, nothing else is
left in the outputs folders, and the policy table (docs/input-policy.md, README.md) matches the corpus.
"""
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from fuzz_corpus import FuzzCase, background_checkpoint, base, corpus, one_core, save

ROOT = Path(__file__).resolve().parent.parent
BATCHES = 4


def _sentinels() -> list[FuzzCase]:
    return [FuzzCase("000-sentinel.npz", "keys-optional", "answer", save(base("box"))),
            FuzzCase("zzz-sentinel.npz", "keys-optional", "answer", save(base("click")))]


def _stderr_lines(text: str) -> dict[str, list[tuple[str, str]]]:
    """(kind, message) per file name from the 'warning: <file>: ...' and 'error: <file>: ...' lines."""
    lines = defaultdict(list)
    for line in text.splitlines():
        m = re.match(r"(warning|error): (\S+\.npz): (.*)", line)
        if m:
            lines[m.group(2)].append((m.group(1), m.group(3)))
    return lines


@pytest.fixture(scope="module")
def fuzz_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    markers = root / "markers"
    markers.mkdir()
    cases = corpus(markers)
    weights = background_checkpoint(root / "tiny.pt")
    runs = []
    for b in range(BATCHES):
        batch = [*_sentinels(), *cases[b::BATCHES]]
        ins, outs = root / f"in{b}", root / f"out{b}"
        ins.mkdir()
        for case in batch:
            case.write(ins)
        res = subprocess.run([sys.executable, "-m", "inference", "--input-dir", str(ins), "--output-dir", str(outs),
                              "--weights", str(weights), "--quiet"], cwd=ROOT, capture_output=True, text=True,
                             timeout=600, preexec_fn=one_core)
        runs.append((batch, outs, res))
    return cases, markers, runs


def test_corpus_size():
    cases = corpus(Path("/nonexistent"))
    assert len(cases) >= 200 and len({c.name for c in cases}) == len(cases)
    assert {c.expect for c in cases} == {"answer", "refuse"}


def test_every_case_follows_the_policy(fuzz_run):
    _, _, runs = fuzz_run
    problems = []
    for batch, outs, res in runs:
        assert "Traceback" not in res.stderr, res.stderr[-3000:]
        assert res.returncode == (1 if any(c.expect == "refuse" for c in batch) else 0), res.stderr[-2000:]
        lines = _stderr_lines(res.stderr)
        for c in batch:
            said = lines.get(c.name, [])
            errors = [m for kind, m in said if kind == "error"]
            warnings = [m for kind, m in said if kind == "warning"]
            out = outs / c.name
            if c.expect == "refuse":
                if out.exists() or not errors or not any(c.message in e for e in errors):
                    problems.append(f"{c.name}: expected a refusal with {c.message!r}; output={out.exists()} said={said}")
                continue
            if errors or not out.is_file():
                problems.append(f"{c.name}: expected an answer; said={said}")
                continue
            with np.load(out, allow_pickle=False) as npz:
                files, segs = npz.files, npz["segs"]
            if files != ["segs"] or segs.dtype != np.uint8 or segs.shape != tuple(c.shape) or segs.max() > c.classes:
                problems.append(f"{c.name}: bad output {files} {segs.dtype} {segs.shape} max {segs.max()}")
            if bool(warnings) != c.warns or (c.message and not any(c.message in w for w in warnings)):
                problems.append(f"{c.name}: warnings {warnings}, expected {'some' if c.warns else 'none'} "
                                f"with {c.message!r}")
    assert not problems, "\n".join(problems)


def test_no_hostile_pickle_ran(fuzz_run):
    _, markers, _ = fuzz_run
    assert list(markers.iterdir()) == []


def test_nothing_but_the_answers_is_left_in_the_outputs(fuzz_run):
    _, _, runs = fuzz_run
    for batch, outs, _ in runs:
        assert sorted(p.name for p in outs.iterdir()) == sorted(c.name for c in batch if c.expect == "answer")


def _group(outcome: str) -> str:
    return "refused" if outcome.startswith("refuse") else "repaired" if "warning" in outcome else "answered"


def _policy_rows(text: str) -> dict[str, str]:
    """id -> outcome column of the tables of docs/input-policy.md."""
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\| `([a-z0-9-]+)` \|[^|]*\| ([^|]*) \|", text, re.M)}


def test_the_policy_table_matches_the_corpus():
    rows = _policy_rows((ROOT / "docs" / "input-policy.md").read_text())
    cases = corpus(Path("/nonexistent"))
    by_policy = defaultdict(list)
    for c in cases:
        by_policy[c.policy].append(c)
    assert set(by_policy) == set(rows), f"rows without cases: {set(rows) - set(by_policy)}; " \
                                        f"cases without rows: {set(by_policy) - set(rows)}"
    for policy, outcome in rows.items():
        expects = {c.expect for c in by_policy[policy]}
        assert expects == {"refuse" if _group(outcome) == "refused" else "answer"}, (policy, outcome, expects)
        warned = [c.warns for c in by_policy[policy]]
        assert any(warned) if _group(outcome) == "repaired" else not any(warned), (policy, outcome)


def test_the_readme_table_lists_the_same_rows():
    rows = _policy_rows((ROOT / "docs" / "input-policy.md").read_text())
    readme = (ROOT / "README.md").read_text()
    assert "docs/input-policy.md" in readme
    for label in ("answered", "repaired", "refused"):
        line = next(line for line in readme.splitlines() if line.startswith(f"| {label} "))
        listed = set(re.findall(r"`([a-z0-9-]+)`", line))
        assert listed == {i for i, o in rows.items() if _group(o) == label}, label

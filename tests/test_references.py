"""Citations resolve inside the repository (REFERENCES.md's style: ``[key]`` or ``[key locator]``).

Every key cited in the code, configs and docs must have an entry in REFERENCES.md, and nothing may
point at a document a robench user does not have: private summaries ("notes §", "the survey
notes"), their source ids ("[004]") or paths under "shared/".
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: a key: surname + year + optional suffix (madry2018, cheng2020signopt), or an undated "-slides" deck
KEY = r"[a-z]+\d{4}[a-z]*|[a-z]+-slides"
#: a citation: "[" key, then "]" or whitespace and a locator ("[cheng2021 §5.3, Algorithm 9]")
CITATION = re.compile(r"\[(" + KEY + r")(?=\]|\s)")
#: an entry of REFERENCES.md: "- `key` — ..."
ENTRY = re.compile(r"^- `([^`]+)`", re.MULTILINE)

#: pointers to documents outside the repository
FORBIDDEN = [
    (re.compile(r"notes §"), '"notes §" (a private summary)'),
    (re.compile(r"\b(?:survey|Cheng|Alzantot|Saha)(?:'s)? notes\b"), "a private summary"),
    (re.compile(r"\[00\d"), 'a "[00x]" source id of the private summaries'),
    (re.compile(r"shared/"), 'a path under "shared/"'),
]

SCANNED = [("robench", "*.py"), ("configs", "*.yaml"), ("configs", "*.md"), ("benchmarks", "*.py"),
           ("benchmarks", "*.md"), ("examples", "*.py"), ("examples", "*.yaml"), ("examples", "*.toml")]


def scanned_files():
    files = [ROOT / "README.md"]
    for top, pattern in SCANNED:
        files += sorted((ROOT / top).rglob(pattern))
    return [f for f in files if f.is_file()]


def reference_keys():
    text = (ROOT / "REFERENCES.md").read_text(encoding="utf-8")
    keys = ENTRY.findall(text)
    assert keys, "REFERENCES.md lists no entries"
    return keys


def test_reference_keys_are_unique_and_well_formed():
    keys = reference_keys()
    dup = sorted({k for k in keys if keys.count(k) > 1})
    assert not dup, f"REFERENCES.md lists these keys more than once: {dup}"
    bad = [k for k in keys if not re.fullmatch(KEY, k)]
    assert not bad, f"REFERENCES.md keys outside the key grammar ({KEY}): {bad}"


def test_citation_pattern():
    cited = CITATION.findall("PGD [madry2018], CAT [cheng2021 §4.2, Algorithm 8], [rigaki-slides]; "
                             "not [0, 1], x[i], [B, C, H, W] or [GRM17]")
    assert cited == ["madry2018", "cheng2021", "rigaki-slides"]


def test_every_cited_key_resolves():
    keys = set(reference_keys())
    missing = []
    for path in scanned_files():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            missing += [f"{path.relative_to(ROOT)}:{n}: [{k}" for k in CITATION.findall(line) if k not in keys]
    assert not missing, "citation keys without an entry in REFERENCES.md:\n" + "\n".join(missing)


def test_some_citations_exist():
    """Guards the scan itself: the code base does cite by key (a broken glob would pass vacuously)."""
    cited = {k for path in scanned_files() for k in CITATION.findall(path.read_text(encoding="utf-8"))}
    assert {"madry2018", "cheng2021", "alzantot2019", "saha2020"} <= cited


@pytest.mark.parametrize("pattern,what", FORBIDDEN, ids=[w for _, w in FORBIDDEN])
def test_no_pointer_outside_the_repository(pattern, what):
    hits = []
    for path in scanned_files():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not hits, f"{what}; cite the original work by its REFERENCES.md key instead:\n" + "\n".join(hits)

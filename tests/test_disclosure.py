"""The airlock's automated checks as pure functions (controller/disclosure.py), the vote rule and
the release manifest (controller/exports.py, controller/releases.py); the end-to-end path with a
real bubble is tests/test_exports.py, agreement with ACRO tests/test_acro.py."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from controller import disclosure as d
from controller.exports import outcome
from controller.releases import manifest, sign, verify

RULES = d.Rules()
INE, PSEUDONYM = "1234567890A", "0f" * 16
NEEDLES = d.Needles(frozenset({INE}), frozenset({PSEUDONYM}), {"ine": "eleves"})


def by_check(findings: list[dict]) -> dict[str, dict]:
    return {f["check"]: f for f in findings}


def test_frequency_table_cells_under_the_threshold_and_zeros_are_named() -> None:
    found = by_check(d.check_file("t.csv", "niveau;filles;garçons\n6e;12;9\n5e;0;31\n".encode(), NEEDLES, RULES))
    assert found["threshold"]["cells"] == [[1, "garçons"]] and found["threshold"]["severity"] == "fail"
    assert found["zeros"]["cells"] == [[2, "filles"]]
    assert found["threshold"]["parameters"] == RULES.table()
    safe = d.check_file("t.csv", b"niveau,n\n6e,12\n5e,31\n", NEEDLES, RULES)
    assert [f["severity"] for f in safe] == ["pass"]


def test_identifiers_and_pseudonyms_are_found_in_cells_words_and_text() -> None:
    table = f"id,commentaire,n\n{INE},ras,12\nx,voir {PSEUDONYM}.,15\n".encode()
    found = [f for f in d.check_file("t.csv", table, NEEDLES, RULES) if f["check"] == "identifiers"]
    assert {(f["cells"][0][0], f["message"].split()[3]) for f in found} == {(1, "identifiers"), (2, "pseudonyms")}
    text = f"# Résultats\n\nL'élève {INE} manque.\n".encode()
    found = d.check_file("notes.md", text, NEEDLES, RULES)
    assert found[0]["check"] == "identifiers" and found[0]["lines"] == [3] and INE not in json.dumps(found)
    # short tokens are not identifiers, and a value inside a longer word is not one
    assert d.check_file("n.txt", f"X{INE}Y 12345".encode(), NEEDLES, RULES)[0]["severity"] == "pass"


def test_row_level_tables_are_flagged() -> None:
    keyed = by_check(d.check_file("t.csv", b"INE,niveau\nA,6e\n", NEEDLES, RULES))
    assert keyed["row_level"]["severity"] == "fail" and keyed["row_level"]["columns"] == ["INE"]
    long = "niveau,n\n" + "".join(f"n{i},{20 + i}\n" for i in range(RULES.max_rows + 1))
    found = by_check(d.check_file("t.csv", long.encode(), NEEDLES, RULES))
    assert found["row_level"]["severity"] == "review" and found["row_level"]["rows"] == RULES.max_rows + 1


@pytest.mark.parametrize("name,data,check", [
    ("t.csv", b"PK\x03\x04rest", "archive"),
    ("t.txt", b"\x1f\x8b\x08\x00", "archive"),
    ("t.json", b"\x00" * 600, "content_type"),
    ("t.png", b"GIF89a", "content_type"),
    ("t.csv", b"\xff\xfe bad", "content_type"),
    ("t.csv", b"a,b\n1,2,3\n", "malformed"),
    ("t.csv", b"\n\n", "malformed"),
])
def test_content_is_checked_whatever_the_name_says(name: str, data: bytes, check: str) -> None:
    found = d.check_file(name, data, NEEDLES, RULES)
    assert [(f["check"], f["severity"]) for f in found] == [(check, "fail")]


def test_magnitudes_without_recipe_go_to_review_and_open_data_is_not_held() -> None:
    table = b"niveau,absences_moyennes\n6e,4.5\n5e,3.25\n"
    assert d.check_file("m.csv", table, NEEDLES, RULES)[0]["check"] == "magnitude_unverified"
    assert d.check_file("m.csv", table, NEEDLES, RULES, statistical=False)[0]["severity"] == "pass"


MICRO = pa.table({"sexe": ["F"] * 12 + ["M"] * 12 + ["X"] * 3,
                  "absences": [1000.0] + [1.0] * 11 + [5.0] * 12 + [2.0, 2.0, 2.0]})


def test_a_recipe_is_recomputed_and_dominance_checked() -> None:
    recipe = d.Recipe("eleves", ["sexe"], "absences", "sum", "sum_absences")
    csv = b"sexe,sum_absences\nF,1011.0\nM,60.0\nX,6.0\n"
    found = by_check(d.check_file("s.csv", csv, NEEDLES, RULES, recipe=recipe, micro=MICRO))
    assert found["dominance_nk"]["cells"] == [[1, "sum_absences"]]
    assert found["p_ratio"]["cells"] == [[1, "sum_absences"]]  # (1011 - 1000 - 1) / 1000 < 0.1
    assert found["threshold"]["cells"] == [[3, "sum_absences"]]
    edited = by_check(d.check_file("s.csv", csv.replace(b"60.0", b"65.0"), NEEDLES, RULES, recipe=recipe, micro=MICRO))
    assert set(edited) == {"table_mismatch"} and edited["table_mismatch"]["cells"] == [[2, "sum_absences"]]


def test_negative_contributions_send_dominance_to_review() -> None:
    micro = pa.table({"g": ["a"] * 12, "v": [-5.0] + [100.0] * 11})
    recipe = d.Recipe("v", ["g"], "v", "sum", "s")
    found = by_check(d.check_file("s.csv", b"g,s\na,1095.0\n", NEEDLES, RULES, recipe=recipe, micro=micro))
    assert found["negative"]["severity"] == "review" and "dominance_nk" not in found


@pytest.mark.parametrize("raw,message", [
    (b"{", "not JSON"), (b'{"format": "x"}', "format"),
    (b'{"format": "bulle-table/1", "view": "v", "column": "c", "dimensions": [], "aggfunc": "count"}', "dimensions"),
    (b'{"format": "bulle-table/1", "view": "v", "column": "c", "dimensions": ["a"], "aggfunc": "max"}', "aggfunc"),
    (b'{"format": "bulle-table/1", "view": "v", "column": "c", "dimensions": ["a"], "aggfunc": "sum"}', "values"),
])
def test_bad_recipes_are_named(raw: bytes, message: str) -> None:
    with pytest.raises(d.MalformedTable, match=message):
        d.Recipe.parse(raw)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from("xyz"),
                          st.floats(0, 1e6, allow_nan=False) | st.integers(0, 10**6)), min_size=1, max_size=200))
def test_cell_statistics_match_a_plain_computation(rows: list) -> None:
    micro = pa.table({"r": [r for r, _, _ in rows], "c": [c for _, c, _ in rows],
                      "v": [float(v) for _, _, v in rows]})
    stats = d.cell_stats(micro, ["r", "c"], "v")
    for flat in range(len(stats.count)):
        r, c = stats.key(flat)
        values = sorted((float(v) for rr, cc, v in rows if rr == r and cc == c), reverse=True)
        assert stats.count[flat] == len(values)
        assert stats.total[flat] == pytest.approx(sum(values))
        assert stats.top1[flat] == (values[0] if values else 0)
        assert stats.top2[flat] == (values[1] if len(values) > 1 else 0)
    masks = d.table_masks(stats, RULES, magnitudes=True)
    assert np.array_equal(masks["threshold"], stats.count < 10)


def test_acro_evidence_is_taken_into_account_and_its_checksums_verified() -> None:
    results = {"version": "1.0.2", "results": {
        "output_0": {"status": "fail", "type": "table", "summary": "fail; threshold: 2 cells",
                     "files": [{"name": "output_0_0.csv", "sdc": {"summary": {"threshold": 2}}}]},
        "output_1": {"status": "pass", "type": "table", "files": [{"name": "output_1_0.csv"}]}}}
    files = {"acro/output_0_0.csv": "a" * 64, "acro/output_1_0.csv": "b" * 64, "acro/results.json": "c" * 64}
    checksums = {"acro/checksums/output_0_0.csv.txt": "a" * 64, "acro/checksums/output_1_0.csv.txt": "d" * 64}
    found = d.acro_findings("acro/results.json", d.acro_results(json.dumps(results).encode()), files, checksums)
    by = {(f["file"], f["check"]): f["severity"] for f in found}
    assert by == {("acro/output_0_0.csv", "acro"): "fail", ("acro/output_1_0.csv", "acro"): "pass",
                  ("acro/output_1_0.csv", "acro_checksum"): "fail"}
    assert d.acro_results(b'{"results": []}') is None


@pytest.mark.parametrize("votes,required,orgs,expected", [
    (["approve"], 1, [], "approve"),
    (["approve", "approve"], 2, [], "approve"),
    (["approve"], 2, [], None),
    (["approve", "refuse"], 2, [], None),  # disagreement: a third reviewer
    (["approve", "refuse", "refuse"], 2, [], "refuse"),
    (["approve", "refuse", "changes"], 2, [], None),
    (["changes", "changes"], 2, [], "changes"),
    (["approve", "approve"], 2, ["demo-rennes"], None),  # the provider has not approved yet
    (["approve", "approve", "approve@demo-rennes"], 2, ["demo-rennes"], "approve"),
])
def test_the_vote_rule(votes: list[str], required: int, orgs: list[str], expected: str | None) -> None:
    cast = [{"vote": v.split("@")[0], "organisation": v.split("@")[1] if "@" in v else None} for v in votes]
    assert outcome(cast, required, orgs) == expected


def test_a_release_manifest_is_signed_and_any_change_is_found(tmp_path) -> None:
    key = Ed25519PrivateKey.generate()
    (tmp_path / "t.csv").write_bytes(b"a,n\nx,12\n")
    import hashlib
    files = [{"path": "t.csv", "sha256": hashlib.sha256(b"a,n\nx,12\n").hexdigest(), "size": 9}]
    signed = sign(manifest(site="local", request={"id": "x-1", "project": "p", "bubble": "b", "requester": "bruno",
                                                  "justification": "j", "round": 1},
                           files=files, findings=[], decision={"id": "d", "action": "release"}, rules=RULES.table(),
                           reviews=[], released_at="2026-11-23T00:00:00Z"), key)
    assert verify(signed, key.public_key(), tmp_path) == []
    assert verify({**signed, "project": "q"}, key.public_key(), None)
    assert "signed by key" in verify(signed, Ed25519PrivateKey.generate().public_key(), None)[0]
    (tmp_path / "t.csv").write_bytes(b"a,n\nx,3\n")
    assert verify(signed, key.public_key(), tmp_path) == [f"t.csv: sha256 {hashlib.sha256(b'a,n' + bytes([10]) + b'x,3' + bytes([10])).hexdigest()} differs from the manifest's {files[0]['sha256']}"]
    escaping = sign({**signed, "files": [{"path": "../x", "sha256": "0", "size": 1}]}, key)
    assert verify(escaping, key.public_key(), tmp_path) == ["../x: not a relative path"]

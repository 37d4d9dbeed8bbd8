"""RFC 6962 hashing against the Certificate Transparency test vectors, and proofs for every shape."""

from __future__ import annotations

import pytest

from controller.audit.merkle import (
    EMPTY_ROOT,
    MerkleLevels,
    leaf_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)

# The eight leaves and tree heads used by the CT reference implementations' tests.
LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                      "606162636465666768696a6b6c6d6e6f")]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def test_empty_tree_root_is_hash_of_nothing() -> None:
    assert root_of([]) == EMPTY_ROOT == MerkleLevels().root(0)
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.mark.parametrize("size", range(1, 9))
def test_roots_match_reference_vectors(size: int) -> None:
    leaves = [leaf_hash(x) for x in LEAVES[:size]]
    assert root_of(leaves).hex() == ROOTS[size - 1]
    assert MerkleLevels(leaves).root().hex() == ROOTS[size - 1]
    assert MerkleLevels([leaf_hash(x) for x in LEAVES]).root(size).hex() == ROOTS[size - 1]


def test_every_inclusion_proof_verifies_and_a_wrong_one_does_not() -> None:
    leaves = [leaf_hash(str(i).encode()) for i in range(70)]
    tree = MerkleLevels(leaves)
    for size in range(1, 71):
        root = tree.root(size)
        assert root == root_of(leaves[:size])
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            assert verify_inclusion(leaves[index], index, size, proof, root)
            assert not verify_inclusion(leaves[(index + 1) % 70], index, size, proof, root)
            if proof:
                forged = [bytes(32)] + proof[1:]
                assert not verify_inclusion(leaves[index], index, size, forged, root)


def test_every_consistency_proof_verifies_and_a_rewritten_history_does_not() -> None:
    leaves = [leaf_hash(str(i).encode()) for i in range(40)]
    tree = MerkleLevels(leaves)
    rewritten = MerkleLevels([leaf_hash(b"forged")] + leaves[1:])
    for second in range(1, 41):
        for first in range(1, second + 1):
            proof = tree.consistency_proof(first, second)
            assert verify_consistency(first, second, tree.root(first), tree.root(second), proof)
            if first < second:
                assert not verify_consistency(first, second, rewritten.root(first), tree.root(second), proof)


def test_truncate_forgets_uncommitted_leaves() -> None:
    leaves = [leaf_hash(str(i).encode()) for i in range(13)]
    tree = MerkleLevels(leaves)
    tree.truncate(6)
    assert tree.size == 6 and tree.root() == root_of(leaves[:6])
    for leaf in leaves[6:]:
        tree.append(leaf)
    assert tree.root() == root_of(leaves)


def test_out_of_range_requests_are_refused() -> None:
    tree = MerkleLevels([leaf_hash(b"a")])
    with pytest.raises(ValueError, match="outside"):
        tree.inclusion_proof(1, 1)
    with pytest.raises(ValueError, match="outside"):
        tree.root(2)

"""Which flags a copy gets (docs/contract.md §5.2): never \\Recent or \\Deleted, no unknown
system flags, keywords only where the destination's PERMANENTFLAGS accept them."""

from __future__ import annotations

import pytest

from legacyflo_daemon.transfer.folder_copy import copy_flags

ALL = ("\\Seen", "\\Answered", "\\Flagged", "\\Draft", "\\Deleted", "\\Recent", "$Forwarded")


@pytest.mark.parametrize(
    ("flags", "permanent", "expected"),
    [
        (ALL, None, ("\\Seen", "\\Answered", "\\Flagged", "\\Draft", "$Forwarded")),
        (ALL, frozenset({"\\Seen", "\\*"}), ("\\Seen", "\\Answered", "\\Flagged", "\\Draft",
                                             "$Forwarded")),
        (ALL, frozenset({"\\Seen", "\\Flagged"}), ("\\Seen", "\\Answered", "\\Flagged", "\\Draft")),
        (("$Label1", "$Forwarded"), frozenset({"$label1"}), ("$Label1",)),
        (("\\Forwarded", "\\Indexed", "\\SEEN"), None, ("\\SEEN",)),
        ((), None, ()),
    ],
)  # fmt: skip
def test_copy_flags(
    flags: tuple[str, ...], permanent: frozenset[str] | None, expected: tuple[str, ...]
) -> None:
    assert copy_flags(flags, permanent) == expected

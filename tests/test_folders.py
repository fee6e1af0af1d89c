"""Folder mapping rules of docs/contract.md §4: one table row per rule, plus properties of the
plan."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from legacyflo_daemon.config.schema import DEFAULT_EXCLUDED_FOLDERS
from legacyflo_daemon.imap.syntax import utf7
from legacyflo_daemon.imap.syntax.parse import Namespaces
from legacyflo_daemon.transfer.folders import (
    FolderPlan,
    SourceFolder,
    excluded_folders,
    folders_to_create,
    is_excluded,
    personal_only,
    plan_folders,
    root_path,
    safe_mapping,
    safe_segment,
    source_path,
    split_wire,
    strip_prefix,
)

ROOT = ("INBOX", "historical_data")
NOSELECT = frozenset({"\\noselect", "\\haschildren"})


def sf(name: str, delim: str | None = "/", flags: frozenset[str] = frozenset()) -> SourceFolder:
    return SourceFolder(name=name, delimiter=delim, flags=flags)


def plan(
    names: list[str] | list[SourceFolder],
    *,
    source_delim: str | None = "/",
    dest_delim: str = ".",
    prefix: tuple[str, ...] = ROOT,
    exclusions: tuple[str, ...] | None = None,
) -> list[FolderPlan]:
    folders = [n if isinstance(n, SourceFolder) else sf(n, source_delim) for n in names]
    return plan_folders(
        folders,
        source_delim=source_delim,
        dest_delim=dest_delim,
        dest_prefix_path=prefix,
        dest_folder="Data",
        exclusions=exclusions,
    )


def one(name: str, **kw: object) -> FolderPlan:
    plans = plan([name], **kw)  # type: ignore[arg-type]
    assert len(plans) == 1
    return plans[0]


D = "INBOX.historical_data.Data."


@pytest.mark.parametrize(
    ("source", "dest_name", "dest_display", "source_display", "note_has"),
    [
        ("INBOX", D + "Inbox", D + "Inbox", "INBOX", ""),
        ("inbox", D + "Inbox", D + "Inbox", "inbox", ""),
        ("INBOX/Sub", D + "Inbox.Sub", D + "Inbox.Sub", "INBOX/Sub", ""),
        ("Inbox/Sub", D + "Inbox.Sub", D + "Inbox.Sub", "Inbox/Sub", ""),
        ("Archive/INBOX", D + "Archive.INBOX", D + "Archive.INBOX", "Archive/INBOX", ""),
        ("Sent Items", D + "Sent Items", D + "Sent Items", "Sent Items", ""),
        (
            "Mr. Smith",
            D + "Mr_ Smith",
            D + "Mr_ Smith",
            "Mr. Smith",
            "'.' in 'Mr. Smith' became '_'",
        ),
        ("Caf&AOk-/&ANw-nter", D + "Caf&AOk-.&ANw-nter", D + "Café.Ünter", "Café/Ünter", ""),
        ("Caf&AOk- &- Co", D + "Caf&AOk- &- Co", D + "Café & Co", "Café & Co", ""),
        (
            "Projects/2024/Q1",
            D + "Projects.2024.Q1",
            D + "Projects.2024.Q1",
            "Projects/2024/Q1",
            "",
        ),
        ("Projects/", D + "Projects", D + "Projects", "Projects", ""),
        ("a//b", D + "a._.b", D + "a._.b", "a//b", "an empty name segment became '_'"),
        ("&AOk", D + "&-AOk", D + "&AOk", "&AOk", "not valid modified UTF-7"),
        ("Café", D + "Caf&AOk-", D + "Café", "Café", "not valid modified UTF-7"),
        ("&2D3c5w- Mail", D + "&2D3c5w- Mail", D + "📧 Mail", "📧 Mail", ""),
    ],
)
def test_mapping_slash_source_to_dot_destination(
    source: str, dest_name: str, dest_display: str, source_display: str, note_has: str
) -> None:
    p = one(source)
    assert (p.source_name, p.dest_name, p.dest_display, p.source_display) == (
        source,
        dest_name,
        dest_display,
        source_display,
    )
    assert p.selectable
    if note_has:
        assert note_has in p.note
    else:
        assert p.note == ""


@pytest.mark.parametrize(
    ("source", "source_delim", "dest_name", "note_has"),
    [
        ("INBOX.Sent", ".", "INBOX/historical_data/Data/Inbox/Sent", ""),
        ("INBOX.a/b", ".", "INBOX/historical_data/Data/Inbox/a_b", "'/' in 'a/b' became '_'"),
        ("a/b", None, "INBOX/historical_data/Data/a_b", "'/' in 'a/b' became '_'"),
        ("flat.name", None, "INBOX/historical_data/Data/flat.name", ""),
    ],
)
def test_mapping_to_slash_destination(
    source: str, source_delim: str | None, dest_name: str, note_has: str
) -> None:
    p = one(source, source_delim=source_delim, dest_delim="/")
    assert p.dest_name == dest_name
    assert (note_has in p.note) if note_has else p.note == ""


def test_folder_delimiter_from_list_wins_over_default() -> None:
    p = plan([sf("a.b", delim=".")], source_delim="/", dest_delim="/")[0]
    assert p.dest_name == "INBOX/historical_data/Data/a/b"


def test_empty_prefix_and_flat_names() -> None:
    assert one("x", prefix=()).dest_name == "Data.x"
    assert one("x", prefix=()).dest_parents == ("Data",)


@pytest.mark.parametrize(
    ("flags", "selectable"),
    [
        (frozenset(), True),
        (frozenset({"\\haschildren"}), True),
        (frozenset({"\\noselect"}), False),
        (frozenset({"\\NoSelect"}), False),  # any case
        (frozenset({"\\nonexistent"}), False),
        (frozenset({"\\marked", "\\noinferiors"}), True),
    ],
)
def test_selectable_from_flags(flags: frozenset[str], selectable: bool) -> None:
    folder = sf("Projects", flags=flags)
    assert folder.selectable is selectable
    assert plan([folder])[0].selectable is selectable


def test_dest_parents_are_outermost_first() -> None:
    p = one("Projects/2024/Q1")
    assert p.dest_parents == (
        "INBOX",
        "INBOX.historical_data",
        "INBOX.historical_data.Data",
        D + "Projects",
        D + "Projects.2024",
    )


@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        (("Calendar",), True),
        (("calendar",), True),
        (("CALENDAR", "Birthdays"), True),
        (("INBOX", "Calendar"), True),  # source with INBOX. namespace prefix
        (("inbox", "Contacts", "Family"), True),
        (("Sync Issues",), True),
        (("Sync Issues", "Conflicts"), True),
        (("Calendars",), False),  # a whole segment must match, not a prefix of it
        (("Archive", "Calendar"), False),  # a user's folder deeper down is mail
        (("INBOX",), False),
        (("Inbox", "Projects"), False),
        (("Sent Items",), False),
    ],
)
def test_is_excluded_default_list(path: tuple[str, ...], excluded: bool) -> None:
    assert is_excluded(path, DEFAULT_EXCLUDED_FOLDERS) is excluded


@pytest.mark.parametrize(
    ("path", "exclusions", "excluded"),
    [
        (("Tâches",), ("Tâches",), True),
        (("TÂCHES",), ("tâches",), True),
        (("Ta\u0302ches",), ("T\u00e2ches",), True),  # NFD vs NFC spelling of the same name
        (("Sync Issues", "Conflicts"), ("Sync Issues/Conflicts",), True),
        (("Sync Issues", "Local Failures"), ("Sync Issues/Conflicts",), False),
        (("Sync Issues",), ("Sync Issues/Conflicts",), False),
        (("Calendar",), (), False),
        (("Calendar",), ("",), False),
    ],
)
def test_is_excluded_custom(
    path: tuple[str, ...], exclusions: tuple[str, ...], excluded: bool
) -> None:
    assert is_excluded(path, exclusions) is excluded


EXCHANGE = [
    "INBOX",
    "Calendar",
    "Calendar/Birthdays",
    "Contacts",
    "Sent Items",
    "Sync Issues",
    "Sync Issues/Conflicts",
    "Tasks",
    "Projects",
]


def test_exchange_exclusions_skip_non_mail_folders() -> None:
    plans = plan(EXCHANGE, exclusions=DEFAULT_EXCLUDED_FOLDERS)
    assert [p.source_name for p in plans] == ["INBOX", "Projects", "Sent Items"]
    folders = [sf(n) for n in EXCHANGE]
    skipped = excluded_folders(folders, source_delim="/", exclusions=DEFAULT_EXCLUDED_FOLDERS)
    assert skipped == [
        "Calendar",
        "Calendar/Birthdays",
        "Contacts",
        "Sync Issues",
        "Sync Issues/Conflicts",
        "Tasks",
    ]


def test_no_exclusions_for_imap_jobs() -> None:
    assert len(plan(EXCHANGE, exclusions=None)) == len(EXCHANGE)
    assert excluded_folders([sf(n) for n in EXCHANGE], source_delim="/", exclusions=None) == []


def test_excluded_encoded_name_is_matched_decoded() -> None:
    plans = plan(["T&AOI-ches", "Notes"], exclusions=("Tâches", "Notes"))
    assert plans == []


def test_parents_come_before_children() -> None:
    names = ["Projects/2024/Q1", "INBOX/Sub", "Projects", "INBOX", "Projects/2024"]
    dests = [p.dest_name for p in plan(names)]
    assert dests == [
        D + "Inbox",
        D + "Inbox.Sub",
        D + "Projects",
        D + "Projects.2024",
        D + "Projects.2024.Q1",
    ]


def test_same_mailbox_listed_twice_is_planned_once() -> None:
    plans = plan(["INBOX", "inbox", "Sent", "Sent"])
    assert [p.dest_name for p in plans] == [D + "Inbox", D + "Sent"]


# Clashes: (source names, {source: dest last segment}, {source: note fragment})
CLASHES = [
    (["a.b", "a_b"], {"a_b": "a_b", "a.b": "a_b (2)"}, {"a.b": "renamed to 'a_b (2)'"}),
    (["a_b", "a.b"], {"a_b": "a_b", "a.b": "a_b (2)"}, {"a.b": "renamed to 'a_b (2)'"}),
    (
        ["a.b", "a_b", "a_b (2)"],
        {"a_b": "a_b", "a_b (2)": "a_b (2)", "a.b": "a_b (3)"},
        {"a.b": "renamed to 'a_b (3)'"},
    ),
    (["a.b", "a_b."], {"a.b": "a_b", "a_b.": "a_b_"}, {}),  # no clash: '_' vs '__'
    (["x.y", "x,y"], {"x.y": "x_y", "x,y": "x,y"}, {}),
    (["Trash", "trash"], {"Trash": "Trash", "trash": "trash (2)"}, {"trash": "renamed"}),
    (["a.b", "a?b", "a_b"], {"a_b": "a_b", "a.b": "a_b (2)", "a?b": "a?b"}, {}),
    (["a.b", "a:b"], {"a.b": "a_b", "a:b": "a:b"}, {}),
]


@pytest.mark.parametrize(("names", "expected", "notes"), CLASHES)
def test_clashes_are_made_unique_never_merged(
    names: list[str], expected: dict[str, str], notes: dict[str, str]
) -> None:
    got = {p.source_name: p.dest_name.removeprefix(D) for p in plan(names)}
    assert got == expected
    for p in plan(names):
        if p.source_name in notes:
            assert notes[p.source_name] in p.note


def test_children_follow_a_renamed_parent() -> None:
    plans = {p.source_name: p for p in plan(["a_b", "a.b", "a.b/c", "a_b/c"])}
    assert plans["a.b/c"].dest_name == D + "a_b (2).c"
    assert plans["a_b/c"].dest_name == D + "a_b.c"
    assert plans["a.b/c"].note == ""  # the parent is planned and carries the note itself


def test_note_of_unlisted_parent_goes_to_child() -> None:
    p = one("x.y/z")
    assert p.dest_name == D + "x_y.z"
    assert "'.' in 'x.y' became '_'" in p.note


def test_inbox_wins_over_a_folder_named_inbox_elsewhere() -> None:
    # 'Inbox' under Archive is a different parent: no clash. A top-level literal match of
    # 'Inbox' cannot exist (INBOX is case-insensitive), so only the order rule matters here.
    plans = {p.source_name: p.dest_name for p in plan(["Archive/Inbox", "INBOX"])}
    assert plans == {"INBOX": D + "Inbox", "Archive/Inbox": D + "Archive.Inbox"}


def test_plan_is_stable_when_a_clashing_folder_appears_later() -> None:
    first = {p.source_name: p.dest_name for p in plan(["a_b", "Sent"])}
    second = {p.source_name: p.dest_name for p in plan(["a.b", "Sent", "a_b"])}
    assert second["a_b"] == first["a_b"]
    assert second["Sent"] == first["Sent"]


@pytest.mark.parametrize(
    ("prefix", "dest_folder", "dest_delim"),
    [(("INBOX", "hist.data"), "Data", "."), (("INBOX",), "Da/ta", "/"), (("",), "Data", ".")],
)
def test_bad_base_path_is_an_error(
    prefix: tuple[str, ...], dest_folder: str, dest_delim: str
) -> None:
    with pytest.raises(ValueError, match="destination path segment"):
        plan_folders(
            [sf("x")],
            source_delim="/",
            dest_delim=dest_delim,
            dest_prefix_path=prefix,
            dest_folder=dest_folder,
            exclusions=None,
        )


def test_empty_destination_delimiter_is_an_error() -> None:
    with pytest.raises(ValueError, match="no hierarchy delimiter"):
        plan(["x"], dest_delim="")


def test_folders_to_create_has_parents_first_and_no_noselect_leaf() -> None:
    plans = plan(
        [
            sf("INBOX"),
            sf("Projects", flags=NOSELECT),
            sf("Projects/2024", flags=NOSELECT),
            sf("Projects/2024/Q1"),
            sf("Empty", flags=NOSELECT),  # a \Noselect leaf is not created at all
        ]
    )
    existing = {"INBOX", "INBOX.historical_data"}
    assert folders_to_create(plans, existing) == [
        "INBOX.historical_data.Data",
        D + "Inbox",
        D + "Projects",
        D + "Projects.2024",
        D + "Projects.2024.Q1",
    ]


def test_folders_to_create_skips_existing_and_inbox() -> None:
    plans = plan(["a/b/c"])
    assert folders_to_create(plans, set()) == [
        "INBOX.historical_data",
        "INBOX.historical_data.Data",
        D + "a",
        D + "a.b",
        D + "a.b.c",
    ]
    assert folders_to_create(plans, {"INBOX.historical_data", D + "a"}) == [
        "INBOX.historical_data.Data",
        D + "a.b",
        D + "a.b.c",
    ]
    assert folders_to_create(plans, set(folders_to_create(plans, set()))) == []


def test_create_names_are_encoded() -> None:
    plans = plan(["Caf&AOk-/&ANw-nter"], prefix=("INBOX", "Archivé"))
    assert folders_to_create(plans, {"INBOX"}) == [
        "INBOX.Archiv&AOk-",
        "INBOX.Archiv&AOk-.Data",
        "INBOX.Archiv&AOk-.Data.Caf&AOk-",
        "INBOX.Archiv&AOk-.Data.Caf&AOk-.&ANw-nter",
    ]


@pytest.mark.parametrize(
    ("root", "ns_prefix", "delim", "expected"),
    [
        ("INBOX.historical_data", "", "/", ("INBOX", "historical_data")),
        ("INBOX.historical_data", "", ".", ("INBOX", "historical_data")),
        ("INBOX.historical_data", "INBOX.", ".", ("INBOX", "historical_data")),
        ("inbox.historical_data", "INBOX.", ".", ("inbox", "historical_data")),
        ("historical_data", "INBOX.", ".", ("INBOX", "historical_data")),
        ("historical_data", "INBOX/", "/", ("INBOX", "historical_data")),
        ("historical_data", "", "/", ("historical_data",)),
        ("Archive.Old mail", "", "/", ("Archive", "Old mail")),
        ("", "", "/", ()),
        ("", "INBOX.", ".", ("INBOX",)),
    ],
)
def test_root_path(root: str, ns_prefix: str, delim: str, expected: tuple[str, ...]) -> None:
    assert root_path(root, ns_prefix, delim) == expected


@pytest.mark.parametrize(
    ("root", "delim", "message"),
    [
        ("INBOX..x", ".", "empty path segment"),
        ("INBOX.", ".", "empty path segment"),
        ("INBOX.a/b", "/", "contains the destination's hierarchy delimiter '/'"),
    ],
)
def test_root_path_errors(root: str, delim: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        root_path(root, "", delim)


def test_root_path_feeds_plan() -> None:
    prefix = root_path("INBOX.historical_data", "", "/")
    p = one("Sent Items", prefix=prefix, dest_delim="/")
    assert p.dest_name == "INBOX/historical_data/Data/Sent Items"


@pytest.mark.parametrize(
    ("name", "delim", "wire", "decoded"),
    [
        ("a/b", "/", ("a", "b"), ("a", "b")),
        ("a/b/", "/", ("a", "b"), ("a", "b")),
        ("a/b", None, ("a/b",), ("a/b",)),
        ("/a", "/", ("", "a"), ("", "a")),
        ("Caf&AOk-.x", ".", ("Caf&AOk-", "x"), ("Café", "x")),
    ],
)
def test_split_and_decode(
    name: str, delim: str | None, wire: tuple[str, ...], decoded: tuple[str, ...]
) -> None:
    assert split_wire(name, delim) == wire
    assert source_path(name, delim) == decoded


# Property: whatever the source tree, the plan never merges two source mailboxes, puts
# parents before children, and every destination name is valid modified UTF-7.
_SEGMENTS = st.sampled_from(
    ["a", "A", "a.b", "a_b", "a_b (2)", "INBOX", "inbox", "Café", "", "x y"]
)
_PATHS = st.lists(st.lists(_SEGMENTS, min_size=1, max_size=3), max_size=12)


@given(_PATHS)
def test_plan_properties(paths: list[list[str]]) -> None:
    names = ["/".join(utf7.encode(s) for s in p) for p in paths]
    plans = plan([n for n in names if n])
    keys = {
        ("INBOX", *k[1:]) if k[0].casefold() == "inbox" else k
        for k in (split_wire(n, "/") for n in names if n)
    }
    assert len(plans) == len(keys)
    dest_folded = [p.dest_name.casefold() for p in plans]
    assert len(set(dest_folded)) == len(dest_folded)
    for i, p in enumerate(plans):
        assert utf7.encode(utf7.decode(p.dest_name)) == p.dest_name
        for parent in p.dest_parents:
            later = [q.dest_name for q in plans[i + 1 :]]
            assert parent not in later


# -- personal namespace only, prefix stripped (issue 10: other people's mail, INBOX. prefix) ---

CYRUS_NS = Namespaces(
    personal=(("INBOX.", "."),), other_users=(("user.", "."),), shared=(("", "."),)
)


def test_personal_only_keeps_the_owners_folders_and_drops_other_users_and_shared() -> None:
    listed = [
        sf(n, ".")
        for n in [
            "INBOX",
            "INBOX.Sent Items",
            "INBOX.Projects.2024",
            "user.bob",
            "user.bob.Sent",
            "user",
            "Announcements",
            "inbox.lower",
        ]
    ]
    kept, left_out = personal_only(listed, CYRUS_NS)
    assert [e.name for e, _ in kept] == [
        "INBOX",
        "INBOX.Sent Items",
        "INBOX.Projects.2024",
        "inbox.lower",
    ]
    assert left_out == ["user.bob", "user.bob.Sent", "user", "Announcements"]


def test_personal_only_with_an_empty_personal_prefix_drops_prefixed_namespaces() -> None:
    # Dovecot: personal "" with "shared/" and "users/" namespaces listed by "*".
    ns = Namespaces(personal=(("", "/"),), other_users=(("users/", "/"),),
                    shared=(("shared/", "/"),))  # fmt: skip
    kept, left_out = personal_only(
        [sf("INBOX"), sf("Sent"), sf("shared/Team"), sf("users/bob/x"), sf("sharedness")], ns
    )
    assert [e.name for e, _ in kept] == ["INBOX", "Sent", "sharedness"]
    assert left_out == ["shared/Team", "users/bob/x"]


def test_inbox_prefix_is_stripped_so_folders_land_beside_inbox() -> None:
    listed = [sf(n, ".") for n in ["INBOX", "INBOX.Sent Items", "INBOX.Mr. Smith", "INBOX.a.b"]]
    kept, _ = personal_only(listed, CYRUS_NS)
    plans = plan_folders(
        [e for e, _ in kept],
        source_delim=".",
        dest_delim="/",
        dest_prefix_path=("INBOX", "historical_data"),
        dest_folder="Data",
        exclusions=DEFAULT_EXCLUDED_FOLDERS,
        prefixes={e.name: p for e, p in kept},
    )
    shown = {p.source_name: p.dest_display for p in plans}
    assert shown["INBOX"] == "INBOX/historical_data/Data/Inbox"
    assert shown["INBOX.Sent Items"] == "INBOX/historical_data/Data/Sent Items"
    assert shown["INBOX.a.b"] == "INBOX/historical_data/Data/a/b"
    assert shown["INBOX.Mr. Smith"] == "INBOX/historical_data/Data/Mr/ Smith"


def test_a_folder_named_inbox_inside_the_prefix_is_not_merged_into_inbox() -> None:
    listed = [sf(n, ".") for n in ["INBOX", "INBOX.INBOX", "INBOX.Calendar"]]
    kept, _ = personal_only(listed, CYRUS_NS)
    plans = plan_folders(
        [e for e, _ in kept],
        source_delim=".",
        dest_delim=".",
        dest_prefix_path=(),
        dest_folder="Data",
        exclusions=DEFAULT_EXCLUDED_FOLDERS,
        prefixes={e.name: p for e, p in kept},
    )
    shown = {p.source_name: p.dest_display for p in plans}
    assert shown == {"INBOX": "Data.Inbox", "INBOX.INBOX": "Data.INBOX (2)"}


@pytest.mark.parametrize(
    ("name", "prefix", "expected"),
    [
        ("INBOX.Sent", "INBOX.", "Sent"),
        ("inbox.Sent", "INBOX.", "Sent"),
        ("INBOX", "INBOX.", "INBOX"),
        ("Other", "INBOX.", "Other"),
        ("Sent", "", "Sent"),
        ("Mail/a/b", "Mail/", "a/b"),
    ],
)
def test_strip_prefix(name: str, prefix: str, expected: str) -> None:
    assert strip_prefix(name, prefix, "." if "." in prefix else "/") == expected


@pytest.mark.parametrize(
    ("text", "safe"),
    [
        ("50% Off", "50_ Off"),
        ('a "quoted" name', "a _quoted_ name"),
        ("back\\slash", "back_slash"),
        ("^caret", "_caret"),
        ("Café & Réunions", "Café _ Réunions"),
        ("Plain (2)", "Plain (2)"),
        (" padded ", "padded"),
        ("%%", "__"),
        ("", "_"),
    ],
)
def test_safe_segment(text: str, safe: str) -> None:
    assert safe_segment(text) == safe


def test_safe_mapping_keeps_root_and_destination_folder() -> None:
    (p,) = plan_folders(
        [sf("Deals/50% Off")],
        source_delim="/",
        dest_delim="/",
        dest_prefix_path=("INBOX", "100%"),
        dest_folder="Data",
        exclusions=None,
    )
    assert p.dest_display == "INBOX/100%/Data/Deals/50% Off"
    assert safe_mapping(p) == ("INBOX/100%/Data/Deals/50_ Off", "INBOX/100%/Data/Deals/50_ Off")
    (q,) = plan([sf("Café")])
    assert safe_mapping(q) == (q.dest_name, q.dest_display)  # nothing to change

"""Folder mapping: which source folders are copied, and where each one lands (docs/contract.md §4).

Owns: splitting wire names on the source delimiter, modified UTF-7 decoding/encoding per path
segment, ``INBOX`` → ``Inbox``, the destination delimiter inside a name → ``_``, Exchange
non-mail folder exclusions, name clashes after substitution, parents-first creation order, and
the archive root (``INBOX.historical_data``) in the destination's real delimiter.
Must not: talk to a server, quote names for the wire, or decide what to do with a folder that
cannot be created (that is the copier's job).

Exclusions (decision): an excluded name matches, case-insensitively (Unicode casefold, NFC),
the first segment of a source path, and also the second segment when the first is ``INBOX``:
Exchange lists its non-mail folders at the top level, but a source whose personal namespace is
``INBOX.`` (Cyrus, Courier) lists them as ``INBOX.Calendar``. Every subfolder of an excluded
folder is excluded too. An exclusion may name a deeper path with ``/`` (``Sync Issues/Conflicts``).

Clashes (decision): two source folders may map to the same destination name, e.g. ``a.b`` and
``a_b`` on a ``.`` destination, or ``Trash``/``trash`` on a case-insensitive destination (names
are compared casefolded, so a case-insensitive server never merges them either). Among the
siblings that want one name, ``INBOX`` wins, then a folder whose name needed no substitution,
then by source wire name; the others get `` (2)``, `` (3)``, ... and a note. The winner does not
depend on which folders appear later, so a re-run maps an existing folder to the same place.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from legacyflo_daemon.imap.syntax import utf7
from legacyflo_daemon.imap.syntax.parse import ListEntry, Namespaces, selectable

INBOX = "INBOX"
INBOX_DEST = "Inbox"

# One LIST entry of the source: ``name`` as on the wire (mUTF-7), its delimiter and attributes.
SourceFolder = ListEntry


@dataclass(frozen=True, slots=True)
class FolderPlan:
    """Where one source folder goes.

    ``dest_name`` is the destination wire name (mUTF-7 segments joined with the destination
    delimiter); ``dest_parents`` the wire names of its ancestors, outermost first (from the
    first segment of the archive root). ``selectable`` False means the folder is only a parent
    (``\\Noselect``/``\\NonExistent``): nothing is copied from it. ``note`` explains any renaming
    for the report ("" when none).
    """

    source_name: str
    source_display: str
    dest_name: str
    dest_display: str
    selectable: bool
    note: str
    dest_parents: tuple[str, ...] = ()
    dest_path: tuple[str, ...] = ()  # decoded destination segments
    fixed: int = 0  # leading segments of dest_path that are the archive root + destfolder
    dest_delim: str = "."


def _fold(text: str) -> str:
    return unicodedata.normalize("NFC", text).casefold()


def _decode_segment(wire: str) -> tuple[str, str]:
    """Decoded text of one wire segment, and a note if it was not valid modified UTF-7."""
    try:
        return utf7.decode(wire), ""
    except ValueError:
        # Some servers send raw UTF-8 or stray '&': keep the text as sent rather than skip mail.
        return wire, f"name {wire!r} is not valid modified UTF-7; used as the server sent it"


def split_wire(name: str, delimiter: str | None) -> tuple[str, ...]:
    """Wire segments of ``name``; a trailing delimiter (``Projects/``) adds no segment."""
    if not delimiter:
        return (name,)
    parts = name.split(delimiter)
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    return tuple(parts)


def source_path(name: str, delimiter: str | None) -> tuple[str, ...]:
    """Decoded segments of a source wire name (invalid mUTF-7 segments are kept as sent)."""
    return tuple(_decode_segment(w)[0] for w in split_wire(name, delimiter))


def _inbox_normal(name: str, delimiter: str | None) -> str:
    """``name`` with a first segment spelled ``inbox`` in any case written ``INBOX``."""
    head, sep, tail = name.partition(delimiter) if delimiter else (name, "", "")
    return INBOX + sep + tail if head.casefold() == INBOX.casefold() else name


def _in_namespace(name: str, prefix: str, delimiter: str | None) -> bool:
    """Whether wire ``name`` lies in the namespace ``prefix`` (or is its root: ``user`` for
    ``user.``). Both are INBOX-normalised first."""
    prefix = _inbox_normal(prefix, delimiter)
    if name.startswith(prefix):
        return True
    return bool(delimiter) and prefix.endswith(delimiter or "") and name == prefix[:-1]


def personal_only(
    entries: list[SourceFolder], namespaces: Namespaces
) -> tuple[list[tuple[SourceFolder, str]], list[str]]:
    """The entries in the source's personal namespace, each with that namespace's prefix, and
    the wire names of the entries left out (other users' and shared folders).

    A name belongs to the namespace with the longest matching prefix (a personal one wins a
    tie); ``INBOX`` is always personal (RFC 3501). So with ``(("INBOX." ".")) (("user." "."))
    (("" "."))`` (Cyrus with a shared namespace) ``INBOX.Sent`` is kept, ``user.bob.Sent`` and a
    top-level shared ``Announcements`` are not. Never copying another person's mail matters
    more than copying a folder a server lists oddly: such a folder is named in the result.
    """
    kinds = [(True, p, d) for p, d in namespaces.personal]
    kinds += [(False, p, d) for p, d in (*namespaces.other_users, *namespaces.shared)]
    kept: list[tuple[SourceFolder, str]] = []
    left_out: list[str] = []
    for entry in entries:
        if entry.name.casefold() == INBOX.casefold():
            kept.append((entry, ""))
            continue
        best: tuple[int, bool, str] | None = None
        for personal, prefix, delim in kinds:
            delimiter = delim or entry.delimiter
            if _in_namespace(_inbox_normal(entry.name, delimiter), prefix, delimiter):
                rank = (len(prefix), personal, prefix)
                if best is None or rank[:2] > best[:2]:
                    best = rank
        if best is not None and best[1]:
            kept.append((entry, best[2]))
        else:
            left_out.append(entry.name)
    return kept, left_out


def strip_prefix(name: str, prefix: str, delimiter: str | None) -> str:
    """``name`` without its personal namespace ``prefix`` (``INBOX.Sent`` → ``Sent``).

    The real INBOX, a name equal to the prefix's root (``INBOX`` for ``INBOX.``) and a name
    outside the prefix are returned as they are.
    """
    if not prefix or name.casefold() == INBOX.casefold():
        return name
    normal = _inbox_normal(name, delimiter)
    want = _inbox_normal(prefix, delimiter)
    if normal.startswith(want) and len(normal) > len(want):
        return normal[len(want) :]
    return name


def is_excluded(path_segments: tuple[str, ...], excluded: tuple[str, ...]) -> bool:
    """True if the decoded source path is an excluded folder or lies below one."""
    path = tuple(_fold(s) for s in path_segments)
    starts = [path]
    if len(path) > 1 and path[0] == INBOX.casefold():
        starts.append(path[1:])
    for entry in excluded:
        want = tuple(_fold(s) for s in entry.split("/") if s)
        if want and any(p[: len(want)] == want for p in starts):
            return True
    return False


def root_path(root: str, dest_namespace_prefix: str, dest_delim: str) -> tuple[str, ...]:
    """Segments of the archive root for the destination.

    ``root`` is written with ``.`` whatever the destination uses (config ``dest_root``, e.g.
    ``INBOX.historical_data``). When the destination's personal namespace has a prefix
    (``INBOX.`` on Cyrus-like servers) and ``root`` is not already under it, the prefix
    segments are put in front: a name outside the namespace cannot be created there.
    Raises ``ValueError`` for an empty segment or one containing ``dest_delim``.
    """
    segments = tuple(root.split(".")) if root else ()
    for seg in segments:
        if not seg.strip():
            raise ValueError(f"archive root {root!r}: empty path segment")
        if dest_delim in seg:
            raise ValueError(
                f"archive root {root!r}: segment {seg!r} contains the destination's "
                f"hierarchy delimiter {dest_delim!r}"
            )
    prefix = tuple(
        _decode_segment(w)[0] for w in split_wire(dest_namespace_prefix, dest_delim) if w
    )
    if prefix:
        head = segments[: len(prefix)]
        same = len(head) == len(prefix) and all(
            a == b or (i == 0 and a.casefold() == b.casefold() == INBOX.casefold())
            for i, (a, b) in enumerate(zip(head, prefix, strict=True))
        )
        if not same:
            segments = prefix + segments
    return segments


@dataclass(slots=True)
class _Node:
    key: tuple[str, ...]  # wire segments, first one INBOX-normalised
    decoded: str  # decoded last segment
    bad_utf7_note: str
    dest: str = ""  # assigned destination segment (decoded)
    notes: tuple[str, ...] = ()
    listed: bool = False


def _wanted(node: _Node, dest_delim: str) -> tuple[str, int, list[str]]:
    """Destination segment a node asks for, its clash priority (lower wins), and notes."""
    if node.key == (INBOX,):
        return INBOX_DEST, 0, []
    notes = [node.bad_utf7_note] if node.bad_utf7_note else []
    text = node.decoded
    if dest_delim in text:
        text = text.replace(dest_delim, "_")
        notes.append(
            f"{dest_delim!r} in {node.decoded!r} became '_' (it is the destination's "
            "hierarchy delimiter)"
        )
    if text == "":
        text = "_"
        notes.append("an empty name segment became '_'")
    return text, (1 if text == node.decoded else 2), notes


def _assign(children: list[_Node], dest_delim: str) -> None:
    """Give each sibling a distinct destination segment (see module docstring: clashes)."""
    wanted = {id(c): _wanted(c, dest_delim) for c in children}
    order = sorted(children, key=lambda c: (wanted[id(c)][1], c.key[-1]))
    taken: set[str] = set()
    for child in order:
        text, _, notes = wanted[id(child)]
        final, n = text, 1
        while _fold(final) in taken:
            n += 1
            final = f"{text} ({n})"
        if final != text:
            notes.append(f"renamed to {final!r}: {text!r} is already used by another folder")
        taken.add(_fold(final))
        child.dest, child.notes = final, tuple(notes)


def _build_tree(
    source: list[SourceFolder],
    source_delim: str | None,
    exclusions: tuple[str, ...] | None,
    prefixes: Mapping[str, str],
) -> tuple[dict[tuple[str, ...], _Node], list[tuple[SourceFolder, tuple[str, ...]]]]:
    nodes: dict[tuple[str, ...], _Node] = {}
    listed: list[tuple[SourceFolder, tuple[str, ...]]] = []
    for folder in source:
        delim = folder.delimiter or source_delim
        name = strip_prefix(folder.name, prefixes.get(folder.name, ""), delim)
        if not name:
            continue
        wire = split_wire(name, delim)
        if wire[0].casefold() != INBOX.casefold():
            key = wire
        elif name == folder.name:
            key = (INBOX, *wire[1:])
        else:
            # "INBOX.INBOX" under an "INBOX." prefix is a folder of its own, not the INBOX:
            # a key the real INBOX cannot have keeps it apart (it is renamed as a clash).
            key = (wire[0] + "\x00", *wire[1:])
        if key in nodes and nodes[key].listed:
            continue  # the same mailbox listed twice (INBOX/inbox, a/ and a): plan it once
        decoded = source_path(name, delim)
        if exclusions is not None and is_excluded(decoded, exclusions):
            continue
        for depth in range(1, len(key) + 1):
            sub = key[:depth]
            if sub not in nodes:
                text, note = _decode_segment(wire[depth - 1])
                nodes[sub] = _Node(sub, text, note)
        nodes[key].listed = True
        listed.append((folder, key))
    return nodes, listed


def plan_folders(
    source: list[SourceFolder],
    *,
    source_delim: str | None,
    dest_delim: str,
    dest_prefix_path: tuple[str, ...],
    dest_folder: str,
    exclusions: tuple[str, ...] | None,
    prefixes: Mapping[str, str] | None = None,
) -> list[FolderPlan]:
    """Plan every source folder not excluded; parents come before their children.

    Destination path = ``dest_prefix_path + (dest_folder,) + mapped source segments``, each
    segment encoded as modified UTF-7 and joined with ``dest_delim``. A folder's own LIST
    delimiter is used when it has one, else ``source_delim``; ``None`` for both means a flat
    name. ``exclusions`` None means nothing is excluded (jobtype IMAP). ``prefixes`` maps a
    source wire name to its personal namespace prefix (``personal_only``), which is stripped:
    ``INBOX.Sent`` under ``INBOX.`` lands beside ``Inbox``, not inside it. Raises ``ValueError``
    if a segment of ``dest_prefix_path``/``dest_folder`` is empty or contains ``dest_delim``
    (those are validated upstream; rewriting them silently would hide the bug).
    """
    if not dest_delim:
        raise ValueError("the destination has no hierarchy delimiter: folders cannot be nested")
    base = (*dest_prefix_path, dest_folder)
    for seg in base:
        if not seg or dest_delim in seg:
            raise ValueError(
                f"destination path segment {seg!r} is empty or contains {dest_delim!r}"
            )
    nodes, listed = _build_tree(source, source_delim, exclusions, prefixes or {})
    by_parent: dict[tuple[str, ...], list[_Node]] = {}
    for node in nodes.values():
        by_parent.setdefault(node.key[:-1], []).append(node)
    for siblings in by_parent.values():
        _assign(siblings, dest_delim)

    plans: list[tuple[tuple[str, ...], FolderPlan]] = []
    for folder, key in listed:
        chain = [nodes[key[:d]] for d in range(1, len(key) + 1)]
        dest = base + tuple(n.dest for n in chain)
        wire = [utf7.encode(s) for s in dest]
        # Notes of ancestors that are not planned themselves would otherwise be lost.
        notes = [note for n in chain if n is chain[-1] or not n.listed for note in n.notes]
        plan = FolderPlan(
            source_name=folder.name,
            source_display="/".join(source_path(folder.name, folder.delimiter or source_delim)),
            dest_name=dest_delim.join(wire),
            dest_display=dest_delim.join(dest),
            selectable=selectable(folder.flags),
            note="; ".join(notes),
            dest_parents=tuple(dest_delim.join(wire[:d]) for d in range(1, len(wire))),
            dest_path=dest,
            fixed=len(base),
            dest_delim=dest_delim,
        )
        plans.append((dest, plan))
    plans.sort(key=lambda p: (p[0], p[1].source_name))
    return [p for _, p in plans]


def excluded_folders(
    source: list[SourceFolder], *, source_delim: str | None, exclusions: tuple[str, ...] | None
) -> list[str]:
    """Decoded paths (joined with ``/``) of the source folders ``plan_folders`` leaves out."""
    if exclusions is None:
        return []
    out = []
    for folder in source:
        path = source_path(folder.name, folder.delimiter or source_delim)
        if folder.name and is_excluded(path, exclusions):
            out.append("/".join(path))
    return out


def _missing(names: Iterable[str], existing: set[str]) -> list[str]:
    have = set(existing)
    out: list[str] = []
    for name in names:
        # INBOX always exists (RFC 3501) and CREATE INBOX is an error.
        if name in have or name.casefold() == INBOX.casefold():
            continue
        have.add(name)
        out.append(name)
    return out


def folders_to_create(plans: list[FolderPlan], existing: set[str]) -> list[str]:
    """Every destination folder that must exist before copying, parents first.

    The ancestors of the selectable plans and the selectable plans themselves; a
    ``\\Noselect`` source folder appears only when it is a parent of a selectable one.
    ``existing`` holds destination wire names (from LIST); INBOX is never in the list.
    """
    names = (
        name for plan in plans if plan.selectable for name in (*plan.dest_parents, plan.dest_name)
    )
    return _missing(names, existing)


# Characters a refused folder name keeps under the safe mapping, besides letters and digits
# of any script: the ones every server we know accepts in a name.
_SAFE_PUNCTUATION = frozenset(" -_()")


def safe_segment(text: str) -> str:
    """``text`` with every character other than a letter, a digit, space, ``-``, ``_``, ``(``
    or ``)`` replaced by ``_``, and without leading or trailing spaces (``"50% Off"`` →
    ``"50_ Off"``, ``'a "b"'`` → ``"a _b_"``, ``"^x"`` → ``"_x"``). Never empty."""
    out = "".join(c if c.isalnum() or c in _SAFE_PUNCTUATION else "_" for c in text).strip()
    return out or "_"


def safe_mapping(plan: FolderPlan) -> tuple[str, str]:
    """The destination (wire name, display name) of ``plan`` under the safe mapping: every
    segment below the request's destination folder through ``safe_segment``. Used once, when
    the destination refuses the planned name; deterministic, so every later run finds the
    folder it made. Equal to the planned names when no segment changes."""
    path = (*plan.dest_path[: plan.fixed], *map(safe_segment, plan.dest_path[plan.fixed :]))
    if not plan.dest_path:
        return plan.dest_name, plan.dest_display
    return (
        plan.dest_delim.join(utf7.encode(s) for s in path),
        plan.dest_delim.join(path),
    )

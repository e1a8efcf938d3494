"""A copy-on-write profile as text: what ``gcfork explain`` prints.

Runs in the ``gcfork`` command (``gcfork explain``, ``gcfork bench --explain``),
never in a server's processes.

.. versionadded:: 0.2
"""

from __future__ import annotations

import os

from gcfork.explain.model import CowProfile
from gcfork.units import format_size

__all__ = ["render_explain"]


def _group_name(group: str) -> str:
    return group if group.startswith("[") or "/" not in group else os.path.basename(group)


def render_explain(profile: CowProfile, top: int = 15) -> str:
    """The profile as text: private memory by mapping, then the types and
    modules found on exclusively mapped pages, most pages first.

    Args:
        profile: as returned by :func:`~gcfork.explain.profile_self` or
            :func:`~gcfork.explain.read_profile`.
        top: rows per table.
    """
    p = profile
    ps = p.page_size
    lines = [
        f"gcfork explain: worker {p.pid} (parent {p.ppid}), Python {p.python}, "
        f"{p.frozen} objects frozen; profiled in {p.seconds:.1f}s",
        "",
        "Private memory by mapping (exclusive = pages no other process maps now):",
        f"  {'mapping':<34} {'n':>4} {'rss':>10} {'priv dirty':>11} {'priv clean':>11} "
        f"{'exclusive':>10}",
    ]
    for row in p.mappings[:top]:
        if row.private_dirty + row.private_clean + row.exclusive == 0:
            continue
        lines.append(
            f"  {_group_name(row.group)[:34]:<34} {row.mappings:>4} {format_size(row.rss):>10} "
            f"{format_size(row.private_dirty):>11} {format_size(row.private_clean):>11} "
            f"{format_size(row.exclusive):>10}"
        )
    total_private = sum(r.private_dirty + r.private_clean for r in p.mappings)
    lines += [
        f"  total private: {format_size(total_private)}; exclusive pages in writable mappings: "
        f"{format_size(p.exclusive)} of {format_size(p.scanned)} scanned; "
        f"{format_size(p.with_objects)} of them hold Python objects the walk found",
        "",
    ]
    for title, rows in (("type", p.by_type), ("module", p.by_module)):
        for origin, what in (
            ("inherited", "inherited from the master (frozen at fork)"),
            ("worker", "made by the worker since"),
        ):
            chosen = [r for r in rows if r.origin == origin][:top]
            if not chosen:
                continue
            lines.append(f"Top {title}s on exclusive pages, objects {what}:")
            lines.append(f"  {'pages':>7} {'size':>10} {'objects':>9}  {title}")
            for r in chosen:
                size = format_size(r.pages * ps)
                lines.append(f"  {r.pages:>7} {size:>10} {r.objects:>9}  {r.key}")
            lines.append("")
    lines += [f"note: {n}" for n in p.notes]
    lines.append(
        "A page holding objects of several types or modules counts once in each row; "
        "'size' is pages x page size."
    )
    return "\n".join(lines)

"""The gunicorn adapter: ``gcfork.install(globals())`` in ``gunicorn.conf.py``.

gcfork acts through gunicorn's server hooks, each of which runs in a known
process (see gunicorn's settings reference):

=================  =======  ==================================================
hook               process  what gcfork does there
=================  =======  ==================================================
on_starting        master   settle and log the policy; warn about missing preload;
                            warm the app up (``warmup``); make the stats
                            directory and advertise it
on_reload          master   after a HUP re-read the config: the new settings
                            (or, if refused, an error and the previous ones)
when_ready         master   start the sampling thread (report line), which
                            recycles workers on private memory
                            (``max_worker_private``, :mod:`.recycling`)
pre_fork           master   give the worker a slot and thresholds; the freeze
                            follows inside ``os.fork()`` (``gcfork.lifecycle``),
                            for every fork of the master; at the first one,
                            make the heap immortal (``immortalize``)
on_dirty_starting  dirty    gunicorn 25+'s dirty arbiter (forked without
                   arbiter  ``pre_fork``): GC off, a template for its dirty
                            workers, which get the GC on; publish its own
                            GC record (role ``dirty-arbiter``)
dirty_worker_init  dirty    publish the dirty worker's GC record
                   worker
post_fork          worker   set thresholds, enable the GC, log the proof;
                            start the thread publishing GC statistics and
                            the ``gcfork explain`` trigger
pre_request,       worker   with ``attribute_every`` on only: sample one
post_request                request in N, its USS growth counted for its
                            path (:mod:`.attribution`)
post_worker_init   worker   for the worker kind (:mod:`gcfork.gunicorn.kinds`):
                            count an ASGI app's requests where gunicorn does
                            not (uvicorn), and publish the final record on a
                            SIGTERM that would end the worker without
                            ``worker_exit``; without preload: freeze the app
                            just imported
worker_exit        worker   publish the final GC statistics and USS; after
                            the user's hook, ``os._exit`` (``fast_exit``)
child_exit         master   log the worker's exit line; delete its record
on_exit            master   log the full report; remove the stats directory
=================  =======  ==================================================

A config file can define the same hooks, before or after gcfork's line: both
run (:mod:`gcfork.gunicorn.hooks`). What each hook does is in
:mod:`gcfork.gunicorn.adapter`; the roles the report shows are named in
:mod:`gcfork.gunicorn.roles`, and :mod:`gcfork.gunicorn.discover` finds
masters for ``gcfork report`` (never loaded by a server).

gcfork's hook code never stops the server by accident: its exceptions are
logged and the server carries on. The one exception is deliberate:
:class:`~gcfork.exceptions.StartupError` (a failed warm-up), which gunicorn
reports as ``Error: <message>`` before exiting with status 1.
"""

from __future__ import annotations

import sys
from collections.abc import MutableMapping
from typing import Any

from gcfork import actions
from gcfork.exceptions import ConfigError
from gcfork.gunicorn.adapter import ADAPTER
from gcfork.gunicorn.hooks import chain_into
from gcfork.policy import Policy

__all__ = ["install", "is_installed"]


def is_installed() -> bool:
    """Whether :func:`install` has run in this process."""
    return ADAPTER.installed


def install(namespace: MutableMapping[str, Any], **settings: Any) -> Policy:
    """Turn gcfork on from ``gunicorn.conf.py``: ``gcfork.install(globals())``.

    Disables the GC in this (the master) process at once, before gunicorn
    imports the app, and registers the hooks that freeze before every fork and
    re-enable the GC in every worker. Safe to run again (gunicorn re-reads the
    config file on ``HUP``): the new settings apply to workers forked after.

    Args:
        namespace: the config file's ``globals()``: gcfork's hooks go there,
            chained with any hook the file defines.
        **settings: gcfork's settings (see ``docs/configuration.md``);
            ``GCFORK_*`` environment variables override them.

    Returns:
        The policy in force.

    Exits:
        With status 1 and one line on stderr naming the setting, the value and
        what is allowed, if a setting is invalid at start-up. On a reload, an
        invalid setting is reported and the previous policy is kept.
    """
    try:
        policy = Policy.from_settings(settings)
    except ConfigError as exc:
        if not ADAPTER.started:
            print(f"gcfork: error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        # A HUP: gunicorn must keep forking workers, and they must keep
        # gcfork's policy, so the hooks go into the new namespace all the same.
        ADAPTER.refused = f"gcfork: error: {exc}; workers keep the previous settings"
        policy = ADAPTER.policy
    else:
        ADAPTER.given = dict(settings)
        ADAPTER.refused = None
        if not ADAPTER.started:
            # On a HUP, on_reload decides, once gunicorn's raw_env is back.
            ADAPTER.policy = policy
    ADAPTER.installed = True
    if ADAPTER.policy.changes_gc:
        actions.disable_in_master()
    chain_into(namespace, per_request=policy.attribute_every > 0)
    return policy

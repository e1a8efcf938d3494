"""The tools a person runs: the ``gcfork`` command and what it drives.

Nothing here runs inside a server's processes (``tests/test_explain.py``
checks that a server imports none of it):

- :mod:`gcfork.tools.cli`: the ``gcfork`` command, with the options of
  every subcommand (``report``, ``settings``, ``explain``, ``bench``);
- :mod:`gcfork.tools.explain`: asking a worker for its copy-on-write
  profile and printing it;
- :mod:`gcfork.tools.bench`: an app under gunicorn in several variants;
- :mod:`gcfork.tools.load`: the requests a benchmark sends;
- :mod:`gcfork.tools.server`: a gunicorn server started and stopped by a
  tool or a test.

.. versionadded:: 0.3
"""

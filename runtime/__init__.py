"""Mechanisms every layer shares, written once: the bottom layer of metalchain.

One module per mechanism, named for what it holds:

- :mod:`runtime.atomicfile` -- replace a file so readers see the old or the new one, never half;
- :mod:`runtime.jsondoc` -- one JSON document (text, a file written atomically);
- :mod:`runtime.pidfile` -- pid files, liveness (a zombie counts as gone), stopping a process;
- :mod:`runtime.filelock` -- an exclusive file lock waited for with a deadline;
- :mod:`runtime.process` -- running a command with a timeout and its exit status checked;
- :mod:`runtime.httpserver` -- a ``socketserver`` served in a thread, stopped with a deadline.

This package imports no other metalchain package (``tests/unit/test_layering.py`` holds it to
that), so it cannot name metalchain's error tree: a function that fails takes ``error``, the
caller's exception class (any ``MetalchainError`` subclass), and raises that, with the cause.
"""

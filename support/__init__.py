"""Support code for tests, the benchmark and the soak driver: never shipped, never imported by
the ``mlsched`` package itself.

* ``traffic``: the injector's generated traffic, regenerated in user space;
* ``leaks``: what bpftool still lists of our programs, maps and links;
* ``scenarios``: the three reference scenarios and their independent expectation;
* ``soak``: the daemon under a steady request rate (``python -m support.soak``);
* ``imports``: the runtime's import graph and its layering rules (``python -m support.imports``).
"""

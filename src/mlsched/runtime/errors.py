"""The one error a user can fix by changing what they typed or the files they named.

Commands raise ``UsageError`` with a single line that names the problem and, where
there is one, the fix; ``mlsched-lite`` prints it on stderr and exits 2. Errors of the
layers below (a refused bundle, no interpreter, the kernel side refusing to load)
have their own classes and are reported the same way.
"""

from __future__ import annotations


class UsageError(Exception):
    """A user-fixable problem: printed as one line, exit status 2."""

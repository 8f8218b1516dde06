"""A dict with a size limit, for the maps the OSCAR service and proxy keep per cookie and per name."""

from __future__ import annotations

import collections


class BoundedMap(collections.OrderedDict):
    """An insertion-ordered dict that forgets its oldest entries past ``limit``."""

    def __init__(self, limit):
        super().__init__()
        self.limit = limit

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        while len(self) > self.limit:
            self.popitem(last=False)

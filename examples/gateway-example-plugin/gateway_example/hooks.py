"""A compliance hook plugin: deny messages with forbidden words, append a disclaimer."""

import attrs

from gateway.plugin import Message, Verdict, hookimpl


class DataLossPrevention:
    """
    Configured by ``[plugin.example-dlp]``: ``words`` (list of text; a
    message containing one, in any case, is denied) and ``disclaimer``
    (text appended to every message, empty for none).
    """

    words = ()
    disclaimer = ""

    @hookimpl
    def gateway_startup(self, api):
        config = api.plugin_config("example-dlp")
        self.words = tuple(w.lower() for w in config.get("words", ()))
        self.disclaimer = config.get("disclaimer", "")

    @hookimpl
    def gateway_policy_check(self, event):
        if isinstance(event, Message):
            text = event.text.lower()
            for word in self.words:
                if word in text:
                    return Verdict.deny(f"message mentions {word!r}", rule="example-dlp")
        return None

    @hookimpl
    def gateway_transform(self, event):
        if self.disclaimer and isinstance(event, Message):
            return attrs.evolve(event, text=f"{event.text}\n{self.disclaimer}")
        return None

"""Test plugin: forwards every message unchanged (`return message`), the
cost floor of a Python stage. Used by the `languages` benchmark."""

from weir_sdk import Processor, export


class Identity(Processor):
    def process(self, message):
        return message


WitWorld = export(Identity)

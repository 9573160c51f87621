"""Reading configuration YAML strictly: a key given twice is an error, not silently the last one."""

from __future__ import annotations

from typing import Any

import yaml

from governance.errors import ConfigError

__all__ = ["load_strict_yaml"]


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys instead of silently keeping the last one."""


def _mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(
                f"duplicate key {key!r} at line {key_node.start_mark.line + 1} ({key!r} appears twice); keep one"
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_strict_yaml(text: str) -> Any:
    """Parse ``text`` with a safe loader; raises ConfigError on a duplicate key, yaml.YAMLError on bad YAML."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
